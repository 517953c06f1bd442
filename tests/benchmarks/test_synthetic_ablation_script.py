"""benchmarks/synthetic_ablation.py end to end on tiny settings: table, JSON, reuse and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ablation_helpers import TINY_SHORT_VIDEO, load_script

XCLIP = "X-CLIP mean-mean"


def test_table_json_reuse_and_resume(tmp_path, monkeypatch):
    script = load_script("synthetic_ablation")
    out = tmp_path / "out"
    argv = [
        "--out", str(out),
        "--data", str(tmp_path / "data"),
        "--n-train", "12",
        "--n-test", "10",
        "--batch", "4",
        "--steps", "2",
        "--seeds", "0", "1",
        "--arms", script.ZERO_SHOT, XCLIP,
        *TINY_SHORT_VIDEO,
    ]  # fmt: skip
    report = script.main(argv)

    # One result file per trained (arm, seed); the zero-shot row is evaluated once.
    runs = report["runs"]
    assert [r["seed"] for r in runs[script.ZERO_SHOT]] == [0]
    assert [r["seed"] for r in runs[XCLIP]] == [0, 1]
    assert runs[script.ZERO_SHOT][0]["steps"] == 0 and runs[XCLIP][0]["steps"] == 2
    for seed in (0, 1):
        saved = json.loads((out / "arms" / "x_clip_mean_mean" / f"seed{seed}.json").read_text())
        assert saved["metrics"]["raw"] == runs[XCLIP][seed]["metrics"]["raw"]
    # The summary is the mean / sd of the per-seed values.
    values = [r["metrics"]["raw"]["t2v/R@1"] for r in runs[XCLIP]]
    entry = report["summary"][XCLIP]
    assert entry["n"] == 2 and entry["t2v R@1"]["values"] == values
    assert entry["t2v R@1"]["mean"] == pytest.approx(np.mean(values))
    assert entry["t2v R@1"]["sd"] == pytest.approx(np.std(values, ddof=1))
    order = [r["metrics"]["subsets"]["order"]["v2t/R@1"] for r in runs[XCLIP]]
    assert entry["order v2t R@1"]["values"] == order
    # The Markdown table: a header with both directions and both subsets, one line per arm.
    table = (out / "synthetic_ablation.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["arm", "t2v R@1", "t2v R@5", "v2t R@1", "v2t R@5"]
    assert {"order t2v R@1", "attribute v2t R@1", "n"} <= set(header)
    xclip = next(line for line in lines if line.startswith(f"| {XCLIP} "))
    assert "±" in xclip and xclip.rstrip(" |").endswith("2")
    assert json.loads((out / "synthetic_ablation.json").read_text())["summary"] == report["summary"]

    # A rerun trains nothing: every result is reused.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    with monkeypatch.context() as m:
        m.setattr(script, "train_run", refuse)
        assert script.main(argv)["summary"] == report["summary"]
    # A lost result file with its run folder still there: train_run resumes from last/ and,
    # with the budget already spent, evaluates the same weights again.
    (out / "arms" / "x_clip_mean_mean" / "seed1.json").unlink()
    again = script.main(argv)["runs"][XCLIP][1]
    assert again["steps"] == 2 and again["metrics"]["raw"] == runs[XCLIP][1]["metrics"]["raw"]
    # Other settings never mix with finished results.
    other = [a if a != "2" else "3" for a in argv]  # --steps 3
    with pytest.raises(SystemExit, match="other settings"):
        script.main(other)
