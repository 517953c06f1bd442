"""MSVD (YouTube2Text) in the CLIP4Clip layout: a caption pickle plus one id list per split.

Files under ``root``: ``raw-captions.pkl`` (video id -> list of captions, each a list of tokens)
and ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt`` (one video id per line). Every
video keeps all of its captions (about 40), so the test split is multi-caption. Videos are
``video_dir/<id>.avi`` (or another common extension), ``video_dir`` defaulting to ``root/videos``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from vtrkit.data.datasets.files import (
    AnnotationError,
    attach_videos,
    read_text,
    require_file,
    require_rows,
    unknown_split,
    warn_bad_row,
)
from vtrkit.data.records import VideoRecord

CAPTIONS_PKL = "raw-captions.pkl"
SPLITS = ("train", "val", "test")


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only built-in containers and strings.

    The caption file is plain data; refusing every global means a tampered file cannot run code.
    """

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data allowed")


def _load_captions(path: Path) -> dict:
    require_file(path, "MSVD captions")
    try:
        data = _PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise AnnotationError(f"{path}: not a readable caption pickle ({exc})") from exc
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: must map video ids to caption lists, found {type(data)}")
    return data


def _caption_text(caption: object) -> str | None:
    """A caption is a token list (joined by spaces) or, in some re-exports, already a string."""
    if isinstance(caption, str):
        return caption.strip() or None
    if isinstance(caption, (list, tuple)) and all(isinstance(t, str) for t in caption):
        return " ".join(t.strip() for t in caption if t.strip()) or None
    return None


def read_msvd(root: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """Records of one split (``train``, ``val`` or ``test``), every caption of each video."""
    if split not in SPLITS:
        raise unknown_split(split, SPLITS, "MSVD")
    root = Path(root)
    video_dir = Path(video_dir) if video_dir is not None else root / "videos"
    list_file = root / f"{split}_list.txt"
    ids = read_text(list_file, f"MSVD {split} id list").splitlines()
    pkl = root / CAPTIONS_PKL
    captions = _load_captions(pkl)
    pending = []
    seen: set[str] = set()
    for line, raw in enumerate(ids, start=1):
        vid = raw.strip()
        if not vid or vid in seen:
            continue
        seen.add(vid)
        entries = captions.get(vid)
        if not isinstance(entries, list) or not entries:
            warn_bad_row(list_file, line, f"{vid} has no caption list in {pkl}")
            continue
        texts = []
        for k, entry in enumerate(entries):
            text = _caption_text(entry)
            if text is None:
                warn_bad_row(pkl, f"entry {vid}[{k}]", "caption is not a list of tokens")
            else:
                texts.append(text)
        if texts:
            pending.append((VideoRecord(vid, Path(), texts, split), [vid]))
    require_rows(len(pending), list_file, split)
    return attach_videos(pending, video_dir, list_file)
