"""Building, searching and updating an index with the deterministic fake encoder."""

from __future__ import annotations

import io
import os
import shutil

import av
import numpy as np
import pytest
import torch
from index_helpers import COLOURS, FakeEncoder, colour_vector, make_collection, write_video

from vtrkit.index import IndexMismatchError, VideoIndex, build_index
from vtrkit.index.storage.library import Library


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    paths = make_collection(root)
    # 12 s: red, then blue, then green, 4 s each; 4 s windows every 2 s.
    rgb = [COLOURS["red"]] * 4 + [COLOURS["blue"]] * 4 + [COLOURS["green"]] * 4
    paths["long"] = write_video(root / "long" / "long.mp4", rgb)
    return root, paths


@pytest.fixture(scope="module")
def built(collection, tmp_path_factory):
    root, paths = collection
    out = tmp_path_factory.mktemp("lib") / "lib.vtr"
    encoder = FakeEncoder()
    index = VideoIndex.build(root, out, encoder)
    yield index, paths, encoder
    index.close()


def test_broken_files_are_recorded_with_a_reason_and_the_rest_indexed(built):
    index, paths, encoder = built
    report = index.last_report
    failed = dict(report.failed)
    assert set(failed) == {str(paths["truncated"].resolve()), str(paths["text"].resolve())}
    assert all(reason for reason in failed.values())
    assert "invalid data" in failed[str(paths["text"].resolve())].lower()
    assert len(report.added) == len(COLOURS) + 1
    counts = index.catalog.counts()
    # Colour videos are 4 s = one window; the 12-s video has windows 0-4, 2-6, 4-8, 6-10, 8-12.
    assert counts == {
        "videos": len(COLOURS) + 1,
        "failed": 2,
        "windows": len(COLOURS) + 5,
        "rows": len(COLOURS) + 5,
        "dead_rows": 0,
    }
    # Each window was encoded exactly once.
    assert encoder.windows_encoded == len(COLOURS) + 5


@pytest.mark.parametrize("colour", sorted(COLOURS))
def test_searching_a_caption_finds_its_video(built, colour):
    index, paths, _ = built
    top = index.search(colour, k=3)
    hits = {r.path for r in top if r.score > 0.999}
    assert paths[colour].resolve() in hits
    assert top[0].score == pytest.approx(1.0, abs=2e-3)
    assert [r.rank for r in top] == [1, 2, 3]


def test_long_video_results_carry_timestamps(built):
    index, paths, _ = built
    long_hits = [r for r in index.search("blue", k=20) if r.path == paths["long"].resolve()]
    # The all-blue window is 4-8 s; the windows half in blue come next.
    assert (long_hits[0].start, long_hits[0].end) == (4.0, 8.0)
    assert {(r.start, r.end) for r in long_hits[1:3]} == {(2.0, 6.0), (6.0, 10.0)}
    one = index.search("blue", k=20, one_per_video=True)
    assert len({r.video_id for r in one}) == len(one) == len(COLOURS) + 1


def test_scores_equal_a_naive_scan_of_the_features(built):
    index, _, encoder = built
    store = index.library.store
    live = index.catalog.live_rows()
    pooled = store.pooled(live).astype(np.float32)
    q = encoder.encode_texts(["orange"]).sentence[0].numpy()
    naive = pooled @ q
    results = index.search("orange", k=len(live))
    row_of = {w.id: w.row for w in index.catalog.windows()}
    # Every window once, each with its own naive score, in descending order.
    assert sorted(row_of[r.window_id] for r in results) == live.tolist()
    naive_of = dict(zip(live.tolist(), naive.tolist(), strict=True))
    np.testing.assert_allclose(
        [r.score for r in results], [naive_of[row_of[r.window_id]] for r in results], atol=1e-5
    )
    np.testing.assert_allclose([r.score for r in results], np.sort(naive)[::-1], rtol=0, atol=1e-5)


def test_rerank_orders_candidates_by_the_head(built):
    index, _, encoder = built
    ann_order = index.search("magenta red", k=6)
    reranked = index.search("magenta red", k=6, rerank=6)
    # The head's score of each candidate, computed directly from the stored frames.
    store = index.library.store
    rows = {w.id: w.row for w in index.catalog.windows()}
    text = encoder.encode_texts(["magenta red"])
    expect = {}
    for r in ann_order:
        row = np.array([rows[r.window_id]])
        frames = torch.from_numpy(store.frames(row).astype(np.float32))
        mask = torch.from_numpy(store.mask(row))
        expect[r.window_id] = float(
            torch.einsum("d,fd->f", text.sentence[0], frames[0])[mask[0]].max()
        )
    assert {r.window_id for r in reranked} == {r.window_id for r in ann_order}
    assert [r.score for r in reranked] == pytest.approx(
        sorted(expect.values(), reverse=True), abs=1e-5
    )
    assert [expect[r.window_id] for r in reranked] == pytest.approx([r.score for r in reranked])


def test_search_like_and_video_to_text(built, collection, tmp_path):
    index, paths, _ = built
    # A catalogued video: its own window is left out; the red part of the long video is next.
    like = index.search_like(paths["red"], k=3)
    assert paths["red"].resolve() not in {r.path for r in like}
    assert (like[0].path, like[0].start, like[0].end) == (paths["long"].resolve(), 0.0, 4.0)
    assert like[0].score == pytest.approx(1.0, abs=2e-3)
    assert index.search_like(paths["red"], k=1, include_self=True)[0].score > 0.999
    # A file outside the index is decoded and encoded: a copy of blue finds blue first.
    outside = tmp_path / "copy_of_blue.mp4"
    shutil.copy(paths["blue"], outside)
    like = index.search_like(outside, k=3)
    assert {(r.path, r.start) for r in like[:2]} == {
        (paths["blue"].resolve(), 0.0),
        (paths["long"].resolve(), 4.0),
    }
    assert like[1].score == pytest.approx(1.0, abs=2e-3) and like[2].score < 0.9
    ranked = index.search_video_to_text(paths["long"], ["cyan", "green", "white"])
    assert ranked[0].caption == "green"
    # The head scores the best frame: both windows showing green frames (6-10, 8-12) tie at 1.
    assert (ranked[0].start, ranked[0].end) in {(6.0, 10.0), (8.0, 12.0)}
    assert ranked[0].score == pytest.approx(1.0, abs=2e-3) and ranked[1].score < 0.9
    assert [m.rank for m in ranked] == [1, 2, 3]


def test_thumbnails_show_the_window(built):
    index, paths, _ = built
    video = index.catalog.video_by_path(str(paths["yellow"].resolve()))
    (window,) = index.catalog.windows(video.id)
    jpeg = index.catalog.thumbnail(window.id)
    assert jpeg[:2] == b"\xff\xd8"
    with av.open(io.BytesIO(jpeg)) as c:
        image = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (32, 32, 3)
    assert np.abs(image.reshape(-1, 3).mean(0) - np.array(COLOURS["yellow"])).max() < 8


def test_query_validation(built):
    index, _, _ = built
    with pytest.raises(ValueError, match="empty"):
        index.search("   ")
    with pytest.raises(ValueError, match="characters"):
        index.search("x" * 5000)
    with pytest.raises(ValueError, match="k must"):
        index.search("red", k=0)


def test_model_mismatch_is_refused_naming_both_fingerprints(built):
    index, _, encoder = built
    other = FakeEncoder(salt="retrained")
    with pytest.raises(IndexMismatchError) as err:
        VideoIndex.open(index.library.folder, other)
    message = str(err.value)
    assert encoder.fingerprint() in message and other.fingerprint() in message
    # Building into it with another model is refused too, before anything is written.
    with pytest.raises(IndexMismatchError, match=other.fingerprint()):
        build_index(index.library.folder.parent, index.library.folder, other)
    # Without an encoder, a custom-encoder index says what to pass.
    with pytest.raises(ValueError, match="encoder="):
        VideoIndex.open(index.library.folder)


def test_incremental_add_change_remove(tmp_path):
    videos = tmp_path / "videos"
    for name in ("red", "green", "blue"):
        write_video(videos / f"{name}.mp4", [COLOURS[name]] * 3)
    out = tmp_path / "lib"
    encoder = FakeEncoder()
    report = build_index(videos, out, encoder)
    assert len(report.added) == 3 and encoder.windows_encoded == 3

    # Nothing changed: nothing is encoded; a touched file (same content) is not re-encoded.
    os.utime(videos / "red.mp4", ns=(1, 1))
    report = build_index(videos, out, encoder)
    assert report.unchanged == 3 and not report.added and encoder.windows_encoded == 3

    # add: a new file in another folder is encoded, the rest left alone.
    extra = write_video(tmp_path / "elsewhere" / "yellow.mp4", [COLOURS["yellow"]] * 3)
    with VideoIndex.open(out, encoder, writable=True) as index:
        report = index.add([extra])
        assert report.added == [str(extra.resolve())] and encoder.windows_encoded == 4
        assert index.search("yellow", k=1)[0].path == extra.resolve()

    # Change green into cyan: re-encoded under the same video id; its old row becomes dead.
    with _open(out) as lib:
        green_id = lib.catalog.video_by_path(str((videos / "green.mp4").resolve())).id
    write_video(videos / "green.mp4", [COLOURS["cyan"]] * 5)
    # Rebuilding from the folder also drops the added file that is not in it.
    report = build_index(videos, out, encoder)
    assert report.updated == [str((videos / "green.mp4").resolve())]
    assert report.removed == [str(extra.resolve())]
    with VideoIndex.open(out, encoder) as index:
        hit = index.search("cyan", k=1)[0]
        assert hit.video_id == green_id and hit.score == pytest.approx(1.0, abs=2e-3)
        # 5 s now, shorter than two 4-s windows: one window over the whole clip.
        spans = [(w.start, w.end) for w in index.catalog.windows(green_id)]
        assert spans == [(0.0, 5.0)]
        assert all(r.path != extra.resolve() for r in index.search("yellow", k=10))
        counts = index.catalog.counts()
        assert counts["videos"] == 3 and counts["dead_rows"] == 2
        assert len(index.library.ann()) == 3  # one window per video

    # Removing a file from the folder drops it at the next build.
    (videos / "blue.mp4").unlink()
    report = build_index(videos, out, encoder)
    assert report.removed == [str((videos / "blue.mp4").resolve())]
    with VideoIndex.open(out, encoder) as index:
        assert {r.path.name for r in index.search("blue", k=10)} == {"red.mp4", "green.mp4"}


class _open:
    def __init__(self, folder):
        self.lib = Library.open(folder)

    def __enter__(self):
        return self.lib

    def __exit__(self, *exc):
        self.lib.close()


def test_colour_vector_matches_the_fake_frame_features():
    # The known answers above rely on this identity of the fake encoder.
    enc = FakeEncoder()
    from vtrkit.data.transforms import to_model_input

    red = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    red[..., 0] = 255
    frames = to_model_input(red).unsqueeze(0)
    feat = enc.frame_features(frames)[0, 0]
    assert torch.allclose(feat, colour_vector(COLOURS["red"]), atol=1e-5)


def test_window_settings_are_kept_on_rebuild_and_changes_refused(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "red.mp4", [COLOURS["red"]] * 7)
    out = tmp_path / "lib"
    build_index(videos, out, FakeEncoder(), window_length=3.0, window_stride=3.0)
    # Rebuilding without window options keeps 3 s / 3 s (not the model's default 4 s / 2 s).
    build_index(videos, out, FakeEncoder())
    with VideoIndex.open(out, FakeEncoder()) as index:
        assert [(w.start, w.end) for w in index.catalog.windows()] == [(0, 3), (3, 6), (4, 7)]
    with pytest.raises(IndexMismatchError, match=r"windows of 3\.0 s every 3\.0 s"):
        build_index(videos, out, FakeEncoder(), window_length=5.0)
