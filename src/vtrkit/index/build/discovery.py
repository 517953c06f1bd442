"""Finding the video files a build or add is given: folders, list files and single files.

A folder is searched recursively (symlinked folders are followed, a link back to a folder being
searched is a loop and is not followed again) for names with a video extension. Every such name
that is not a video file the decoder can be handed is *skipped with a reason* instead of dropped
without a word: a folder named ``x.mp4`` (searched as a folder), a dangling symlink, a symlink
loop, a FIFO or device, and a name that is not valid UTF-8 (the catalog stores paths as SQLite
text, so such a file cannot be recorded; the reason says to rename it). Hidden names (``.x.mp4``)
are left out silently, as before.

:func:`discover` returns both lists; :func:`collect_videos` and :func:`expand_sources` return the
videos only and log what was skipped. :func:`plan_build` adds what a build of an existing index
must keep: the files added to it with ``index add`` from outside the sources
(:mod:`vtrkit.index.storage.added`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vtrkit.index.storage.added import read_added, write_added
from vtrkit.index.storage.skipped import Skipped, record_skipped

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
RENAME_HINT = (
    "the file name is not valid UTF-8 and the index stores names as text; rename it to UTF-8 "
    "(e.g. `convmv -f latin1 -t utf-8 --notest FILE`) and run the build again"
)


@dataclass
class Discovery:
    """Video files found (sorted, absolute, resolved) and the names skipped with reasons."""

    videos: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def extend(self, other: Discovery) -> None:
        self.videos.extend(other.videos)
        self.skipped.extend(other.skipped)

    def finish(self) -> Discovery:
        """Sorted and without duplicates (two links to one file are one video)."""
        self.videos = sorted(set(self.videos))
        unique = {s.path: s for s in self.skipped}
        self.skipped = [unique[p] for p in sorted(unique)]
        return self


def printable(path: str | Path) -> str:
    """``path`` as text that can be printed and stored: undecodable bytes become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: str | Path) -> bool:
    """Whether ``path`` can be stored as text (its bytes are valid UTF-8)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _link_problem(path: Path) -> str | None:
    """Why the symlink ``path`` cannot be followed, or None when it can."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"dangling symlink: its target {printable(os.readlink(path))} does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop: following the link leads back to itself"
        return f"cannot follow the symlink: {exc.strerror}"
    return None


def _add_file(path: Path, out: Discovery) -> None:
    """A name with a video extension (or a file named explicitly): a video, or skipped."""
    if path.is_symlink():
        problem = _link_problem(path)
        if problem is not None:
            out.skipped.append(Skipped(printable(path), problem))
            return
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        named = " (named like one)" if path.suffix.lower() in VIDEO_EXTENSIONS else ""
        out.skipped.append(Skipped(printable(path), f"a folder, not a video file{named}"))
        return
    if not stat.S_ISREG(mode):
        out.skipped.append(
            Skipped(printable(path), "not a regular file (a FIFO, socket or device)")
        )
        return
    resolved = path.resolve()
    if not is_utf8(resolved):
        out.skipped.append(Skipped(printable(resolved), RENAME_HINT))
        return
    out.videos.append(resolved)


def _walk(folder: Path, ancestors: frozenset[tuple[int, int]], out: Discovery) -> None:
    """Search ``folder`` recursively; ``ancestors`` are the (device, inode) of the folders being
    searched above it, so a link to one of them is a loop."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        out.skipped.append(Skipped(printable(folder), f"cannot list the folder: {exc.strerror}"))
        return
    for entry in entries:
        path = Path(entry.path)
        video_name = path.suffix.lower() in VIDEO_EXTENSIONS
        try:
            is_dir = entry.is_dir()  # follows symlinks; False for dangling ones
        except OSError:
            is_dir = False
        if is_dir:
            if video_name:
                out.skipped.append(
                    Skipped(
                        printable(path),
                        "a folder named like a video, not a video file (searched as a folder)",
                    )
                )
            key = _dir_key(path)
            if key in ancestors:
                out.skipped.append(
                    Skipped(printable(path), "symlink loop: links back to a folder above it")
                )
                continue
            _walk(path, ancestors | {key}, out)
        elif video_name and not entry.name.startswith("."):
            _add_file(path, out)


def _dir_key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _read_list(source: Path) -> Discovery:
    """One path per line, relative to the list's folder; ``#`` starts a comment line."""
    out = Discovery()
    text = source.read_bytes().decode("utf-8", "surrogateescape")
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else source.parent / line
        if not (path.exists() or path.is_symlink()):
            raise FileNotFoundError(
                f"{printable(source)}:{number}: listed video {printable(path)} does not exist"
            )
        _add_file(path, out)
    return out


def discover(sources: str | Path | Sequence[str | Path]) -> Discovery:
    """Videos and skipped names of one source or several (see the module docstring).

    A source is a folder, a list file (``.txt``, ``.lst``, ``.list``) or a single video file (any
    extension, so a misnamed file is tried and reported, not skipped). Raises
    :class:`FileNotFoundError` for a source that does not exist or a listed file that does not.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out = Discovery()
    for item in sources:
        source = Path(item)
        if source.is_dir():
            _walk(source, frozenset({_dir_key(source)}), out)
        elif source.is_file() and source.suffix.lower() in LIST_EXTENSIONS:
            out.extend(_read_list(source))
        elif source.exists() or source.is_symlink():
            _add_file(source, out)
        else:
            raise FileNotFoundError(f"{printable(source)}: no such folder, list file or video")
    return out.finish()


def _log_skipped(found: Discovery) -> list[Path]:
    for entry in found.skipped:
        log.warning("skipped %s: %s", entry.path, entry.reason)
    return found.videos


def collect_videos(source: str | Path) -> list[Path]:
    """Video files named by ``source`` (a folder, a list file or a video), sorted and absolute;
    skipped names are logged (:func:`discover` returns them)."""
    return _log_skipped(discover(source))


def expand_sources(videos: str | Path | Sequence[str | Path]) -> list[Path]:
    """All video files named by a source or a list of sources (see :func:`collect_videos`)."""
    return _log_skipped(discover(videos))


@dataclass
class BuildPlan:
    """What a build of some sources into an index is given.

    paths: the videos found plus ``kept``; skipped: names skipped with reasons; kept: files added
    earlier with ``index add`` that lie outside the sources but still exist (kept unless pruned);
    pruned: such files dropped because ``prune`` was asked.
    """

    paths: list[Path]
    skipped: list[Skipped]
    kept: list[Path]
    pruned: list[str]


def plan_build(
    sources: str | Path | Sequence[str | Path], out: str | Path, prune: bool = False
) -> BuildPlan:
    """Discover ``sources`` and decide what happens to the files added to the index ``out`` with
    ``index add`` that are not among them: kept while they exist, dropped with ``prune``."""
    found = discover(sources)
    named = {str(p) for p in found.videos}
    outside = [p for p in read_added(out) if p not in named]
    existing = [p for p in outside if Path(p).is_file()]
    if prune:
        return BuildPlan(found.videos, found.skipped, [], existing)
    kept = [Path(p) for p in existing]
    return BuildPlan(sorted({*found.videos, *kept}), found.skipped, kept, [])


def record_build(out: str | Path, plan: BuildPlan, removed: Sequence[str]) -> None:
    """After a build of ``plan`` into ``out``: its skipped names replace the recorded ones, and
    only the kept files stay recorded as added (removed and pruned ones are forgotten)."""
    indexed = [str(p) for p in plan.paths]
    record_skipped(out, plan.skipped, replace=True, indexed=indexed)
    gone = set(removed) | set(plan.pruned)
    write_added(out, [str(p) for p in plan.kept if str(p) not in gone])
