"""Streamed evaluation: encoding order, block independence, metric assembly and the report."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtrkit.eval.evaluate import (
    encode_texts_with_index,
    encode_videos,
    encode_videos_with_index,
    evaluate,
    evaluate_features,
    load_subsets,
    logit_scale_of,
    streamed_similarity,
    subset_columns,
)
from vtrkit.eval.metrics import METRIC_NAMES, retrieval_metrics, text_to_video_metrics
from vtrkit.eval.postprocess import dual_softmax, querybank_normalize
from vtrkit.eval.report import format_results_table, write_results_json
from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures

NF, NW, S, D = 3, 5, 4, 6


class LinearModel(RetrievalModel):
    """A trivial retrieval model: linear maps of token embeddings and mean frame colours.

    Its similarity mixes the pooled cosine with a fine-grained word-frame term (mean over real
    words of the max over real frames), so a scorer that mishandles per-row masks or block
    offsets would give different numbers for different blocks.
    """

    def __init__(self, vocab: int = 32) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(vocab, D)
        self.proj = nn.Linear(3, D)
        self.dropout = nn.Dropout(0.5)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, D, generator=gen))
            self.proj.weight.copy_(torch.randn(D, 3, generator=gen))
            self.proj.bias.copy_(torch.randn(D, generator=gen))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(50.0)))

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> TextFeatures:
        words = F.normalize(self.dropout(self.embed(input_ids)), dim=-1)
        m = text_mask.unsqueeze(-1).float()
        sentence = F.normalize((words * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
        return TextFeatures(sentence, words, text_mask)

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        per_frame = F.normalize(self.proj(frames.mean(dim=(-1, -2))), dim=-1)  # [V, Nf, D]
        m = video_mask.unsqueeze(-1).float()
        video = F.normalize((per_frame * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
        return VideoFeatures(video, per_frame, video_mask)

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        pooled = text.sentence @ video.video.T
        wf = torch.einsum("twd,vfd->tvwf", text.words, video.frames)
        wf = wf.masked_fill(~video.mask[None, :, None, :], -torch.inf).amax(-1)
        wm = text.mask[:, None, :].float()
        fine = (wf.masked_fill(wm == 0, 0) * wm).sum(-1) / wm.sum(-1)
        return self.logit_scale.exp() * (pooled + fine) / 2


def random_text(num: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 32, (num, NW), generator=gen)
    lengths = torch.randint(2, NW + 1, (num,), generator=gen)
    mask = torch.arange(NW)[None, :] < lengths[:, None]
    return ids * mask, mask


def random_frames(num: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(num, NF, 3, S, S, generator=gen)
    lengths = torch.randint(1, NF + 1, (num,), generator=gen)
    mask = torch.arange(NF)[None, :] < lengths[:, None]
    return frames * mask[:, :, None, None, None], mask


def video_batches(frames: Tensor, mask: Tensor, order: list[int], size: int) -> list[dict]:
    return [
        {
            "frames": frames[order[a : a + size]],
            "video_mask": mask[order[a : a + size]],
            "video_index": torch.tensor(order[a : a + size]),
        }
        for a in range(0, len(order), size)
    ]


@pytest.fixture
def model() -> LinearModel:
    return LinearModel()


def test_encode_videos_sorts_by_index_and_restores_training_mode(model):
    frames, mask = random_frames(7, seed=1)
    shuffled = [4, 0, 6, 2, 5, 1, 3]
    model.train()
    feats, index = encode_videos_with_index(model, video_batches(frames, mask, shuffled, 3))
    assert model.training, "the caller's training mode must be restored"
    assert index.tolist() == list(range(7))
    model.eval()
    with torch.no_grad():
        direct = model.encode_video(frames, mask)
    assert torch.allclose(feats.video, direct.video, atol=1e-6)
    assert torch.equal(feats.mask, mask)
    assert not feats.video.requires_grad
    # Videos missing from the loader (failed decodes) are absent, not zero-filled.
    partial = encode_videos(model, video_batches(frames, mask, [5, 2], 1))
    assert torch.allclose(partial.video, direct.video[[2, 5]], atol=1e-6)


def test_encode_videos_rejects_duplicates_and_empty_loaders(model):
    frames, mask = random_frames(2, seed=2)
    with pytest.raises(ValueError, match="twice"):
        encode_videos(model, video_batches(frames, mask, [0, 0], 1))
    with pytest.raises(ValueError, match="empty"):
        encode_videos(model, [])
    with pytest.raises(KeyError, match="video_mask"):
        encode_videos(model, [{"frames": frames, "video_index": torch.arange(2)}])


def test_encode_texts_keeps_loader_order_without_dropout(model):
    ids, mask = random_text(5, seed=3)
    batches = [
        {
            "input_ids": ids[a : a + 2],
            "text_mask": mask[a : a + 2],
            "video_index": torch.arange(a, min(a + 2, 5)) % 3,
        }
        for a in range(0, 5, 2)
    ]
    model.train()  # dropout on: encoding must still be deterministic (eval mode inside)
    feats, index = encode_texts_with_index(model, batches)
    again, _ = encode_texts_with_index(model, batches)
    assert torch.equal(feats.sentence, again.sentence)
    assert index.tolist() == [0, 1, 2, 0, 1]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(feats.sentence, model.encode_text(ids, mask).sentence, atol=1e-6)


def test_streamed_similarity_is_independent_of_the_block_size(model):
    ids, tmask = random_text(11, seed=4)
    frames, vmask = random_frames(6, seed=5)
    model.eval()
    with torch.no_grad():
        text = model.encode_text(ids, tmask)
        video = model.encode_video(frames, vmask)
        whole = model.similarity(text, video)
    blocks = (None, 1, 3, 4, 11, 64)
    results = [streamed_similarity(model, text, video, block) for block in blocks]
    for sim in results:
        assert sim.shape == (11, 6) and sim.dtype == torch.float32
        assert torch.allclose(sim, whole, rtol=0, atol=1e-5)
        assert torch.allclose(sim, results[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="similarity_block"):
        streamed_similarity(model, text, video, 0)


def test_evaluate_features_assembles_labelled_results():
    gen = torch.Generator().manual_seed(6)
    sim = torch.randn(9, 4, generator=gen) * 0.3
    t2v = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3])
    bank = torch.randn(12, 4, generator=gen) * 0.3
    out = evaluate_features(
        sim, t2v, dsl=True, dsl_temperature=100.0, subsets={"pair": [1, 3]}, qb_bank=bank
    )
    assert out["num_texts"] == 9 and out["num_videos"] == 4
    assert out["raw"] == retrieval_metrics(sim, t2v)
    want_dsl = retrieval_metrics(
        dual_softmax(sim, 100.0, dim=0), t2v, v2t_sim=dual_softmax(sim, 100.0, dim=1)
    )
    assert out["dsl"] == want_dsl
    assert out["qb_norm"] == text_to_video_metrics(querybank_normalize(sim, bank), t2v)
    assert set(out["qb_norm"]) == {f"t2v/{m}" for m in METRIC_NAMES}
    assert out["subsets"]["pair"] == retrieval_metrics(sim, t2v, query_videos=[1, 3])
    assert "dsl" not in evaluate_features(sim, t2v, dsl=False)
    # A subset whose videos have no caption has no queries and is left out.
    captionless = evaluate_features(sim[:4], t2v[:4], subsets={"empty": [3], "one": [1]})
    assert list(captionless["subsets"]) == ["one"]


def test_subsets_map_ids_to_gallery_columns(tmp_path, caplog):
    path = tmp_path / "subsets.json"
    path.write_text(json.dumps({"order": ["b", "zzz"], "none": ["zzz"]}))
    subsets = load_subsets(path)
    cols = subset_columns(subsets, ["a", "b", "c"])
    assert cols == {"order": [1]}
    assert "not in the evaluated gallery" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"eval\.subsets"):
        load_subsets(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        load_subsets(tmp_path / "bad.json")


def test_report_table_and_json(tmp_path):
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.7, 0.3, 0.1]])
    t2v = torch.tensor([0, 1, 2])
    results = evaluate_features(sim, t2v, subsets={"hard": [2]}, qb_bank=sim)
    table = format_results_table(results, reference={"t2v/R@1": 43.1}, title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo"
    assert lines[1] == "texts=3, videos=3"
    assert lines[2].split() == [f"{d}/{m}" for d in ("t2v", "v2t") for m in METRIC_NAMES]
    rows = {line.split("  ")[0].strip(): line for line in lines[4:]}
    assert set(rows) == {
        "published",
        "raw",
        "DSL (post-processed)",
        "QB-Norm (post-processed)",
        "subset: hard",
    }
    # raw t2v ranks are [1, 1, 3]: R@1 66.7, R@5 100, MdR 1, MnR 1.7.
    assert rows["raw"].split()[1:6] == ["66.7", "100.0", "100.0", "1", "1.7"]
    # QB-Norm has no video->text numbers; the published row only the one given.
    assert rows["QB-Norm (post-processed)"].split()[-5:] == ["-"] * 5
    assert rows["published"].split()[1:3] == ["43.1", "-"]
    # subset "hard": the one caption of video 2 ranks 3rd.
    assert rows["subset: hard"].split()[2:7] == ["0.0", "100.0", "100.0", "3", "3.0"]

    out = write_results_json(
        {**results, "sim_shape": torch.tensor([3, 3])}, tmp_path / "r" / "x.json"
    )
    loaded = json.loads(out.read_text())
    assert loaded["raw"] == results["raw"]
    assert loaded["sim_shape"] == [3, 3]
    assert [p.name for p in out.parent.iterdir()] == ["x.json"]
    with pytest.raises(TypeError, match="object"):
        write_results_json({"bad": object()}, tmp_path / "y.json")
    assert not (tmp_path / "y.json").exists()


# ---------------------------------------------------------------- with a real retrieval model


def tiny_backbone_config(kind: str):
    from vtrkit.config import BackboneConfig, ClipArch, ModelConfig

    arch = ClipArch(
        embed_dim=16,
        image_size=16,
        patch_size=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        text_width=16,
        text_layers=2,
        text_heads=2,
    )
    return ModelConfig(kind=kind, temporal_layers=1, backbone=BackboneConfig(arch=arch))


def test_streamed_similarity_block_independence_with_xclip():
    from vtrkit.config import DataConfig
    from vtrkit.models.build import build_model

    torch.manual_seed(0)
    data = DataConfig(num_frames=3, max_words=8, image_size=16)
    model, tokenizer = build_model(tiny_backbone_config("xclip"), data)
    captions = [
        f"a {c} {s} moves {d}"
        for c in ("red", "blue")
        for s in ("circle", "square")
        for d in ("left", "up")
    ]
    ids, tmask = tokenizer(captions, data.max_words)
    frames = torch.randn(5, 3, 3, 16, 16)
    vmask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    frames = frames * vmask[:, :, None, None, None]
    model.eval()
    with torch.no_grad():
        text = model.encode_text(ids, tmask)
        video = model.encode_video(frames, vmask)
        whole = model.similarity(text, video)
    for block in (1, 3, 8):
        sim = streamed_similarity(model, text, video, block)
        assert torch.allclose(sim, whole, rtol=0, atol=1e-4), block


# ---------------------------------------------------------------- evaluate() on real video files

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


def write_solid_video(path, rgb: tuple[int, int, int], seconds: int = 2, fps: int = 4) -> None:
    import av
    import numpy as np

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = 32, 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast"}
        image = np.zeros((32, 32, 3), dtype=np.uint8)
        image[:] = rgb
        for _ in range(seconds * fps):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))


class WordTokenizer:
    """Contract tokenizer over whitespace words: start 1, colour words 2..4, others 5, end 6."""

    def __call__(self, texts: list[str], max_words: int) -> tuple[Tensor, Tensor]:
        vocab = {name: 2 + i for i, name in enumerate(COLOURS)}
        ids = torch.zeros(len(texts), max_words, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [vocab.get(w, 5) for w in text.split()][: max_words - 2]
            tokens = [1, *words, 6]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != 0


class ColourModel(RetrievalModel):
    """Video = mean normalised colour of its real frames; text = sum of its colour words'
    normalised colours; score = λ·cosine. Solid-colour videos then have known ranks."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.zeros(7, 3)
        for i, rgb in enumerate(COLOURS.values()):
            table[2 + i] = (torch.tensor(rgb) / 255.0 - CLIP_MEAN) / CLIP_STD
        self.table = nn.Parameter(table, requires_grad=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> TextFeatures:
        words = self.table[input_ids] * text_mask[..., None]
        return TextFeatures(F.normalize(words.sum(1), dim=-1), words, text_mask)

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        per_frame = frames.mean(dim=(-1, -2))
        m = video_mask[..., None].float()
        video = F.normalize((per_frame * m).sum(1) / m.sum(1), dim=-1)
        return VideoFeatures(video, F.normalize(per_frame, dim=-1), video_mask)

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        return self.logit_scale.exp() * text.sentence @ video.video.T


@pytest.fixture
def colour_records(tmp_path):
    from vtrkit.data.records import VideoRecord

    paths = {}
    for name, rgb in COLOURS.items():
        paths[name] = tmp_path / f"{name}.mp4"
        write_solid_video(paths[name], rgb)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video\n" * 10)
    return [
        VideoRecord("vred", paths["red"], ["a red video"], "test"),
        # The second caption of the green video is wrong on purpose: it says "red".
        VideoRecord("vgreen", paths["green"], ["a green video", "a red video"], "test"),
        VideoRecord("vbroken", broken, ["a blue video"], "test"),
        VideoRecord("vblue", paths["blue"], ["the blue one"], "test"),
    ]


def test_evaluate_end_to_end_known_ranks(colour_records, tmp_path):
    from vtrkit.config import DataConfig, EvalConfig

    data = DataConfig(num_frames=2, max_words=6, image_size=16, num_workers=0)
    subsets_file = tmp_path / "subsets.json"
    subsets_file.write_text(json.dumps({"warm": ["vred", "vgreen"]}))
    results = [
        evaluate(
            ColourModel(),
            colour_records,
            WordTokenizer(),
            data,
            EvalConfig(text_block=block, video_batch=batch, subsets=subsets_file),
        )
        for block, batch in ((1, 1), (2, 3), (256, 32))
    ]
    out = results[0]
    assert all(r == out for r in results[1:]), "results must not depend on block or batch size"
    assert out["num_videos"] == 3 and out["num_failed_videos"] == 1
    assert out["num_texts"] == 4  # the broken video's caption left the queries
    # t2v ranks: red->vred 1, green->vgreen 1, "red"->vgreen 3 (vred, then vblue, outscore it;
    # cos(red, blue) > cos(red, green) in CLIP-normalised colour space), blue->vblue 1.
    raw = out["raw"]
    assert raw["t2v/R@1"] == 75.0 and raw["t2v/R@5"] == 100.0
    assert raw["t2v/MdR"] == 1.0 and raw["t2v/MnR"] == 1.5
    # v2t: vred scores its own group and vgreen's group (via its "red" caption) identically,
    # and the tie goes to the ground truth: every video ranks its own group first.
    assert raw["v2t/R@1"] == 100.0 and raw["v2t/MnR"] == 1.0
    warm = out["subsets"]["warm"]
    assert warm["t2v/MnR"] == pytest.approx(5 / 3) and warm["v2t/R@1"] == 100.0
    assert set(out["dsl"]) == set(raw)


def test_evaluate_requires_a_bank_for_qb_norm(colour_records):
    from vtrkit.config import DataConfig, EvalConfig

    data = DataConfig(num_frames=2, max_words=6, image_size=16, num_workers=0)
    with pytest.raises(ValueError, match="bank_captions"):
        evaluate(ColourModel(), colour_records, WordTokenizer(), data, EvalConfig(qb_norm=True))
    out = evaluate(
        ColourModel(),
        colour_records,
        WordTokenizer(),
        data,
        EvalConfig(qb_norm=True, dsl=False),
        bank_captions=["a red video", "red", "the blue one"],
    )
    assert "dsl" not in out
    assert set(out["qb_norm"]) == {f"t2v/{m}" for m in METRIC_NAMES}


def test_evaluate_matches_a_direct_computation_with_seqtransf(colour_records):
    from vtrkit.config import DataConfig, EvalConfig
    from vtrkit.data.decode import load_frames
    from vtrkit.data.sampling import FrameSampling
    from vtrkit.models.build import build_model

    torch.manual_seed(0)
    data = DataConfig(num_frames=2, max_words=8, image_size=16, num_workers=0)
    model, tokenizer = build_model(tiny_backbone_config("seqTransf"), data)
    out = evaluate(model, colour_records, tokenizer, data, EvalConfig(text_block=2, video_batch=2))

    # Direct path: decode each good video, encode all at once, score all captions at once.
    good = [r for r in colour_records if r.video_id != "vbroken"]
    decoded = [load_frames(r.path, FrameSampling(2, 1.0, 16)) for r in good]
    captions = [c for r in good for c in r.captions]
    t2v = torch.tensor([i for i, r in enumerate(good) for _ in r.captions])
    model.eval()
    with torch.no_grad():
        video = model.encode_video(
            torch.stack([f for f, _, _ in decoded]), torch.stack([m for _, m, _ in decoded])
        )
        text = model.encode_text(*tokenizer(captions, data.max_words))
        sim = model.similarity(text, video)
    scale = logit_scale_of(model)
    want = evaluate_features(sim, t2v, dsl_temperature=100.0 / scale)
    for key in ("raw", "dsl", "num_texts", "num_videos"):
        assert out[key] == want[key], key
