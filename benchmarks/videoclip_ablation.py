"""VideoCLIP's ablations on topical long videos with speech-like narration, on pretrained-CLIP features.

Conditions under which VideoCLIP's claims can show (SPEC §6): the synthetic long videos come in
``--topics`` topics (a topic fixes the objects and actions, so a topic's videos are mutual hard
negatives and a retrieval-augmented batch is harder than a random one), the training narration has
speech-like timing (lines shifted by up to ±5 s, dropped, merged, cut, filler lines), and
evaluation is on the validation videos' clean, exactly timed segments. The per-second features
come from the pretrained tiny CLIP's image tower (the analogue of S3D), extracted once.

Arms (same optimiser steps, one retrieval-augmented group of ``--cluster-k`` videos × 16 pairs per
step, once per seed): full VideoCLIP; without retrieval augmentation (random groups); without
overlap (aligned pairs); without both. Columns: zero-shot segment retrieval in both directions,
paragraph retrieval, step localisation and 5-way multiple choice on the validation split.

Diagnostics per epoch (written into each arm's JSON and summarised in a second table): batch
coverage (share of training videos in the epoch's groups) and, with the model at the start of
the epoch, the mean in-batch negative similarity (text of one video · video clip of another video
of the same group, dot products as VideoCLIP scores) of the epoch's own groups, of retrieved
groups and of random groups, and the share of same-topic video pairs in each.

Run (resumable: finished arms are reused, a killed one resumes from its last checkpoint)::

    PYTHONPATH=src python benchmarks/videoclip_ablation.py --out runs/ablation_videoclip \\
        --backbone-checkpoint runs/pretrain_tiny

Smoke run (random towers, a few short videos, a few steps, one seed)::

    PYTHONPATH=src python benchmarks/videoclip_ablation.py --out /tmp/videoclip_smoke \\
        --random-backbone --seeds 0 --steps 3 --n-long 10 --topics 2 --long-duration 30 \\
        --cluster-k 2

Every parameter of the VideoCLIP model trains at ``--lr-new`` (the feature extractor is frozen
and outside the model), so ``--backbone-fraction`` has no effect here. Writes
``<out>/videoclip_ablation.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablation_runs import (
    ArmStore,
    add_common_arguments,
    backbone_identity,
    backbone_section,
    command_line,
    describe_backbone,
    fingerprint,
    markdown_table,
    run_arms,
    select_arms,
    summarise,
    write_report,
)
from vtrkit.checkpoint import TOKENIZER_DIR
from vtrkit.config import BackboneConfig, Config, apply_overrides, config_from_dict
from vtrkit.data.datasets import VIDEO_EXTENSIONS, read_youcook2
from vtrkit.distributed import setup
from vtrkit.train.loop import fit
from vtrkit.train.objectives import VideoClipObjective
from vtrkit.videoclip.batcher import cluster_batches, random_batches
from vtrkit.videoclip.data import (
    PairBatcher,
    build_word_tokenizer,
    feature_statistics,
    load_narrated_videos,
    load_tokenizer,
)
from vtrkit.videoclip.features import ClipSecondExtractor, extract_features, read_index
from vtrkit.videoclip.model import VideoClipModel
from vtrkit.videoclip.source import VideoClipSource
from vtrkit.videoclip.train import model_for, sampler_settings
from vtrkit.videoclip.zeroshot import evaluate_zero_shot, retrieval_task, zero_shot_retrieval

ARMS: dict[str, dict[str, bool]] = {
    "full VideoCLIP": {"retrieval_augment": True, "aligned": False},
    "without retrieval augmentation": {"retrieval_augment": False, "aligned": False},
    "without overlap (aligned pairs)": {"retrieval_augment": True, "aligned": True},
    "without both": {"retrieval_augment": False, "aligned": True},
}
COLUMNS = (
    ("seg. t2v R@1", "t2v/R@1"),
    ("seg. t2v R@5", "t2v/R@5"),
    ("seg. v2t R@1", "v2t/R@1"),
    ("seg. v2t R@5", "v2t/R@5"),
    ("para. t2v R@1", "para/R@1"),
    ("loc. frame acc", "loc/frame_acc"),
    ("MC acc (5-way)", "mc/accuracy"),
)
DIAGNOSTICS_FILE = "batch_diagnostics.jsonl"


# ---------------------------------------------------------------------- data and features


def prepare_long_data(args: argparse.Namespace) -> Path:
    """The topical long videos with speech-like training narration (``<out>/data/long``)."""
    from vtrkit.data.synthetic import generate
    from vtrkit.data.synthetic_long import SpeechTiming

    data, stamp = args.out / "data", args.out / "data.json"
    wanted = {
        "n_long": args.n_long,
        "topics": args.topics,
        "speech": not args.clean_narration,
        "duration": args.long_duration,
        "seed": args.data_seed,
    }
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        summary = generate(
            data,
            n_train=0,
            n_test=0,
            n_long=args.n_long,
            seed=args.data_seed,
            long_duration=args.long_duration,
            long_topics=args.topics,
            long_speech=None if args.clean_narration else SpeechTiming(),
            workers=1 if args.n_long < 16 else 2,
        )
        print(summary, flush=True)
        stamp.write_text(json.dumps(wanted))
    return data / "long"


def prepare_features(args: argparse.Namespace, long_dir: Path) -> tuple[Path, int]:
    """Per-second features of every long video from the backbone's image tower (resumable);
    returns the folder and the feature width."""
    from vtrkit.backbones import build_clip
    from vtrkit.videoclip.features import videos_in_folder

    section = backbone_section(args)
    data = (args.out / "data.json").read_text()
    tag = hashlib.sha1(f"{backbone_identity(section)}-{data}".encode()).hexdigest()[:10]
    feats = args.out / f"features-{tag}"
    torch.manual_seed(0)  # the random towers of --random-backbone
    towers, _ = build_clip(BackboneConfig.model_validate(section))
    videos = videos_in_folder(long_dir / "videos", VIDEO_EXTENSIONS)
    summary = extract_features(videos, feats, ClipSecondExtractor(towers))
    print(
        f"features in {feats}: {summary.extracted} extracted, {summary.skipped} reused", flush=True
    )
    return feats, towers.embed_dim


# ---------------------------------------------------------------------- diagnostics


@torch.no_grad()
def video_embeddings(
    model: VideoClipModel, batcher: PairBatcher, rng: np.random.Generator, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Per training video, the mean text and mean video embedding of its sampled pairs [V, H]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(batcher.videos)
    texts, clips = [], []
    for start in range(0, n, chunk):
        batch = batcher.batch(range(start, min(n, start + chunk)), rng)
        text = model.encode_text(batch["input_ids"].to(device), batch["text_mask"].to(device))
        video = model.encode_video(batch["video_feats"].to(device), batch["video_mask"].to(device))
        owner = batch["video_index"] - start
        for k in range(int(owner.max()) + 1):
            texts.append(text[owner == k].float().mean(0).cpu().numpy())
            clips.append(video[owner == k].float().mean(0).cpu().numpy())
    model.train(was_training)
    return np.stack(texts), np.stack(clips)


def group_statistics(
    groups: Sequence[np.ndarray], text: np.ndarray, video: np.ndarray, topic: np.ndarray
) -> dict[str, float]:
    """Mean negative similarity text_i · video_j (i ≠ j in a group) and the share of same-topic
    pairs (i ≠ j), over ``groups`` of video indices."""
    neg, same = [], []
    for group in groups:
        g = np.asarray(group)
        sim = text[g] @ video[g].T
        off = ~np.eye(len(g), dtype=bool)
        neg.append(float(sim[off].mean()))
        same.append(float((topic[g][:, None] == topic[g][None, :])[off].mean()))
    return {"neg_sim": float(np.mean(neg)), "same_topic": float(np.mean(same))}


class DiagnosticSource(VideoClipSource):
    """VideoCLIP's batch source, unchanged, recording batch diagnostics for every new epoch plan
    (module docstring) with its own random generator, so training draws exactly the same."""

    def __init__(self, *args: Any, path: Path, topic: np.ndarray, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path, self.topic = path, topic

    def start_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        resumed = self.plan is not None and self.plan.epoch == epoch
        super().start_epoch(epoch, model)
        if not resumed:
            self.record(epoch, model)  # type: ignore[arg-type]

    def record(self, epoch: int, model: VideoClipModel) -> None:
        assert self.plan is not None
        rng = np.random.default_rng([self.seed, epoch, 7919])
        text, video = video_embeddings(model, self.batcher, rng)
        k, n = self.vc.cluster_k, len(self.batcher.videos)
        used = self.plan.groups[: self._steps * self.groups_per_step]
        retrieved = [b.videos for b in cluster_batches((text + video) / 2, k, rng)]
        random = [b.videos for b in random_batches(n, k, rng)]
        record: dict[str, Any] = {
            "epoch": epoch,
            "coverage": len({int(v) for g in used for v in g}) / n,
            "pos_sim": float(np.mean(np.sum(text * video, axis=1))),
        }
        for name, groups in (("plan", used), ("retrieved", retrieved), ("random", random)):
            for key, value in group_statistics(groups, text, video, self.topic).items():
                record[f"{key}/{name}"] = value
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_diagnostics(path: Path) -> list[dict[str, float]]:
    """One record per epoch (a resumed run's repeat of an epoch replaces it)."""
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


# ---------------------------------------------------------------------- arms


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=300, lr_new=2e-3)
    parser.add_argument("--n-long", type=int, default=300, help="long videos (20%% validate)")
    parser.add_argument("--topics", type=int, default=20, help="0: independent videos")
    parser.add_argument("--clean-narration", action="store_true", help="no speech-like timing")
    parser.add_argument("--long-duration", type=float, default=60.0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2, help="text and video layers")
    parser.add_argument("--cluster-k", type=int, default=8, help="videos per group (and step)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per video")
    parser.add_argument("--data-seed", type=int, default=0)
    return parser.parse_args(argv)


def arm_config(
    args: argparse.Namespace,
    store: ArmStore,
    arm: str,
    seed: int,
    long_dir: Path,
    feats: Path,
    d_in: int,
) -> Config:
    videoclip = {
        "features": str(feats),
        "d_in": d_in,
        "hidden": args.hidden,
        "heads": 4,
        "text_layers": args.layers,
        "video_layers": args.layers,
        "cluster_k": args.cluster_k,
        "pairs_per_video": args.pairs,
        # Synthetic narration is ~5 tokens per ~4-6 s (HowTo100M: ~10 per ~4 s), so the
        # 8..64-token text clips of SPEC §3 are scaled to cover a similar 3-32 s.
        "text_clip_tokens": [4, 24],
        **ARMS[arm],
    }
    data: dict[str, Any] = {
        "name": f"videoclip-{arm}",
        "data": {"dataset": "youcook2", "root": str(long_dir), "val_split": "val"},
        "model": {"kind": "videoclip", "videoclip": videoclip},
        "optim": {"lr_new": args.lr_new, "weight_decay": 0.0, "warmup": 0.1},
        "train": {
            "output_dir": str(store.run_dir(arm, seed)),
            "epochs": 100_000,
            "max_steps": args.steps,
            "batch_size": args.cluster_k,
            "seed": seed,
            "threads": args.threads,
            "eval_every_epoch": False,
            "log_every": 20,
            "checkpoint_every": 50,
        },
    }
    return config_from_dict(apply_overrides(data, args.overrides), f"videoclip ablation {arm!r}")


def train_arm(cfg: Config, args: argparse.Namespace, long_dir: Path) -> dict[str, Any]:
    """``vtrkit.videoclip.train.train_videoclip``'s wiring with :class:`DiagnosticSource`;
    resumes from ``<run>/last`` when it is there."""
    vc, run_dir = cfg.model.videoclip, Path(cfg.train.output_dir)
    train_records, val_records = read_youcook2(long_dir, "train"), read_youcook2(long_dir, "val")
    saved = run_dir / TOKENIZER_DIR
    if saved.is_dir():  # a resumed run: the checkpoint's embedding rows follow its own ids
        tokenizer = load_tokenizer(saved)
    else:
        tokenizer = build_word_tokenizer(s.text for r in train_records for s in r.segments)
    videos = load_narrated_videos(train_records, vc.features, tokenizer, vc.d_in)
    val_videos = load_narrated_videos(val_records, vc.features, tokenizer, vc.d_in)
    meta = json.loads((long_dir / "synthetic_meta.json").read_text())
    topic_of = meta.get("video_topics", {})
    topic = np.asarray([topic_of.get(v.video_id, i) for i, v in enumerate(videos)])
    info = setup(args.device)
    torch.manual_seed(cfg.train.seed)
    model = model_for(vc, tokenizer)
    if vc.standardize_features:
        model.token_mlp.set_feature_stats(*feature_statistics(videos))
    settings = sampler_settings(vc)
    batcher = PairBatcher(videos, tokenizer, settings, vc.pairs_per_video, vc.max_text_tokens)
    diagnostics = run_dir / DIAGNOSTICS_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(saved)
    source = DiagnosticSource(videos, batcher, cfg, info, settings, path=diagnostics, topic=topic)
    objective = VideoClipObjective(gather=vc.gather, text_to_video_only=vc.text_to_video_only)
    started = time.perf_counter()
    result = fit(
        cfg,
        model,
        source,
        objective,
        info,
        evaluate_fn=lambda m: evaluate_zero_shot(m, tokenizer, val_videos, vc),  # type: ignore[arg-type]
        resume=True,
        progress=False,
        select=lambda r: float(r["t2v/R@1"]),
    )
    assert result.last_eval is not None
    metrics = dict(result.last_eval)
    model.eval()
    with torch.no_grad():
        paragraph = retrieval_task(val_videos, "paragraph", vc.max_video_tokens)
        metrics["para/R@1"] = zero_shot_retrieval(model, tokenizer, paragraph)["t2v/R@1"]
    return {
        "steps": result.steps,
        "epochs": result.epochs,
        "seconds": time.perf_counter() - started,
        "metrics": metrics,
        "diagnostics": read_diagnostics(diagnostics),
    }


DIAGNOSTIC_COLUMNS = (
    "coverage",
    "neg_sim/plan",
    "neg_sim/retrieved",
    "neg_sim/random",
    "pos_sim",
    "same_topic/plan",
    "same_topic/retrieved",
    "same_topic/random",
)


def diagnostic_rows(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, float]]]:
    """Per arm: the first and the last epoch's diagnostics, and coverage averaged over epochs."""
    rows: dict[str, list[dict[str, float]]] = {}
    for arm, runs in results.items():
        logs = [r["diagnostics"] for r in runs if r.get("diagnostics")]
        for label, pick in (("first epoch", 0), ("last epoch", -1)):
            rows[f"{arm}, {label}"] = [
                {c: log[pick][c] for c in DIAGNOSTIC_COLUMNS if c in log[pick]} for log in logs
            ]
        rows[f"{arm}, all epochs"] = [
            {"coverage": float(np.mean([e["coverage"] for e in log]))} for log in logs
        ]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    arms = select_arms(list(ARMS), args.arms)
    long_dir = prepare_long_data(args)
    feats, d_in = prepare_features(args, long_dir)
    store = ArmStore(args.out)
    extra = {"features": feats.name}

    def config(arm: str, seed: int) -> Config:
        return arm_config(args, store, arm, seed, long_dir, feats, d_in)

    results = run_arms(
        store,
        arms,
        args.seeds,
        lambda a, s: fingerprint(config(a, s), extra),
        lambda a, s: train_arm(config(a, s), args, long_dir),
    )
    rows = {
        arm: [
            {label: float(r["metrics"][key]) for label, key in COLUMNS if key in r["metrics"]}
            | {"train s": r["seconds"]}
            for r in runs
        ]
        for arm, runs in results.items()
    }
    n_index = len(read_index(feats))
    description = (
        f"VideoCLIP on {args.n_long} synthetic long videos ({n_index} with features) in "
        f"{args.topics} topics, {'exactly timed' if args.clean_narration else 'speech-like'} "
        f"training narration, clean validation segments; per-second features of "
        f"{describe_backbone(args)}; {args.steps} optimiser steps of one group of "
        f"{args.cluster_k} videos × {args.pairs} pairs per arm, lr {args.lr_new:g}; seeds "
        f"{args.seeds}. Mean ± sd over seeds.\n\nCommand: {command_line()}"
    )
    table = markdown_table(rows, [c for c, _ in COLUMNS] + ["train s"])
    diag = markdown_table(diagnostic_rows(results), list(DIAGNOSTIC_COLUMNS), "arm", digits=3)
    text = (
        f"{description}\n\n{table}\n\nBatches per epoch (coverage: share of training videos in "
        f"the epoch's groups; neg_sim: mean text·video score of different videos in a group, "
        f"for the epoch's own, retrieved and random groups under the same model; same_topic: "
        f"share of same-topic video pairs in a group):\n\n{diag}"
    )
    report = {
        "description": description,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "summary": summarise(rows),
        "diagnostics": summarise(diagnostic_rows(results)),
        "runs": results,
    }
    write_report(args.out, "videoclip_ablation", text, report)
    return report


if __name__ == "__main__":
    main()
