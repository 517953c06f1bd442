"""What VideoCLIP's batch source saves for an exact mid-epoch resume, and how it is checked.

Why the plan itself is saved. An epoch's batches are built once, before its first step: with
``retrieval_augment`` the groups of videos come from a FAISS index over global video vectors that
the model *at the start of the epoch* computed. A process restarted mid-epoch holds a model that has
already moved, so it cannot rebuild those groups; the checkpoint therefore stores the epoch's plan
(every group's video indices, about one integer per training video) and the position in it.

Per-process states. Each process draws its pairs from its own numpy generator (seeded by seed,
epoch and rank); :func:`vtrkit.train.loop.fit` gathers every process's source state and RNG states
into ``state.pt`` (``extra["ranks"][rank] = {"rng": ..., "source": ...}``) and each process
restores its own.

Why a data fingerprint. The plan names videos by their position in the training list, so it only
means something for the same list. The checkpoint stores the video ids in order and, per video, its
length, feature width, caption count and a digest of its first feature row, caption times and caption
token ids; a resume on different data stops with an error that names the checkpoint and the
differences instead of silently training on other batches.

Layout of one process's source state (:meth:`vtrkit.videoclip.source.VideoClipSource.state_dict`)::

    {"format": 2,
     "data": {"features": str, "video_ids": [V str], "shape": int64 [V, 3], "digest": uint64 [V]},
     "settings": {...},            # what the plan depends on (see plan_settings)
     "plan": None | {"epoch": int, "videos": int64 [sum of group sizes], "lengths": int64 [G]},
     "position": int,              # micro-batches of the plan already yielded
     "pair_rng": dict | None}      # this process's pair generator
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from vtrkit.config import Config
from vtrkit.videoclip.data import NarratedVideo
from vtrkit.videoclip.sampler import SamplerSettings

log = logging.getLogger(__name__)

_SHOWN = 5
"""How many video ids an error message lists per kind of difference."""


class ResumeMismatchError(ValueError):
    """A checkpoint's saved batch plan does not fit the data or settings of the run resuming it."""


@dataclass(frozen=True)
class DataFingerprint:
    """What identifies the training list a plan's indices refer to.

    ``shape`` [V, 3] int64: seconds, feature width and caption count per video; ``digest`` [V]
    uint64: a hash of the first feature row, caption times and caption token ids per video.
    """

    features: str
    video_ids: list[str]
    shape: np.ndarray
    digest: np.ndarray

    @classmethod
    def of(cls, videos: Sequence[NarratedVideo], features_root: Path | str) -> DataFingerprint:
        """Fingerprint ``videos`` (in training order) loaded from ``features_root``.

        Only the first feature row of each video is hashed: it lies in the page ``np.load`` already
        read, so this costs no extra I/O on a large corpus, yet catches a re-extraction with another
        backbone; lengths, widths and captions are compared in full.
        """
        shape = np.array(
            [(v.seconds, int(v.features.shape[1]), len(v.spans)) for v in videos], dtype=np.int64
        ).reshape(len(videos), 3)
        digest = np.array([_video_digest(v) for v in videos], dtype=np.uint64)
        return cls(str(features_root), [v.video_id for v in videos], shape, digest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "video_ids": list(self.video_ids),
            "shape": self.shape,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataFingerprint:
        return cls(
            str(d["features"]),
            list(d["video_ids"]),
            np.asarray(d["shape"], dtype=np.int64),
            np.asarray(d["digest"], dtype=np.uint64),
        )

    def same_as(self, other: DataFingerprint) -> bool:
        """Same videos in the same order with the same content (the folder path may differ)."""
        return (
            self.video_ids == other.video_ids
            and np.array_equal(self.shape, other.shape)
            and np.array_equal(self.digest, other.digest)
        )


def _video_digest(video: NarratedVideo) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(video.video_id.encode())
    h.update(str(video.features.dtype).encode())
    if video.seconds:
        h.update(np.ascontiguousarray(video.features[0]).tobytes())
    h.update(np.asarray(video.spans, dtype=np.float64).tobytes())
    # Lengths first, then the flat ids: the split into captions is part of what is hashed.
    h.update(np.asarray([len(t) for t in video.token_ids], dtype=np.int64).tobytes())
    h.update(np.fromiter(chain.from_iterable(video.token_ids), dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little")


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN])
    return shown + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def describe_data_difference(saved: DataFingerprint, now: DataFingerprint) -> list[str]:
    """Human-readable differences between the checkpoint's training list and the current one."""
    out: list[str] = []
    if saved.features != now.features:
        out.append(f"features folder {saved.features} at save, {now.features} now")
    if len(saved.video_ids) != len(now.video_ids):
        out.append(f"{len(saved.video_ids)} training videos at save, {len(now.video_ids)} now")
    then = {vid: i for i, vid in enumerate(saved.video_ids)}
    current = {vid: i for i, vid in enumerate(now.video_ids)}
    missing = [vid for vid in saved.video_ids if vid not in current]
    new = [vid for vid in now.video_ids if vid not in then]
    if missing:
        out.append(f"missing now: {_listed(missing)}")
    if new:
        out.append(f"new now: {_listed(new)}")
    changed: list[str] = []
    for vid in (v for v in saved.video_ids if v in current):
        i, j = then[vid], current[vid]
        a, b = saved.shape[i], now.shape[j]
        if not np.array_equal(a, b):
            parts = [
                f"{name} {x} -> {y}"
                for name, x, y in zip(("seconds", "dim", "captions"), a, b, strict=True)
                if x != y
            ]
            changed.append(f"{vid!r} ({', '.join(parts)})")
        elif saved.digest[i] != now.digest[j]:
            changed.append(f"{vid!r} (feature values, caption times or caption tokens)")
    if changed:
        extra = f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
        out.append(f"changed: {', '.join(changed[:_SHOWN])}{extra}")
    common_then = [v for v in saved.video_ids if v in current]
    common_now = [v for v in now.video_ids if v in then]
    if not changed and common_then != common_now:
        out.append("the videos are in a different order")
    return out


@dataclass
class EpochPlan:
    """The groups of one epoch, in training order; ``groups[i]`` holds video indices [k_i]."""

    epoch: int
    groups: list[np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        # One flat array plus lengths: compact in state.pt whatever the number of groups.
        return {
            "epoch": self.epoch,
            "videos": np.concatenate([np.asarray(g, dtype=np.int64) for g in self.groups]),
            "lengths": np.array([len(g) for g in self.groups], dtype=np.int64),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochPlan:
        videos = np.asarray(d["videos"], dtype=np.int64)
        cuts = np.cumsum(np.asarray(d["lengths"], dtype=np.int64))[:-1]
        return cls(int(d["epoch"]), list(np.split(videos, cuts)))


def plan_settings(cfg: Config, world_size: int, sampler: SamplerSettings) -> dict[str, Any]:
    """The settings an epoch's plan and its pair draws depend on (compared on a mid-epoch resume)."""
    vc = cfg.model.videoclip
    return {
        "seed": cfg.train.seed,
        "world_size": world_size,
        "batch_size": cfg.train.batch_size,
        "grad_accum": cfg.train.grad_accum,
        "cluster_k": vc.cluster_k,
        "retrieval_augment": vc.retrieval_augment,
        "pairs_per_video": vc.pairs_per_video,
        "max_text_tokens": vc.max_text_tokens,
        "sampler": asdict(sampler),
    }


def describe_settings_difference(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [
        f"{key}: {saved.get(key)!r} at save, {now.get(key)!r} now"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]


def check_saved_plan(
    where: str,
    saved: dict[str, Any],
    fingerprint: DataFingerprint,
    settings: dict[str, Any],
) -> EpochPlan | None:
    """Check a saved batch-source state against this run; return the mid-epoch plan, if any.

    Raises :class:`ResumeMismatchError` naming the checkpoint ``where`` when the training data
    differ from the checkpoint's, or when it stopped mid-epoch and the plan's settings (world size
    included) differ.
    """
    then = DataFingerprint.from_dict(saved["data"])
    if not then.same_as(fingerprint):
        raise ResumeMismatchError(
            f"checkpoint {where} was trained on different data than this run loads: "
            + "; ".join(describe_data_difference(then, fingerprint) or ["contents differ"])
            + ". Its batch plan and schedule refer to the saved training list; resume with the "
            "data it was trained on (model.videoclip.features, data.*, train.max_train_videos) or "
            "train into a new train.output_dir"
        )
    if saved["plan"] is None:
        return None
    diff = describe_settings_difference(saved["settings"], settings)
    if diff:
        raise ResumeMismatchError(
            f"checkpoint {where} stopped mid-epoch ({saved['position']} micro-batches of epoch "
            f"{int(saved['plan']['epoch']) + 1} done) with a batch plan made under other "
            f"settings: {'; '.join(diff)}. Resume with the saved settings (at least until the "
            "epoch ends) or train into a new train.output_dir"
        )
    flat = np.asarray(saved["plan"]["videos"])
    if flat.size and (flat.min() < 0 or flat.max() >= len(fingerprint.video_ids)):
        raise ResumeMismatchError(f"checkpoint {where}: its batch plan indexes unknown videos")
    return EpochPlan.from_dict(saved["plan"])
