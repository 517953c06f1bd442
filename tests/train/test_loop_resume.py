"""The loop's checkpoints resume exactly: 2 epochs == 1 epoch + resume + 1 epoch."""

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from vtrkit.config import Config
from vtrkit.distributed import DistInfo
from vtrkit.losses.contrastive import symmetric_infonce
from vtrkit.train.loop import fit as fit_sources
from vtrkit.train.sources import LoaderSource

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class PairData(Dataset):
    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(0)
        self.video = torch.randn(n, 6, generator=g)
        self.text = self.video + 0.3 * torch.randn(n, 6, generator=g)

    def __len__(self) -> int:
        return len(self.video)

    def __getitem__(self, i: int):
        return {"video": self.video[i], "input_ids": self.text[i]}


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class ToyDualEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.video_proj = nn.Linear(6, 8)
        self.text_proj = nn.Linear(6, 8)
        self.head = nn.Linear(8, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, batch):
        v = nn.functional.normalize(self.head(self.video_proj(batch["video"])), dim=-1)
        t = nn.functional.normalize(self.head(self.text_proj(batch["input_ids"])), dim=-1)
        logits = self.logit_scale.exp() * t @ v.T
        return {"loss": symmetric_infonce(logits), "logits": logits}

    def param_groups(self):
        backbone = [*self.video_proj.parameters(), *self.text_proj.parameters(), self.logit_scale]
        return backbone, list(self.head.parameters())

    def clamp_logit_scale(self, max_value: float = 4.6052) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(max=max_value)


class ToyObjective:
    """The toy model computes its own loss; the objective clamps its logit scale after a step."""

    def __call__(self, model, batch):
        return model(batch)

    def after_step(self, model):
        model.clamp_logit_scale()


def fit(cfg, model, data, collate_fn, info, **kwargs):
    """The loader-based batch source and the toy objective on the one training loop."""
    source = LoaderSource(data, collate_fn, cfg, info)
    return fit_sources(cfg, model, source, ToyObjective(), info, **kwargs)


def _cfg(out, **train) -> Config:
    cfg = Config()
    cfg.data.num_workers = 0
    cfg.optim.lr_backbone = 1e-2
    cfg.optim.lr_new = 5e-2
    cfg.train.output_dir = out
    cfg.train.epochs = 2
    cfg.train.batch_size = 8
    cfg.train.log_every = 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _weights(folder):
    return load_file(str(folder / "last" / "model.safetensors"))


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_two_epochs_equal_one_plus_resume(tmp_path):
    data = PairData()
    full = fit(_cfg(tmp_path / "full"), ToyDualEncoder(), data, collate, CPU, progress=False)
    assert full.steps == 12 and full.epochs == 2
    first = fit(
        _cfg(tmp_path / "split"),
        ToyDualEncoder(),
        data,
        collate,
        CPU,
        stop_after_epochs=1,
        progress=False,
    )
    assert first.epochs == 1
    # A fresh model object: only the checkpoint carries state into the second half.
    second = fit(
        _cfg(tmp_path / "split"), ToyDualEncoder(), data, collate, CPU, resume=True, progress=False
    )
    assert second.steps == 12
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "split"))
    # And training did change the weights (the comparison above is not vacuous).
    init = ToyDualEncoder().state_dict()
    assert not torch.allclose(init["head.weight"], _weights(tmp_path / "full")["head.weight"])


def test_mid_epoch_resume_after_budget(tmp_path):
    data = PairData()
    fit(_cfg(tmp_path / "full"), ToyDualEncoder(), data, collate, CPU, progress=False)
    # A zero time budget stops after the first optimiser step, mid-epoch.
    cut = fit(
        _cfg(tmp_path / "cut", time_budget_s=0.0),
        ToyDualEncoder(),
        data,
        collate,
        CPU,
        progress=False,
    )
    assert cut.steps == 1
    rest = fit(
        _cfg(tmp_path / "cut"), ToyDualEncoder(), data, collate, CPU, resume=True, progress=False
    )
    assert rest.steps == 12
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))


def test_log_and_checkpoint_files(tmp_path):
    fit(_cfg(tmp_path / "run"), ToyDualEncoder(), PairData(), collate, CPU, progress=False)
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "last" / "state.pt").is_file()
    assert not (tmp_path / "run" / "last.tmp").exists()
