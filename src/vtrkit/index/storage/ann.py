"""Nearest-neighbour search over pooled window features (inner product = cosine on unit vectors).

Small collections use an exact flat index; from ``exact_limit`` vectors on, an inverted-file index
(IVF) whose coarse centroids are trained on a sample, so building stays fast on a few cores. Vector
ids are feature-store rows, so the catalog maps hits back to windows, and removing a video removes
its rows here without renumbering anything.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

# Above this many queries faiss switches from its SIMD loop to BLAS; the default (20) is right for
# single queries but the batched path is ~15x faster for hundreds of queries, so make sure the
# threshold stays low even if another library raised it.
faiss.cvar.distance_compute_blas_threshold = 20

SMALL_BATCH = 20
"""Query batches below this size are searched on one OpenMP thread. A single query touches a few
thousand vectors (IVF) or a small collection (flat), so fork/join costs more than it saves, and on
a busy machine spinning workers make it far worse: IVF over 200k vectors measured 12 ms per query
with 2 threads against 1 ms with one (2 shared cores, load 6)."""


@contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    # omp_set_num_threads sets the calling thread's own setting, so concurrent callers in other
    # threads are unaffected; it is restored on exit.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class AnnConfig:
    """How the approximate index is chosen and searched."""

    exact_limit: int = 50_000
    """Collections with fewer vectors use exact flat search (about 10-25 ms per query at this size
    on one core; exact search is linear in the collection size)."""
    nlist: int | None = None
    """IVF lists; None picks about 4·sqrt(N) rounded to a power of two (1M vectors → 4096)."""
    nprobe: int | None = None
    """Lists visited per query; None picks nlist/64 (at least 16)."""
    train_per_list: int = 32
    """Training sample size per list (k-means on a sample, not on the whole collection)."""
    seed: int = 0


def default_nlist(n: int) -> int:
    """About 4·sqrt(n), as a power of two, at least 64."""
    return max(64, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, nlist // 64))


class AnnIndex:
    """A faiss index with int64 ids (store rows) and inner-product scores."""

    def __init__(self, index: faiss.Index, dim: int) -> None:
        self.index = index
        self.dim = dim

    @property
    def kind(self) -> str:
        """``flat`` (exact) or ``ivf`` (approximate)."""
        return "ivf" if self._ivf() is not None else "flat"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _ivf(self) -> faiss.IndexIVF | None:
        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return None

    @property
    def nprobe(self) -> int | None:
        ivf = self._ivf()
        return None if ivf is None else int(ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = self._ivf()
        if ivf is not None:
            ivf.nprobe = int(value)

    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: np.ndarray, config: AnnConfig = AnnConfig()
    ) -> AnnIndex:
        """Index ``vectors`` [N, D] (unit-norm, any float dtype) under ``ids`` [N] int64."""
        return cls.build_from(lambda pos: vectors[pos], ids, vectors.shape[1], config)

    @classmethod
    def build_from(
        cls,
        read: Callable[[np.ndarray], np.ndarray],
        ids: np.ndarray,
        dim: int,
        config: AnnConfig = AnnConfig(),
        chunk: int = 65536,
    ) -> AnnIndex:
        """Index N vectors read on demand: ``read(positions [n]) -> [n, D]`` for positions into
        ``ids`` [N]. Reading in chunks keeps memory at the index plus one chunk, so a million
        float16 rows on disk never need a float32 copy of the whole collection."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = len(ids)
        if n < config.exact_limit:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            # k-means wants about 39 points per centroid; fewer lists beats a failing training.
            nlist = max(1, min(config.nlist or default_nlist(n), n // 39))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = config.nprobe or default_nprobe(nlist)
            rng = np.random.default_rng(config.seed)
            sample_size = min(n, config.train_per_list * nlist)
            sample = np.sort(rng.choice(n, sample_size, replace=False))
            log.info("training IVF with %d lists on %d of %d vectors", nlist, sample_size, n)
            index.train(np.ascontiguousarray(read(sample), dtype=np.float32))
        ann = cls(index, dim)
        for start in range(0, n, chunk):
            pos = np.arange(start, min(n, start + chunk))
            ann.add(read(pos), ids[pos])
        return ann

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``vectors`` [n, D] under ``ids`` [n]."""
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32),
                np.ascontiguousarray(ids, dtype=np.int64),
            )

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` [n]; returns how many were present."""
        if not len(ids):
            return 0
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        return int(self.index.remove_ids(selector))

    def ids(self) -> np.ndarray:
        """All ids held, sorted int64 [N]."""
        ivf = self._ivf()
        if ivf is None:
            found = faiss.vector_to_array(self.index.id_map)
        else:
            lists = ivf.invlists
            parts = []
            for lst in range(ivf.nlist):
                size = lists.list_size(lst)
                if size:
                    parts.append(faiss.rev_swig_ptr(lists.get_ids(lst), size).copy())
            found = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return np.sort(found.astype(np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per query: (scores float32 [Q, k], ids int64 [Q, k]); missing hits are -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query width {queries.shape[1]} != index width {self.dim}")
        k = max(1, min(int(k), max(1, len(self))))
        if len(queries) < SMALL_BATCH:
            with _omp_threads(1):
                return self.index.search(queries, k)
        return self.index.search(queries, k)

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file + rename), so readers never see half an index."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> AnnIndex:
        index = faiss.read_index(str(path))
        return cls(index, int(index.d))


def needs_rebuild(ann: AnnIndex, n: int, config: AnnConfig) -> bool:
    """Whether a collection of ``n`` vectors has outgrown (or shrunk below) ``ann``'s kind."""
    ivf = ann._ivf()
    if (n >= config.exact_limit) != (ivf is not None):
        return True
    if ivf is None:
        return False
    if config.nlist is not None:
        return int(ivf.nlist) != config.nlist
    # An IVF trained for a much smaller collection gets long lists and slow queries: retrain once
    # the collection has grown about 16x.
    return default_nlist(n) >= 4 * int(ivf.nlist)
