"""Zero-shot retrieval, multiple-choice QA and step localisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from vtrkit.config import VideoClipConfig
from vtrkit.data.records import Segment, VideoRecord
from vtrkit.videoclip.data import build_word_tokenizer, load_narrated_videos
from vtrkit.videoclip.features import save_features, write_index
from vtrkit.videoclip.zeroshot import (
    evaluate_zero_shot,
    frame_accuracy,
    labels_to_segments,
    retrieval_task,
    second_labels,
    second_scores,
    step_recall,
)

N_WORDS = 12


class OracleModel(nn.Module):
    """Video = mean feature; text = one-hot of its first caption word; second state = feature.

    With features that carry each segment's word code this model is perfect, so every task must
    score 100 and any mis-wiring (owners, answers, labels, windows) shows.
    """

    def __init__(self, word_dims: Tensor) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.word_dims = word_dims

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return nn.functional.one_hot(self.word_dims[ids[:, 2]], N_WORDS).float()

    def encode_video(self, feats: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).float()
        return (feats * m).sum(1) / m.sum(1)

    def second_states(self, feats: Tensor, mask: Tensor) -> Tensor:
        return feats

    @staticmethod
    def similarity(text: Tensor, video: Tensor) -> Tensor:
        return text @ video.T


def _unique_word_corpus(root: Path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(N_WORDS)]
    entries, records = {}, []
    for v in range(3):
        feats = rng.normal(scale=0.1, size=(40, N_WORDS)).astype(np.float32)
        segments = []
        for k, (start, end) in enumerate([(1, 5), (7, 12), (15, 19), (22, 37)]):
            w = 4 * v + k
            feats[start:end, w] += 1.0
            segments.append(Segment(float(start), float(end), f"the {words[w]} happens"))
        entries[f"v{v}"] = save_features(root, f"v{v}", feats)
        records.append(VideoRecord(f"v{v}", Path("x"), [], "val", segments=segments))
    write_index(root, entries)
    tok = build_word_tokenizer(f"the {w} happens" for w in words)
    lookup = torch.zeros(tok.vocab_size, dtype=torch.long)
    for i, w in enumerate(words):
        lookup[tok.token_ids(w)[0]] = i
    return load_narrated_videos(records, root, tok), tok, OracleModel(lookup)


def test_a_perfect_model_scores_100_on_every_task(tmp_path: Path):
    videos, tok, model = _unique_word_corpus(tmp_path)
    for mode in ("segment", "paragraph"):
        out = evaluate_zero_shot(model, tok, videos, VideoClipConfig(eval_mode=mode, loc_window=16))
        assert out["t2v/R@1"] == 100.0 and out["v2t/R@1"] == 100.0
        assert out["loc/frame_acc"] == 100.0 and out["loc/recall"] == 100.0
        assert out["mc/accuracy"] == 100.0 and out["mc/questions"] == 12
    # Labelled seconds: 4 + 5 + 4 + 15 per video.
    assert out["loc/seconds"] == 3 * 28


def test_retrieval_tasks_pair_each_query_with_its_clip(tmp_path: Path):
    videos, _, _ = _unique_word_corpus(tmp_path)
    seg = retrieval_task(videos, "segment", max_seconds=8)
    assert len(seg.clips) == 12 and seg.text_to_video.tolist() == list(range(12))
    assert [len(c) for c in seg.clips[:4]] == [4, 5, 4, 8]  # the 15-s segment is cut to 8
    para = retrieval_task(videos, "paragraph", max_seconds=16)
    assert para.texts[0] == "the w0 happens the w1 happens the w2 happens"
    vid = retrieval_task(videos, "video", max_seconds=16)
    assert vid.text_to_video.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(ValueError, match="retrieval mode"):
        retrieval_task(videos, "clip")


def test_window_averaging_covers_every_second_once_per_window(tmp_path: Path):
    videos, _, model = _unique_word_corpus(tmp_path)
    feats = videos[0].features
    steps = torch.eye(N_WORDS)[:5]
    direct = torch.from_numpy(feats.astype(np.float32)) @ steps.T
    for window, stride in ((16, 8), (40, 16), (64, 16), (7, 5)):
        got = second_scores(model, feats, steps, window, stride)
        assert torch.allclose(got, direct, atol=1e-6), (window, stride)


def test_per_second_labels_and_segments_known_answers():
    labels = second_labels([(1.0, 3.0), (2.5, 5.0), (7.2, 8.0)], [0, 1, 2], 10)
    # s + 0.5 inside [start, end); the later segment wins the overlap at second 2.
    assert labels.tolist() == [-1, 0, 1, 1, 1, -1, -1, 2, -1, -1]
    assert labels_to_segments(labels) == [(1, 2, 0), (2, 5, 1), (7, 8, 2)]
    assert labels_to_segments(np.array([3, 3, 3])) == [(0, 3, 3)]


def test_frame_accuracy_and_recall_known_answers():
    labels = np.array([-1, 0, 0, 1, 1, 1, -1])
    pred = np.array([1, 0, 1, 1, 1, 0, 0])
    assert frame_accuracy(pred, labels) == (3, 5)
    scores = np.zeros((7, 3))
    scores[2, 0] = 1.0  # step 0 peaks inside its segment
    scores[6, 1] = 1.0  # step 1 peaks on background: missed
    assert step_recall(scores, labels) == (1, 2)
