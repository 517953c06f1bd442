"""Results tables (plain text) and JSON files for evaluation results.

A results dict is what :func:`vtrkit.eval.evaluate.evaluate` returns: metric dicts under "raw",
"dsl", "qb_norm" and "subsets" -> {name: metrics}, with keys ``t2v/R@1`` ... ``v2t/MnR``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vtrkit.eval.metrics import METRIC_NAMES

DIRECTIONS = ("t2v", "v2t")

ROW_LABELS = {
    "raw": "raw",
    "dsl": "DSL (post-processed)",
    "rerank": "vtm re-ranked (top-K)",
    "qb_norm": "QB-Norm (post-processed)",
}
"""Post-processed rows are labelled as such: published numbers use neither."""


def _cell(value: float | None, name: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    # Ranks are integers or halves (even-count medians); recalls and mean ranks one decimal.
    if name == "MdR":
        return f"{value:g}"
    return f"{value:.1f}"


def result_rows(
    results: Mapping[str, Any], reference: Mapping[str, float] | None = None
) -> list[tuple[str, Mapping[str, float]]]:
    """(label, metrics) rows in table order: reference, raw, DSL, QB-Norm, then subsets."""
    rows: list[tuple[str, Mapping[str, float]]] = []
    if reference:
        rows.append(("published", reference))
    for key, label in ROW_LABELS.items():
        if key in results:
            rows.append((label, results[key]))
    for name, metrics in results.get("subsets", {}).items():
        rows.append((f"subset: {name}", metrics))
    for name, metrics in results.get("rerank_subsets", {}).items():
        rows.append((f"subset: {name}, re-ranked", metrics))
    return rows


def format_results_table(
    results: Mapping[str, Any],
    reference: Mapping[str, float] | None = None,
    title: str | None = None,
) -> str:
    """Plain-text table: one row per result row, columns R@1 R@5 R@10 MdR MnR for text→video
    then video→text; missing values (e.g. QB-Norm's video→text) print as "-".

    reference: optional published numbers with the same keys (``t2v/R@1``, ...), shown first.
    """
    counts = [
        f"{key.removeprefix('num_')}={results[key]}"
        for key in ("num_texts", "num_videos", "num_failed_videos")
        if key in results
    ]
    heading = [title] if title else []
    if counts:
        heading.append(", ".join(counts))
    return format_rows_table(result_rows(results, reference), heading)


def format_rows_table(
    rows: Sequence[tuple[str, Mapping[str, float]]], heading: Sequence[str] = ()
) -> str:
    """The table of :func:`format_results_table` for any labelled rows (e.g. several models
    side by side), under the ``heading`` lines."""
    header = ["", *(f"{d}/{m}" for d in DIRECTIONS for m in METRIC_NAMES)]
    body = [
        [label, *(_cell(metrics.get(f"{d}/{m}"), m) for d in DIRECTIONS for m in METRIC_NAMES)]
        for label, metrics in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines = list(heading)
    lines += [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    return "\n".join(lines)


def write_results_json(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``results`` as indented JSON, atomically (a temporary file then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, sort_keys=False, default=_jsonable)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value: Any) -> Any:
    # Tensors, numpy scalars/arrays and paths reach here; everything else is a caller bug.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to results JSON")
