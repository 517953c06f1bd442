"""The one training loop: exact two-process resume for a loader-based method, the import
structure and the single optimiser step (VideoCLIP's accumulation: tests/videoclip)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_loop_resume import PairData, collate
from torch import nn

from vtrkit.config import Config
from vtrkit.distributed import DistInfo
from vtrkit.losses.contrastive import gather_with_grad, symmetric_infonce
from vtrkit.train.loop import fit
from vtrkit.train.sources import LoaderSource

SRC = Path(__file__).resolve().parents[2] / "src" / "vtrkit"


class DropoutDualEncoder(nn.Module):
    """A toy dual encoder with dropout, so every process's RNG stream shapes its gradients."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.video_proj = nn.Linear(6, 8)
        self.text_proj = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.3)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def param_groups(self):
        return [self.logit_scale], [*self.video_proj.parameters(), *self.text_proj.parameters()]


class GatheredInfoNCE:
    """Symmetric InfoNCE over the gathered batch of the toy encoder."""

    def __call__(self, model, batch):
        v = nn.functional.normalize(model.drop(model.video_proj(batch["video"])), dim=-1)
        t = nn.functional.normalize(model.drop(model.text_proj(batch["input_ids"])), dim=-1)
        logits = model.logit_scale.exp() * gather_with_grad(t) @ gather_with_grad(v).T
        return {"loss": symmetric_infonce(logits)}

    def after_step(self, model):
        with torch.no_grad():
            model.logit_scale.clamp_(max=4.6052)


def _cfg(out: Path, **train) -> Config:
    cfg = Config()
    cfg.data.num_workers = 0
    cfg.optim.lr_backbone, cfg.optim.lr_new = 1e-2, 5e-2
    cfg.train.output_dir = out
    cfg.train.epochs, cfg.train.batch_size, cfg.train.log_every = 2, 8, 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _run(cfg: Config, info: DistInfo, resume: bool = False):
    source = LoaderSource(PairData(), collate, cfg, info)
    model = DropoutDualEncoder()
    torch.manual_seed(100 + info.rank)  # each process its own dropout stream
    return fit(cfg, model, source, GatheredInfoNCE(), info, resume=resume)


def _loader_worker(rank: int, base: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{base}/store", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        _run(_cfg(base / "full"), info)
        first = _run(_cfg(base / "cut", time_budget_s=0.0), info)
        assert first.steps == 1 and first.stopped_by_budget
        if rank == 0:
            shutil.copytree(base / "cut", base / "mid")
        dist.barrier()
        rest = _run(_cfg(base / "cut"), info, resume=True)
        assert rest.steps == 2 * (48 // 8) and not rest.stopped_by_budget
    finally:
        dist.destroy_process_group()


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_loader_method_resumes_mid_epoch_exactly_with_two_processes(tmp_path):
    mp.spawn(_loader_worker, args=(tmp_path,), nprocs=2, join=True)
    full = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    _assert_same(full, load_file(str(tmp_path / "cut" / "last" / "model.safetensors")))
    state = torch.load(tmp_path / "mid" / "last" / "state.pt", weights_only=False)
    ranks = state["extra"]["ranks"]
    # Each process saved its own dropout stream and its own place in the epoch.
    assert len(ranks) == 2
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    assert [r["source"] for r in ranks] == [{"epoch": 0, "consumed": 1}] * 2
    # The cut run really stopped early: its mid-epoch weights differ from the final ones.
    mid = load_file(str(tmp_path / "mid" / "last" / "model.safetensors"))
    assert not torch.allclose(mid["video_proj.weight"], full["video_proj.weight"])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m.startswith("vtrkit")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_import_structure_has_no_cycle_and_arrows_point_down():
    graph = {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}
    known = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for d in deps if (r := resolve(d)) and r != m} for m, deps in graph.items()}
    low_level = ("vtrkit.models", "vtrkit.losses", "vtrkit.data")
    upper = ("vtrkit.train", "vtrkit.index", "vtrkit.cli")
    for module, deps in edges.items():
        if module.startswith(low_level):
            bad = sorted(d for d in deps if d.startswith(upper))
            assert not bad, f"{module} imports {bad}"
    api_bad = sorted(d for d in edges["vtrkit.api"] if d.startswith("vtrkit.index."))
    assert not api_bad, f"vtrkit.api imports index internals {api_bad}"
    # No cycle among modules (package __init__ re-exports excluded: they are entry points).
    plain = {
        m: {d for d in deps if not (SRC.parent / d.replace(".", "/")).is_dir()}
        for m, deps in edges.items()
        if not (SRC.parent / m.replace(".", "/")).is_dir()
    }
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in plain.get(node, ()):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in plain:
        if module not in state:
            visit(module, [module])


def test_exactly_one_place_steps_an_optimiser():
    steppers = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "optimizer.step(" in p.read_text() or ".step(self.optimizer)" in p.read_text()
    ]
    assert steppers == ["train/loop.py"]
