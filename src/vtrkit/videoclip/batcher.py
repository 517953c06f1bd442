"""Retrieval-augmented batches: groups of mutually similar videos (SPEC §3).

Before every epoch each training video gets one global vector (computed by the trainer from the
current model). The vectors go into a FAISS IVF index (L2). ``V // k`` seed videos are drawn at
random; for each seed the ``2k`` nearest videos (the seed itself included) are fetched and ``k`` of
them sampled without replacement; each such group is one batch of ``k`` videos. Batches may share
videos, and some videos may appear in no batch of an epoch; that is the published scheme.

Number of inverted lists: ``nlist = min(512, max(1, V // 39))``. FAISS's k-means wants about 39
training points per centroid, so small corpora get proportionally fewer lists (a 1,000-video corpus
gets 25, anything under 78 videos a single list, i.e. exact search). ``nprobe`` defaults to
``min(nlist, 16)``; when the probed lists hold fewer than ``k`` neighbours the seed is searched again
over every list, so every batch has exactly ``k`` videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

MAX_LISTS = 512
POINTS_PER_LIST = 39
DEFAULT_NPROBE = 16


@dataclass(frozen=True)
class ClusterBatch:
    """One batch: the seed video and the ``k`` sampled members (video indices)."""

    seed: int
    videos: np.ndarray


def ivf_nlist(n_videos: int) -> int:
    """Inverted lists for ``n_videos`` points: ``min(512, max(1, n // 39))``."""
    return min(MAX_LISTS, max(1, n_videos // POINTS_PER_LIST))


def build_ivf_index(
    vectors: np.ndarray, nlist: int | None = None, nprobe: int | None = None
) -> faiss.Index:
    """Train and fill an IVF-Flat (L2) index over ``vectors`` [V, D].

    One list is exact search, so that case is a flat L2 index (no k-means to train).
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"build_ivf_index: need a non-empty [V, D] array, got shape {x.shape}")
    nlist = ivf_nlist(len(x)) if nlist is None else nlist
    if not 1 <= nlist <= len(x):
        raise ValueError(f"build_ivf_index: nlist={nlist} must be in 1..{len(x)} (the videos)")
    if nlist == 1:
        flat = faiss.IndexFlatL2(x.shape[1])
        flat.add(x)
        return flat
    quantizer = faiss.IndexFlatL2(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_L2)
    index.train(x)
    index.add(x)
    index.nprobe = min(nlist, DEFAULT_NPROBE) if nprobe is None else min(nprobe, nlist)
    return index


def nearest_videos(index: faiss.Index, queries: np.ndarray, m: int) -> list[np.ndarray]:
    """For each query row [Q, D], the ids of (up to) its ``m`` nearest indexed videos, nearest first.

    Queries whose probed lists hold fewer than ``m`` videos are searched again over all lists.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = min(m, index.ntotal)
    _, ids = index.search(q, m)
    out = [row[row >= 0] for row in ids]
    short = [i for i, row in enumerate(out) if len(row) < m]
    if short and isinstance(index, faiss.IndexIVF):
        saved = index.nprobe
        index.nprobe = index.nlist
        _, again = index.search(q[short], m)
        index.nprobe = saved
        for i, row in zip(short, again, strict=True):
            out[i] = row[row >= 0]
    return out


def cluster_batches(
    vectors: np.ndarray,
    k: int,
    rng: np.random.Generator,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> list[ClusterBatch]:
    """Retrieval-augmented batches of ``k`` videos from global video vectors [V, D].

    Returns ``V // k`` batches (one when ``V <= k``, holding every video in random order).
    """
    n = len(vectors)
    if k < 1:
        raise ValueError(f"cluster_batches: batch size k must be >= 1, got {k}")
    if n <= k:
        order = rng.permutation(n)
        return [ClusterBatch(seed=int(order[0]), videos=order)]
    index = build_ivf_index(vectors, nlist=nlist, nprobe=nprobe)
    seeds = rng.choice(n, size=n // k, replace=False)
    neighbours = nearest_videos(index, vectors[seeds], 2 * k)
    return [
        ClusterBatch(seed=int(seed), videos=rng.choice(near, size=k, replace=False))
        for seed, near in zip(seeds, neighbours, strict=True)
    ]


def random_batches(n_videos: int, k: int, rng: np.random.Generator) -> list[ClusterBatch]:
    """The switch-off baseline: a random permutation cut into ``max(1, V // k)`` batches of ``k``."""
    order = rng.permutation(n_videos)
    count = max(1, n_videos // k)
    return [
        ClusterBatch(seed=int(order[i * k]), videos=order[i * k : (i + 1) * k])
        for i in range(count)
    ]
