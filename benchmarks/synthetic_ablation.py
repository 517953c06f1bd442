"""Same budget, several heads: meanP, seqTransf, X-CLIP and X-CLIP's aggregation kinds.

Trains each variant from the demo recipe (tiny CLIP from scratch, configs/demo.yaml) for the same
number of optimiser steps on the synthetic benchmark, evaluates on the 1,000-video test split and
prints a Markdown table of text→video R@1 / R@5 overall and on the "order" and "attribute" subsets.

    python benchmarks/synthetic_ablation.py --steps 400 --out runs/ablation

Runs are deterministic for a seed (step budget, not wall-clock), so the table can be reproduced;
the seconds column is this machine's wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vtrkit.data.datasets import read_dataset
from vtrkit.demo import demo_config, ensure_synthetic, warm_frame_cache
from vtrkit.train.pipeline import train_run

VARIANTS: dict[str, list[str]] = {
    "meanP": ["model.kind=meanP"],
    "seqTransf": ["model.kind=seqTransf"],
    "X-CLIP (attention)": ["model.kind=xclip"],
    "X-CLIP mean-mean": ["model.kind=xclip", "model.xclip.aggregation=mean-mean"],
    "X-CLIP mean-max": ["model.kind=xclip", "model.xclip.aggregation=mean-max"],
    "X-CLIP max-mean": ["model.kind=xclip", "model.xclip.aggregation=max-mean"],
    "X-CLIP max-max": ["model.kind=xclip", "model.xclip.aggregation=max-max"],
    "X-CLIP frames after temporal": ["model.kind=xclip", "model.xclip.frames_after_temporal=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per variant")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(2)

    ensure_synthetic(args.data)
    rows: list[dict] = []
    warmed = False
    for name, variant in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "")
        overrides = [
            *variant,
            f"train.max_steps={args.steps}",
            "train.time_budget_s=null",
            *args.overrides,
        ]
        cfg = demo_config(args.data, args.out / slug, budget_s=0, overrides=overrides)
        if not warmed:  # every variant reads the same frames: decode them once
            records = read_dataset(cfg.data, cfg.data.train_split)
            records += read_dataset(cfg.data, cfg.data.test_split)
            warm_frame_cache(cfg, records)
            warmed = True
        started = time.perf_counter()
        result = train_run(cfg, progress=False)
        seconds = time.perf_counter() - started
        ev = result.last_eval
        assert ev is not None
        row = {
            "variant": name,
            "steps": result.steps,
            "seconds": round(seconds),
            "all R@1": ev["raw"]["t2v/R@1"],
            "all R@5": ev["raw"]["t2v/R@5"],
            "order R@1": ev["subsets"]["order"]["t2v/R@1"],
            "attribute R@1": ev["subsets"]["attribute"]["t2v/R@1"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=2))
    cols = ["variant", "all R@1", "all R@5", "order R@1", "attribute R@1", "steps", "seconds"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
