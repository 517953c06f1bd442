"""What the three ablation scripts share: arguments, the backbone, data, resumable arms, tables.

Every arm of every script is trained once per seed into ``<out>/runs/<arm>/seed<k>/`` and its
result written to ``<out>/arms/<arm>/seed<k>.json``. A result file that exists is reused (so a
rerun only trains what is missing), unless it was made with other settings: then the script stops
and names the file, because mixing settings in one table would be wrong. A run killed mid-arm
leaves ``last/`` checkpoints (every ``CHECKPOINT_EVERY`` steps) and resumes from them.

Tables give mean ± sample standard deviation over the seeds; ``n`` is the number of seeds.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vtrkit.config import Config, apply_overrides, config_from_dict

CHECKPOINT_EVERY = 50
"""Optimiser steps between mid-arm checkpoints (what a killed arm loses at most)."""
BACKBONE_FILE = "backbone.yaml"
"""Written by ``vtrkit pretrain`` beside ``clip.pt``: the ``model.backbone`` section to load it."""
RANDOM_TOWERS: dict[str, Any] = {
    "embed_dim": 128,
    "image_size": 48,
    "patch_size": 16,
    "vision_width": 128,
    "vision_layers": 2,
    "vision_heads": 4,
    "text_width": 128,
    "text_layers": 2,
    "text_heads": 4,
}
"""The demo's tiny towers, randomly initialised (``--random-backbone``: smoke runs and tests)."""


def add_common_arguments(parser: argparse.ArgumentParser, steps: int, lr_new: float) -> None:
    """The options every ablation script takes."""
    parser.add_argument("--out", type=Path, required=True, help="results, runs and data")
    parser.add_argument(
        "--backbone-checkpoint",
        type=Path,
        default=Path("runs/pretrain_tiny"),
        help="the pretrained tiny CLIP: the `vtrkit pretrain` folder (its backbone.yaml) or clip.pt",
    )
    parser.add_argument(
        "--random-backbone",
        action="store_true",
        help="randomly initialised towers instead of the checkpoint (smoke runs only)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=steps, help="optimiser steps per arm")
    parser.add_argument("--lr-new", type=float, default=lr_new, help="new modules' rate")
    parser.add_argument(
        "--backbone-fraction",
        type=float,
        default=0.3,
        help="the CLIP towers learn at this fraction of --lr-new (the demo's 0.3 by default)",
    )
    parser.add_argument("--arms", nargs="+", help="arms to run (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override a.b=c"
    )


def command_line() -> str:
    """How this script was run, to print beside its table."""
    return "PYTHONPATH=src python " + " ".join([sys.argv[0], *sys.argv[1:]])


def slug(name: str) -> str:
    """A folder name for an arm."""
    keep = [c if c.isalnum() else "_" for c in name.lower()]
    return "_".join(part for part in "".join(keep).split("_") if part)


# ---------------------------------------------------------------------- backbone


def backbone_section(args: argparse.Namespace) -> dict[str, Any]:
    """The ``model.backbone`` section of every arm: the pretrained checkpoint (as
    ``backbone.yaml`` gives it) or, with ``--random-backbone``, the random demo towers."""
    if args.random_backbone:
        return {"arch": dict(RANDOM_TOWERS)}
    path = Path(args.backbone_checkpoint)
    folder = path if path.is_dir() else path.parent
    described = folder / BACKBONE_FILE
    if described.is_file():
        section = yaml.safe_load(described.read_text())["model"]["backbone"]
        if path.is_file():
            section["checkpoint"] = str(path)
        return section
    if path.is_file():
        return {"checkpoint": str(path)}
    raise SystemExit(
        f"--backbone-checkpoint {path}: no pretrained tiny CLIP there (no {BACKBONE_FILE} or "
        "checkpoint file); run `vtrkit pretrain configs/pretrain_tiny.yaml` first, or pass "
        "--random-backbone for a smoke run"
    )


def backbone_identity(section: dict[str, Any]) -> str:
    """A short digest of what the backbone is (the checkpoint's bytes, or the random shape)."""
    digest = hashlib.sha1(json.dumps(section, sort_keys=True, default=str).encode())
    checkpoint = section.get("checkpoint")
    if checkpoint and Path(checkpoint).is_file():
        with Path(checkpoint).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:10]


def describe_backbone(args: argparse.Namespace) -> str:
    if args.random_backbone:
        return "randomly initialised tiny CLIP towers (smoke run: no pretraining)"
    return f"the pretrained tiny CLIP {args.backbone_checkpoint}"


# ---------------------------------------------------------------------- data


def _csv_rows(path: Path) -> int:
    return len(path.read_text().splitlines()) - 1 if path.is_file() else -1


def prepare_short_data(
    root: Path, n_train: int, n_test: int, vague: float, seed: int, workers: int = 2
) -> Path:
    """The synthetic short-video benchmark in ``root``, generated unless a set of this size and
    vague share is there (the demo's ``data/synthetic`` qualifies for vague=0)."""
    from vtrkit.data.synthetic import META_FILE, generate

    meta = root / META_FILE
    found = (_csv_rows(root / "MSRVTT_train.9k.csv"), _csv_rows(root / "MSRVTT_JSFUSION_test.csv"))
    if found == (n_train, n_test) and meta.is_file():
        settings = json.loads(meta.read_text())["settings"]
        if settings["seed"] == seed and settings["vague_share"] == vague:
            return root
    print(
        generate(
            root,
            n_train=n_train,
            n_test=n_test,
            n_long=0,
            vague_share=vague,
            seed=seed,
            workers=workers if n_train + n_test >= 200 else 1,  # a pool costs seconds
        ),
        flush=True,
    )
    return root


def warm_frame_cache(cfg: Config, records: list, workers: int = 2) -> None:
    """Decode every video once into the frame cache, before any arm's clock starts."""
    from torch.utils.data import DataLoader

    from vtrkit.data.dataset import VideoTextDataset, collate

    dataset = VideoTextDataset.from_config(records, None, cfg.data, "videos")
    workers = workers if len(records) >= 200 else 0
    for _ in DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate):
        pass


def short_video_config(
    args: argparse.Namespace, base: dict[str, Any], arm: list[str], run_dir: Path, seed: int
) -> Config:
    """``base`` (a pinned config dict) with the backbone (and frames at its input size), the two
    learning rates, the step budget, the seed, the arm's overrides and the user's ``--set``
    overrides."""
    data = copy.deepcopy(base)
    backbone = backbone_section(args)
    data.setdefault("model", {})["backbone"] = backbone
    # The frames are made at the backbone's input size (48 px for the pretrained tiny CLIP).
    size = backbone.get("arch", {}).get("image_size")
    if size is not None:
        data.setdefault("data", {})["image_size"] = size
    overrides = [
        f"optim.lr_new={args.lr_new}",
        f"optim.lr_backbone={args.lr_new * args.backbone_fraction}",
        f"train.max_steps={args.steps}",
        f"train.seed={seed}",
        f"train.threads={args.threads}",
        f"train.checkpoint_every={CHECKPOINT_EVERY}",
        f"train.output_dir={run_dir}",
        *arm,
        *args.overrides,
    ]
    return config_from_dict(apply_overrides(data, overrides), f"{Path(sys.argv[0]).name} arm")


# ---------------------------------------------------------------------- arms and results


def fingerprint(cfg: Config, extra: dict[str, Any] | None = None) -> str:
    """What an arm's result depends on: its config (without the run folder) and ``extra``."""
    data = cfg.model_dump(mode="json")
    data["train"].pop("output_dir", None)
    data["train"].pop("threads", None)
    data["extra"] = extra or {}
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ArmStore:
    """Per-(arm, seed) result files under ``out/arms`` and run folders under ``out/runs``."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / slug(arm) / f"seed{seed}"

    def path(self, arm: str, seed: int) -> Path:
        return self.out / "arms" / slug(arm) / f"seed{seed}.json"

    def load(self, arm: str, seed: int, stamp: str) -> dict[str, Any] | None:
        """The finished result, None when there is none; stops on a result of other settings."""
        path = self.path(arm, seed)
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if result.get("fingerprint") != stamp:
            raise SystemExit(
                f"{path} was made with other settings than this run's (arm {arm!r}, seed "
                f"{seed}); use another --out, or delete it and {self.run_dir(arm, seed)} to "
                "train it again"
            )
        return result

    def save(self, arm: str, seed: int, stamp: str, result: dict[str, Any]) -> dict[str, Any]:
        path = self.path(arm, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {"arm": arm, "seed": seed, "fingerprint": stamp, **result}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
        return result


def run_arms(
    store: ArmStore,
    arms: Sequence[str],
    seeds: Sequence[int],
    stamp_of: Callable[[str, int], str],
    train: Callable[[str, int], dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Every (arm, seed) result: reused when its file exists with the same fingerprint, else
    trained (``train(arm, seed)``) and saved."""
    results: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        for seed in seeds:
            stamp = stamp_of(arm, seed)
            found = store.load(arm, seed, stamp)
            if found is None:
                print(f"== {arm}, seed {seed}: training", flush=True)
                found = store.save(arm, seed, stamp, train(arm, seed))
            else:
                print(f"== {arm}, seed {seed}: reusing {store.path(arm, seed)}", flush=True)
            results.setdefault(arm, []).append(found)
    return results


def select_arms(all_arms: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """``wanted`` in the scripts' order, or all; an unknown name is an error naming the choices."""
    if not wanted:
        return list(all_arms)
    unknown = [a for a in wanted if a not in all_arms]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {list(all_arms)}")
    return [a for a in all_arms if a in wanted]


# ---------------------------------------------------------------------- tables


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def cell(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


RETRIEVAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("t2v R@1", "", "t2v/R@1"),
    ("t2v R@5", "", "t2v/R@5"),
    ("v2t R@1", "", "v2t/R@1"),
    ("v2t R@5", "", "v2t/R@5"),
    ("order t2v R@1", "order", "t2v/R@1"),
    ("order v2t R@1", "order", "v2t/R@1"),
    ("attribute t2v R@1", "attribute", "t2v/R@1"),
    ("attribute v2t R@1", "attribute", "v2t/R@1"),
)
"""(column, subset or "" for all queries, metric key) of the short-video tables."""


def retrieval_row(overall: dict[str, float], subsets: dict[str, dict[str, float]]) -> dict:
    """The table's columns from one evaluation (its overall and per-subset metrics)."""
    row = {}
    for column, subset, key in RETRIEVAL_COLUMNS:
        source = subsets.get(subset, {}) if subset else overall
        if key in source:
            row[column] = float(source[key])
    return row


def summarise(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per table row: n, and mean / sd / values per column."""
    out: dict[str, dict[str, Any]] = {}
    for label, runs in rows.items():
        columns = dict.fromkeys(c for run in runs for c in run)
        entry: dict[str, Any] = {"n": len(runs)}
        for column in columns:
            values = [run[column] for run in runs if column in run]
            mean, sd = mean_sd(values)
            entry[column] = {"mean": mean, "sd": sd, "values": values}
        out[label] = entry
    return out


def markdown_table(
    rows: dict[str, list[dict[str, float]]],
    columns: Sequence[str],
    first: str = "arm",
    digits: int = 1,
) -> str:
    """Markdown: one line per row label, mean ± sd per column, and the number of seeds."""
    lines = [
        "| " + " | ".join([first, *columns, "n"]) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for label, runs in rows.items():
        cells = [cell([run[c] for run in runs if c in run], digits) for c in columns]
        lines.append("| " + " | ".join([label, *cells, str(len(runs))]) + " |")
    return "\n".join(lines)


def write_report(out: Path, name: str, text: str, data: dict[str, Any]) -> None:
    """``<out>/<name>.md`` (what is printed) and ``<out>/<name>.json`` (everything)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text + "\n")
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(text, flush=True)
