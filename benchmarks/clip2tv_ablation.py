"""CLIP2TV's parts on 30 % vague captions, fine-tuned from the pretrained tiny CLIP, with diagnostics.

The training split has ``--vague`` (default 30 %) of its captions replaced by vague ones ("a shape
moves"), so many training videos share a caption: the false negatives SD is meant to soften. Every
arm starts from the same pretrained tiny CLIP, fine-tunes with the two learning rates for the same
number of optimiser steps, once per seed, and is evaluated on the clean 1,000-video test split,
overall and on the "order" and "attribute" subsets, in both directions. Arms:

- ``vta on clean captions``: the vta dual encoder (seqTransf) trained on the same videos with their
  clean captions; it is the frozen teacher of the last arm (and an upper bound for vta);
- ``vta``: CLIP2TV with vtm and SD off;
- ``vta+vtm``: plus video–text matching on hard negatives, reported by vta ranking and re-ranked
  by vtm (top-K);
- ``vta+vtm+SD (EMA teacher)``: plus similarity distillation from the EMA teacher (α ramps from 0
  over the first epoch, ``model.clip2tv.sd_alpha_ramp``);
- ``vta+vtm+SD (frozen clean teacher)``: SD from the clean-caption vta of the same seed;
- ``vta+SD (EMA teacher)`` only with ``--arms``: SD without vtm.

Diagnostics, every ``--diag-every`` steps of every CLIP2TV arm (written into the arm's JSON and
summarised in a second table): the gradient norm of each loss (vta InfoNCE, vtm, SD) on the shared
encoder parameters (CLIP towers + temporal encoder, by ``torch.autograd.grad``), the cosine between
the vta and vtm gradients, and the mean off-diagonal cosine of the batch's video features and of
its text features (near 1: the features have collapsed to a constant).

Run (resumable: finished arms are reused, a killed one resumes from its last checkpoint)::

    PYTHONPATH=src python benchmarks/clip2tv_ablation.py --out runs/ablation_clip2tv \\
        --backbone-checkpoint runs/pretrain_tiny

Smoke run (random towers, tiny data, a few steps, one seed)::

    PYTHONPATH=src python benchmarks/clip2tv_ablation.py --out /tmp/clip2tv_smoke \\
        --random-backbone --seeds 0 --steps 3 --n-train 32 --n-test 10 --batch 8 --diag-every 1

Writes ``<out>/clip2tv_ablation.md`` and ``.json``; the data (with vague captions) and its frame
cache live under ``<out>/data``, the clean-caption twin of its annotations under
``<out>/data_clean`` (same video files).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablation_runs import (
    RETRIEVAL_COLUMNS,
    ArmStore,
    add_common_arguments,
    backbone_identity,
    backbone_section,
    command_line,
    describe_backbone,
    fingerprint,
    markdown_table,
    mean_sd,
    prepare_short_data,
    retrieval_row,
    run_arms,
    select_arms,
    short_video_config,
    summarise,
    warm_frame_cache,
    write_report,
)
from vtrkit.config import Config
from vtrkit.data.datasets import read_dataset
from vtrkit.train.clip2tv_objective import Clip2TVObjective
from vtrkit.train.pipeline import train_run

TEACHER = "vta on clean captions"
FROZEN = "vta+vtm+SD (frozen clean teacher)"
CLIP2TV = ["model.kind=clip2tv"]
ARMS: dict[str, list[str]] = {
    TEACHER: ["model.kind=seqTransf"],
    "vta": [*CLIP2TV, "model.clip2tv.vtm=false", "model.clip2tv.sd=false"],
    "vta+vtm": [*CLIP2TV, "model.clip2tv.vtm=true", "model.clip2tv.sd=false"],
    "vta+vtm+SD (EMA teacher)": [*CLIP2TV, "model.clip2tv.sd=true", "model.clip2tv.teacher=ema"],
    FROZEN: [*CLIP2TV, "model.clip2tv.sd=true", "model.clip2tv.teacher=frozen"],
    "vta+SD (EMA teacher)": [
        *CLIP2TV,
        "model.clip2tv.vtm=false",
        "model.clip2tv.sd=true",
        "model.clip2tv.teacher=ema",
    ],
}
DEFAULT_ARMS = [a for a in ARMS if a != "vta+SD (EMA teacher)"]
# The demo's setting (src/vtrkit/demo.yaml when this was written) with CLIP2TV's parts sized for
# its 128-wide towers, pinned so the table does not move when the demo is retuned.
BASE: dict[str, Any] = {
    "data": {
        "dataset": "synthetic",
        "num_frames": 8,
        "max_words": 24,
        "image_size": 32,
        "fps": 1.0,
        "num_workers": 0,
    },
    "model": {
        "temporal": True,
        "temporal_layers": 2,
        "clip2tv": {"vtm_layers": 2, "vtm_heads": 4, "rerank_k": 16, "w_rr": 1.0},
    },
    "optim": {"weight_decay": 0.2, "warmup": 0.05},
    "train": {"epochs": 100_000, "precision": "bf16", "eval_every_epoch": False, "log_every": 10},
    "eval": {"dsl": False},
}
DIAGNOSTICS_FILE = "diagnostics.jsonl"


# ---------------------------------------------------------------------- diagnostics


def shared_encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters vta, vtm and SD all train: the CLIP towers and the temporal encoder of the
    vta model (its logit scale only serves vta and SD, so it is left out)."""
    return [
        p for n, p in model.vta.named_parameters() if p.requires_grad and "logit_scale" not in n
    ]


def _flat_grad(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).float().flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def mean_off_diagonal_cosine(x: Tensor) -> float:
    """Mean cosine between distinct rows of ``x`` [B, D] (1.0: every row points the same way)."""
    unit = F.normalize(x.float(), dim=-1)
    cos = unit @ unit.T
    b = len(unit)
    return float((cos.sum() - cos.diagonal().sum()) / max(b * (b - 1), 1))


def measure(model: nn.Module, batch: dict[str, Tensor], out: dict[str, Tensor]) -> dict[str, float]:
    """Per-loss gradient norms (and their cosines) on the shared encoder, the losses, and the mean
    off-diagonal cosine of the batch's pooled video and sentence features."""
    params = shared_encoder_parameters(model)
    grads = {
        part: _flat_grad(out[f"loss_{part}"], params)
        for part in ("vta", "vtm", "sd")
        if out[f"loss_{part}"].requires_grad
    }
    record = {f"loss_{part}": float(out[f"loss_{part}"].detach()) for part in ("vta", "vtm", "sd")}
    record.update({f"grad_norm/{part}": float(g.norm()) for part, g in grads.items()})
    for a, b in (("vta", "vtm"), ("sd", "vtm"), ("vta", "sd")):
        if a in grads and b in grads:
            record[f"grad_cos/{a}-{b}"] = float(F.cosine_similarity(grads[a], grads[b], dim=0))
    with torch.no_grad():
        text = model.vta.encode_text(batch["input_ids"], batch["text_mask"]).sentence
        video = model.vta.encode_video(batch["frames"], batch["video_mask"]).video
    record["offdiag_cos/video"] = mean_off_diagonal_cosine(video)
    record["offdiag_cos/text"] = mean_off_diagonal_cosine(text)
    record["logit_scale"] = float(model.logit_scale.detach().exp())
    return record


class DiagnosticObjective:
    """CLIP2TV's objective, unchanged, plus a :func:`measure` record every ``every`` optimiser
    steps (first micro-batch of the step), appended to ``path`` as JSON lines."""

    def __init__(self, inner: Clip2TVObjective, every: int, path: Path) -> None:
        self.inner, self.every, self.path = inner, every, path
        self.recorded = -1

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.inner(model, batch)
        step = self.inner.step
        if step % self.every == 0 and step != self.recorded and torch.is_grad_enabled():
            # The extra forward pass must not move the RNG that training draws from next.
            with torch.random.fork_rng():
                record = {"step": step, "alpha": self.inner.alpha, **measure(model, batch, out)}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            self.recorded = step
        return out

    def after_step(self, model: nn.Module) -> None:
        self.inner.after_step(model)


def read_diagnostics(path: Path) -> list[dict[str, float]]:
    """The records of a run, one per step (a resumed run's repeat of a step replaces it)."""
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


# ---------------------------------------------------------------------- data and arms


def write_clean_twin(vague: Path, clean: Path) -> Path:
    """Annotations of ``vague`` with every training caption clean again (the generator keeps the
    original as ``clean_caption``); the videos stay in ``vague``."""
    clean.mkdir(parents=True, exist_ok=True)
    data = json.loads((vague / "MSRVTT_data.json").read_text())
    for sentence in data["sentences"]:
        if "clean_caption" in sentence:
            sentence["caption"] = sentence.pop("clean_caption")
    (clean / "MSRVTT_data.json").write_text(json.dumps(data))
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "subsets.json"):
        shutil.copyfile(vague / name, clean / name)
    return clean


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=800, lr_new=1e-3)
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--vague", type=float, default=0.3, help="share of vague train captions")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.4, help="SD alpha")
    parser.add_argument("--alpha-ramp", choices=["epoch", "none"], default="epoch")
    parser.add_argument("--diag-every", type=int, default=25, help="steps between diagnostics")
    parser.add_argument("--data-seed", type=int, default=0)
    return parser.parse_args(argv)


def arm_config(args: argparse.Namespace, store: ArmStore, arm: str, seed: int) -> Config:
    data = args.out / "data"
    root = args.out / "data_clean" if arm == TEACHER else data
    settings = [
        f"data.root={root}",
        f"data.video_dir={data / 'videos'}",
        f"data.frame_cache={data / 'cache'}",
        f"model.clip2tv.sd_alpha={args.alpha}",
        f"model.clip2tv.sd_alpha_ramp={args.alpha_ramp}",
    ]
    if arm == FROZEN:
        settings.append(f"model.clip2tv.teacher_checkpoint={store.run_dir(TEACHER, seed) / 'last'}")
    base = {**BASE, "train": {**BASE["train"], "batch_size": args.batch}}
    return short_video_config(args, base, [*settings, *ARMS[arm]], store.run_dir(arm, seed), seed)


def train_arm(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    diagnostics = Path(cfg.train.output_dir) / DIAGNOSTICS_FILE
    diagnostics.parent.mkdir(parents=True, exist_ok=True)

    def wrap(objective: Any) -> Any:
        return DiagnosticObjective(objective, args.diag_every, diagnostics)

    started = time.perf_counter()
    clip2tv = cfg.model.kind == "clip2tv"
    result = train_run(
        cfg,
        resume=True,
        device=args.device,
        progress=False,
        wrap_objective=wrap if clip2tv else None,
    )
    assert result.last_eval is not None
    return {
        "steps": result.steps,
        "seconds": time.perf_counter() - started,
        "metrics": result.last_eval,
        "diagnostics": read_diagnostics(diagnostics),
    }


def result_rows(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, float]]]:
    """Table rows: every arm by vta ranking, arms with vtm also re-ranked."""
    rows: dict[str, list[dict[str, float]]] = {}
    for arm, runs in results.items():
        rows[f"{arm}, vta ranking"] = [
            {**retrieval_row(r["metrics"]["raw"], r["metrics"]["subsets"]), "train s": r["seconds"]}
            for r in runs
        ]
        if all("rerank" in r["metrics"] for r in runs):
            k = runs[0]["metrics"]["rerank_k"]
            rows[f"{arm}, vtm re-ranked (top {k})"] = [
                retrieval_row(r["metrics"]["rerank"], r["metrics"]["rerank_subsets"]) for r in runs
            ]
    return rows


DIAGNOSTIC_COLUMNS = (
    "loss_vta",
    "loss_vtm",
    "loss_sd",
    "grad_norm/vta",
    "grad_norm/vtm",
    "grad_norm/sd",
    "grad_cos/vta-vtm",
    "offdiag_cos/video",
    "offdiag_cos/text",
)


def diagnostic_rows(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, float]]]:
    """Per CLIP2TV arm: its diagnostics at the first and at the last recorded step (per seed)."""
    rows: dict[str, list[dict[str, float]]] = {}
    for arm, runs in results.items():
        logs = [r["diagnostics"] for r in runs if r.get("diagnostics")]
        if not logs:
            continue
        for label, pick in (("first", 0), ("last", -1)):
            records = [log[pick] for log in logs]
            step = int(mean_sd([r["step"] for r in records])[0])
            rows[f"{arm} @ step {step} ({label})"] = [
                {c: r[c] for c in DIAGNOSTIC_COLUMNS if c in r} for r in records
            ]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    arms = select_arms(list(ARMS), args.arms or DEFAULT_ARMS)
    if FROZEN in arms and TEACHER not in arms:
        arms.insert(0, TEACHER)  # the frozen arm distils from it
    data = prepare_short_data(
        args.out / "data", args.n_train, args.n_test, args.vague, args.data_seed
    )
    write_clean_twin(data, args.out / "data_clean")
    store = ArmStore(args.out)
    extra = {
        "backbone": backbone_identity(backbone_section(args)),
        "data": [args.n_train, args.n_test, args.vague, args.data_seed],
        "diag_every": args.diag_every,
    }
    first = arm_config(args, store, arms[0], args.seeds[0])
    warm_frame_cache(first, read_dataset(first.data, "train") + read_dataset(first.data, "test"))
    results = run_arms(
        store,
        arms,
        args.seeds,
        lambda a, s: fingerprint(arm_config(args, store, a, s), extra),
        lambda a, s: train_arm(arm_config(args, store, a, s), args),
    )
    columns = [c for c, _, _ in RETRIEVAL_COLUMNS] + ["train s"]
    table = markdown_table(result_rows(results), columns)
    diag = markdown_table(
        diagnostic_rows(results), list(DIAGNOSTIC_COLUMNS), first="arm @ step", digits=3
    )
    description = (
        f"CLIP2TV on the synthetic benchmark: {args.n_train} training videos with "
        f"{args.vague:.0%} vague captions, the clean {args.n_test}-video test split; "
        f"{describe_backbone(args)}; {args.steps} optimiser steps of batch {args.batch} per arm, "
        f"new modules at lr {args.lr_new:g}, towers at {args.backbone_fraction:g} × that; SD "
        f"α={args.alpha:g} (ramp: {args.alpha_ramp}); seeds {args.seeds}; raw similarities. Mean ± "
        f"sd over seeds.\n\nCommand: {command_line()}"
    )
    text = (
        f"{description}\n\n{table}\n\nDiagnostics on the shared encoder (gradient norms per loss, "
        f"vta-vtm gradient cosine, mean off-diagonal cosine of the batch's features):\n\n{diag}"
    )
    report = {
        "description": description,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "summary": summarise(result_rows(results)),
        "diagnostics": summarise(diagnostic_rows(results)),
        "runs": results,
    }
    write_report(args.out, "clip2tv_ablation", text, report)
    return report


if __name__ == "__main__":
    main()
