"""Dataset readers: every supported annotation format turned into a list of :class:`VideoRecord`.

:func:`read_dataset` picks the reader named by ``DataConfig.dataset``; each reader can also be
called directly with an annotation folder (or file, for ``custom``), a split and a video folder.
"""

from __future__ import annotations

from vtrkit.config import DataConfig
from vtrkit.data.datasets.activitynet import read_activitynet
from vtrkit.data.datasets.custom import read_custom
from vtrkit.data.datasets.didemo import read_didemo
from vtrkit.data.datasets.files import VIDEO_EXTENSIONS, AnnotationError, find_video
from vtrkit.data.datasets.lsmdc import read_lsmdc
from vtrkit.data.datasets.msrvtt import read_msrvtt
from vtrkit.data.datasets.msvd import read_msvd
from vtrkit.data.datasets.youcook2 import read_youcook2
from vtrkit.data.records import VideoRecord, expand_segments

__all__ = [
    "VIDEO_EXTENSIONS",
    "AnnotationError",
    "expand_segments",
    "find_video",
    "read_activitynet",
    "read_custom",
    "read_dataset",
    "read_didemo",
    "read_lsmdc",
    "read_msrvtt",
    "read_msvd",
    "read_youcook2",
]


def read_dataset(cfg: DataConfig, split: str) -> list[VideoRecord]:
    """Records of ``split`` for the dataset ``cfg`` describes.

    ``cfg.root`` holds the annotation files and ``cfg.video_dir`` (default ``root/videos``) the
    videos; ``custom`` reads ``cfg.annotation`` instead. ``synthetic`` is the built-in benchmark,
    which is written in the MSR-VTT layout. A config-wide ``cfg.window`` is applied to records
    that have no window of their own.
    """
    root, video_dir = cfg.root, cfg.video_dir
    match cfg.dataset:
        case "synthetic" | "msrvtt":
            records = read_msrvtt(root, split, video_dir)
        case "msvd":
            records = read_msvd(root, split, video_dir)
        case "lsmdc":
            records = read_lsmdc(root, split, video_dir)
        case "didemo":
            records = read_didemo(root, split, video_dir)
        case "activitynet":
            records = read_activitynet(root, split, video_dir)
        case "youcook2":
            records = read_youcook2(root, split, video_dir)
        case "custom":
            if cfg.annotation is None:
                raise AnnotationError(
                    "data.annotation must name the CSV or JSONL caption file for dataset 'custom'"
                )
            records = read_custom(cfg.annotation, split, video_dir)
        case other:
            raise AnnotationError(f"data.dataset {other!r} has no reader")
    if cfg.window is not None:
        window = (float(cfg.window[0]), float(cfg.window[1]))
        for record in records:
            if record.window is None:
                record.window = window
    return records
