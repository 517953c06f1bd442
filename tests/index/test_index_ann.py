"""ANN: exact search equals brute force; IVF recall on clustered data; ids survive edits."""

from __future__ import annotations

import numpy as np

from vtrkit.index.storage.ann import AnnConfig, AnnIndex, default_nlist, needs_rebuild


def clustered(n, d, centres=32, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_top(x, ids, q, k):
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


def test_flat_is_exact_and_uses_the_given_ids():
    x = clustered(500, 16)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    ann = AnnIndex.build(x, ids)
    assert ann.kind == "flat"
    q = clustered(20, 16, seed=1)
    scores, found = ann.search(q, 10)
    ref_scores, ref_ids = brute_top(x, ids, q, 10)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(found, ref_ids)


def test_remove_add_ids_and_save_load(tmp_path):
    x = clustered(300, 8)
    ids = np.arange(300, dtype=np.int64)
    ann = AnnIndex.build(x[:200], ids[:200])
    assert ann.remove(np.arange(0, 200, 2)) == 100
    ann.add(x[200:], ids[200:])
    keep = np.concatenate([ids[1:200:2], ids[200:]])
    np.testing.assert_array_equal(ann.ids(), keep)
    ann.save(tmp_path / "a.faiss")
    loaded = AnnIndex.load(tmp_path / "a.faiss")
    q = x[:5]
    _, ref_ids = brute_top(x[keep], keep, q, 5)
    _, found = loaded.search(q, 5)
    np.testing.assert_array_equal(found, ref_ids)
    # Asking for more hits than vectors gives what there is.
    assert loaded.search(q, 10_000)[1].shape == (5, len(keep))


def test_ivf_recall_and_id_bookkeeping():
    n, d = 6000, 32
    x = clustered(n, d, centres=64)
    ids = np.arange(n, dtype=np.int64) + 10
    config = AnnConfig(exact_limit=1000)
    ann = AnnIndex.build(x, ids, config)
    assert ann.kind == "ivf"
    assert ann.nprobe == 16 and default_nlist(n) == 256
    np.testing.assert_array_equal(ann.ids(), ids)
    q = clustered(100, d, centres=64, seed=3)
    _, found = ann.search(q, 10)
    _, ref = brute_top(x, ids, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ref, strict=True)])
    assert recall >= 0.9, recall
    ann.nprobe = ann.index.nlist  # visiting every list is exact
    _, found = ann.search(q, 10)
    np.testing.assert_array_equal(found, ref)
    ann.remove(ids[:100])
    assert len(ann) == n - 100 and ann.ids()[0] == ids[100]


def test_rebuild_policy():
    x = clustered(200, 8)
    flat = AnnIndex.build(x, np.arange(200))
    assert not needs_rebuild(flat, 5000, AnnConfig(exact_limit=10_000))
    assert needs_rebuild(flat, 20_000, AnnConfig(exact_limit=10_000))
    ivf = AnnIndex.build(clustered(4000, 8), np.arange(4000), AnnConfig(exact_limit=100))
    assert not needs_rebuild(ivf, 5000, AnnConfig(exact_limit=100))
    assert needs_rebuild(ivf, 50, AnnConfig(exact_limit=100))  # shrank below the exact limit
    assert needs_rebuild(ivf, 4000 * 32, AnnConfig(exact_limit=100))  # outgrew its lists


def test_small_batches_give_the_batched_answers_and_restore_threads():
    import faiss

    x = clustered(3000, 16)
    ann = AnnIndex.build(x, np.arange(3000), AnnConfig(exact_limit=1000))
    q = clustered(40, 16, seed=5)
    before = faiss.omp_get_max_threads()
    batched = ann.search(q, 10)  # 40 queries: the multi-threaded path
    for i in (0, 17, 39):
        single = ann.search(q[i], 10)  # one query: the single-threaded path
        np.testing.assert_array_equal(single[1][0], batched[1][i])
        np.testing.assert_allclose(single[0][0], batched[0][i], rtol=0, atol=1e-6)
    assert faiss.omp_get_max_threads() == before
