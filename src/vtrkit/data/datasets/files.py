"""Opening annotation files and finding the video files they name, with errors that say which.

Every reader goes through these helpers so that all formats report problems the same way:
a missing or unreadable annotation file raises :class:`AnnotationError` naming it; a single
malformed row is skipped with a warning giving the file and line; videos that cannot be found are
dropped with one warning that counts them (or an error when none at all can be found, which almost
always means ``data.video_dir`` points at the wrong folder). Videos are found anywhere under the
video folder through one indexed walk per reader call (:mod:`.video_folder`), and the messages
name what the folder holds and why near matches were rejected.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vtrkit.data.datasets.video_folder import VideoFolder
from vtrkit.data.records import VideoRecord

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
"""Tried in this order when an annotation names a video without its extension, or names the
original file of a re-encoded one (``X.mpg`` -> ``X.mp4``)."""

ORIGINAL_EXTENSIONS: tuple[str, ...] = (
    ".mpg", ".mpeg", ".3gp", ".3g2", ".wmv", ".mts", ".m2ts", ".flv", ".ogv", ".ts", ".vob",
    ".asf", ".divx", ".qt", ".dv",
)  # fmt: skip
"""Further container extensions that ids carry (DiDeMo keeps the Flickr original's): such an
extension is recognised as one, so ``X.3gp`` also finds a re-encoded ``X.mp4``."""


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


def video_folder(video_dir: Path) -> VideoFolder:
    """The indexed walk of ``video_dir`` with vtrkit's extension rules (see :mod:`.video_folder`)."""
    known = frozenset(VIDEO_EXTENSIONS) | frozenset(ORIGINAL_EXTENSIONS)
    return VideoFolder(Path(video_dir), VIDEO_EXTENSIONS, known)


def find_video(video_dir: Path, names: Iterable[str]) -> Path | None:
    """The file under ``video_dir`` for the first of ``names`` that matches (rules in
    :mod:`.video_folder`); this walks the folder, so readers build one :func:`video_folder`
    and look every record up in it instead."""
    return video_folder(video_dir).find(names)


def _none_found(
    pending: Sequence[tuple[VideoRecord, Sequence[str]]], folder: VideoFolder, annotation: Path
) -> AnnotationError:
    first = list(pending[0][1])
    candidates = folder.candidates(first[0])
    replaced = [c for c in candidates if not c.startswith(first[0].rstrip("."))][:1]
    tried = ", ".join([*candidates[:3], *replaced])
    if not folder.exists:
        where = f"{folder.root} does not exist"
    elif folder.num_files == 0:
        where = f"{folder.root} holds no files"
    else:
        where = (
            f"{folder.root} holds {folder.num_files} files (e.g. {', '.join(folder.sample())}) "
            "but none is named by a listed id"
        )
    misses = [m for _, names in pending[:50] for m in folder.near_misses(names, 3)][:3]
    rejected = f"; rejected near matches: {'; '.join(misses)}" if misses else ""
    return AnnotationError(
        f"none of the {len(pending)} videos listed in {annotation} were found: {where} "
        f"(tried e.g. {tried}, relative to the folder and anywhere below it){rejected}"
        "; set data.video_dir to the folder holding the videos"
    )


def attach_videos(
    pending: Sequence[tuple[VideoRecord, Sequence[str]]],
    video_dir: Path,
    annotation: Path,
    folder: VideoFolder | None = None,
) -> list[VideoRecord]:
    """Give each record the path of its video file; drop (and count) records whose file is absent.

    ``pending`` pairs a record (its ``path`` still unset) with the names to try under
    ``video_dir`` (``folder``: an index of it the caller already built). Two records that find
    the same file with the same window are one gallery entry: the first is kept and the others
    reported. Raises :class:`AnnotationError` when no video at all is found.
    """
    folder = folder if folder is not None else video_folder(video_dir)
    found: list[VideoRecord] = []
    missing: list[tuple[VideoRecord, Sequence[str]]] = []
    owner: dict[tuple[Path, tuple[float, float] | None], VideoRecord] = {}
    duplicates: list[str] = []
    for record, names in pending:
        path = folder.find(names)
        if path is None:
            missing.append((record, names))
            continue
        key = (path, record.window)
        if key in owner:
            duplicates.append(f"{record.video_id} (same file as {owner[key].video_id})")
            continue
        owner[key] = record
        record.path = path
        found.append(record)
    if pending and not found:
        raise _none_found(pending, folder, annotation)
    if missing:
        misses = [m for _, names in missing[:20] for m in folder.near_misses(names, 1)][:3]
        logger.warning(
            "%d of %d videos listed in %s are not under %s and are left out (e.g. %s)%s",
            len(missing),
            len(pending),
            annotation,
            video_dir,
            ", ".join(r.video_id for r, _ in missing[:5]),
            f"; rejected near matches: {'; '.join(misses)}" if misses else "",
        )
    if duplicates:
        logger.warning(
            "%s: %d listed ids name a video file another id already names, and are left out of "
            "the gallery so each video appears once: %s",
            annotation,
            len(duplicates),
            ", ".join(duplicates[:5]),
        )
    if folder.ambiguous:
        names = sorted(folder.ambiguous)
        logger.warning(
            "%d video names occur in several sub-folders of %s; the shallowest is used (e.g. %s)",
            len(names),
            video_dir,
            ", ".join(f"{n} -> {folder.by_name[n][0]}" for n in names[:3]),
        )
    return found


def unknown_split(split: str, known: Iterable[str], dataset: str) -> AnnotationError:
    """The error for a split name a reader does not define."""
    return AnnotationError(
        f"{dataset} has no split {split!r}; use one of: {', '.join(sorted(known))}"
    )
