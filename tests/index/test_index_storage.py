"""Catalog and feature store: transactions, committed rows, torn writes, reopening."""

from __future__ import annotations

import json
from contextlib import closing

import numpy as np
import pytest

from vtrkit.data.sampling import FrameSampling
from vtrkit.index.storage.catalog import Catalog, CatalogError, FileStat, NewWindow
from vtrkit.index.storage.feature_store import FeatureStore, StoreError

D, NF = 8, 3


def rows_of(rng, n):
    pooled = rng.standard_normal((n, D)).astype(np.float32)
    frames = rng.standard_normal((n, NF, D)).astype(np.float32)
    mask = rng.random((n, NF)) > 0.3
    return pooled, frames, mask


def test_store_round_trip_in_float16_and_growth(tmp_path):
    rng = np.random.default_rng(0)
    store = FeatureStore(tmp_path / "f", D, NF, 0, writable=True)
    written = []
    for n in (5, 1500, 7):  # crosses the 1024-row growth step
        p, f, m = rows_of(rng, n)
        rows = store.append(p, f, m)
        assert rows.tolist() == list(range(store.end - n, store.end))
        store.flush()
        store.mark_committed(store.end)
        written.append((p, f, m))
    p = np.concatenate([w[0] for w in written])
    f = np.concatenate([w[1] for w in written])
    m = np.concatenate([w[2] for w in written])
    reopened = FeatureStore(tmp_path / "f", D, NF, len(p), writable=False)
    idx = np.array([0, 3, 1000, 1511])
    np.testing.assert_array_equal(reopened.pooled(idx), p[idx].astype(np.float16))
    np.testing.assert_array_equal(reopened.frames(idx), f[idx].astype(np.float16))
    np.testing.assert_array_equal(reopened.mask(idx), m[idx])
    np.testing.assert_array_equal(reopened.pooled_range(0, 10**9), p.astype(np.float16))


def test_uncommitted_rows_are_invisible_and_overwritten(tmp_path):
    rng = np.random.default_rng(1)
    store = FeatureStore(tmp_path / "f", D, NF, 0, writable=True)
    committed = rows_of(rng, 4)
    store.append(*committed)
    store.flush()
    store.mark_committed(4)
    store.append(*rows_of(rng, 3))  # a video in flight when the process dies
    store.flush()
    # A new process opens with the catalog's committed count: the 3 rows do not exist for it.
    again = FeatureStore(tmp_path / "f", D, NF, 4, writable=True)
    assert again.rows == 4 and again.end == 4
    with pytest.raises(StoreError, match="out of range"):
        again.pooled(np.array([4]))
    replacement = rows_of(rng, 2)
    assert again.append(*replacement).tolist() == [4, 5]
    again.flush()
    again.mark_committed(6)
    np.testing.assert_array_equal(again.pooled(np.array([4, 5])), replacement[0].astype(np.float16))


def test_store_refuses_mismatched_layout_and_truncated_files(tmp_path):
    store = FeatureStore(tmp_path / "f", D, NF, 0, writable=True)
    store.append(*rows_of(np.random.default_rng(2), 2))
    store.flush()
    with pytest.raises(StoreError, match="two builds"):
        FeatureStore(tmp_path / "f", D + 1, NF, 0, writable=False)
    with pytest.raises(StoreError, match="truncated"):
        FeatureStore(tmp_path / "f", D, NF, 5000, writable=False)
    with pytest.raises(StoreError, match="shapes"):
        store.append(np.zeros((1, D + 1)), np.zeros((1, NF, D)), np.ones((1, NF), bool))


def stat(path, digest="h"):
    return FileStat(path, 10, 1, digest)


def test_catalog_commit_replace_fail_and_remove(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")
    a = cat.commit_video(stat("/a.mp4"), 8.0, [NewWindow(0, 4, 0, b"jpg"), NewWindow(4, 8, 1)], 2)
    b = cat.commit_video(stat("/b.mp4"), 3.0, [NewWindow(0, 3, 2)], 3)
    assert cat.committed_rows == 3
    assert [w.row for w in cat.windows(a)] == [0, 1]
    assert cat.thumbnail(cat.windows(a)[0].id) == b"jpg"
    assert cat.thumbnail(cat.windows(a)[1].id) is None
    # Re-encoding a changed file keeps its id and replaces its windows (old rows become dead).
    assert cat.commit_video(stat("/a.mp4", "h2"), 4.0, [NewWindow(0, 4, 3)], 4) == a
    assert [w.row for w in cat.windows(a)] == [3]
    assert cat.live_rows().tolist() == [2, 3]
    assert cat.counts() == {"videos": 2, "failed": 0, "windows": 2, "rows": 4, "dead_rows": 2}
    # A file that now fails keeps its id, loses its windows and records the reason.
    assert cat.record_failure(stat("/b.mp4", "h3"), "moov atom not found") == b
    failed = cat.videos(status="failed")
    assert [(v.path, v.error) for v in failed] == [("/b.mp4", "moov atom not found")]
    assert set(cat.windows_by_rows([2, 3])) == {3}
    cat.remove_videos([a])
    assert cat.live_rows().tolist() == [] and cat.video(a) is None
    cat.close()
    ro = Catalog(tmp_path / "c.sqlite", readonly=True)
    assert ro.counts()["failed"] == 1
    with pytest.raises(CatalogError, match="read-only"):
        ro.remove_videos([b])


def test_catalog_transaction_rolls_back_on_error(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")
    cat.commit_video(stat("/a.mp4"), 1.0, [NewWindow(0, 1, 0)], 1)
    # Row 0 is taken: the whole second video must be rolled back, not half-written.
    with pytest.raises(Exception, match="UNIQUE"):
        cat.commit_video(stat("/b.mp4"), 1.0, [NewWindow(0, 1, 1), NewWindow(0, 1, 0)], 2)
    assert cat.video_by_path("/b.mp4") is None
    assert cat.committed_rows == 1
    assert len(cat.windows()) == 1


def test_missing_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="index build"):
        Catalog(tmp_path / "none.sqlite", readonly=True)


def test_library_keeps_an_ivf_ann_in_sync_with_the_catalog(tmp_path):
    from vtrkit.index.storage.ann import AnnConfig
    from vtrkit.index.storage.library import IndexSettings, Library

    settings = IndexSettings("fp", D, FrameSampling(NF, 1.0, 16), 4.0, 2.0)
    lib = Library.create(tmp_path / "lib", settings)
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((20, D))

    def add_video(name, n):
        p = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, D))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        rows = lib.store.append(p, np.zeros((n, NF, D)), np.ones((n, NF), bool))
        lib.store.flush()
        windows = [NewWindow(i, i + 1, int(r)) for i, r in enumerate(rows)]
        vid = lib.catalog.commit_video(stat(name), float(n), windows, lib.store.end)
        lib.store.mark_committed(lib.store.end)
        return vid

    ids = [add_video(f"/v{i}.mp4", 100) for i in range(30)]
    config = AnnConfig(exact_limit=1000)
    ann = lib.ann(config)
    assert ann.kind == "ivf" and len(ann) == 3000
    lib.catalog.remove_videos(ids[:5])
    add_video("/new1.mp4", 50)
    add_video("/new2.mp4", 70)
    ann = lib.ann(config)
    live = lib.catalog.live_rows()
    assert ann.kind == "ivf" and len(live) == 2620
    np.testing.assert_array_equal(ann.ids(), live)
    ann.nprobe = ann.index.nlist
    q = lib.store.pooled(live[:7]).astype(np.float32)
    _, found = ann.search(q, 5)
    exact = np.argsort(-(q @ lib.store.pooled(live).astype(np.float32).T), axis=1, kind="stable")
    np.testing.assert_array_equal(np.sort(found, 1), np.sort(live[exact[:, :5]], 1))
    generation = lib.catalog.generation
    lib.close()
    # A reader finds the saved ANN current for this generation and loads it without syncing.
    reader = Library.open(tmp_path / "lib")
    assert reader._load_ann(generation) is not None
    np.testing.assert_array_equal(reader.ann(config).ids(), live)
    reader.close()


def test_settings_keep_the_flat_catalog_keys_of_existing_indexes(tmp_path):
    """The sampling is one value in code but three ``meta`` rows on disk, as it always was, so
    indexes built before ``FrameSampling`` open unchanged (and ``index status --json`` too)."""
    from vtrkit.index.storage.library import IndexSettings, Library

    source = {"kind": "backbone", "path": "/m", "num_frames": NF, "fps": 1.0, "image_size": 16}
    settings = IndexSettings("fp", D, FrameSampling(NF, 1, 16), 4.0, 2.0, source)
    meta = {
        "fingerprint": "fp",
        "dim": str(D),
        "num_frames": str(NF),
        "image_size": "16",
        "fps": "1.0",
        "window_length": "4.0",
        "window_stride": "2.0",
        "source": json.dumps(source, sort_keys=True),
    }
    assert settings.to_meta() == meta and list(settings.to_meta()) == list(meta)
    assert settings.as_dict() == {
        **meta,
        "dim": D,
        "num_frames": NF,
        "image_size": 16,
        "fps": 1.0,
        "window_length": 4.0,
        "window_stride": 2.0,
        "source": source,
    }
    assert IndexSettings.from_meta(meta, tmp_path) == settings
    Library.create(tmp_path / "lib", settings).close()
    with closing(Library.open(tmp_path / "lib")) as lib:
        assert lib.settings == settings
        assert {k: lib.catalog.meta()[k] for k in meta} == meta
    with pytest.raises(CatalogError, match="num_frames must be an integer of at least 1"):
        IndexSettings.from_meta({**meta, "num_frames": "0"}, tmp_path)
    with pytest.raises(CatalogError, match="incomplete"):
        IndexSettings.from_meta({k: v for k, v in meta.items() if k != "fps"}, tmp_path)
