"""Opening annotation files and finding the video files they name, with errors that say which.

Every reader goes through these helpers so that all formats report problems the same way:
a missing or unreadable annotation file raises :class:`AnnotationError` naming it; a single
malformed row is skipped with a warning giving the file and line; videos that cannot be found are
dropped with one warning that counts them (or an error when none at all can be found, which almost
always means ``data.video_dir`` points at the wrong folder).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vtrkit.data.records import VideoRecord

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
"""Tried in this order when an annotation names a video without its extension."""


class AnnotationError(ValueError):
    """An annotation file is missing, unreadable or names no usable video (the message says which)."""


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`AnnotationError` explaining ``what``."""
    if not path.is_file():
        raise AnnotationError(
            f"annotation file not found: {path} ({what}); check data.root / data.annotation"
        )
    return path


def read_text(path: Path, what: str) -> str:
    """Read a UTF-8 annotation file, reporting a missing or undecodable file by name."""
    require_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from exc


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON annotation file; syntax errors are reported with the file, line and column."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
        ) from exc


def expect_type(value: Any, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """Reject a whole file whose top-level structure is not what the format prescribes."""
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise AnnotationError(
            f"{path}: {where} must be a {names}, found {type(value).__name__}; "
            "is this the right file for the dataset?"
        )
    return value


def warn_bad_row(path: Path, where: str | int, reason: str) -> None:
    """Log one skipped row; ``where`` is a line number or a description such as ``entry 3``."""
    loc = f"line {where}" if isinstance(where, int) else where
    logger.warning("%s, %s: %s; row skipped", path, loc, reason)


def require_rows(count: int, path: Path, split: str) -> None:
    """A file with rows but not one usable is treated as unreadable rather than as empty."""
    if count == 0:
        raise AnnotationError(f"{path}: no usable rows for split {split!r}")


def find_video(video_dir: Path, names: Iterable[str]) -> Path | None:
    """First existing file among ``video_dir/name`` and ``video_dir/name.<ext>`` for each name.

    ``name`` may contain sub-folders (LSMDC's ``movie/clip``) and may already carry an extension
    (custom CSVs, DiDeMo's ``.mov`` ids); both the name as given and the name plus each of
    :data:`VIDEO_EXTENSIONS` are tried, in that order.
    """
    for name in names:
        exact = video_dir / name
        if exact.suffix.lower() in VIDEO_EXTENSIONS and exact.is_file():
            return exact
        for ext in VIDEO_EXTENSIONS:
            candidate = video_dir / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def attach_videos(
    pending: Sequence[tuple[VideoRecord, Sequence[str]]],
    video_dir: Path,
    annotation: Path,
) -> list[VideoRecord]:
    """Give each record the path of its video file; drop (and count) records whose file is absent.

    ``pending`` pairs a record (its ``path`` still unset) with the names to try under
    ``video_dir``. Raises :class:`AnnotationError` when no video at all is found.
    """
    found: list[VideoRecord] = []
    missing: list[str] = []
    for record, names in pending:
        path = find_video(video_dir, names)
        if path is None:
            missing.append(record.video_id)
            continue
        record.path = path
        found.append(record)
    if pending and not found:
        tried = ", ".join(f"{n}{VIDEO_EXTENSIONS[0]}" for n in list(pending[0][1])[:2])
        raise AnnotationError(
            f"none of the {len(pending)} videos listed in {annotation} exist under {video_dir} "
            f"(tried e.g. {tried} and extensions {', '.join(VIDEO_EXTENSIONS)}); "
            "set data.video_dir to the folder holding the videos"
        )
    if missing:
        logger.warning(
            "%d of %d videos listed in %s are not under %s and are left out (e.g. %s)",
            len(missing),
            len(pending),
            annotation,
            video_dir,
            ", ".join(missing[:5]),
        )
    return found


def unknown_split(split: str, known: Iterable[str], dataset: str) -> AnnotationError:
    """The error for a split name a reader does not define."""
    return AnnotationError(
        f"{dataset} has no split {split!r}; use one of: {', '.join(sorted(known))}"
    )
