"""``vtrkit demo``: the whole pipeline on the built-in synthetic benchmark, on a CPU, in minutes.

As the published systems do, the demo first pretrains its CLIP on images, then fine-tunes on
videos: generate the benchmark (skipped when present), decode every video once into the frame
cache, pretrain the tiny CLIP on synthetic stills with frame captions (SPEC §6; cached in its run
folder and reused by later runs), evaluate it zero-shot (mean pooling, no video training), fine-tune
X-CLIP from it for a fixed number of optimiser steps, evaluate on the 1,000-video test split
(overall and per subset), print the zero-shot and fine-tuned rows side by side, save a plot, and
index and search test videos through the public API. A fixed number of steps makes the printed
numbers the same on a busy or an idle machine; only the time changes. A time budget stays an
explicit option (``--budget``), and a run it cuts short says so.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vtrkit.config import Config, load_config
from vtrkit.data.datasets import read_dataset
from vtrkit.data.records import VideoRecord

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"
"""The demo recipe, shipped inside the package (``configs/demo.yaml`` in a checkout links to it),
so ``vtrkit demo`` works from an installed wheel."""
PRETRAIN_CONFIG = Path(__file__).resolve().parent / "pretrain_tiny.yaml"
"""The demo's image–text pretraining recipe (package data; ``configs/pretrain_tiny.yaml``)."""
SEARCH_VIDEOS = 200
"""Test videos the demo indexes for its example search (the index build is the product's path)."""
DEMO_TRAIN_VIDEOS = 6000
"""Training videos in the demo's synthetic set. At a fixed number of optimiser steps the tiny
model generalises much better from more distinct videos (460 steps: 2,000 videos -> 7.6 % t2v
R@1, 6,000 -> 12.0 %); generating and decoding 6,000 costs about a minute more."""
DEMO_TEST_VIDEOS = 1000


def demo_config(data: Path, out: Path, budget_s: float | None, overrides: list[str]) -> Config:
    """configs/demo.yaml with the data and run folders (and the time budget, unless None)."""
    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(f"{DEMO_CONFIG} not found: the vtrkit installation is incomplete")
    base = [
        f"data.root={data}",
        f"data.frame_cache={data / 'cache'}",
        f"train.output_dir={out}",
    ]
    if budget_s is not None:
        base.append(f"train.time_budget_s={budget_s}")
    return load_config(DEMO_CONFIG, base + list(overrides))


def ensure_synthetic(
    data: Path, n_train: int = DEMO_TRAIN_VIDEOS, n_test: int = DEMO_TEST_VIDEOS, seed: int = 0
) -> None:
    """Generate the synthetic set into ``data`` unless a complete one of this size is there.

    A set of another size (e.g. left by an older version of the demo) is regenerated in place:
    the generator is deterministic, and rewritten videos get new modification times, so the
    frame cache cannot serve stale frames for them.
    """
    from vtrkit.data.synthetic import generate

    found = _synthetic_size(data)
    if found == (n_train, n_test):
        log.info("using the synthetic benchmark already in %s", data)
        return
    if found is not None:
        log.warning(
            "%s holds a synthetic set of %d train / %d test videos; the demo uses %d / %d, "
            "regenerating it",
            data,
            *found,
            n_train,
            n_test,
        )
    started = time.perf_counter()
    summary = generate(data, n_train=n_train, n_test=n_test, n_long=0, seed=seed)
    log.info(
        "generated the synthetic benchmark in %.0f s: %s", time.perf_counter() - started, summary
    )


def _synthetic_size(data: Path) -> tuple[int, int] | None:
    """(train, test) video counts of a complete synthetic set in ``data``, else None."""
    train_csv, test_csv = data / "MSRVTT_train.9k.csv", data / "MSRVTT_JSFUSION_test.csv"
    needed = (data / "MSRVTT_data.json", data / "subsets.json", train_csv, test_csv)
    if not all(path.is_file() for path in needed):
        return None
    # One header line, then one video per line.
    return tuple(len(path.read_text().splitlines()) - 1 for path in (train_csv, test_csv))  # type: ignore[return-value]


def warm_frame_cache(cfg: Config, records: list[VideoRecord], workers: int = 2) -> None:
    """Decode every video once into the frame cache, in parallel, before the clock starts."""
    from vtrkit.data.dataset import VideoTextDataset, collate

    dataset = VideoTextDataset.from_config(records, None, cfg.data, "videos")
    # Spawned, not forked: the process may already run threads (decoders, BLAS), and a forked
    # child can inherit a lock one of them held and wait on it forever.
    loader = DataLoader(
        dataset,
        batch_size=64,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="spawn" if workers > 0 else None,
    )
    for _ in tqdm(loader, desc="decoding videos into the frame cache", unit="batch"):
        pass


def plot_report(run_dir: Path, results: dict[str, Any], path: Path) -> Path:
    """Training loss over steps and text→video R@K per subset, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [], []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            steps.append(record["step"])
            losses.append(record["loss"])
    rows = {"all": results["raw"], **results.get("subsets", {})}
    fig, (ax_loss, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, losses)
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("training loss (symmetric InfoNCE)")
    ax_loss.set_title("training curve")
    width = 0.8 / len(rows)
    for i, (name, metrics) in enumerate(rows.items()):
        values = [metrics[f"t2v/R@{k}"] for k in (1, 5, 10)]
        ax_r.bar([x + i * width for x in range(3)], values, width, label=name)
    ax_r.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(3)], ["R@1", "R@5", "R@10"])
    ax_r.set_ylabel("text→video recall (%)")
    ax_r.set_title("1,000-video synthetic test")
    ax_r.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ensure_pretrained(data: Path, run_dir: Path, overrides: list[str]) -> Any:
    """The pretrained tiny CLIP's ``model.backbone`` section: read from ``run_dir`` when a finished
    pretraining run is there, else pretrain now (resuming an interrupted run)."""
    from vtrkit.train.pretrain_pipeline import CHECKS_FILE, pretrain_run, read_backbone

    if (run_dir / "backbone.yaml").is_file() and (run_dir / CHECKS_FILE).is_file():
        log.info("using the pretrained tiny CLIP in %s", run_dir)
        return read_backbone(run_dir)
    cfg = load_config(
        PRETRAIN_CONFIG,
        [
            f"data.root={data}",
            f"data.frame_cache={data / 'cache'}",
            f"train.output_dir={run_dir}",
            # The demo evaluates the zero-shot video row itself, with the fine-tuning settings.
            "pretrain.zero_shot_video=false",
            *overrides,
        ],
    )
    result = pretrain_run(cfg, resume=True)
    if result.stopped_by_budget:
        log.warning("pretraining was cut short by train.time_budget_s at step %d", result.steps)
    return result.backbone


def zero_shot_row(backbone: Any, cfg: Config) -> dict[str, Any]:
    """The pretrained CLIP with mean pooling and no video training on the test split."""
    from vtrkit.eval.pretrain_checks import zero_shot_video

    with torch.no_grad():
        return zero_shot_video(backbone, cfg, torch.device("cpu"))


def side_by_side(zero_shot: dict[str, Any], tuned: dict[str, Any]) -> str:
    """Zero-shot and fine-tuned rows (overall and per subset) in one table."""
    from vtrkit.eval.report import format_rows_table

    rows = [("zero-shot CLIP (mean pooling)", zero_shot["raw"])]
    rows += [(f"  subset: {k}", v) for k, v in zero_shot.get("subsets", {}).items()]
    rows.append(("X-CLIP fine-tuned", tuned["raw"]))
    if "dsl" in tuned:
        rows.append(("  with DSL (post-processed)", tuned["dsl"]))
    rows += [(f"  subset: {k}", v) for k, v in tuned.get("subsets", {}).items()]
    videos = tuned.get("num_videos") or 1
    heading = [
        f"synthetic test split: {tuned.get('num_texts')} texts, {videos} videos, "
        f"chance R@1 = {100 / videos:.1f} %"
    ]
    return format_rows_table(rows, heading)


def example_search(
    run_dir: Path, records: list[VideoRecord], query: str | None, k: int = 5
) -> dict[str, Any]:
    """Index the first :data:`SEARCH_VIDEOS` test videos with the trained model and search them
    for one text, through the public API (``vtrkit.load_model``, ``vtrkit.VideoIndex``)."""
    import shutil

    from vtrkit import VideoIndex, load_model

    chosen = records[:SEARCH_VIDEOS]
    library = run_dir / "search.vtr"
    if library.exists():
        shutil.rmtree(library)
    index = VideoIndex.build([r.path for r in chosen], library, load_model(run_dir))
    query = query or chosen[0].captions[0]
    captions = {Path(r.path).name: r.captions[0] for r in chosen}
    hits = [
        {
            "rank": hit.rank,
            "video": Path(hit.path).name,
            "start": hit.start,
            "end": hit.end,
            "score": round(float(hit.score), 3),
            "caption": captions.get(Path(hit.path).name, ""),
        }
        for hit in index.search_videos(query, k=k)
    ]
    return {"query": query, "index": str(library), "videos": len(chosen), "hits": hits}


def run_demo(
    out: Path = Path("runs/demo"),
    data: Path = Path("data/synthetic"),
    budget_s: float | None = None,
    overrides: list[str] | None = None,
    query: str | None = None,
    train_videos: int | None = None,
    pretrained: Path | None = None,
    pretrain_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the demo end to end; returns the summary also written to ``out/summary.json``.

    ``budget_s`` None trains the recipe's fixed number of steps; ``train_videos`` None generates
    :data:`DEMO_TRAIN_VIDEOS`; ``pretrained`` is the pretraining run folder (default
    ``<out>/../pretrain_tiny``), reused when complete.
    """
    from vtrkit.eval.report import write_results_json
    from vtrkit.train.pipeline import train_run

    started = time.perf_counter()
    ensure_synthetic(data, n_train=train_videos or DEMO_TRAIN_VIDEOS)
    cfg = demo_config(data, out, budget_s, overrides or [])
    train_records = read_dataset(cfg.data, cfg.data.train_split)
    test_records = read_dataset(cfg.data, cfg.data.test_split)
    warm_frame_cache(cfg, train_records + test_records)
    prepared = time.perf_counter() - started

    pretrain_dir = pretrained or out.parent / "pretrain_tiny"
    backbone = ensure_pretrained(data, pretrain_dir, pretrain_overrides or [])
    pretrained_at = time.perf_counter()
    cfg.model.backbone = backbone
    zero_shot = zero_shot_row(backbone, cfg)
    result = train_run(cfg)
    results = result.last_eval
    assert results is not None, "the demo always evaluates at the end of training"
    write_results_json(results, out / "results.json")
    print(side_by_side(zero_shot, results))
    if result.stopped_by_budget:
        print(
            f"\nNOTE: the time budget ({budget_s} s) stopped fine-tuning at step {result.steps} "
            f"of {result.total_steps}: these are not the recipe's numbers."
        )
    plot = plot_report(out, results, out / "report.png")
    search = example_search(out, test_records, query)
    print(f'\nsearch over {search["videos"]} test videos: "{search["query"]}"')
    for hit in search["hits"]:
        print(
            f"  {hit['rank']}. {hit['video']} {hit['start']:.0f}-{hit['end']:.0f} s  "
            f"score {hit['score']:.3f}  ({hit['caption']})"
        )
    total = time.perf_counter() - started
    summary = {
        "headline": {
            "zero_shot/t2v/R@1": zero_shot["raw"]["t2v/R@1"],
            "t2v/R@1": results["raw"]["t2v/R@1"],
            "t2v/R@5": results["raw"]["t2v/R@5"],
            "t2v/R@10": results["raw"]["t2v/R@10"],
            "v2t/R@1": results["raw"]["v2t/R@1"],
            "train_steps": result.steps,
            "planned_steps": result.total_steps,
            "stopped_by_budget": result.stopped_by_budget,
            "train_seconds": round(result.seconds, 1),
            "prepare_seconds": round(prepared, 1),
            "pretrain_seconds": round(pretrained_at - started - prepared, 1),
            "total_seconds": round(total, 1),
            "plot": str(plot),
            "results": str(out / "results.json"),
        },
        "zero_shot": zero_shot,
        "search": search,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
