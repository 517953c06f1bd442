"""Retrieval-augmented cluster batches (SPEC §3)."""

from __future__ import annotations

import numpy as np

from vtrkit.videoclip.batcher import (
    build_ivf_index,
    cluster_batches,
    ivf_nlist,
    nearest_videos,
    random_batches,
)


def _exact_neighbours(x: np.ndarray, query: int, m: int) -> set[int]:
    d = ((x - x[query]) ** 2).sum(1)
    return set(np.argsort(d, kind="stable")[:m].tolist())


def test_nlist_scales_with_the_corpus():
    assert ivf_nlist(10) == 1
    assert ivf_nlist(77) == 1
    assert ivf_nlist(78) == 2
    assert ivf_nlist(1000) == 25
    assert ivf_nlist(10**6) == 512


def test_batches_have_k_distinct_videos_from_the_2k_nearest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    k = 8
    # nprobe = nlist makes the IVF search exact, so membership can be checked against brute force.
    batches = cluster_batches(x, k, np.random.default_rng(1), nprobe=10**6)
    assert len(batches) == 400 // k
    assert len({b.seed for b in batches}) == len(batches)
    for b in batches:
        assert len(b.videos) == k and len(set(b.videos.tolist())) == k
        assert set(b.videos.tolist()) <= _exact_neighbours(x, b.seed, 2 * k)


def test_default_search_keeps_batches_inside_tight_clusters():
    rng = np.random.default_rng(0)
    k, groups = 4, 60
    centres = rng.normal(scale=100.0, size=(groups, 16))
    # Each cluster holds exactly 2k videos, so the 2k nearest of any seed are its own cluster.
    x = np.repeat(centres, 2 * k, axis=0) + rng.normal(scale=0.1, size=(groups * 2 * k, 16))
    owner = np.repeat(np.arange(groups), 2 * k)
    batches = cluster_batches(x.astype(np.float32), k, np.random.default_rng(2))
    assert ivf_nlist(len(x)) > 1  # the approximate path is exercised
    for b in batches:
        assert len(b.videos) == k
        assert (owner[b.videos] == owner[b.seed]).all()
    # Random batches almost never stay inside one cluster.
    rand = random_batches(len(x), k, np.random.default_rng(2))
    same = np.mean([(owner[b.videos] == owner[b.videos[0]]).all() for b in rand])
    assert same < 0.2


def test_short_probe_lists_fall_back_to_a_full_search():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    index = build_ivf_index(x, nlist=40, nprobe=1)
    rows = nearest_videos(index, x[:20], 64)  # lists hold ~10 videos, far fewer than 64
    for i, row in enumerate(rows):
        assert len(row) == 64
        assert set(row.tolist()) == _exact_neighbours(x, i, 64)


def test_small_corpus_gives_one_batch_of_everything():
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    (batch,) = cluster_batches(x, 8, np.random.default_rng(0))
    assert sorted(batch.videos.tolist()) == [0, 1, 2, 3, 4]


def test_random_batches_partition_a_permutation():
    batches = random_batches(50, 8, np.random.default_rng(0))
    members = np.concatenate([b.videos for b in batches])
    assert len(batches) == 6 and all(len(b.videos) == 8 for b in batches)
    assert len(set(members.tolist())) == 48
