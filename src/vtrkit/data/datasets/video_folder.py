"""One indexed walk of a video folder, and the rules by which an annotation's name finds a file.

The official loaders of MSVD, LSMDC, DiDeMo and ActivityNet walk the whole video folder tree, so
datasets are unpacked with sub-folders of every shape. A reader builds one :class:`VideoFolder`
per call (one ``os.walk``, symlinked folders followed once) and looks every record up in it.

For a name ``N`` (an id, possibly with sub-folders and an extension), these are tried in order,
first as a path relative to the folder, then as a file name anywhere under it:

1. ``N`` itself, whatever its extension (DiDeMo's ids are the original file names: ``.3gp``,
   ``.mts``, ``.wmv``, even a bare trailing ``.``);
2. ``N`` plus a video extension (``video7`` -> ``video7.mp4``; ``X.mov`` -> ``X.mov.mp4``);
3. when ``N`` ends in a known container extension or a bare ``.``, ``N`` with it replaced by a
   video extension: the re-encoded layout (``X.mpg`` -> ``X.mp4``, ``X.`` -> ``X.mp4``).

Video extensions are tried in the order of ``VIDEO_EXTENSIONS``. When a name matches several
files in different sub-folders the shortest relative path wins (then the alphabetical first) and
the ambiguity is counted. Files that look like a name but fit none of the rules (``X.mpg.part``,
``X.json``) are *near misses*, reported with the reason they were rejected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


def split_container_extension(name: str, known: Iterable[str]) -> str | None:
    """``name`` without a trailing container extension (one of ``known``, any case) or a bare
    trailing ``.``; None when it ends in neither (``video7``, LSMDC's ``...54.154``)."""
    if name.endswith("."):
        return name[:-1]
    base, dot, ext = name.rpartition(".")
    if dot and base and f".{ext.lower()}" in known:
        return base
    return None


@dataclass
class VideoFolder:
    """Every file under ``root`` (one walk), looked up by relative path and by file name.

    Args:
        root: the video folder (a missing folder is an empty index; :attr:`exists` says so).
        video_extensions: appended or substituted to names, in this order.
        known_extensions: recognised as an extension to substitute (includes the above).
    """

    root: Path
    video_extensions: tuple[str, ...]
    known_extensions: frozenset[str]
    by_relative: dict[str, Path] = field(default_factory=dict)
    by_name: dict[str, list[str]] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)
    """File names found in more than one sub-folder and actually looked up."""

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.exists = self.root.is_dir()
        if self.exists:
            self._walk()

    def _walk(self) -> None:
        seen: set[str] = set()
        for top, dirs, files in os.walk(self.root, followlinks=True):
            real = os.path.realpath(top)
            if real in seen:  # a symlink loop or a folder linked twice: walk it once
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel_top = Path(top).relative_to(self.root).as_posix()
            for name in sorted(files):
                rel = name if rel_top == "." else f"{rel_top}/{name}"
                self.by_relative[rel] = Path(top) / name
                self.by_name.setdefault(name, []).append(rel)
        for rels in self.by_name.values():
            rels.sort(key=lambda r: (r.count("/"), r))

    @property
    def num_files(self) -> int:
        return len(self.by_relative)

    def candidates(self, name: str) -> list[str]:
        """The names rule 1-3 derive from ``name``, in the order they are tried."""
        out = [name]
        plain = name[:-1] if name.endswith(".") else name
        out += [plain + ext for ext in self.video_extensions]
        stem = split_container_extension(name, self.known_extensions)
        if stem is not None:
            out += [stem + ext for ext in self.video_extensions]
        return list(dict.fromkeys(out))

    def find(self, names: Iterable[str]) -> Path | None:
        """The file for the first of ``names`` that matches, relative paths before file names
        anywhere in the tree; an absolute name is checked on disk directly."""
        names = [Path(n).as_posix() for n in names if n]
        for name in names:
            absolute = Path(name).is_absolute()
            for candidate in self.candidates(name):
                if absolute and Path(candidate).is_file():
                    return Path(candidate)
                if not absolute and candidate in self.by_relative:
                    return self.by_relative[candidate]
        for name in names:
            if Path(name).is_absolute():
                continue
            for candidate in self.candidates(Path(name).name):
                rels = self.by_name.get(candidate)
                if rels:
                    if len(rels) > 1:
                        self.ambiguous.add(candidate)
                    return self.by_relative[rels[0]]
        return None

    def near_misses(self, names: Iterable[str], limit: int = 3) -> list[str]:
        """Files that start like one of ``names`` but fit no rule, each with why it was rejected."""
        found: list[str] = []
        for name in names:
            base = Path(name).name
            stem = split_container_extension(base, self.known_extensions) or base.rstrip(".")
            accepted = set(self.candidates(base))
            for file_name, rels in self.by_name.items():
                if file_name in accepted or not file_name.startswith(stem + "."):
                    continue
                rest = file_name[len(stem) :]
                found.append(
                    f"{rels[0]} ({rest!r} after {stem!r} is not a video extension: "
                    f"{', '.join(self.video_extensions)})"
                )
                if len(found) >= limit:
                    return found
        return found

    def sample(self, limit: int = 3) -> list[str]:
        """A few relative paths of files in the folder, for error messages."""
        return list(self.by_relative)[:limit]
