"""Does searching an index with the default settings find what the model can find?

Indexes the first ``--n`` test videos of the synthetic benchmark with a trained model (default
settings: the window, stride and re-ranking a user gets from ``vtrkit index build`` and
``vtrkit search``), searches each video's caption and counts how often the video comes first
(R@1, one hit per video). Beside it: the same search without re-ranking, and the model on whole
videos (``encode_videos`` + ``similarity``, the Python API, no index), which is what the index
should reach.

    python benchmarks/search_quality.py --checkpoint runs/demo               # after `make demo`
    python benchmarks/search_quality.py --checkpoint runs/demo --n 1000 --json out.json

The videos come from ``--data`` (default: the checkpoint's ``data.root``); when that folder holds
no synthetic test split, a fresh one is generated into the work folder (``--seed``).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

import vtrkit
from vtrkit.checkpoint import load_trained
from vtrkit.data.datasets import read_dataset
from vtrkit.data.synthetic import generate
from vtrkit.index import VideoIndex
from vtrkit.inference import load_model_for_index


def test_records(cfg_data, data: Path | None, n: int, work: Path, seed: int) -> list:
    """The first ``n`` test records of ``data`` (or of a freshly generated synthetic set)."""
    root = data or Path(cfg_data.root)
    if not (root / "MSRVTT_JSFUSION_test.csv").is_file():
        root = work / "synthetic"
        print(f"no synthetic test split under {data or cfg_data.root}: generating {n} videos")
        generate(root, n_train=0, n_test=n, n_long=0, seed=seed)
    cfg = cfg_data.model_copy(update={"root": root, "video_dir": None, "frame_cache": None})
    records = read_dataset(cfg, cfg.test_split)[:n]
    if len(records) < n:
        raise SystemExit(f"{root} holds only {len(records)} test videos; use --n {len(records)}")
    return records


def recall(ranked: list[list[Path]], truth: list[Path], at: int) -> int:
    return sum(t in r[:at] for r, t in zip(ranked, truth, strict=True))


def whole_video_ranks(model, records, batch: int = 64) -> list[list[Path]]:
    """Videos ranked for each caption by the model on whole videos (no index, no windows)."""
    paths = [r.path.resolve() for r in records]
    parts = [vtrkit.encode_videos(model, paths[i : i + batch]) for i in range(0, len(paths), batch)]
    videos = parts[0] if len(parts) == 1 else type(parts[0]).cat(parts)
    texts = vtrkit.encode_texts(model, [r.captions[0] for r in records])
    scores = vtrkit.similarity(model, texts, videos)
    order = torch.argsort(-scores, dim=1, stable=True)
    return [[paths[j] for j in row.tolist()] for row in order]


def index_ranks(index: VideoIndex, records, rerank: int | None, k: int = 10) -> tuple[list, float]:
    index.search_videos(records[0].captions[0], k=k, rerank=rerank)  # warm-up: the ANN is loaded
    started = time.perf_counter()
    ranked = [
        [h.path for h in index.search_videos(r.captions[0], k=k, rerank=rerank)] for r in records
    ]
    return ranked, (time.perf_counter() - started) * 1000 / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="run or checkpoint folder")
    parser.add_argument("--data", type=Path, default=None, help="synthetic benchmark folder")
    parser.add_argument("--n", type=int, default=50, help="test videos to index")
    parser.add_argument("--work", type=Path, default=None, help="folder for the index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        config = load_trained(args.checkpoint, "cpu").config
        records = test_records(config.data, args.data, args.n, work, args.seed)
        listing = work / "videos.txt"
        listing.write_text("".join(f"{r.path.resolve()}\n" for r in records))
        truth = [r.path.resolve() for r in records]

        encoder = load_model_for_index(args.checkpoint)
        started = time.perf_counter()
        index = VideoIndex.build(listing, work / "lib.vtr", encoder)
        build_s = time.perf_counter() - started
        with index:
            s = index.library.settings
            rows = {}
            for name, rerank in (("index search, defaults", None), ("index search, cosine", 0)):
                ranked, ms = index_ranks(index, records, rerank)
                rows[name] = (recall(ranked, truth, 1), recall(ranked, truth, 5), ms)
            default_rerank = index.default_rerank
            windows = index.catalog.counts()["windows"]
        whole = whole_video_ranks(vtrkit.load_model(args.checkpoint), records)
        rows["whole videos, encode_videos + similarity"] = (
            recall(whole, truth, 1),
            recall(whole, truth, 5),
            float("nan"),
        )

    n = len(records)
    print(
        f"\n{n} synthetic test videos, {windows} windows of {s.window_length:g} s every "
        f"{s.window_stride:g} s (the defaults; built in {build_s:.1f} s); default re-ranking: "
        f"{default_rerank} candidates\n"
    )
    print(f"{'':44} {'R@1':>9} {'R@5':>9} {'ms/query':>9}")
    for name, (r1, r5, ms) in rows.items():
        print(f"{name:44} {r1:>4d}/{n:<4d} {r5:>4d}/{n:<4d} {ms:>9.1f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "n": n,
                    "window_length": s.window_length,
                    "window_stride": s.window_stride,
                    "default_rerank": default_rerank,
                    "rows": {
                        k: {"r1": v[0], "r5": v[1], "ms_per_query": v[2]} for k, v in rows.items()
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
