"""The time-budget stop is one decision for all processes (a lone stop would hang the others)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vtrkit.distributed import DistInfo
from vtrkit.distributed import any_process as _any_process

WORLD = 2


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    info = DistInfo(rank=rank, world_size=WORLD, local_rank=rank, device=torch.device("cpu"))
    # Only rank 1 has run out of time in the first round; nobody in the second.
    answers = [_any_process(rank == 1, info), _any_process(False, info)]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(answers))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_process_out_of_time_stops_every_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [True, False]


def test_single_process_decision_is_its_own() -> None:
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert _any_process(True, info) and not _any_process(False, info)
