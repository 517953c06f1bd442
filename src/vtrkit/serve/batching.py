"""Query encoding for a server: concurrent queries encoded in one batch, repeated ones cached.

A text tower's forward pass costs almost the same for one query as for twenty (on CPU, the
weights are read once per pass), so when many requests arrive together :class:`QueryEncoder`
encodes them together. There is no timer: the first query is encoded at once, and the queries
that arrive while a pass runs form the next pass. Each caller then searches with its own row.

Leadership: the thread whose request arrives when no pass is running encodes (it "leads");
when its pass finishes, the oldest waiting request's thread leads the next one, so every thread
does at most one pass and gets its own answer as soon as its pass is done.

Repeated queries are answered from an LRU cache of encodings (keyed by the exact text).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from vtrkit.models.base import TextFeatures

log = logging.getLogger(__name__)


@dataclass
class _Request:
    text: str
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: TextFeatures | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """Counters since the encoder was made: passes run, texts they encoded, cache hits."""

    passes: int = 0
    encoded: int = 0
    cache_hits: int = 0
    largest_pass: int = 0


def _row(features: TextFeatures, i: int) -> TextFeatures:
    """Row ``i`` as its own small tensors (a view would keep the whole batch alive in the cache)."""
    return TextFeatures(
        features.sentence[i : i + 1].clone(),
        features.words[i : i + 1].clone(),
        features.mask[i : i + 1].clone(),
    )


class QueryEncoder:
    """Thread-safe query encoding with micro-batching and an LRU cache.

    Args:
        encode: the text encoder, T texts -> TextFeatures with T rows (e.g.
            ``index.encoder.encode_texts``).
        max_batch: most texts per pass (the rest wait for the next one).
        cache_size: encodings kept (0: no cache).
    """

    def __init__(
        self,
        encode: Callable[[list[str]], TextFeatures],
        max_batch: int = 64,
        cache_size: int = 4096,
    ) -> None:
        if max_batch < 1 or cache_size < 0:
            raise ValueError(
                f"max_batch must be positive and cache_size not negative, got {max_batch} and "
                f"{cache_size}"
            )
        self._encode = encode
        self.max_batch = max_batch
        self.cache_size = cache_size
        self.stats = BatchStats()
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._busy = False
        self._cache: OrderedDict[str, TextFeatures] = OrderedDict()

    def encode(self, text: str) -> TextFeatures:
        """The encoding of ``text``: one row, ready for ``search_videos(..., query=...)``."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                self.stats.cache_hits += 1
                return cached
            request = _Request(text)
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
        assert request.result is not None
        return request.result

    def _run_pass(self) -> None:
        with self._lock:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
        texts = list(dict.fromkeys(r.text for r in batch))
        features: TextFeatures | None = None
        error: BaseException | None = None
        try:
            features = self._encode(texts)
        except BaseException as exc:  # handed to every waiting caller, never lost
            error = exc
        with self._lock:
            rows = {}
            if features is not None:
                rows = {t: _row(features, i) for i, t in enumerate(texts)}
                self.stats.passes += 1
                self.stats.encoded += len(texts)
                self.stats.largest_pass = max(self.stats.largest_pass, len(texts))
                for text, row in rows.items():
                    self._remember(text, row)
            for r in batch:
                r.result, r.error, r.done = rows.get(r.text), error, True
            if self._pending:
                self._pending[0].wake.set()  # its thread leads the next pass
            else:
                self._busy = False
        for r in batch:
            r.wake.set()

    def _remember(self, text: str, row: TextFeatures) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = row
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
