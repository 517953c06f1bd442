"""VideoCLIP's batch source: per-epoch retrieval-augmented groups of overlapping pairs (SPEC §3).

Before every epoch (:meth:`VideoClipSource.start_epoch`): with ``retrieval_augment`` every training
video gets a global vector from the current model, the mean over ``pairs_per_video`` sampled pairs
of (pooled video + pooled text) / 2, and the videos are grouped by
:func:`~vtrkit.videoclip.batcher.cluster_batches`; otherwise a random permutation is cut into
groups. Each group of ``cluster_k`` videos is one contrastive batch of ``cluster_k ×
pairs_per_video`` fresh pairs (the objective takes negatives within a group).

An optimiser step takes ``train.batch_size / cluster_k`` groups, split over processes and
``train.grad_accum`` micro-batches: micro-batch ``m`` of process ``r`` gets the step's groups in
slot ``m · world_size + r``. Every process computes the same plan (same seed); each draws its pairs
from its own generator (seeded by seed, epoch and rank).

Exact resume: :meth:`state_dict` holds the epoch's plan (a process restarted mid-epoch holds a model
that has moved, so it could not rebuild the groups), the position in it, this process's pair
generator and a fingerprint of the training list; :meth:`load_state_dict` refuses, naming what
changed, a checkpoint made on other data or (mid-epoch) under other plan settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vtrkit.config import Config, VideoClipConfig
from vtrkit.distributed import DistInfo, broadcast_object
from vtrkit.videoclip.batcher import cluster_batches, random_batches
from vtrkit.videoclip.data import NarratedVideo, PairBatcher
from vtrkit.videoclip.model import VideoClipModel
from vtrkit.videoclip.resume import (
    DataFingerprint,
    EpochPlan,
    ResumeMismatchError,
    check_saved_plan,
    plan_settings,
)
from vtrkit.videoclip.sampler import SamplerSettings

FORMAT = 2
"""Layout of :meth:`VideoClipSource.state_dict` (1 was the loop-specific layout before fit)."""


@torch.no_grad()
def global_video_vectors(
    model: VideoClipModel,
    batcher: PairBatcher,
    rng: np.random.Generator,
    videos_per_chunk: int = 16,
) -> np.ndarray:
    """[V, H]: per video, the mean over its sampled pairs of (pooled video + pooled text) / 2."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(batcher.videos)
    out = torch.zeros((n, model.hidden_size))
    counts = torch.zeros(n)
    for start in range(0, n, videos_per_chunk):
        batch = batcher.batch(range(start, min(n, start + videos_per_chunk)), rng)
        video = model.encode_video(batch["video_feats"].to(device), batch["video_mask"].to(device))
        text = model.encode_text(batch["input_ids"].to(device), batch["text_mask"].to(device))
        pair = ((video + text) / 2).float().cpu()
        out.index_add_(0, batch["video_index"], pair)
        counts.index_add_(0, batch["video_index"], torch.ones(len(pair)))
    model.train(was_training)
    return (out / counts[:, None]).numpy()


def epoch_groups(
    model: VideoClipModel, batcher: PairBatcher, vc: VideoClipConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """The epoch's groups of video indices (retrieval-augmented or random)."""
    n = len(batcher.videos)
    if not vc.retrieval_augment:
        return [b.videos for b in random_batches(n, vc.cluster_k, rng)]
    vectors = global_video_vectors(model, batcher, rng)
    return [b.videos for b in cluster_batches(vectors, vc.cluster_k, rng)]


class VideoClipSource:
    """The :class:`~vtrkit.train.sources.BatchSource` of VideoCLIP training.

    Args:
        videos: the training videos (stored features + timed captions), in a fixed order.
        batcher: draws and collates the pairs of a group.
        cfg: the run's config (``train.seed``, ``batch_size``, ``grad_accum``; ``model.videoclip``).
        info: this process's place in the process group.
        sampler: the pair sampler's settings (part of what a saved plan depends on).
    """

    def __init__(
        self,
        videos: Sequence[NarratedVideo],
        batcher: PairBatcher,
        cfg: Config,
        info: DistInfo,
        sampler: SamplerSettings,
    ) -> None:
        vc = cfg.model.videoclip
        self.batcher, self.info, self.seed, self.vc = batcher, info, cfg.train.seed, vc
        self.grad_accum = cfg.train.grad_accum
        slots = info.world_size * cfg.train.grad_accum
        if cfg.train.batch_size % (vc.cluster_k * slots):
            raise ValueError(
                f"train.batch_size={cfg.train.batch_size} (videos per optimiser step) must be a "
                f"multiple of model.videoclip.cluster_k × world_size × grad_accum = "
                f"{vc.cluster_k} × {info.world_size} × {cfg.train.grad_accum}"
            )
        self.groups_per_step = cfg.train.batch_size // vc.cluster_k
        self.groups_per_slot = self.groups_per_step // slots
        groups_per_epoch = max(1, len(videos) // vc.cluster_k)
        self._steps = groups_per_epoch // self.groups_per_step
        if self._steps == 0:
            raise ValueError(
                f"{len(videos)} training videos make {groups_per_epoch} groups of "
                f"model.videoclip.cluster_k={vc.cluster_k}, fewer than one optimiser step's "
                f"{self.groups_per_step} (train.batch_size={cfg.train.batch_size}); lower "
                "train.batch_size or cluster_k"
            )
        self.fingerprint = DataFingerprint.of(videos, vc.features)
        self.settings = plan_settings(cfg, info.world_size, sampler)
        self.plan: EpochPlan | None = None
        self.pair_rng: np.random.Generator | None = None
        self.position = 0
        """Micro-batches of the current plan this process has yielded."""

    def steps_per_epoch(self) -> int:
        return self._steps

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        if self.plan is not None and self.plan.epoch == epoch:
            return  # resumed mid-epoch: keep the saved plan, position and pair generator
        # Same seed on every process, so the groups agree; the pairs differ per process.
        group_rng = np.random.default_rng([self.seed, epoch])
        groups = epoch_groups(model, self.batcher, self.vc, group_rng)  # type: ignore[arg-type]
        self.plan = EpochPlan(epoch, broadcast_object(groups))  # type: ignore[arg-type]
        self.pair_rng = np.random.default_rng([self.seed, epoch, self.info.rank, 1])
        self.position = 0

    def _micro_groups(self, micro: int) -> list[np.ndarray]:
        """The groups of this process's ``micro``-th micro-batch of the epoch."""
        assert self.plan is not None
        step, m = divmod(micro, self.grad_accum)
        slot = m * self.info.world_size + self.info.rank
        first = step * self.groups_per_step + slot * self.groups_per_slot
        return self.plan.groups[first : first + self.groups_per_slot]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        assert self.plan is not None and self.pair_rng is not None, "start_epoch first"
        while self.position < self._steps * self.grad_accum:
            groups = self._micro_groups(self.position)
            # Drawn group by group (the same draws as one group per micro-batch), padded together.
            pairs = [self.batcher.sample(group, self.pair_rng) for group in groups]
            batch = self.batcher.collate([pair for part in pairs for pair in part])
            sizes = torch.tensor([len(part) for part in pairs])
            batch["group"] = torch.repeat_interleave(torch.arange(len(pairs)), sizes)
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        mid_epoch = self.plan is not None and 0 < self.position < self._steps * self.grad_accum
        return {
            "format": FORMAT,
            "data": self.fingerprint.to_dict(),
            "settings": self.settings,
            "plan": self.plan.to_dict() if mid_epoch and self.plan is not None else None,
            "position": self.position if mid_epoch else 0,
            "pair_rng": self.pair_rng.bit_generator.state if mid_epoch and self.pair_rng else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved position; raises :class:`ResumeMismatchError` naming the checkpoint
        (``state["checkpoint"]``) when the data or, mid-epoch, the plan's settings differ."""
        where = state.get("checkpoint", "the checkpoint")
        if state.get("format") != FORMAT:
            raise ResumeMismatchError(
                f"checkpoint {where}: VideoCLIP batch-plan format {state.get('format')!r}, this "
                f"vtrkit reads format {FORMAT}; train into a new train.output_dir"
            )
        plan = check_saved_plan(where, state, self.fingerprint, self.settings)
        if plan is None:
            self.plan, self.pair_rng, self.position = None, None, 0
            return
        rng = np.random.default_rng()
        rng.bit_generator.state = state["pair_rng"]
        self.plan, self.pair_rng, self.position = plan, rng, int(state["position"])
