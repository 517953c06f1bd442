"""The CLI under bad input and odd collections: one clear line instead of a traceback, every file
not indexed named with its reason, results a person can read (issue 15)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import typer
from frame_helpers import write_noise_video
from index_helpers import COLOURS, tiny_config, write_video
from typer.testing import CliRunner

from vtrkit.cli import index as cli_index
from vtrkit.cli import train as cli_train
from vtrkit.models.build import build_model
from vtrkit.train.checkpoint import save_checkpoint

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    cli_index.register(app)
    cli_train.register(app)
    return app


@pytest.fixture(scope="module")
def built(tmp_path_factory, app):
    """A tiny X-CLIP checkpoint and an index of a folder with two videos, a file cut at half
    (partial), a broken file, a non-UTF-8 name, a dangling symlink and a folder named like a
    video."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg = tiny_config()
    model, _ = build_model(cfg.model, cfg.data)
    ckpt = save_checkpoint(root / "run" / "checkpoint", model, cfg)
    videos = root / "videos"
    write_video(videos / "red.mp4", [COLOURS["red"]] * 6)
    write_video(videos / "blue.mp4", [COLOURS["blue"]] * 6)
    (videos / "broken.mp4").write_text("not a video")
    whole = write_noise_video(root / "whole.mp4", 12, faststart=True).read_bytes()
    (videos / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    shutil.copy(videos / "red.mp4", os.fsdecode(os.fsencode(videos) + b"/x\xff.mp4"))
    (videos / "dangling.mp4").symlink_to(videos / "nowhere.mp4")
    (videos / "folder.mp4").mkdir()
    lib = root / "lib"
    result = CliRunner().invoke(
        app, ["index", "build", str(videos), "-o", str(lib), "--checkpoint", str(ckpt)]
    )
    return root, ckpt, videos, lib, result


def one_clear_line(result, *needles: str) -> str:
    """The command failed with exit 2 and a single 'error: ...' line naming ``needles``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_build_names_every_file_it_did_not_index(built):
    _, _, videos, _, result = built
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 added" in out and "1 failed" in out and "3 skipped before decoding" in out
    assert f"skipped: {videos}/x\\xff.mp4: the file name is not valid UTF-8" in out
    assert f"skipped: {videos}/dangling.mp4: dangling symlink" in out
    assert f"skipped: {videos}/folder.mp4: a folder" in out
    assert "broken.mp4" in out


def test_status_lists_partial_failed_and_skipped_files_with_reasons(built, app):
    _, _, videos, lib, _ = built
    result = CliRunner().invoke(app, ["index", "status", str(lib)])
    assert result.exit_code == 0, result.output
    assert "3 videos (1 partial)" in result.output and "1 failed" in result.output
    assert "3 skipped" in result.output
    where = re.escape(str(videos.resolve()))
    assert re.search(rf"failed: {where}/broken.mp4: \w+", result.output)
    assert re.search(rf"partial: {where}/cut.mp4: .*frames end at", result.output)
    assert f"skipped: {videos}/x\\xff.mp4: the file name is not valid UTF-8" in result.output
    info = json.loads(CliRunner().invoke(app, ["index", "status", str(lib), "--json"]).output)
    assert sorted(p["status"] for p in info["problems"]) == ["failed", "partial"]
    assert {Path(s["path"]).name for s in info["skipped"]} == {
        "x\\xff.mp4",
        "dangling.mp4",
        "folder.mp4",
    }


def test_search_prints_headers_groups_and_what_the_score_is(built, app):
    lib = built[3]
    result = CliRunner().invoke(app, ["search", str(lib), "a red square", "-k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("scores: the model's own head, re-ranking the 100 best windows")
    assert lines[1].split() == ["rank", "score", "moment", "video"]
    rows = [line for line in lines[2:] if not line.lstrip().startswith("also")]
    assert len(rows) == 2
    # 6-s videos in 3-s windows every 1.5 s: the other windows are listed under the best one.
    assert any(line.lstrip().startswith("also 0:") for line in lines)
    cosine = CliRunner().invoke(app, ["search", str(lib), "red", "--rerank", "0"])
    assert cosine.output.splitlines()[0].startswith("scores: cosine similarity")
    windows = CliRunner().invoke(
        app, ["search", str(lib), "red", "--windows", "--json", "-k", "50"]
    )
    found = json.loads(windows.output)
    assert len({h["video_id"] for h in found}) == 3 and len(found) > 3  # one entry per window


def test_like_on_a_broken_file_is_one_clear_line(built, app):
    root, _, videos, lib, _ = built
    result = CliRunner().invoke(app, ["search", str(lib), "--like", str(videos / "broken.mp4")])
    one_clear_line(result, "cannot decode video", "broken.mp4", "not a video file")
    missing = CliRunner().invoke(app, ["search", str(lib), "--like", str(root / "nope.mp4")])
    one_clear_line(missing, "nope.mp4", "does not exist")


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        (["--stride", "0"], ["--stride", "above 0"]),
        (["--window", "-1"], ["--window", "at least one sampled frame"]),
        (["--window", "0.001"], ["--window"]),
        (["--window", "8", "--stride", "0.01"], ["--stride", "more than 16 windows"]),
    ],
)
def test_invalid_window_settings_fail_before_writing(built, app, tmp_path, options, needles):
    _, ckpt, videos, _, _ = built
    out = tmp_path / "new.vtr"
    args = ["index", "build", str(videos), "-o", str(out), "--checkpoint", str(ckpt), *options]
    one_clear_line(CliRunner().invoke(app, args), *needles)
    assert not out.exists()


@pytest.mark.parametrize("option", ["--batch", "--workers"])
def test_zero_batch_or_workers_is_a_usage_error_naming_the_option(built, app, tmp_path, option):
    _, ckpt, videos, _, _ = built
    args = ["index", "build", str(videos), "-o", str(tmp_path / "x"), "--checkpoint", str(ckpt)]
    result = CliRunner().invoke(app, [*args, option, "0"])
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_add_then_build_keeps_the_added_file_and_prune_names_it(built, app, tmp_path):
    _, ckpt, videos, lib, _ = built
    lib_copy = tmp_path / "lib"
    shutil.copytree(lib, lib_copy)
    extra = write_video(tmp_path / "elsewhere" / "green.mp4", [COLOURS["green"]] * 3).resolve()
    assert CliRunner().invoke(app, ["index", "add", str(lib_copy), str(extra)]).exit_code == 0
    build = ["index", "build", str(videos), "-o", str(lib_copy), "--checkpoint", str(ckpt)]
    kept = CliRunner().invoke(app, build)
    assert kept.exit_code == 0 and "0 removed" in kept.output, kept.output
    assert f"kept: {extra} (added with `vtrkit index add`, not in VIDEOS" in kept.output
    pruned = CliRunner().invoke(app, [*build, "--prune"])
    assert "1 removed" in pruned.output
    assert f"removed: {extra} (added with `index add`, dropped by --prune)" in pruned.output


def test_help_keeps_the_defaults_and_says_how_to_keep_the_model_loaded(app):
    def help_of(*command: str) -> str:
        text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"}).output
        return " ".join(text.replace("│", " ").split())

    build = help_of("index", "build")
    assert "Default: the index's own for an existing index, else the span the model" in build
    assert "Default: the index's own, else half a window" in build
    search = help_of("search")
    assert "`vtrkit serve` or the Python API" in search and "Default: 100 when the model" in search


def test_train_with_a_missing_data_root_is_one_clear_line(app, tmp_path):
    missing = tmp_path / "no_data_here"
    args = [
        "train",
        str(ROOT / "configs" / "demo.yaml"),
        "--set",
        f"data.root={missing}",
        "--set",
        "data.frame_cache=null",
        "--set",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    one_clear_line(CliRunner().invoke(app, args), "annotation file not found", str(missing))


def test_quiet_hides_transformers_loading_bars_and_our_info_lines(tmp_path, capfd, caplog):
    from transformers import CLIPModel

    from vtrkit.backbones.checkpoints import clip_config
    from vtrkit.data.sampling import FrameSampling
    from vtrkit.inference import load_backbone_for_index

    sampling = FrameSampling(num_frames=3, image_size=16)
    torch.manual_seed(0)
    arch = tiny_config().model.backbone.arch
    CLIPModel(clip_config(arch)).save_pretrained(str(tmp_path / "hf"))
    capfd.readouterr()
    encoder = load_backbone_for_index(tmp_path / "hf", sampling)
    assert "Loading weights" in capfd.readouterr().err  # what a user saw on every search
    # The catalog's record of a backbone keeps its flat sampling keys (existing indexes reload).
    assert {k: encoder.source[k] for k in ("num_frames", "fps", "image_size")} == asdict(sampling)
    assert encoder.sampling == sampling
    with cli_index._quiet(own_info=True):
        load_backbone_for_index(tmp_path / "hf", sampling)
        assert not logging.getLogger("vtrkit.checkpoint").isEnabledFor(logging.INFO)
    assert "Loading weights" not in capfd.readouterr().err
    # Everything is as before afterwards.
    assert logging.getLogger("vtrkit").level == logging.NOTSET
    load_backbone_for_index(tmp_path / "hf", sampling)
    assert "Loading weights" in capfd.readouterr().err


def test_the_search_command_prints_results_only(built):
    """The real command in a fresh process (as a user runs it), with INFO logging on."""
    _, _, _, lib, _ = built
    command = [sys.executable, "-m", "vtrkit", "search", str(lib), "red", "-k", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert done.stdout.splitlines()[1].split() == ["rank", "score", "moment", "video"]
