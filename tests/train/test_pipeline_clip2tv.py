"""`vtrkit train`/`eval` report both the vta and the vtm re-ranked numbers for CLIP2TV."""

import torch

from vtrkit.config import load_config
from vtrkit.data.datasets import read_dataset
from vtrkit.data.synthetic import generate
from vtrkit.eval.report import format_results_table
from vtrkit.models.build import build_model
from vtrkit.train.pipeline import run_evaluation

TINY = [
    "model.kind=clip2tv",
    "model.temporal_layers=1",
    "model.temporal_heads=2",
    "model.clip2tv.vtm_layers=1",
    "model.clip2tv.vtm_heads=2",
    "model.clip2tv.rerank_k=2",
    "data.num_frames=4",
    "data.max_words=16",
    "data.image_size=32",
    "data.num_workers=0",
    "model.backbone.arch={embed_dim: 32, image_size: 32, patch_size: 16, vision_width: 32, "
    "vision_layers: 1, vision_heads: 2, text_width: 32, text_layers: 1, text_heads: 2}",
]


def test_clip2tv_evaluation_reports_vta_and_reranked(tmp_path):
    root = tmp_path / "synthetic"
    generate(root, n_train=2, n_test=5, n_long=0, seed=2, workers=1)
    cfg = load_config(None, [*TINY, f"data.root={root}"])
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.data)
    model.eval()
    records = read_dataset(cfg.data, "test")
    with torch.no_grad():
        results = run_evaluation(cfg, model, tokenizer, records, torch.device("cpu"), {}, False)
    assert results["num_texts"] == 5 and results["num_videos"] == 5
    assert set(results["rerank"]) == set(results["raw"])
    table = format_results_table(results)
    assert "vtm re-ranked (top-K)" in table and "raw" in table


def test_a_model_trained_with_a_frozen_teacher_loads_without_the_teacher(tmp_path):
    """Train CLIP2TV one epoch with SD from a frozen teacher, delete the teacher's folder, then
    evaluate (``vtrkit eval``'s path) and build + search an index from the checkpoint."""
    import shutil

    from vtrkit import VideoIndex, load_model
    from vtrkit.train.checkpoint import save_checkpoint
    from vtrkit.train.pipeline import evaluate_checkpoint, train_run

    root = tmp_path / "synthetic"
    generate(root, n_train=8, n_test=4, n_long=0, seed=2, workers=1)
    base = [*TINY, f"data.root={root}", "train.batch_size=4", "train.epochs=1"]
    teacher_cfg = load_config(None, [*base, "model.kind=seqTransf"])
    torch.manual_seed(0)
    teacher, _ = build_model(teacher_cfg.model, teacher_cfg.data)
    save_checkpoint(tmp_path / "teacher", teacher, teacher_cfg)
    cfg = load_config(
        None,
        [
            *base,
            "model.clip2tv.sd=true",
            "model.clip2tv.teacher=frozen",
            f"model.clip2tv.teacher_checkpoint={tmp_path / 'teacher'}",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    result = train_run(cfg, device="cpu", progress=False)
    assert result.steps == 2
    shutil.rmtree(tmp_path / "teacher")
    results = evaluate_checkpoint(tmp_path / "run", device="cpu", progress=False)
    assert results["num_videos"] == 4 and "rerank" in results
    model = load_model(tmp_path / "run")
    index = VideoIndex.build(root / "videos", tmp_path / "lib.vtr", model)
    hits = index.search(read_dataset(cfg.data, "test")[0].captions[0], k=2)
    assert len(hits) == 2
