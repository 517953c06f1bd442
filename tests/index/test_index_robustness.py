"""Real collections and bad input: odd names and links, invalid settings, add-then-build, grouped
and re-ranked search (issue 15)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from index_helpers import COLOURS, FakeEncoder, tiny_config, write_video

from vtrkit.index import CatalogError, VideoIndex, build_index
from vtrkit.index.build.discovery import discover, plan_build
from vtrkit.index.results import MAX_MOMENTS
from vtrkit.index.storage.added import read_added
from vtrkit.index.storage.catalog import Catalog
from vtrkit.index.storage.library import Library, SettingsError
from vtrkit.index.storage.skipped import read_skipped
from vtrkit.inference import ModelEncoder
from vtrkit.models.build import build_model

BAD_NAME = b"x\xff.mp4"


def non_utf8(folder: Path, name: bytes = BAD_NAME) -> Path:
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


@pytest.fixture()
def odd_folder(tmp_path):
    """Two good videos, a copy under a non-UTF-8 name, a folder named like a video holding a
    video, a dangling symlink, a symlink loop, a folder link back to its parent and a FIFO."""
    folder = tmp_path / "vids"
    red = write_video(folder / "red.mp4", [COLOURS["red"]] * 3)
    write_video(folder / "clip.mp4" / "inside.mp4", [COLOURS["blue"]] * 3)
    shutil.copy(red, non_utf8(folder))
    (folder / "dangling.mp4").symlink_to(folder / "gone.mp4")
    (folder / "loop_a.mp4").symlink_to(folder / "loop_b.mp4")
    (folder / "loop_b.mp4").symlink_to(folder / "loop_a.mp4")
    (folder / "clip.mp4" / "up").symlink_to(folder)
    os.mkfifo(folder / "pipe.mp4")
    return folder


def test_discovery_names_every_skipped_file_with_a_reason(odd_folder):
    found = discover(odd_folder)
    assert found.videos == [
        (odd_folder / "clip.mp4" / "inside.mp4").resolve(),
        (odd_folder / "red.mp4").resolve(),
    ]
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    assert set(reasons) == {
        "x\\xff.mp4",
        "clip.mp4",
        "dangling.mp4",
        "loop_a.mp4",
        "loop_b.mp4",
        "pipe.mp4",
        "up",
    }
    assert "not valid UTF-8" in reasons["x\\xff.mp4"] and "rename" in reasons["x\\xff.mp4"]
    assert "folder" in reasons["clip.mp4"] and "searched as a folder" in reasons["clip.mp4"]
    assert "dangling symlink" in reasons["dangling.mp4"] and "gone.mp4" in reasons["dangling.mp4"]
    assert "symlink loop" in reasons["loop_a.mp4"] and "symlink loop" in reasons["loop_b.mp4"]
    assert "symlink loop" in reasons["up"] and "regular file" in reasons["pipe.mp4"]
    # Every skipped path is printable text (it is stored as JSON and printed).
    for s in found.skipped:
        s.path.encode("utf-8")


def test_build_indexes_the_rest_and_records_skipped_names(odd_folder, tmp_path):
    out = tmp_path / "lib"
    with VideoIndex.build(odd_folder, out, FakeEncoder()) as index:
        assert index.catalog.counts()["videos"] == 2 and index.last_report.failed == []
        assert {Path(s.path).name for s in index.last_skipped} >= {"x\\xff.mp4", "pipe.mp4"}
    recorded = {Path(s.path).name: s.reason for s in read_skipped(out)}
    assert "not valid UTF-8" in recorded["x\\xff.mp4"]
    # A rebuild after the bad name is fixed indexes it and forgets the skipped entry.
    os.rename(non_utf8(odd_folder), odd_folder / "renamed.mp4")
    with VideoIndex.build(odd_folder, out, FakeEncoder()) as index:
        assert index.catalog.counts()["videos"] == 3
    assert "x\\xff.mp4" not in {Path(s.path).name for s in read_skipped(out)}


def test_add_of_a_non_utf8_name_records_it_and_like_search_still_reads_it(tmp_path):
    folder = tmp_path / "vids"
    write_video(folder / "red.mp4", [COLOURS["red"]] * 3)
    write_video(folder / "blue.mp4", [COLOURS["blue"]] * 3)
    bad = non_utf8(tmp_path, b"caf\xe9.mp4")
    shutil.copy(folder / "red.mp4", bad)
    with VideoIndex.build(folder, tmp_path / "lib", FakeEncoder()) as index:
        report = index.add([bad])
        assert report.added == [] and [s.path for s in index.last_skipped] == [
            str(tmp_path / "caf\\xe9.mp4")
        ]
        # Searching by the file decodes it (it cannot be in the catalog): red finds red.
        hits = index.search_videos_like(bad, k=1)
        assert hits[0].path == (folder / "red.mp4").resolve()
    assert read_skipped(tmp_path / "lib")[0].path.endswith("caf\\xe9.mp4")


@pytest.mark.parametrize(
    ("window", "stride", "option"),
    [
        (None, 0.0, "--stride"),
        (None, -1.0, "--stride"),
        (-1.0, None, "--window"),
        (0.0, None, "--window"),
        (0.001, None, "--window"),
        (math.nan, None, "--window"),
        (4.0, math.inf, "--stride"),
        (4.0, 5.0, "--stride"),
        (8.0, 0.001, "--stride"),
    ],
)
def test_invalid_window_settings_are_refused_before_anything_is_written(
    tmp_path, window, stride, option
):
    videos = tmp_path / "vids"
    write_video(videos / "red.mp4", [COLOURS["red"]] * 3)
    out = tmp_path / "lib"
    with pytest.raises(SettingsError, match=option):
        build_index(videos, out, FakeEncoder(), window_length=window, window_stride=stride)
    assert not out.exists()
    # Nothing was saved, so a valid rerun into the same folder just works.
    report = build_index(videos, out, FakeEncoder(), window_length=2.0, window_stride=1.0)
    assert report.added == [str((videos / "red.mp4").resolve())]


def test_an_index_saved_with_invalid_settings_says_to_rebuild(tmp_path):
    videos = tmp_path / "vids"
    write_video(videos / "red.mp4", [COLOURS["red"]] * 3)
    build_index(videos, tmp_path / "lib", FakeEncoder())
    with Catalog(tmp_path / "lib" / "catalog.sqlite") as catalog:
        catalog.set_meta({"window_stride": "0.0"})  # what an older vtrkit could save
    with pytest.raises(CatalogError, match="Delete the folder and build the index again"):
        Library.open(tmp_path / "lib")


def test_build_after_add_keeps_the_added_files_and_prune_drops_them(tmp_path):
    folder = tmp_path / "vids"
    write_video(folder / "red.mp4", [COLOURS["red"]] * 3)
    elsewhere = write_video(tmp_path / "more" / "green.mp4", [COLOURS["green"]] * 3).resolve()
    gone = write_video(tmp_path / "more" / "blue.mp4", [COLOURS["blue"]] * 3).resolve()
    out = tmp_path / "lib"
    with VideoIndex.build(folder, out, FakeEncoder()) as index:
        index.add([elsewhere, gone])
    assert read_added(out) == sorted([str(elsewhere), str(gone)])
    gone.unlink()
    plan = plan_build(folder, out)
    assert plan.kept == [elsewhere] and plan.pruned == []
    with VideoIndex.build(folder, out, FakeEncoder()) as index:
        report = index.last_report
        paths = {v.path for v in index.catalog.videos()}
    assert str(elsewhere) in paths and report.removed == [str(gone)]
    assert read_added(out) == [str(elsewhere)]
    # --prune: the added file goes, and the plan names it.
    assert plan_build(folder, out, prune=True).pruned == [str(elsewhere)]
    with VideoIndex.build(folder, out, FakeEncoder(), prune=True) as index:
        assert index.last_report.removed == [str(elsewhere)]
        assert {v.path for v in index.catalog.videos()} == {str((folder / "red.mp4").resolve())}
    assert read_added(out) == []


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A 40-s all-blue video (19 windows of 4 s every 2 s), a 12-s red/blue/red video, and one
    video per remaining colour."""
    root = tmp_path_factory.mktemp("grouped")
    write_video(root / "long_blue.mp4", [COLOURS["blue"]] * 40)
    mixed = [COLOURS["red"]] * 4 + [COLOURS["blue"]] * 4 + [COLOURS["red"]] * 4
    write_video(root / "mixed.mp4", mixed)
    for name in ("green", "yellow", "white", "cyan", "magenta"):
        write_video(root / f"{name}.mp4", [COLOURS[name]] * 4)
    index = VideoIndex.build(root, tmp_path_factory.mktemp("glib") / "lib", FakeEncoder())
    yield index
    index.close()


def test_search_videos_gives_one_hit_per_video_with_its_moments(grouped):
    index = grouped
    hits = index.search_videos("blue", k=4, rerank=0)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert len({h.video_id for h in hits}) == 4
    # Both blue videos have windows scoring 1 (a tie, in either order); the long one's 19
    # windows crowd the first pool of 4·k = 16 windows, which grows until it holds 4 videos.
    by_name = {h.path.name: h for h in hits}
    assert {hits[0].path.name, hits[1].path.name} == {"long_blue.mp4", "mixed.mp4"}
    long = by_name["long_blue.mp4"]
    assert len(long.moments) == MAX_MOMENTS
    assert all(m.score == pytest.approx(1.0, abs=2e-3) for m in long.moments)
    mixed = by_name["mixed.mp4"]
    assert (mixed.start, mixed.end) == (4.0, 8.0) and mixed.score == pytest.approx(1.0, abs=2e-3)
    # A moment never scores below the last video shown.
    floor = hits[-1].score
    assert all(m.score >= floor for h in hits for m in h.moments)
    # The same scores as the window-level search, window by window.
    windows = {w.window_id: w.score for w in index.search("blue", k=200)}
    for h in hits:
        assert h.score == pytest.approx(windows[h.window_id], abs=1e-9)
        for m in h.moments:
            assert m.score == pytest.approx(windows[m.window_id], abs=1e-9)


def test_default_reranking_follows_the_head_and_scores_say_what_they_are(grouped):
    index = grouped
    assert index.default_rerank == 100
    text = index.encoder.encode_texts(["red"])
    hits = index.search_videos("red", k=3)
    assert all(h.scored_by == "head" for h in hits)
    # The head's score (best frame) of each hit's window, computed directly.
    store, rows = index.library.store, {w.id: w.row for w in index.catalog.windows()}
    for h in hits:
        row = np.array([rows[h.window_id]])
        frames = torch.from_numpy(store.frames(row).astype(np.float32))
        sims = frames[0][torch.from_numpy(store.mask(row))[0]] @ text.sentence[0]
        assert h.score == pytest.approx(float(sims.max()), abs=1e-5)
    cosine = index.search_videos("red", k=3, rerank=0)
    assert all(h.scored_by == "cosine" for h in cosine)
    with pytest.raises(ValueError, match="rerank"):
        index.search_videos("red", rerank=-1)


def test_which_models_rerank_by_default(grouped, tmp_path):
    class NoHead(FakeEncoder):
        fine_grained = False

    root = tmp_path / "v"
    write_video(root / "red.mp4", [COLOURS["red"]] * 3)
    with VideoIndex.build(root, tmp_path / "lib", NoHead()) as index:
        assert index.default_rerank == 0
        assert index.search_videos("red", k=1)[0].scored_by == "cosine"
    torch.manual_seed(0)
    cfg = tiny_config()
    xclip = ModelEncoder(*build_model(cfg.model, cfg.data), cfg.data)
    cfg.model.kind = "meanP"
    meanp = ModelEncoder(*build_model(cfg.model, cfg.data), cfg.data)
    from vtrkit.index.results import has_fine_grained_head

    assert has_fine_grained_head(xclip) and not has_fine_grained_head(meanp)


def test_search_videos_takes_a_query_encoded_elsewhere(grouped):
    index = grouped
    queries = index.encode_query(["cyan", "red magenta"])
    for i, text in enumerate(["cyan", "red magenta"]):
        direct = index.search_videos(text, k=3)
        given = index.search_videos(text, k=3, query=queries.slice(i, i + 1))
        assert [(h.video_id, h.window_id) for h in given] == [
            (h.video_id, h.window_id) for h in direct
        ]
        np.testing.assert_allclose([h.score for h in given], [h.score for h in direct], atol=1e-6)
    with pytest.raises(ValueError, match="one encoded text"):
        index.search_videos("cyan", query=queries)
