"""Serving many users at once: concurrent searches run together in passes, queries are cached.

On a CPU the model work of one search (the text tower, then the re-ranking head on ~100
candidates) costs little more for twenty queries at once than for one, and two threads running
multi-threaded kernels side by side only slow each other down. So concurrent searches are
gathered into *passes* (:class:`MicroBatcher`): a pass encodes all its new query texts in one
call and scores all its queries in one :meth:`~vtrkit.index.VideoIndex.search_videos_many`
call, and only one pass runs at a time. There is no timer: the first request runs at once, and
those that arrive while a pass runs form the next one.

Leadership: the thread whose request arrives when no pass is running runs it (it "leads");
when the pass finishes, the oldest waiting request's thread leads the next one, so every thread
runs at most one pass and gets its answer as soon as its pass is done.

Repeated queries are encoded once: :class:`QueryCache` keeps the last encodings (LRU, keyed by
the exact text). :func:`query_text_encoder` can encode queries with a bfloat16 copy of the text
tower. :class:`SearchBatcher` puts the three together for the server.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch.nn import functional as F

from vtrkit.models.base import TextFeatures

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")
QUERY_PRECISIONS = ("fp32", "bf16")


@dataclass
class _Request(Generic[J]):
    job: J
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class MicroBatcher(Generic[J, R]):
    """Runs jobs submitted from many threads in passes, one pass at a time.

    Args:
        process: a pass: jobs -> one result per job, in order; an exception instance in place
            of a result fails that job only, an exception raised fails every job of the pass.
        max_batch: most jobs per pass (the rest wait for the next one); 1 turns batching off.
    """

    def __init__(self, process: Callable[[list[J]], Sequence[Any]], max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self._process = process
        self.max_batch = max_batch
        self.passes = 0
        self.largest_pass = 0
        self._lock = threading.Lock()
        self._pending: list[_Request[J]] = []
        self._busy = False

    def submit(self, job: J) -> R:
        """Run ``job`` in the next pass and return its result (or raise its exception)."""
        request = _Request(job)
        with self._lock:
            self._pending.append(request)
            lead = not self._busy
            self._busy = True
        if lead:
            self._run_pass()
        while True:
            request.wake.wait()
            with self._lock:
                if request.done:
                    break
                request.wake.clear()  # woken to lead the next pass
            self._run_pass()
        if request.error is not None:
            raise request.error
        return request.result

    def _run_pass(self) -> None:
        with self._lock:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self.passes += 1
            self.largest_pass = max(self.largest_pass, len(batch))
        try:
            results = list(self._process([r.job for r in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"a pass of {len(batch)} jobs gave {len(results)} results")
        except BaseException as exc:  # handed to every caller of this pass, never lost
            results = [exc] * len(batch)
        with self._lock:
            for r, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    r.error = result
                else:
                    r.result = result
                r.done = True
            if self._pending:
                self._pending[0].wake.set()  # its thread leads the next pass
            else:
                self._busy = False
        for r in batch:
            r.wake.set()


def _row(features: TextFeatures, i: int) -> TextFeatures:
    """Row ``i`` as its own small tensors (a view would keep the whole batch alive in the cache)."""
    return TextFeatures(
        features.sentence[i : i + 1].clone(),
        features.words[i : i + 1].clone(),
        features.mask[i : i + 1].clone(),
    )


class QueryCache:
    """Query encodings by text, the last ``size`` kept (LRU); thread-safe.

    ``encode`` is the text encoder (T texts -> TextFeatures with T rows); :meth:`rows` encodes
    the texts it does not hold in one call, each distinct text once."""

    def __init__(self, encode: Callable[[list[str]], TextFeatures], size: int = 4096) -> None:
        if size < 0:
            raise ValueError(f"the cache size must not be negative, got {size}")
        self._encode = encode
        self.size = size
        self.calls = 0
        self.encoded = 0
        self.hits = 0
        self._lock = threading.Lock()
        self._rows: OrderedDict[str, TextFeatures] = OrderedDict()

    def rows(self, texts: Sequence[str]) -> list[TextFeatures]:
        """One encoded row per text, in order."""
        found: dict[str, TextFeatures] = {}
        with self._lock:
            for text in texts:
                row = self._rows.get(text)
                if row is not None and text not in found:
                    self._rows.move_to_end(text)
                    self.hits += 1
                    found[text] = row
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            features = self._encode(missing)
            fresh = {t: _row(features, i) for i, t in enumerate(missing)}
            found.update(fresh)
            with self._lock:
                self.calls += 1
                self.encoded += len(missing)
                for text, row in fresh.items():
                    self._remember(text, row)
        return [found[t] for t in texts]

    def _remember(self, text: str, row: TextFeatures) -> None:
        if self.size == 0:
            return
        self._rows[text] = row
        self._rows.move_to_end(text)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)


@dataclass(frozen=True)
class SearchJob:
    """One search request: a checked query text, k videos, re-ranking (None: the default)."""

    text: str
    k: int
    rerank: int | None


class SearchBatcher:
    """What the server searches with: :class:`SearchJob` from many threads, run in passes.

    A pass encodes the new texts of its jobs in one call (through a :class:`QueryCache`) and
    runs ``index.search_videos_many`` once per (k, rerank) among them; when that fails (one
    query's fault) each job of the group is run alone, so only the faulty one fails.
    """

    def __init__(
        self,
        index: Any,
        encode: Callable[[list[str]], TextFeatures],
        max_batch: int = 64,
        cache_size: int = 4096,
    ) -> None:
        self.index = index
        self.cache = QueryCache(encode, cache_size)
        self.batcher: MicroBatcher[SearchJob, list] = MicroBatcher(self._process, max_batch)

    def search(self, text: str, k: int = 10, rerank: int | None = None) -> list:
        """The ``index.search_videos`` hits of one query, computed in a pass."""
        return self.batcher.submit(SearchJob(text, k, rerank))

    def stats(self) -> dict[str, int]:
        return {
            "passes": self.batcher.passes,
            "largest_pass": self.batcher.largest_pass,
            "encode_calls": self.cache.calls,
            "encoded": self.cache.encoded,
            "cache_hits": self.cache.hits,
            "max_batch": self.batcher.max_batch,
        }

    def _process(self, jobs: list[SearchJob]) -> list[Any]:
        rows = self.cache.rows([j.text for j in jobs])
        results: list[Any] = [None] * len(jobs)
        groups: dict[tuple[int, int | None], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.k, job.rerank), []).append(i)
        for (k, rerank), members in groups.items():
            texts = [jobs[i].text for i in members]
            queries = TextFeatures.cat([rows[i] for i in members])
            try:
                found = self.index.search_videos_many(texts, k, rerank, queries=queries)
            except Exception:  # find whose fault it is: each job alone
                log.info("a batched search failed; running its %d queries one by one", len(texts))
                found = [self._alone(jobs[i], rows[i]) for i in members]
            for i, hits in zip(members, found, strict=True):
                results[i] = hits
        return results

    def _alone(self, job: SearchJob, row: TextFeatures) -> Any:
        try:
            return self.index.search_videos(job.text, job.k, job.rerank, query=row)
        except Exception as exc:  # this job's own failure, returned to its caller
            return exc


def query_text_encoder(
    encoder: Any, precision: str = "fp32"
) -> Callable[[list[str]], TextFeatures]:
    """The function a server encodes query texts with: ``encoder.encode_texts`` itself for
    ``fp32``; for ``bf16`` a bfloat16 copy of the model's text side (faster on CPUs with bf16
    instructions; sentence features within about 1e-4 of fp32 in cosine, measured on a
    ViT-B/32-sized tower). The index's features and the re-ranking head stay in fp32, so only
    the query side is approximated. Custom encoders (no model of their own) use fp32."""
    if precision not in QUERY_PRECISIONS:
        raise ValueError(
            f"query precision {precision!r} is not one of {', '.join(QUERY_PRECISIONS)} "
            "(--query-precision)"
        )
    needed = ("model", "tokenizer", "data_cfg", "device")
    if precision == "fp32" or not all(hasattr(encoder, name) for name in needed):
        return encoder.encode_texts
    reduced = copy.deepcopy(encoder.model).to(torch.bfloat16).eval()
    tokenizer, slots, device = encoder.tokenizer, int(encoder.data_cfg.max_words), encoder.device

    @torch.no_grad()
    def encode(texts: list[str]) -> TextFeatures:
        ids, mask = tokenizer(list(texts), slots)
        out = reduced.encode_text(ids.to(device), mask.to(device))
        return TextFeatures(
            F.normalize(out.sentence.float(), dim=-1).cpu(),
            F.normalize(out.words.float(), dim=-1).cpu(),
            out.mask.cpu(),
        )

    return encode
