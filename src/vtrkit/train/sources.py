"""Batch sources: where the training loop's micro-batches come from.

A batch source yields this process's micro-batches of one epoch and can say exactly where it
stands (``state_dict``), so any method resumes mid-epoch with the batches an uninterrupted run
would have seen. :func:`~vtrkit.train.loop.fit` calls :meth:`BatchSource.start_epoch` before each
epoch (also after a mid-epoch resume, when the source keeps the plan it restored), then iterates.

Two sources exist: :class:`LoaderSource` (a map-style dataset through a ``DataLoader``, for the
frame-based methods and pretraining) and VideoCLIP's retrieval-augmented plan
(:class:`vtrkit.videoclip.source.VideoClipSource`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from vtrkit.config import Config
from vtrkit.distributed import DistInfo


class BatchSource(Protocol):
    """What :func:`~vtrkit.train.loop.fit` needs from a source of micro-batches."""

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (the same on every process)."""
        ...

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        """Prepare ``epoch``'s plan (a resumed source already in ``epoch`` keeps its own)."""
        ...

    def __iter__(self) -> Iterator[dict[str, Tensor] | None]:
        """This process's remaining micro-batches of the epoch (None: a batch with nothing usable,
        e.g. every video failed to decode)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """This process's position, enough to continue exactly."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def per_process_batch(cfg: Config, info: DistInfo, unit: int = 1) -> int:
    """Items per micro-batch: ``train.batch_size / (world_size × grad_accum)``.

    ``unit`` is what the global batch must be a whole number of per micro-batch (VideoCLIP: the
    videos of one group).
    """
    factors = [info.world_size, cfg.train.grad_accum] + ([unit] if unit > 1 else [])
    if cfg.train.batch_size % (info.world_size * cfg.train.grad_accum * unit):
        names = "world_size × grad_accum" + (" × videos per group" if unit > 1 else "")
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by {names} = "
            + " × ".join(str(f) for f in factors)
        )
    return cfg.train.batch_size // (info.world_size * cfg.train.grad_accum)


class _SkipSampler(Sampler[int]):
    """The epoch's index order with the first ``skip`` indices removed (mid-epoch resume)."""

    def __init__(self, base: DistributedSampler, skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class LoaderSource:
    """Shuffled, sharded micro-batches of a map-style dataset (one ``DataLoader`` per epoch).

    Every process sees a disjoint ``1 / world_size`` of each epoch (``DistributedSampler`` with
    ``train.seed``, last partial batch dropped); the position is the number of micro-batches this
    epoch has already yielded.
    """

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable[[list[Any]], dict[str, Any] | None],
        cfg: Config,
        info: DistInfo,
    ) -> None:
        self.dataset, self.collate = dataset, collate
        self.per_process = per_process_batch(cfg, info)
        self.grad_accum = cfg.train.grad_accum
        self.num_workers = cfg.data.num_workers
        self.seed = cfg.train.seed
        self.pin_memory = info.device.type == "cuda"
        self.sampler = DistributedSampler(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=cfg.train.seed,
            drop_last=True,
        )
        steps = len(self.sampler) // self.per_process // self.grad_accum
        if steps == 0:
            raise ValueError(
                f"the training set ({len(dataset)} items) is smaller than one global batch "
                f"({cfg.train.batch_size}); lower train.batch_size"
            )
        self._steps = steps
        self.epoch, self.consumed = -1, 0

    def steps_per_epoch(self) -> int:
        return self._steps

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.per_process,
            sampler=_SkipSampler(self.sampler, self.consumed * self.per_process),
            collate_fn=self.collate,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=False,
            pin_memory=self.pin_memory,
            # Its own generator: creating the iterator draws the workers' base seed, which
            # would otherwise come from the global RNG and shift it on a mid-epoch resume.
            generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch),
        )
        limit = self._steps * self.grad_accum
        for batch in loader:
            if self.consumed >= limit:
                return
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
