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


def test_demo_config_keeps_the_recipe_budget_unless_given(tmp_path: Path) -> None:
    kept = demo_config(tmp_path / "d", tmp_path / "r", None, [])
    given = demo_config(tmp_path / "d", tmp_path / "r", 12.5, [])
    assert kept.train.time_budget_s is not None and kept.train.time_budget_s > 60
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
    assert "vtrkit/demo.yaml" in names
    assert DEMO_CONFIG.parent.name == "vtrkit"
    # The checkout's configs/demo.yaml is the same file.
    assert (repo / "configs" / "demo.yaml").resolve() == DEMO_CONFIG.resolve()
