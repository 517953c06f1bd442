"""Micro-batching and caching of query encodings (vtrkit.serve.batching)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from index_helpers import FakeEncoder, tiny_config

from vtrkit.inference import ModelEncoder
from vtrkit.models.base import TextFeatures
from vtrkit.models.build import build_model
from vtrkit.serve.batching import QueryEncoder


class SlowRecorder:
    """Wraps an encoder: records every pass's texts and takes ``delay`` seconds per pass."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.inner = FakeEncoder()
        self.delay = delay
        self.fail_on = fail_on
        self.passes: list[list[str]] = []

    def __call__(self, texts: list[str]) -> TextFeatures:
        self.passes.append(list(texts))
        time.sleep(self.delay)
        if self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        return self.inner.encode_texts(texts)


def run_together(encoder: QueryEncoder, texts: list[str]) -> list[TextFeatures | Exception]:
    """Call ``encoder.encode`` from one thread per text, all released at the same moment."""
    results: list[TextFeatures | Exception] = [None] * len(texts)  # type: ignore[list-item]
    start = threading.Barrier(len(texts))

    def call(i: int) -> None:
        start.wait()
        try:
            results[i] = encoder.encode(texts[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a caller never got its answer"
    return results


def assert_same(a: TextFeatures, b: TextFeatures, atol: float = 0.0) -> None:
    for name in ("sentence", "words", "mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        if x.dtype == torch.bool:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, atol=atol, rtol=0)


def test_concurrent_queries_share_passes_and_each_gets_its_own_row():
    recorder = SlowRecorder(delay=0.2)
    encoder = QueryEncoder(recorder, cache_size=0)
    texts = [f"{c} query {i}" for i, c in enumerate(["red", "blue", "green", "cyan"] * 4)]
    results = run_together(encoder, texts)
    reference = FakeEncoder()
    for text, got in zip(texts, results, strict=True):
        assert_same(got, reference.encode_texts([text]))
    # 16 callers: the first pass starts with whoever came first, the rest queue behind it.
    assert len(recorder.passes) <= 3, recorder.passes
    assert sorted(t for p in recorder.passes for t in p) == sorted(texts)
    assert encoder.stats.passes == len(recorder.passes) and encoder.stats.largest_pass >= 8


def test_max_batch_bounds_every_pass():
    recorder = SlowRecorder(delay=0.05)
    encoder = QueryEncoder(recorder, max_batch=3, cache_size=0)
    texts = [f"text {i}" for i in range(10)]
    results = run_together(encoder, texts)
    assert all(isinstance(r, TextFeatures) and len(r) == 1 for r in results)
    assert max(len(p) for p in recorder.passes) <= 3
    assert sorted(t for p in recorder.passes for t in p) == sorted(texts)


def test_repeated_queries_come_from_the_lru_cache():
    recorder = SlowRecorder()
    encoder = QueryEncoder(recorder, cache_size=2)
    first = encoder.encode("red")
    assert encoder.encode("red") is first and len(recorder.passes) == 1
    encoder.encode("blue")
    encoder.encode("red")  # refreshes red: blue is now the oldest
    encoder.encode("green")  # evicts blue
    assert encoder.stats.cache_hits == 2 and len(recorder.passes) == 3
    encoder.encode("red")
    assert len(recorder.passes) == 3
    encoder.encode("blue")
    assert recorder.passes[-1] == ["blue"] and len(recorder.passes) == 4
    # The same text from several callers in one pass is encoded once.
    again = QueryEncoder(SlowRecorder(delay=0.2), cache_size=0)
    run_together(again, ["same words"] * 6)
    assert again.stats.encoded <= 2


def test_a_failing_pass_fails_its_callers_and_the_next_pass_runs():
    recorder = SlowRecorder(delay=0.1, fail_on="poison")
    encoder = QueryEncoder(recorder, cache_size=0)
    results = run_together(encoder, ["poison"] + [f"fine {i}" for i in range(5)])
    assert isinstance(results[0], RuntimeError) and "poison" in str(results[0])
    # Callers that shared the poisoned pass get its error; nobody is left waiting.
    failed = {t for p in recorder.passes if "poison" in p for t in p}
    for text, got in zip(["poison"] + [f"fine {i}" for i in range(5)], results, strict=True):
        assert isinstance(got, RuntimeError) == (text in failed)
    assert isinstance(encoder.encode("fine again"), TextFeatures)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        QueryEncoder(FakeEncoder().encode_texts, max_batch=0)


def test_batched_rows_equal_single_encodings_with_a_real_text_tower():
    torch.manual_seed(0)
    cfg = tiny_config()
    model, tokenizer = build_model(cfg.model, cfg.data)
    model_encoder = ModelEncoder(model, tokenizer, cfg.data)
    encoder = QueryEncoder(model_encoder.encode_texts, cache_size=0)
    texts = ["a red circle moves left", "a blue square", "then it grows", "x"] * 2
    results = run_together(encoder, texts)
    for text, got in zip(texts, results, strict=True):
        assert_same(got, model_encoder.encode_texts([text]), atol=1e-5)
