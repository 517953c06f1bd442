"""VideoCLIP ablation on the synthetic long narrated videos: prints a Markdown table.

Rows (same number of optimiser steps each): full VideoCLIP; without retrieval-augmented batches;
without overlap (aligned pairs); with ``--with-both`` also without both (the paper's last ablation
row). Columns: zero-shot segment retrieval (text→video R@1/5/10, MdR), paragraph retrieval R@1
(first 32 s against their joined narration), step localisation (frame accuracy, recall) and 5-way
multiple-choice accuracy on the validation split.

"Zero-shot" here means: trained on the synthetic long-video *training* split, evaluated on its
validation split without any fine-tuning. No pretrained weights exist on this machine, so the
per-second features come from a tiny *randomly initialised* CLIP image tower (fixed seed) and the
text encoder is a small random BERT over a word vocabulary of the training captions.

Run (defaults take a few minutes on 2 CPU cores)::

    PYTHONPATH=src python benchmarks/videoclip_ablation.py --out runs/videoclip_ablation

The synthetic data and features are cached under ``--out`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vtrkit.config import ClipArch, Config, config_from_dict
from vtrkit.data.datasets import VIDEO_EXTENSIONS, read_youcook2
from vtrkit.videoclip.data import build_word_tokenizer, load_narrated_videos
from vtrkit.videoclip.features import (
    ClipSecondExtractor,
    extract_features,
    index_summary,
    read_index,
    videos_in_folder,
)
from vtrkit.videoclip.train import load_videoclip, run_videoclip
from vtrkit.videoclip.zeroshot import duplicate_ceiling, retrieval_task, zero_shot_retrieval

VARIANTS: dict[str, dict[str, Any]] = {
    "full VideoCLIP": {"retrieval_augment": True, "aligned": False},
    "without retrieval augmentation": {"retrieval_augment": False, "aligned": False},
    "without overlap (aligned pairs)": {"retrieval_augment": True, "aligned": True},
}
BOTH_OFF = {"without both": {"retrieval_augment": False, "aligned": True}}
# Chosen by linear probes of segment features on this data (colour, shape, verb): among a few
# tiny random towers, 32-px input with 4-px patches kept the most colour and motion information.
TINY_CLIP = ClipArch(
    embed_dim=64,
    image_size=32,
    patch_size=4,
    vision_width=64,
    vision_layers=1,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
    context_length=16,
    vocab_size=64,
)
METRICS = (
    ("seg. R@1", "t2v/R@1", 1),
    ("seg. R@5", "t2v/R@5", 1),
    ("seg. R@10", "t2v/R@10", 1),
    ("seg. MdR", "t2v/MdR", 0),
    ("para. R@1", "para/R@1", 1),
    ("loc. frame acc", "loc/frame_acc", 1),
    ("loc. recall", "loc/recall", 1),
    ("MC acc (5-way)", "mc/accuracy", 1),
)


def prepare_data(out: Path, n_long: int, seed: int) -> Path:
    """Generate the long narrated videos once (``out/data/long``)."""
    from vtrkit.data.synthetic import generate

    data = out / "data"
    marker = data / "long" / "youcookii_annotations_trainval.json"
    stamp = out / "data.json"
    wanted = {"n_long": n_long, "seed": seed}
    if not (marker.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        print(generate(data, n_train=0, n_test=0, n_long=n_long, seed=seed))
        stamp.write_text(json.dumps(wanted))
    return data / "long"


def prepare_features(long_dir: Path, out: Path, seed: int) -> Path:
    """Per-second features of every long video from a tiny random CLIP (resumable)."""
    # The folder name records the extractor, so a changed tower never reuses stale arrays.
    tag = hashlib.sha1(f"{TINY_CLIP.model_dump_json()}-{seed}".encode()).hexdigest()[:8]
    feats = out / f"features-{tag}"
    torch.manual_seed(seed)
    from vtrkit.backbones import clip_from_arch

    towers = clip_from_arch(TINY_CLIP)
    videos = videos_in_folder(long_dir / "videos", VIDEO_EXTENSIONS)
    started = time.perf_counter()
    summary = extract_features(videos, feats, ClipSecondExtractor(towers))
    print(
        f"features: {summary.extracted} extracted, {summary.skipped} reused, "
        f"{summary.failed} failed in {time.perf_counter() - started:.0f} s; "
        f"{index_summary(read_index(feats))}"
    )
    return feats


def variant_config(
    args: argparse.Namespace, long_dir: Path, feats: Path, name: str, seed: int
) -> Config:
    switches = {**VARIANTS, **BOTH_OFF}[name]
    slug = name.split(" (")[0].replace(" ", "_")
    return config_from_dict(
        {
            "name": f"videoclip-{slug}",
            "data": {"dataset": "youcook2", "root": str(long_dir), "val_split": "val"},
            "model": {
                "kind": "videoclip",
                "videoclip": {
                    "features": str(feats),
                    "d_in": TINY_CLIP.embed_dim,
                    "hidden": args.hidden,
                    "heads": 4,
                    "text_layers": args.layers,
                    "video_layers": args.layers,
                    "cluster_k": args.cluster_k,
                    "pairs_per_video": 16,
                    # Synthetic narration is ~5 tokens per ~7 s (HowTo100M: ~10 per ~4 s), so the
                    # 8..64-token text clips of SPEC §3 are scaled to cover a similar 3-32 s.
                    "text_clip_tokens": [4, 24],
                    **switches,
                },
            },
            "optim": {"lr_new": args.lr, "weight_decay": 0.0, "warmup": 0.1},
            "train": {
                "output_dir": str(args.out / "runs" / f"{slug}-seed{seed}"),
                "epochs": 10_000,
                "max_steps": args.steps,
                "seed": seed,
                "eval_every_epoch": False,
                "log_every": 20,
            },
        },
        source=f"videoclip ablation variant {name!r}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/videoclip_ablation"))
    parser.add_argument("--n-long", type=int, default=300, help="long videos (20%% validation)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per variant")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2, help="text and video layers")
    parser.add_argument("--cluster-k", type=int, default=8, help="videos per batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)"
    )
    parser.add_argument("--with-both", action="store_true", help="add the row without both")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    long_dir = prepare_data(args.out, args.n_long, args.seed)
    feats = prepare_features(long_dir, args.out, args.seed)

    train_records = read_youcook2(long_dir, "train")
    val_records = read_youcook2(long_dir, "val")
    tok = build_word_tokenizer(s.text for r in train_records for s in r.segments)
    val_videos = load_narrated_videos(val_records, feats, tok)
    task = retrieval_task(val_videos, "segment", 32)
    ceiling = duplicate_ceiling(task)
    paragraph_task = retrieval_task(val_videos, "paragraph", 32)

    variants = {**VARIANTS, **(BOTH_OFF if args.with_both else {})}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(args.seeds):
        for name in variants:
            cfg = variant_config(args, long_dir, feats, name, args.seed + run)
            t0 = time.perf_counter()
            result, metrics = run_videoclip(cfg, device="cpu")
            assert metrics is not None
            model, tok_run, _ = load_videoclip(result.run_dir / "last")
            metrics["para/R@1"] = zero_shot_retrieval(model, tok_run, paragraph_task)["t2v/R@1"]
            results[name].append(metrics)
            seconds[name].append(time.perf_counter() - t0)
            print(
                f"{name} (seed {args.seed + run}): {result.steps} steps, {seconds[name][-1]:.0f} s"
            )

    print()
    print("Command: PYTHONPATH=src python " + " ".join(sys.argv))
    print()
    last = args.seed + args.seeds - 1
    seeds = f"seed {args.seed}" if args.seeds == 1 else f"mean ± sd over seeds {args.seed}..{last}"
    print(
        f"VideoCLIP ablation on the synthetic long videos: {len(train_records)} training / "
        f"{len(val_records)} validation videos, {len(task.texts)} validation segments; "
        f"{args.steps} steps of {args.cluster_k} videos × 16 pairs per variant; {seeds}; "
        f"total {time.perf_counter() - started:.0f} s."
    )
    print()
    print("| variant | " + " | ".join(label for label, _, _ in METRICS) + " | train s |")
    print("|---" * (len(METRICS) + 2) + "|")
    for name in variants:
        cells = []
        for _, key, digits in METRICS:
            values = np.array([m[key] for m in results[name]])
            cell = f"{values.mean():.{digits}f}"
            if len(values) > 1:
                cell += f" ± {values.std(ddof=1):.{digits}f}"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(seconds[name]):.0f} |")
    chance_loc = np.mean([1.0 / len(set(v.texts)) for v in val_videos]) * 100
    print()
    print(
        f"Reference points: identical captions of different segments cap segment R@1 at "
        f"{ceiling:.1f} (a model that cannot tell them apart); chance is "
        f"{100.0 / len(task.clips):.1f} for segment R@1, {100.0 / len(paragraph_task.clips):.1f} "
        f"for paragraph R@1, about {chance_loc:.1f} for frame accuracy and 20.0 for 5-way "
        "multiple choice."
    )


if __name__ == "__main__":
    main()
