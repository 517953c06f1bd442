"""Two gloo processes, each holding half the batch, give the single-process loss and gradients on
the concatenated batch once gradients are averaged across processes as DDP does (SPEC §0,
"Contrastive loss").

The models are the real ``XClip`` (with temporal encoder and head) and ``Clip4Clip`` (meanP) on a
tiny linear stand-in for the CLIP towers, so the test exercises the models' own gathering without
loading transformers in the spawned processes. The gradient average is an explicit all_reduce
(SUM then / world, DDP's reduction) because constructing a DDP wrapper costs seconds here.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from vtrkit.config import XClipConfig
from vtrkit.losses.contrastive import gather_with_grad
from vtrkit.models.meanpool import Clip4Clip
from vtrkit.models.temporal import TemporalEncoder
from vtrkit.models.xclip import XClip
from vtrkit.models.xclip_head import XClipHead
from vtrkit.train.objectives import ContrastiveObjective

B, NF, NW, S, D, VOCAB = 8, 3, 5, 4, 8, 40
WORLD = 2


class LinearTowers(nn.Module):
    """Stand-in for ClipTowers: a linear image encoder and an embedding + running-sum text encoder."""

    embed_dim = D

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(3 * S * S, D)
        self.token = nn.Embedding(VOCAB, D)
        self.text = nn.Linear(D, D)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.image(pixels.flatten(1))

    def encode_text(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        words = self.text(torch.tanh(self.token(ids)).cumsum(dim=1))
        return words[torch.arange(ids.shape[0]), mask.sum(1) - 1], words


class PermutedUse(nn.Module):
    """Uses gathered features through ``transpose(...).contiguous()``, so the gradient reaching the
    gather is a permuted dense tensor (what the X-CLIP head's slot-major layout produces); torch's
    gloo all_gather backward scrambles such gradients unless they are made contiguous first."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * S * S, D)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = gather_with_grad(self.proj(batch["frames"].flatten(2)))  # [B, Nf, D]
        y = x.transpose(0, 1).contiguous()  # [Nf, B, D]
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        return {"loss": (y.tanh() * weights).sum()}


def make_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    xclip = XClip(
        LinearTowers(),
        TemporalEncoder(D, heads=2, layers=1, max_positions=NF),
        XClipHead(D, NW, NF, XClipConfig(tau=0.1)),
    )
    with torch.no_grad():  # move the head off the identity so every matrix matters
        for p in xclip.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return {
        "xclip": xclip.double(),
        "meanP": Clip4Clip(LinearTowers()).double(),
        "permuted": PermutedUse().double(),
    }


def make_batch() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    frame_len = torch.tensor([3, 1, 2, 3, 2, 3, 1, 3])
    word_len = torch.tensor([5, 3, 2, 4, 5, 2, 3, 4])
    return {
        "frames": torch.randn(B, NF, 3, S, S, generator=g, dtype=torch.float64),
        "video_mask": torch.arange(NF)[None, :] < frame_len[:, None],
        "input_ids": torch.randint(1, VOCAB, (B, NW), generator=g),
        "text_mask": torch.arange(NW)[None, :] < word_len[:, None],
    }


def loss_and_grads(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    # The retrieval models train with the contrastive objective; the probe computes its own loss.
    out = model(batch) if isinstance(model, PermutedUse) else ContrastiveObjective()(model, batch)
    out["loss"].backward()
    result = {"loss": out["loss"].detach()}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        grad = p.grad.detach().clone()
        if dist.is_initialized():
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
        result[name] = grad
    return result


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    half = B // WORLD
    local = {k: v[rank * half : (rank + 1) * half] for k, v in make_batch().items()}
    results = {}
    for kind, model in make_models().items():
        results[kind] = loss_and_grads(model, local)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_loss_and_gradients_equal_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    torch.set_num_threads(1)
    batch = make_batch()
    for kind, model in make_models().items():
        want = loss_and_grads(model, batch)
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"rank{rank}.pt")[kind]
            assert got.keys() == want.keys()
            for name, tensor in want.items():
                torch.testing.assert_close(
                    got[name], tensor, atol=1e-9, rtol=1e-7, msg=f"{kind} {name}"
                )
