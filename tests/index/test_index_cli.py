"""The CLI commands end to end with a tiny trained-model checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from index_helpers import COLOURS, tiny_config, write_video
from typer.testing import CliRunner

from vtrkit.cli.index import register
from vtrkit.models.build import build_model
from vtrkit.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)
    return app


def make_checkpoint(folder, seed):
    torch.manual_seed(seed)
    cfg = tiny_config()
    model, _ = build_model(cfg.model, cfg.data)
    return save_checkpoint(folder, model, cfg)


def test_build_status_search_add_and_refusal(app, tmp_path):
    runner = CliRunner()
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoint", 0)
    videos = tmp_path / "videos"
    write_video(videos / "red.mp4", [COLOURS["red"]] * 3)
    write_video(videos / "blue.mp4", [COLOURS["blue"]] * 3)
    (videos / "broken.mp4").write_text("not a video")
    lib = tmp_path / "lib"

    result = runner.invoke(
        app, ["index", "build", str(videos), "-o", str(lib), "--checkpoint", str(ckpt)]
    )
    assert result.exit_code == 0, result.output
    assert "2 added" in result.output and "1 failed" in result.output
    assert "broken.mp4" in result.output

    result = runner.invoke(app, ["index", "status", str(lib), "--json"])
    status = json.loads(result.output)
    assert status["counts"]["videos"] == 2 and status["counts"]["failed"] == 1
    assert status["settings"]["source"] == {"kind": "checkpoint", "path": str(ckpt.resolve())}

    result = runner.invoke(
        app, ["search", str(lib), "a red square", "-k", "2", "--json", "--rerank", "2"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert [h["rank"] for h in hits] == [1, 2]
    assert {h["path"] for h in hits} == {
        str((videos / n).resolve()) for n in ("red.mp4", "blue.mp4")
    }

    result = runner.invoke(app, ["search", str(lib), "--like", str(videos / "red.mp4"), "--json"])
    assert [h["path"] for h in json.loads(result.output)] == [str((videos / "blue.mp4").resolve())]

    extra = write_video(tmp_path / "more" / "green.mp4", [COLOURS["green"]] * 3)
    result = runner.invoke(app, ["index", "add", str(lib), str(extra)])
    assert result.exit_code == 0 and "1 added" in result.output, result.output

    # Another model cannot be searched against or built into this index.
    other = make_checkpoint(tmp_path / "run2" / "checkpoint", 1)
    result = runner.invoke(
        app, ["index", "build", str(videos), "-o", str(lib), "--checkpoint", str(other)]
    )
    assert result.exit_code == 2
    assert "fingerprint" in result.output and str(ckpt.resolve()) in result.output

    # The recorded checkpoint was retrained in place: searching refuses, naming both models.
    built_with = status["settings"]["fingerprint"]
    make_checkpoint(ckpt, 2)
    result = runner.invoke(app, ["search", str(lib), "red"])
    assert result.exit_code == 2
    assert built_with in result.output and str(ckpt.resolve()) in result.output

    result = runner.invoke(app, ["index", "build", str(videos), "-o", str(lib)])
    assert result.exit_code != 0 and "exactly one of --checkpoint" in result.output
    result = runner.invoke(app, ["search", str(tmp_path / "nowhere"), "red"])
    assert result.exit_code == 2 and "not a vtrkit index" in result.output


def test_build_takes_window_mode_and_precision_and_refuses_unknown_ones(app, tmp_path):
    runner = CliRunner()
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoint", 0)
    videos = tmp_path / "videos"
    write_video(videos / "red.mp4", [COLOURS["red"]] * 3)
    lib = tmp_path / "lib"
    base = ["index", "build", str(videos), "-o", str(lib), "--checkpoint", str(ckpt)]

    result = runner.invoke(app, [*base, "--windows", "diagonal"])
    assert result.exit_code == 2 and "--windows must be fixed or shots" in result.output
    result = runner.invoke(app, [*base, "--precision", "fp64"])
    assert result.exit_code != 0 and "--precision" in result.output
    assert not lib.exists()  # refused before anything was written

    result = runner.invoke(app, [*base, "--windows", "shots", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(app, ["index", "status", str(lib), "--json"]).output)
    assert status["counts"]["videos"] == 1
    # The index keeps its mode: a rebuild asking for the other one is refused, naming --windows.
    result = runner.invoke(app, [*base, "--windows", "fixed"])
    assert result.exit_code != 0 and "--windows" in result.output
