"""The demo's synthetic-set handling: reuse a complete set of the right size, regenerate others."""

from __future__ import annotations

from pathlib import Path

from vtrkit.demo import _synthetic_size, demo_config, ensure_synthetic


def test_ensure_synthetic_reuses_a_set_of_the_right_size_and_regenerates_others(
    tmp_path: Path,
) -> None:
    data = tmp_path / "syn"
    assert _synthetic_size(data) is None
    ensure_synthetic(data, n_train=3, n_test=2)
    assert _synthetic_size(data) == (3, 2)
    video = data / "videos" / "video0.mp4"
    first = video.stat().st_mtime_ns

    ensure_synthetic(data, n_train=3, n_test=2)  # same size: nothing is rewritten
    assert video.stat().st_mtime_ns == first

    ensure_synthetic(data, n_train=4, n_test=2)  # another size: regenerated in place
    assert _synthetic_size(data) == (4, 2)
    assert (data / "videos" / "video5.mp4").is_file()


def test_demo_config_runs_fixed_steps_unless_a_budget_is_given(tmp_path: Path) -> None:
    # The demo's numbers must not depend on how busy the machine is: no budget by default.
    kept = demo_config(tmp_path / "d", tmp_path / "r", None, [])
    given = demo_config(tmp_path / "d", tmp_path / "r", 12.5, [])
    assert kept.train.time_budget_s is None and kept.train.max_steps is None
    assert given.train.time_budget_s == 12.5
    assert kept.data.frame_cache == tmp_path / "d" / "cache"


def test_the_wheel_ships_the_demo_recipe(tmp_path: Path) -> None:
    """``vtrkit demo`` must work from an installed wheel: its recipe is package data."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from vtrkit.demo import DEMO_CONFIG

    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    shutil.copytree(repo / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("vtrkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"vtrkit/demo.yaml", "vtrkit/pretrain_tiny.yaml"} <= names
    assert DEMO_CONFIG.parent.name == "vtrkit"
    # The checkout's configs/demo.yaml is the same file.
    assert (repo / "configs" / "demo.yaml").resolve() == DEMO_CONFIG.resolve()


def test_the_demo_pretrains_then_fine_tunes_and_says_when_a_budget_cut_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The whole demo on a tiny set: pretraining (then reused), the zero-shot and fine-tuned rows
    side by side, a budget cut reported in the printed result, search through the public API."""
    from vtrkit import demo

    real = demo.ensure_synthetic
    monkeypatch.setattr(
        demo, "ensure_synthetic", lambda data, n_train, n_test=8, seed=0: real(data, n_train, 8)
    )
    monkeypatch.setattr(demo, "SEARCH_VIDEOS", 6)
    tiny_pretrain = [
        "train.epochs=1",
        "train.max_steps=2",
        "train.batch_size=16",
        "pretrain.images_per_epoch=64",
        "pretrain.zero_shot_images=32",
        "pretrain.probe_train=64",
        "pretrain.probe_test=32",
    ]
    run = dict(
        data=tmp_path / "data",
        train_videos=16,
        pretrain_overrides=tiny_pretrain,
        overrides=["train.epochs=2", "train.batch_size=8", "data.num_workers=0"],
    )
    summary = demo.run_demo(out=tmp_path / "runs" / "demo", budget_s=0.0, **run)
    printed = capsys.readouterr().out
    head = summary["headline"]
    assert "zero-shot CLIP (mean pooling)" in printed and "X-CLIP fine-tuned" in printed
    assert head["stopped_by_budget"] and head["train_steps"] == 1 < head["planned_steps"] == 4
    assert "NOTE: the time budget" in printed
    assert len(summary["search"]["hits"]) == 5 and summary["search"]["videos"] == 6
    pretrain_dir = tmp_path / "runs" / "pretrain_tiny"
    assert (pretrain_dir / "clip.pt").is_file()
    # A second run reuses the pretrained CLIP (same file, not rewritten) and trains every step.
    stamp = (pretrain_dir / "clip.pt").stat().st_mtime_ns
    again = demo.run_demo(out=tmp_path / "runs" / "again", **run)
    assert (pretrain_dir / "clip.pt").stat().st_mtime_ns == stamp
    assert not again["headline"]["stopped_by_budget"] and again["headline"]["train_steps"] == 4
    assert again["zero_shot"]["raw"] == summary["zero_shot"]["raw"]
