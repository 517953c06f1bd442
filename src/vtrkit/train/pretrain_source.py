"""The batch source of image–text pretraining: synthetic stills drawn on the fly (SPEC §6).

Nothing is read from disk. Epoch ``e`` is ``pretrain.images_per_epoch`` stills, still ``i`` being
:meth:`~vtrkit.data.synthetic_stills.StillStream.still` ``("train", e, i)`` of the data seed, so
every epoch shows new images and the whole run is a function of the config. Micro-batch ``j`` of
an epoch holds the stills ``j·B/A .. (j+1)·B/A - 1`` of the global batch B split into A
accumulation steps; process ``r`` of W takes its ``r``-th contiguous share of b = B / (W·A), so
the features gathered in rank order are those of the single-process micro-batch.

The position is the epoch and the number of its stills already trained on (global, whatever the
process count): all a resumed run needs to continue with exactly the batches an uninterrupted run
would see, also with another number of processes or accumulation steps.

Batches: ``pixels`` [b, 3, S, S] float32 (normalised), ``input_ids`` [b, Nw] long, ``text_mask``
[b, Nw] bool and ``index`` [b] long (the stills' indices within the epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vtrkit.backbones.tokenizer import Tokenizer
from vtrkit.config import Config
from vtrkit.data.synthetic_stills import StillStream, still_pixels
from vtrkit.distributed import DistInfo

log = logging.getLogger(__name__)

MIN_BATCH = 256
"""SPEC §6 asks for a global batch of at least this many pairs (contrastive negatives)."""


class _MicroBatches(Dataset):
    """Item ``j`` is this process's share of micro-batch ``j`` of one epoch."""

    def __init__(self, source: PretrainSource, epoch: int) -> None:
        self.source, self.epoch = source, epoch

    def __len__(self) -> int:
        return self.source.micro_per_epoch

    def __getitem__(self, j: int) -> dict[str, Tensor]:
        return self.source.micro_batch(self.epoch, j)


class PretrainSource:
    """Stills and their captions for :func:`~vtrkit.train.loop.fit` (the ``BatchSource``
    protocol of :mod:`vtrkit.train.sources`).

    Args:
        cfg: the run's config (``pretrain``, ``train.batch_size``, ``train.grad_accum``,
            ``data.num_workers``: processes that render ahead of training).
        tokenizer: the CLIP tokenizer the model is trained with.
        image_size: S, the model's input size (the towers' ``image_size``).
        info: this process's place in the process group.
    """

    def __init__(self, cfg: Config, tokenizer: Tokenizer, image_size: int, info: DistInfo) -> None:
        p, t = cfg.pretrain, cfg.train
        parts = info.world_size * t.grad_accum
        if t.batch_size % parts:
            raise ValueError(
                f"train.batch_size={t.batch_size} must be divisible by world_size × grad_accum "
                f"= {info.world_size} × {t.grad_accum}"
            )
        if t.batch_size < MIN_BATCH:
            log.warning(
                "train.batch_size=%d is below the %d pairs SPEC §6 asks for in pretraining",
                t.batch_size,
                MIN_BATCH,
            )
        self.stream = StillStream.from_config(p)
        self.tokenizer, self.image_size, self.info = tokenizer, image_size, info
        self.max_words, self.render_size = p.max_words, p.render_size
        self.grad_accum, self.num_workers = t.grad_accum, cfg.data.num_workers
        self.per_process = t.batch_size // parts
        self.per_micro = t.batch_size // t.grad_accum
        self._steps = p.images_per_epoch // t.batch_size
        if self._steps == 0:
            raise ValueError(
                f"pretrain.images_per_epoch={p.images_per_epoch} is smaller than one global batch "
                f"({t.batch_size}); raise it or lower train.batch_size"
            )
        self.micro_per_epoch = self._steps * t.grad_accum
        # What still i of an epoch is, and how many stills an epoch and a step hold.
        self.identity = {
            "data_seed": p.data_seed,
            "twins": p.twins,
            "max_objects": p.max_objects,
            "heldout_pairs": p.heldout_pairs,
            "heldout_positions": p.heldout_positions,
            "images_per_epoch": p.images_per_epoch,
            "batch_size": t.batch_size,
        }
        self.epoch, self.consumed = -1, 0

    def indices(self, j: int) -> range:
        """Epoch indices of this process's stills in micro-batch ``j``."""
        start = j * self.per_micro + self.info.rank * self.per_process
        return range(start, start + self.per_process)

    def micro_batch(self, epoch: int, j: int) -> dict[str, Tensor]:
        """This process's share of micro-batch ``j`` of ``epoch`` (see the module docstring)."""
        index = self.indices(j)
        stills = self.stream.stills("train", epoch, index)
        ids, mask = self.tokenizer([s.caption for s in stills], self.max_words)
        return {
            "pixels": still_pixels(stills, self.image_size, self.render_size),
            "input_ids": ids,
            "text_mask": mask,
            "index": torch.tensor(list(index), dtype=torch.long),
        }

    def steps_per_epoch(self) -> int:
        return self._steps

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        """Start ``epoch`` at its first micro-batch, unless this source was resumed inside it."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        """This process's remaining micro-batches of the current epoch."""
        if self.epoch < 0:
            raise RuntimeError("PretrainSource: call start_epoch(epoch, model) before iterating")
        remaining = range(self.consumed, self.micro_per_epoch)
        if self.num_workers == 0:
            batches: Any = (self.micro_batch(self.epoch, j) for j in remaining)
        else:
            loader = DataLoader(
                torch.utils.data.Subset(_MicroBatches(self, self.epoch), list(remaining)),
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.info.device.type == "cuda",
            )
            batches = iter(loader)
        for batch in batches:
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``epoch``, ``stills`` (of the epoch already yielded, over all processes) and the data
        settings that give positions their meaning."""
        return {"epoch": self.epoch, "stills": self.consumed * self.per_micro, **self.identity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s position; refuses a state written with other data settings,
        whose positions would name other stills."""
        for key, value in self.identity.items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"cannot resume pretraining from {state.get('checkpoint', 'this checkpoint')}: "
                    f"it was written with {key}={state[key]}, this run has {value}; restore "
                    "that setting or start a new train.output_dir"
                )
        stills = int(state["stills"])
        if stills % self.per_micro:
            raise ValueError(
                f"cannot resume pretraining: {stills} stills into the epoch is not a whole number "
                f"of micro-batches of {self.per_micro}; resume with the train.grad_accum it ran with"
            )
        self.epoch, self.consumed = int(state["epoch"]), stills // self.per_micro
