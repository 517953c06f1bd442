"""PretrainSource: exact resume from its state, process shards that gather to the single-process
batch, new stills every epoch, and refusal of a state written with other data settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretrain_helpers import tiny_config

from vtrkit.backbones.tokenizer import ClipTokenizer
from vtrkit.config import Config, PretrainConfig
from vtrkit.data.synthetic_stills import StillStream, still_pixels
from vtrkit.distributed import DistInfo
from vtrkit.train.pretrain_source import PretrainSource

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def source(cfg: Config, tokenizer, rank: int = 0, world: int = 1) -> PretrainSource:
    return PretrainSource(cfg, tokenizer, 32, DistInfo(rank, world, rank, CPU))


def epoch_batches(src: PretrainSource, epoch: int) -> list[dict[str, torch.Tensor]]:
    src.start_epoch(epoch, torch.nn.Identity())
    return list(src)


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_batches_are_the_stills_of_seed_epoch_index(tmp_path: Path, tokenizer) -> None:
    cfg = tiny_config(tmp_path)
    src = source(cfg, tokenizer)
    assert src.steps_per_epoch() == 48 // 16
    batches = epoch_batches(src, 1)
    assert [b["index"].tolist() for b in batches] == [list(range(k, k + 16)) for k in (0, 16, 32)]
    stream = StillStream.from_config(cfg.pretrain)
    stills = stream.stills("train", 1, range(16, 32))
    ids, mask = tokenizer([s.caption for s in stills], cfg.pretrain.max_words)
    assert torch.equal(batches[1]["pixels"], still_pixels(stills, 32))
    assert torch.equal(batches[1]["input_ids"], ids) and torch.equal(batches[1]["text_mask"], mask)
    other = epoch_batches(source(cfg, tokenizer), 2)
    assert not torch.equal(
        other[0]["pixels"], epoch_batches(source(cfg, tokenizer), 1)[0]["pixels"]
    )


def test_resume_mid_epoch_gives_the_uninterrupted_batches(tmp_path: Path, tokenizer) -> None:
    cfg = tiny_config(tmp_path)
    whole = epoch_batches(source(cfg, tokenizer), 0)
    first = source(cfg, tokenizer)
    first.start_epoch(0, torch.nn.Identity())
    it = iter(first)
    head = [next(it)]
    state = first.state_dict()
    assert state["epoch"] == 0 and state["stills"] == 16
    resumed = source(cfg, tokenizer)
    resumed.load_state_dict({**state, "checkpoint": "last/"})
    assert_same(head + epoch_batches(resumed, 0), whole)
    # The next epoch starts at its beginning.
    assert_same(epoch_batches(resumed, 1), epoch_batches(source(cfg, tokenizer), 1))
    # Resuming with two accumulation steps continues at the same still.
    accum = source(tiny_config(tmp_path, train={"grad_accum": 2}), tokenizer)
    accum.load_state_dict(state)
    rest = epoch_batches(accum, 0)
    assert torch.equal(torch.cat([b["index"] for b in rest]), torch.arange(16, 48))


def test_process_shards_gather_to_the_single_process_batch(tmp_path: Path, tokenizer) -> None:
    cfg = tiny_config(tmp_path)
    single = epoch_batches(source(cfg, tokenizer), 0)
    shards = [epoch_batches(source(cfg, tokenizer, rank, 2), 0) for rank in range(2)]
    for j, batch in enumerate(single):
        for key in batch:
            gathered = torch.cat([shards[0][j][key], shards[1][j][key]])
            assert torch.equal(gathered, batch[key]), key
    # Two accumulation steps of two processes: the step's four shares are the single batch.
    accum = tiny_config(tmp_path, train={"grad_accum": 2})
    parts = [epoch_batches(source(accum, tokenizer, rank, 2), 0) for rank in range(2)]
    step0 = torch.cat([parts[r][m]["index"] for m in range(2) for r in range(2)])
    assert torch.equal(step0, single[0]["index"])


def test_loader_workers_give_the_same_batches(tmp_path: Path, tokenizer) -> None:
    cfg = tiny_config(tmp_path)
    workers = tiny_config(tmp_path, data={"num_workers": 1})
    assert_same(
        epoch_batches(source(workers, tokenizer), 0), epoch_batches(source(cfg, tokenizer), 0)
    )


def test_refuses_what_it_cannot_continue(tmp_path: Path, tokenizer) -> None:
    cfg = tiny_config(tmp_path)
    state = source(cfg, tokenizer).state_dict()
    other_seed = source(tiny_config(tmp_path, pretrain={"data_seed": 1}), tokenizer)
    with pytest.raises(ValueError, match="data_seed=0"):
        other_seed.load_state_dict({**state, "epoch": 0, "stills": 16})
    no_twins = source(tiny_config(tmp_path, pretrain={"twins": 0.0}), tokenizer)
    with pytest.raises(ValueError, match=r"twins=0\.5"):
        no_twins.load_state_dict({**state, "epoch": 0, "stills": 16})
    # Written with two accumulation steps of 8 stills, one micro-batch in: not a whole batch.
    with pytest.raises(ValueError, match="grad_accum"):
        source(cfg, tokenizer).load_state_dict({**state, "epoch": 0, "stills": 8})
    with pytest.raises(ValueError, match="world_size × grad_accum"):
        source(cfg, tokenizer, 0, 3)
    with pytest.raises(ValueError, match="images_per_epoch"):
        source(tiny_config(tmp_path, pretrain={"images_per_epoch": 8}), tokenizer)
    with pytest.raises(RuntimeError, match="start_epoch"):
        list(source(cfg, tokenizer))


def test_default_captions_fit_the_default_word_slots(tokenizer) -> None:
    stills = StillStream(seed=0).stills("train", 0, range(1500))
    longest = max(len(tokenizer.encode(s.caption)) for s in stills)
    assert longest <= PretrainConfig().max_words - 2
