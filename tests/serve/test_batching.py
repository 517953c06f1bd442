"""Serving many users: passes of concurrent jobs, the query cache, batched search, bf16 queries
(vtrkit.serve.batching)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from index_helpers import FakeEncoder, tiny_config, write_video

from vtrkit.index import VideoIndex
from vtrkit.inference import ModelEncoder
from vtrkit.models.base import TextFeatures, VideoFeatures
from vtrkit.models.build import build_model
from vtrkit.serve.batching import MicroBatcher, QueryCache, SearchBatcher, query_text_encoder


def run_together(call, jobs: list) -> list:
    """``call(job)`` from one thread per job, all released at the same moment; results (or the
    exception raised) in job order."""
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = call(jobs[i])
        except Exception as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a caller never got its answer"
    return results


class Recorder:
    """A pass function that records its passes, takes ``delay`` s and checks that no two passes
    ever overlap; results are the jobs doubled, "poison" fails the pass, "bad" only itself."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.passes: list[list] = []
        self.running = 0
        self.overlapped = False

    def __call__(self, jobs: list) -> list:
        self.running += 1
        self.overlapped |= self.running > 1
        self.passes.append(list(jobs))
        time.sleep(self.delay)
        self.running -= 1
        if "poison" in jobs:
            raise RuntimeError("the whole pass failed")
        return [KeyError(j) if j == "bad" else j * 2 for j in jobs]


def test_concurrent_jobs_share_passes_one_pass_at_a_time():
    recorder = Recorder(delay=0.2)
    batcher = MicroBatcher(recorder)
    jobs = [f"job{i}" for i in range(16)]
    assert run_together(batcher.submit, jobs) == [j * 2 for j in jobs]
    # 16 callers at once: the first pass starts with whoever came first, the rest queue.
    assert len(recorder.passes) <= 3 and not recorder.overlapped, recorder.passes
    assert sorted(j for p in recorder.passes for j in p) == sorted(jobs)
    assert batcher.passes == len(recorder.passes) and batcher.largest_pass >= 8


def test_max_batch_bounds_every_pass():
    recorder = Recorder(delay=0.05)
    batcher = MicroBatcher(recorder, max_batch=3)
    jobs = [f"j{i}" for i in range(10)]
    assert run_together(batcher.submit, jobs) == [j * 2 for j in jobs]
    assert max(len(p) for p in recorder.passes) <= 3 and not recorder.overlapped
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(recorder, max_batch=0)


def test_failures_reach_the_right_callers_and_the_next_pass_runs():
    recorder = Recorder(delay=0.1)
    batcher = MicroBatcher(recorder)
    jobs = ["poison", "bad"] + [f"fine{i}" for i in range(6)]
    results = run_together(batcher.submit, jobs)
    poisoned = {j for p in recorder.passes if "poison" in p for j in p}
    for job, got in zip(jobs, results, strict=True):
        if job in poisoned:
            assert isinstance(got, RuntimeError)
        elif job == "bad":
            assert isinstance(got, KeyError)
        else:
            assert got == job * 2
    assert batcher.submit("again") == "againagain"


def test_query_cache_encodes_each_new_text_once_and_evicts_the_oldest():
    calls: list[list[str]] = []
    inner = FakeEncoder()

    def encode(texts: list[str]) -> TextFeatures:
        calls.append(list(texts))
        return inner.encode_texts(texts)

    cache = QueryCache(encode, size=2)
    rows = cache.rows(["red", "blue", "red"])
    assert calls == [["red", "blue"]] and rows[0] is rows[2]
    torch.testing.assert_close(rows[1].sentence, inner.encode_texts(["blue"]).sentence)
    cache.rows(["red"])  # a hit: red is now the newest
    cache.rows(["green"])  # evicts blue
    assert calls[-1] == ["green"] and cache.hits == 1
    cache.rows(["blue", "red"])
    assert calls[-1] == ["blue"] and cache.encoded == 4 and cache.hits == 2
    with pytest.raises(ValueError, match="negative"):
        QueryCache(encode, size=-1)


def test_batched_rows_equal_single_encodings_with_a_real_text_tower():
    torch.manual_seed(0)
    cfg = tiny_config()
    model, tokenizer = build_model(cfg.model, cfg.data)
    encoder = ModelEncoder(model, tokenizer, cfg.data)
    texts = ["a red circle moves left", "a blue square", "then it grows", "x"]
    for text, row in zip(texts, QueryCache(encoder.encode_texts).rows(texts), strict=True):
        single = encoder.encode_texts([text])
        torch.testing.assert_close(row.sentence, single.sentence, atol=1e-5, rtol=0)
        torch.testing.assert_close(row.words, single.words, atol=1e-5, rtol=0)
        assert torch.equal(row.mask, single.mask)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    """Twelve 6-s videos of random colours (no two scores tie, so orders are well defined)."""
    root = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    for i in range(12):
        seconds = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(6)]
        write_video(root / "videos" / f"v{i:02d}.mp4", seconds)
    index = VideoIndex.build(root / "videos", root / "lib", FakeEncoder())
    yield index
    index.close()


WORDS = ["red", "green blue", "cyan", "white orange", "magenta", "yellow red", "blue", "orange"]


@pytest.mark.parametrize("rerank", [0, 5, None])
def test_search_videos_many_equals_one_search_per_query(small_index, rerank):
    many = small_index.search_videos_many(WORDS, k=4, rerank=rerank)
    for text, hits in zip(WORDS, many, strict=True):
        alone = small_index.search_videos(text, k=4, rerank=rerank)
        assert [(h.video_id, h.window_id, h.scored_by) for h in hits] == [
            (h.video_id, h.window_id, h.scored_by) for h in alone
        ]
        assert [h.score for h in hits] == pytest.approx([h.score for h in alone], abs=1e-5)
        assert [[m.window_id for m in h.moments] for h in hits] == [
            [m.window_id for m in h.moments] for h in alone
        ]
    assert small_index.search_videos_many([], k=3) == []


def test_search_batcher_gives_each_caller_its_own_hits(small_index):
    batcher = SearchBatcher(small_index, small_index.encoder.encode_texts)
    jobs = [(w, k) for w in WORDS for k in (2, 3)]
    results = run_together(lambda job: batcher.search(job[0], k=job[1]), jobs)
    for (text, k), hits in zip(jobs, results, strict=True):
        alone = small_index.search_videos(text, k=k)
        assert [(h.window_id, round(h.score, 5)) for h in hits] == [
            (h.window_id, round(h.score, 5)) for h in alone
        ]
    stats = batcher.stats()
    # Each text is encoded once, whether its two jobs shared a pass or not.
    assert stats["passes"] < len(jobs) and stats["encoded"] == len(WORDS)


def test_a_query_that_fails_in_a_batch_fails_alone(small_index):
    class Picky:
        """An index whose batched search fails and whose single search fails for one text."""

        def search_videos_many(self, *args, **kwargs):
            raise RuntimeError("batched search failed")

        def search_videos(self, text, k, rerank, query):
            if text == "bad":
                raise ValueError("bad query")
            return small_index.search_videos(text, k, rerank, query=query)

    batcher = SearchBatcher(Picky(), small_index.encoder.encode_texts)
    results = run_together(lambda t: batcher.search(t, k=2), ["red", "bad", "cyan"])
    assert isinstance(results[1], ValueError)
    for text, got in zip(["red", "bad", "cyan"], results, strict=True):
        if text != "bad":
            assert [h.window_id for h in got] == [
                h.window_id for h in small_index.search_videos(text, k=2)
            ]


def test_bf16_query_encoding_is_close_to_fp32_and_scores_alike():
    torch.manual_seed(0)
    cfg = tiny_config()
    model, tokenizer = build_model(cfg.model, cfg.data)
    full = ModelEncoder(model, tokenizer, cfg.data)
    texts = ["red", "a red circle moves left then grows", "blue square"]
    assert query_text_encoder(full, "fp32") == full.encode_texts
    reduced = query_text_encoder(full, "bf16")(texts)
    reference = full.encode_texts(texts)
    assert reduced.sentence.dtype == torch.float32 and torch.equal(reduced.mask, reference.mask)
    cosine = (reduced.sentence * reference.sentence).sum(-1)
    assert float(cosine.min()) > 0.999 and float(cosine.min()) < 1 - 1e-7  # bf16 for real
    # The head scores candidates almost alike (the query is the only approximated side).
    frames = torch.nn.functional.normalize(torch.randn(6, 3, 16), dim=-1)
    pooled = torch.nn.functional.normalize(frames.mean(1), dim=-1)
    video = VideoFeatures(pooled, frames, torch.ones(6, 3, dtype=torch.bool))
    got, want = full.rerank_scores(reduced, video), full.rerank_scores(reference, video)
    assert float((got - want).abs().max()) < 0.02 * float(want.abs().max())
    # The fp32 model was not touched by the bf16 copy.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="--query-precision"):
        query_text_encoder(full, "fp8")
    fake = FakeEncoder()
    assert query_text_encoder(fake, "bf16") == fake.encode_texts
