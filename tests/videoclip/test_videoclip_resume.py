"""VideoCLIP resumes exactly: a run killed (or stopped by its time budget) and resumed, mid-epoch
or at an epoch boundary, ends with the weights of an uninterrupted run; a checkpoint whose plan
does not fit the data or settings is refused with an error that says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import D_IN, make_corpus, tiny_videoclip_config
from vtrkit.checkpoint import STATE_FILE
from vtrkit.config import Config
from vtrkit.videoclip.data import build_word_tokenizer, load_narrated_videos
from vtrkit.videoclip.features import load_features, read_index, save_features, write_index
from vtrkit.videoclip.resume import DataFingerprint, EpochPlan, ResumeMismatchError
from vtrkit.videoclip.train import train_videoclip

EPOCHS = 3
STEPS = EPOCHS * (12 // 4)
"""12 videos, cluster_k 4: 3 groups (optimiser steps) per epoch."""


class Killed(BaseException):
    """Stands for SIGKILL: raised mid-step, it bypasses every ``except Exception``."""


def _cfg(out: Path, features: Path, **train) -> Config:
    """A tiny VideoCLIP with retrieval-augmented groups (the plan depends on the model)."""
    return tiny_videoclip_config(
        out,
        features,
        {"retrieval_augment": True},
        {"epochs": EPOCHS, "eval_every_epoch": False, **train},
    )


def _data(root: Path, records):
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    return load_narrated_videos(records, root, tok, D_IN), tok


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def _state(run: Path) -> dict:
    return torch.load(run / "last" / STATE_FILE, weights_only=False)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The corpus and an uninterrupted run's final weights, shared by the tests."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("videoclip_resume")
    root = base / "features"
    records = make_corpus(root, 12)
    videos, tok = _data(root, records)
    _, result = train_videoclip(_cfg(base / "full", root), videos, tok)
    assert result.steps == STEPS and result.epochs == EPOCHS
    return root, records, _weights(base / "full")


def _kill_at_step(monkeypatch, step: int) -> None:
    """Make the ``step``-th optimiser step (1-based) die after its backward pass."""
    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", dying)


@pytest.mark.parametrize(
    ("checkpoint_every", "kill_at", "saved_step", "saved_batch"),
    [
        (2, 6, 4, 1),  # periodic checkpoint 1 batch into epoch 2; step 5 is redone
        (None, 5, 3, 0),  # only epoch checkpoints: resume at the start of epoch 2
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_weights(
    setup, tmp_path, monkeypatch, checkpoint_every, kill_at, saved_step, saved_batch
):
    root, records, full = setup
    videos, tok = _data(root, records)
    cfg = _cfg(tmp_path / "run", root, checkpoint_every=checkpoint_every)
    with monkeypatch.context() as patch:
        _kill_at_step(patch, kill_at)
        with pytest.raises(Killed):
            train_videoclip(cfg, videos, tok)
    saved = _state(tmp_path / "run")
    assert saved["train_state"]["step"] == saved_step
    assert saved["train_state"]["batch_in_epoch"] == saved_batch
    extra = saved["extra"]
    assert (extra["ranks"][0]["source"]["plan"] is not None) == (saved_batch > 0)
    assert len(extra["ranks"]) == 1
    # A fresh process would rebuild the tokenizer and videos; only the checkpoint carries state.
    videos, tok = _data(root, records)
    _, result = train_videoclip(cfg, videos, tok, resume=True)
    assert result.steps == STEPS and result.epochs == EPOCHS
    _assert_same(full, _weights(tmp_path / "run"))


def test_budget_stop_mid_epoch_then_resume(setup, tmp_path):
    root, records, full = setup
    videos, tok = _data(root, records)
    cut = _cfg(tmp_path / "run", root, time_budget_s=0.0)
    _, first = train_videoclip(cut, videos, tok)
    # The budget stops after the first step, one batch into epoch 1; that is what last/ holds.
    assert first.steps == 1 and first.epochs == 0
    saved = _state(tmp_path / "run")
    assert saved["train_state"]["batch_in_epoch"] == 1
    plan = EpochPlan.from_dict(saved["extra"]["ranks"][0]["source"]["plan"])
    assert plan.epoch == 0 and [len(g) for g in plan.groups] == [4, 4, 4]
    _, rest = train_videoclip(_cfg(tmp_path / "run", root), videos, tok, resume=True)
    assert rest.steps == STEPS
    _assert_same(full, _weights(tmp_path / "run"))
    # Training moved the weights, so the equality above is not vacuous.
    (fresh := tmp_path / "fresh").mkdir()
    _, none = train_videoclip(_cfg(fresh, root, max_steps=1), videos, tok)
    assert none.steps == 1
    assert not torch.allclose(
        _weights(fresh)["token_mlp.net.0.weight"], full["token_mlp.net.0.weight"]
    )


def test_resume_without_checkpoint_starts_from_scratch(setup, tmp_path):
    root, records, full = setup
    videos, tok = _data(root, records)
    _, result = train_videoclip(_cfg(tmp_path / "run", root), videos, tok, resume=True)
    assert result.steps == STEPS
    _assert_same(full, _weights(tmp_path / "run"))


def _stopped_mid_epoch(root: Path, records, run: Path) -> None:
    videos, tok = _data(root, records)
    train_videoclip(_cfg(run, root, time_budget_s=0.0), videos, tok)


def test_changed_features_are_refused_naming_checkpoint_and_video(setup, tmp_path):
    root, records, _ = setup
    _stopped_mid_epoch(root, records, tmp_path / "run")
    # The same ids elsewhere, one video re-extracted shorter and another with other values.
    other = tmp_path / "features2"
    other.mkdir()
    entries = {}
    for vid in read_index(root):
        feats = np.asarray(load_features(root, vid), dtype=np.float32)
        if vid == "vid003":
            feats = feats[:30]
        if vid == "vid005":
            feats = feats + 0.5
        entries[vid] = save_features(other, vid, feats)
    write_index(other, entries)
    videos, tok = _data(other, records)
    cfg = _cfg(tmp_path / "run", other)
    with pytest.raises(ResumeMismatchError) as err:
        train_videoclip(cfg, videos, tok, resume=True)
    msg = str(err.value)
    assert str(tmp_path / "run" / "last") in msg
    assert f"features folder {root} at save, {other} now" in msg
    assert "'vid003' (seconds 40 -> 30, captions 7 -> 6)" in msg
    assert "'vid005' (feature values" in msg
    # A video dropped from the training list is named as missing.
    videos, tok = _data(root, records[:7] + records[8:])
    with pytest.raises(ResumeMismatchError, match=r"12 training videos at save, 11 now.*'vid007'"):
        train_videoclip(_cfg(tmp_path / "run", root), videos, tok, resume=True)


def test_changed_plan_settings_are_refused_mid_epoch(setup, tmp_path):
    root, records, _ = setup
    _stopped_mid_epoch(root, records, tmp_path / "run")
    videos, tok = _data(root, records)
    cfg = _cfg(tmp_path / "run", root)
    cfg.model.videoclip.pairs_per_video = 2
    with pytest.raises(ResumeMismatchError, match=r"mid-epoch.*pairs_per_video: 4 at save, 2 now"):
        train_videoclip(cfg, videos, tok, resume=True)


def test_fingerprint_ignores_the_folder_but_sees_order(setup):
    root, records, _ = setup
    videos, _ = _data(root, records)
    a = DataFingerprint.of(videos, root)
    assert a.same_as(DataFingerprint.of(videos, "/elsewhere"))
    swapped = DataFingerprint.of([videos[1], videos[0], *videos[2:]], root)
    assert not a.same_as(swapped)
    from vtrkit.videoclip.resume import describe_data_difference

    assert describe_data_difference(a, swapped) == ["the videos are in a different order"]


def _ddp_cfg(out: Path, root: Path, **train) -> Config:
    cfg = _cfg(out, root, epochs=2, **train)
    # 12 videos in groups of 2: 6 groups, 3 per process per epoch, so a run can stop mid-epoch.
    cfg.model.videoclip.cluster_k = 2
    return cfg


def _ddp_worker(rank: int, root: Path, records: list, base: Path) -> None:
    """One of two gloo processes: an uninterrupted run, then a budget-cut run and its resume."""
    import shutil

    import torch.distributed as dist

    from vtrkit.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{base}/store", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        videos, tok = _data(root, records)
        train_videoclip(_ddp_cfg(base / "full", root), videos, tok, info)
        _, first = train_videoclip(
            _ddp_cfg(base / "cut", root, time_budget_s=0.0), videos, tok, info
        )
        assert first.steps == 1
        if rank == 0:  # keep the mid-epoch checkpoint for the test to inspect
            shutil.copytree(base / "cut", base / "mid")
        dist.barrier()
        _, rest = train_videoclip(_ddp_cfg(base / "cut", root), videos, tok, info, resume=True)
        assert rest.steps == 6
    finally:
        dist.destroy_process_group()


def test_two_process_resume_restores_each_process_state(setup, tmp_path):
    """Under DDP each process draws other pairs (hence other dropout draws); both come back."""
    import torch.multiprocessing as mp

    root, records, _ = setup
    mp.spawn(_ddp_worker, args=(root, records, tmp_path), nprocs=2, join=True)
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    ranks = _state(tmp_path / "mid")["extra"]["ranks"]
    pair_rngs = [r["source"]["pair_rng"] for r in ranks]
    assert len(ranks) == 2 and pair_rngs[0] != pair_rngs[1]
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    # The mid-epoch plan is split over two processes: one process cannot take it over.
    videos, tok = _data(root, records)
    with pytest.raises(ResumeMismatchError, match="world_size: 2 at save, 1 now"):
        train_videoclip(_ddp_cfg(tmp_path / "mid", root), videos, tok, resume=True)
