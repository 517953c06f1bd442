"""What pretraining the tiny CLIP has learnt (SPEC §6 "Checks").

* **Zero-shot image–text retrieval** on stills that each contain a held-out composition
  (a colour-shape pair at a position never seen in training), one distinct caption per image:
  text→image and image→text R@1/5/10, MdR, MnR (ties counted in the ground truth's favour, as in
  :mod:`vtrkit.eval.metrics`).
* **Linear probes** on frozen image features of single-object stills: a linear classifier per
  attribute (colour, shape, position, size; ridge regression to one-hot targets, solved in closed
  form, so no optimiser besides the training loop's steps anywhere) fitted on a probe-train set and scored
  on a probe-test set, against chance (the share of the most frequent class in the test set).
* **Twins told apart**: per attribute, stills and their one-attribute twins (the same scene with
  one object's colour, shape, size or position changed): how often a caption prefers its own
  image and an image its own caption (chance 50 %), which shows an attribute the model ignores.
* **Zero-shot video retrieval**: the pretrained towers with mean pooling over frames and no video
  training (CLIP4Clip meanP) on the video benchmark's test split, through the ordinary evaluator.

Shapes: N stills, D embedding width, C classes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtrkit.config import BackboneConfig, Config, ModelConfig
from vtrkit.data.synthetic_stills import (
    ATTRIBUTE_CLASSES,
    TWIN_ATTRIBUTES,
    Still,
    StillStream,
    attribute_labels,
    still_pixels,
)
from vtrkit.eval.metrics import retrieval_metrics

log = logging.getLogger(__name__)

ENCODE_BATCH = 256


@torch.no_grad()
def encode_stills(
    model: nn.Module, stills: list[Still], image_size: int, render_size: int, device: torch.device
) -> Tensor:
    """Unit image features [N, D] (float32, CPU) of ``model.encode_image`` in eval mode."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(stills), ENCODE_BATCH):
        pixels = still_pixels(stills[start : start + ENCODE_BATCH], image_size, render_size)
        parts.append(model.encode_image(pixels.to(device)).float().cpu())  # type: ignore[operator]
    model.train(was_training)
    return torch.cat(parts)


@torch.no_grad()
def encode_captions(
    model: nn.Module, tokenizer: Any, texts: list[str], max_words: int, device: torch.device
) -> Tensor:
    """Unit sentence features [T, D] (float32, CPU) of ``model.encode_text`` in eval mode."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(texts), ENCODE_BATCH):
        ids, mask = tokenizer(texts[start : start + ENCODE_BATCH], max_words)
        parts.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())  # type: ignore[operator]
    model.train(was_training)
    return torch.cat(parts)


def image_text_retrieval(text: Tensor, image: Tensor) -> dict[str, float]:
    """``t2i/*`` and ``i2t/*`` metrics of unit features text [N, D] and image [N, D], caption i
    describing image i (one caption per image)."""
    metrics = retrieval_metrics(text @ image.T, torch.arange(len(text)))
    return {k.replace("t2v/", "t2i/").replace("v2t/", "i2t/"): v for k, v in metrics.items()}


def fit_linear_probe(
    x: Tensor, y: Tensor, classes: int, ridge: float = 1e-3
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A linear classifier on standardised features, solved in closed form (ridge regression to
    one-hot targets, predicted class = argmax): a probe with no optimiser and no iterations, so
    its accuracy depends only on the features.

    x: [N, D] features, y: [N] long labels in 0..C-1; ``ridge`` scales the penalty λ = ridge · N.
    Returns (weight [D, C], bias [C], mean [D], std [D]); deterministic for given inputs.
    """
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    targets = F.one_hot(y, classes).double()
    offset = targets.mean(0)  # the bias: features are centred, so it is the class frequencies
    gram = z.T @ z + ridge * len(z) * torch.eye(z.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram, z.T @ (targets - offset))
    return weight, offset, mean, std


def probe_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, classes: int
) -> dict[str, float]:
    """Percent ``accuracy`` of a probe fitted on the train set, scored on the test set, and
    ``chance``: the percent share of the test set's most frequent class."""
    weight, bias, mean, std = fit_linear_probe(train_x, train_y, classes)
    predicted = (((test_x.double() - mean) / std) @ weight + bias).argmax(1)
    accuracy = float((predicted == test_y).double().mean()) * 100
    chance = float(torch.bincount(test_y, minlength=classes).max()) / len(test_y) * 100
    return {"accuracy": accuracy, "chance": chance}


def probe_checks(
    model: nn.Module,
    stream: StillStream,
    n_train: int,
    n_test: int,
    image_size: int,
    render_size: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Probe accuracy vs chance for each attribute: {attribute: {accuracy, chance}}."""
    train = stream.stills("probe_train", 0, range(n_train))
    test = stream.stills("probe_test", 0, range(n_test))
    train_x = encode_stills(model, train, image_size, render_size, device)
    test_x = encode_stills(model, test, image_size, render_size, device)
    train_y, test_y = attribute_labels(train), attribute_labels(test)
    return {
        name: probe_accuracy(train_x, train_y[name], test_x, test_y[name], classes)
        for name, classes in ATTRIBUTE_CLASSES.items()
    }


@torch.no_grad()
def twin_checks(
    model: nn.Module,
    tokenizer: Any,
    stream: StillStream,
    pairs: int,
    max_words: int,
    image_size: int,
    render_size: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Per attribute, how often the model tells a still from its one-attribute twin (chance 50):
    ``t2i`` the percent of captions scoring their own image above the twin's, ``i2t`` the
    percent of images scoring their own caption above the twin's (both members of each pair)."""
    out = {}
    for attribute in TWIN_ATTRIBUTES:
        drawn = stream.twin_pairs(attribute, pairs)
        stills = [s for pair in drawn for s in pair]
        image = encode_stills(model, stills, image_size, render_size, device).view(pairs, 2, -1)
        text = encode_captions(model, tokenizer, [s.caption for s in stills], max_words, device)
        sim = torch.einsum("pad,pbd->pab", text.view(pairs, 2, -1), image)  # [pairs, text, image]
        own = sim.diagonal(dim1=1, dim2=2)  # [pairs, 2]
        swapped = sim.flip(2).diagonal(dim1=1, dim2=2)  # text a with image b and vice versa
        t2i = (own > swapped).double().mean() * 100
        i2t = (own > sim.flip(1).diagonal(dim1=1, dim2=2)).double().mean() * 100
        out[attribute] = {"t2i": float(t2i), "i2t": float(i2t)}
    return out


def zero_shot_video(backbone: BackboneConfig, cfg: Config, device: torch.device) -> dict[str, Any]:
    """CLIP4Clip meanP (no temporal encoder, no video training) on the towers of ``backbone``,
    evaluated on ``cfg.data``'s test split with its subsets: the "zero-shot CLIP" row."""
    from vtrkit.data.datasets import read_dataset
    from vtrkit.eval.evaluate import evaluate, load_subsets
    from vtrkit.models.build import build_model

    model_cfg = ModelConfig(kind="meanP", temporal=False, backbone=backbone)
    model, tokenizer = build_model(model_cfg, cfg.data)
    records = read_dataset(cfg.data, cfg.data.test_split)
    subsets_file = cfg.eval.subsets or cfg.data.root / "subsets.json"
    subsets = load_subsets(subsets_file) if subsets_file.is_file() else {}
    return evaluate(
        model.to(device), records, tokenizer, cfg.data, cfg.eval, device, subsets=subsets
    )


def run_checks(
    model: nn.Module, tokenizer: Any, cfg: Config, image_size: int, device: torch.device
) -> dict[str, Any]:
    """Zero-shot image–text retrieval on held-out compositions and the linear probes, as
    ``cfg.pretrain`` sizes them: {"zero_shot": {...}, "probes": {...}, "heldout": [...]}."""
    p = cfg.pretrain
    stream = StillStream.from_config(p)
    out: dict[str, Any] = {"heldout": sorted(" ".join(c) for c in stream.heldout)}
    if stream.heldout:
        gallery = stream.unique_stills("heldout", p.zero_shot_images)
        image = encode_stills(model, gallery, image_size, p.render_size, device)
        text = encode_captions(model, tokenizer, [s.caption for s in gallery], p.max_words, device)
        out["zero_shot"] = {"images": len(gallery), **image_text_retrieval(text, image)}
    else:
        log.warning("pretrain.heldout_pairs=0: no held-out compositions, no zero-shot retrieval")
    out["probes"] = probe_checks(
        model, stream, p.probe_train, p.probe_test, image_size, p.render_size, device
    )
    out["twins"] = twin_checks(
        model, tokenizer, stream, p.twin_pairs, p.max_words, image_size, p.render_size, device
    )
    return out


def format_checks(checks: dict[str, Any]) -> str:
    """A short text table of :func:`run_checks`'s results; with an ``init`` entry (the same
    checks of the initial weights) beside them."""
    init = checks.get("init", {})
    lines = []
    zs = checks.get("zero_shot")
    if zs:
        lines.append(
            f"zero-shot image-text retrieval, {zs['images']} stills with held-out compositions"
            + (" (initial weights in brackets):" if init.get("zero_shot") else ":")
        )
        for d in ("t2i", "i2t"):
            row = f"  {d}:"
            for k in ("R@1", "R@5", "R@10", "MdR"):
                row += f"  {k} {zs[f'{d}/{k}']:5.1f}"
                if init.get("zero_shot"):
                    row += f" ({init['zero_shot'][f'{d}/{k}']:5.1f})"
            lines.append(row)
    head = "accuracy %" + (", initial weights" if init.get("probes") else "") + ", chance %"
    lines.append(f"linear probes on frozen image features ({head}):")
    for name, r in checks["probes"].items():
        before = f"  init {init['probes'][name]['accuracy']:5.1f}" if init.get("probes") else ""
        lines.append(f"  {name:<9} {r['accuracy']:5.1f}{before}  chance {r['chance']:4.1f}")
    if "twins" in checks:
        lines.append("one-attribute twins told apart, text->image / image->text % (chance 50):")
        for name, r in checks["twins"].items():
            before = init.get("twins", {}).get(name)
            was = f"  init {before['t2i']:5.1f} / {before['i2t']:5.1f}" if before else ""
            lines.append(f"  {name:<9} {r['t2i']:5.1f} / {r['i2t']:5.1f}{was}")
    return "\n".join(lines)
