"""VideoCLIP's zero-shot tasks (SPEC §3): text→video retrieval, multiple-choice video QA and
action step localisation, all with the trained dual encoder and no task-specific training.

Shapes: N clips, T texts, H width, n seconds of a video, K steps of a task.

- Retrieval: each query text against every clip. ``mode="segment"``: one clip per annotated
  segment (its seconds, the first ``max_seconds`` of them when longer), its caption the query, as
  YouCook2 is evaluated; ``mode="video"``: the first ``max_seconds`` seconds of each video, each
  distinct caption of the video a query (MSR-VTT style); ``mode="paragraph"``: the same clips, one
  query per video joining the captions of the segments that start inside those seconds. Metrics:
  R@K, MdR, MnR from :mod:`vtrkit.eval.metrics` (one ground-truth clip per query, so identical
  captions of different segments compete; :func:`duplicate_ceiling` says what that costs).
- Multiple-choice QA: the candidate answer text scoring highest against the clip; accuracy.
- Step localisation: the steps of a video are its distinct segment texts. Every second is scored
  against every step using the contextualised state of that second's video token, averaged over
  sliding windows of ``window`` seconds with stride ``stride`` (each second seen by up to two
  windows); the prediction is the argmax step per second. Ground truth: the segment containing the
  middle of the second (latest-starting segment when they overlap), -1 (background) when none.
  Frame accuracy is over labelled seconds only (there is no background class to predict);
  recall counts a step as found when its single best-scoring second lies inside one of its
  segments (the CrossTask protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vtrkit.config import VideoClipConfig
from vtrkit.eval.metrics import retrieval_metrics
from vtrkit.videoclip.data import NarratedVideo, TextTokenizer, pad_clips, pad_token_lists
from vtrkit.videoclip.model import VideoClipModel
from vtrkit.videoclip.sampler import span_seconds


@torch.no_grad()
def encode_clips(
    model: VideoClipModel, clips: Sequence[np.ndarray], max_tokens: int = 32, batch: int = 64
) -> Tensor:
    """Per-second feature clips (each [n_i, d_in], 1 ≤ n_i ≤ max_tokens) → pooled [N, H]."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(clips), batch):
        feats, mask = pad_clips(clips[i : i + batch], max_tokens)
        out.append(model.encode_video(feats.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(
    model: VideoClipModel,
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    max_text_tokens: int = 61,
    batch: int = 128,
) -> Tensor:
    """Texts → pooled [T, H] (each framed as [CLS] + ≤ max_text_tokens tokens + [SEP])."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch):
        rows = [
            tokenizer.frame(tokenizer.token_ids(t), max_text_tokens) for t in texts[i : i + batch]
        ]
        ids, mask = pad_token_lists(rows, tokenizer.pad_id)
        out.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


@dataclass
class RetrievalTask:
    """Clips (each [n_i, d_in]), query texts and each text's clip index [T]."""

    clips: list[np.ndarray]
    texts: list[str]
    text_to_video: np.ndarray


def retrieval_task(
    videos: Sequence[NarratedVideo], mode: str = "segment", max_seconds: int = 32
) -> RetrievalTask:
    """Build the retrieval benchmark of ``videos`` (see the module doc for the two modes)."""
    clips: list[np.ndarray] = []
    texts: list[str] = []
    owner: list[int] = []
    for video in videos:
        if mode == "segment":
            for (start, end), text in zip(video.spans, video.texts, strict=True):
                lo, hi = span_seconds(start, end, video.seconds)
                owner.append(len(clips))
                clips.append(video.features[lo : min(hi, lo + max_seconds)])
                texts.append(text)
        elif mode == "video":
            for text in dict.fromkeys(video.texts):
                owner.append(len(clips))
                texts.append(text)
            clips.append(video.features[:max_seconds])
        elif mode == "paragraph":
            spans_texts = zip(video.spans, video.texts, strict=True)
            inside = [t for (start, _), t in spans_texts if start < max_seconds]
            owner.append(len(clips))
            texts.append(" ".join(inside))
            clips.append(video.features[:max_seconds])
        else:
            raise ValueError(
                f"retrieval mode must be 'segment', 'video' or 'paragraph', got {mode!r}"
            )
    return RetrievalTask(clips, texts, np.asarray(owner, dtype=np.int64))


def zero_shot_retrieval(
    model: VideoClipModel,
    tokenizer: TextTokenizer,
    task: RetrievalTask,
    max_text_tokens: int = 61,
    max_tokens: int = 32,
) -> dict[str, float]:
    """``t2v/R@1 .. t2v/MnR`` and ``v2t/...`` of the dot-product scores [T, N]."""
    video = encode_clips(model, task.clips, max_tokens)
    text = encode_texts(model, tokenizer, task.texts, max_text_tokens)
    return retrieval_metrics(model.similarity(text, video), task.text_to_video)


def duplicate_ceiling(task: RetrievalTask) -> float:
    """Expected text→video R@1 (percent) of a model that finds every clip matching the caption
    but cannot tell clips with identical captions apart: mean over queries of 1 / (clips whose
    query text is the same)."""
    counts: dict[str, set[int]] = {}
    for text, clip in zip(task.texts, task.text_to_video, strict=True):
        counts.setdefault(text, set()).add(int(clip))
    return 100.0 * float(np.mean([1.0 / len(counts[t]) for t in task.texts]))


@dataclass
class ChoiceQuestion:
    """A clip [n, d_in], its candidate answers and the index of the right one."""

    clip: np.ndarray
    candidates: list[str]
    answer: int


def choice_questions(
    videos: Sequence[NarratedVideo],
    n_candidates: int,
    rng: np.random.Generator,
    max_seconds: int = 32,
) -> list[ChoiceQuestion]:
    """One question per segment: its own caption among ``n_candidates - 1`` distinct captions
    drawn from other segments (a multiple-choice set built from annotations alone)."""
    task = retrieval_task(videos, "segment", max_seconds)
    pool = sorted(set(task.texts))
    if len(pool) < n_candidates:
        raise ValueError(f"need at least {n_candidates} distinct captions, found {len(pool)}")
    questions = []
    for clip_index, text in zip(task.text_to_video, task.texts, strict=True):
        others = [t for t in pool if t != text]
        chosen = [others[i] for i in rng.choice(len(others), n_candidates - 1, replace=False)]
        answer = int(rng.integers(n_candidates))
        chosen.insert(answer, text)
        questions.append(ChoiceQuestion(task.clips[int(clip_index)], chosen, answer))
    return questions


def multiple_choice_accuracy(
    model: VideoClipModel,
    tokenizer: TextTokenizer,
    questions: Sequence[ChoiceQuestion],
    max_text_tokens: int = 61,
    max_tokens: int = 32,
) -> dict[str, float]:
    """Accuracy (percent) of picking the highest-scoring candidate for each question."""
    if not questions:
        raise ValueError("multiple_choice_accuracy: no questions")
    video = encode_clips(model, [q.clip for q in questions], max_tokens)
    correct = 0
    for q, v in zip(questions, video, strict=True):
        cand = encode_texts(model, tokenizer, q.candidates, max_text_tokens)
        correct += int(int(torch.argmax(cand @ v)) == q.answer)
    return {"mc/accuracy": 100.0 * correct / len(questions), "mc/questions": float(len(questions))}


def second_labels(
    spans: Sequence[tuple[float, float]], steps: Sequence[int], seconds: int
) -> np.ndarray:
    """Ground-truth step per second [n] (-1 = background).

    Second s gets the step of the segment containing s + 0.5; later-starting segments win overlaps.
    """
    labels = np.full(seconds, -1, dtype=np.int64)
    middles = np.arange(seconds) + 0.5
    for (start, end), step in sorted(zip(spans, steps, strict=True), key=lambda x: x[0][0]):
        labels[(middles >= start) & (middles < end)] = step
    return labels


def labels_to_segments(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal labels [n] → (start second, end second exclusive, label), background omitted."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for s in range(1, len(labels) + 1):
        if s == len(labels) or labels[s] != labels[start]:
            if labels[start] >= 0:
                out.append((start, s, int(labels[start])))
            start = s
    return out


@torch.no_grad()
def second_scores(
    model: VideoClipModel,
    features: np.ndarray,
    step_embeddings: Tensor,
    window: int = 32,
    stride: int = 16,
) -> Tensor:
    """Score of every second against every step: features [n, d_in], steps [K, H] → [n, K]."""
    model.eval()
    device = next(model.parameters()).device
    n = len(features)
    starts = list(range(0, max(n - window, 0) + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    clips = [features[s : s + window] for s in starts]
    feats, mask = pad_clips(clips, window)
    states = model.second_states(feats.to(device), mask.to(device)).float().cpu()
    total = torch.zeros((n, states.shape[-1]))
    count = torch.zeros((n, 1))
    for s, clip, st in zip(starts, clips, states, strict=True):
        total[s : s + len(clip)] += st[: len(clip)]
        count[s : s + len(clip)] += 1
    return (total / count) @ step_embeddings.T


def frame_accuracy(pred: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(correct, labelled) seconds: predictions [n] vs ground truth [n] (-1 ignored)."""
    keep = labels >= 0
    return int((pred[keep] == labels[keep]).sum()), int(keep.sum())


def step_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(found, steps): a step present in ``labels`` [n] is found when the argmax second of its
    score column ``scores[:, k]`` ([n, K]) carries label k."""
    present = sorted({int(x) for x in labels if x >= 0})
    found = sum(int(labels[int(np.argmax(scores[:, k]))] == k) for k in present)
    return found, len(present)


def step_localisation(
    model: VideoClipModel,
    tokenizer: TextTokenizer,
    videos: Sequence[NarratedVideo],
    window: int = 32,
    stride: int = 16,
    max_text_tokens: int = 61,
) -> dict[str, float]:
    """Frame accuracy and recall (percent) over ``videos``, pooled over all their seconds/steps."""
    correct = labelled = found = steps_total = 0
    for video in videos:
        names = list(dict.fromkeys(video.texts))
        steps = [names.index(t) for t in video.texts]
        labels = second_labels(video.spans, steps, video.seconds)
        if not (labels >= 0).any():
            continue
        step_emb = encode_texts(model, tokenizer, names, max_text_tokens)
        scores = second_scores(model, video.features, step_emb, window, stride).numpy()
        c, n = frame_accuracy(scores.argmax(1), labels)
        f, k = step_recall(scores, labels)
        correct, labelled, found, steps_total = (
            correct + c,
            labelled + n,
            found + f,
            steps_total + k,
        )
    if labelled == 0:
        raise ValueError("step_localisation: no video has a labelled second")
    return {
        "loc/frame_acc": 100.0 * correct / labelled,
        "loc/recall": 100.0 * found / steps_total,
        "loc/seconds": float(labelled),
    }


def evaluate_zero_shot(
    model: VideoClipModel,
    tokenizer: TextTokenizer,
    videos: Sequence[NarratedVideo],
    vc: VideoClipConfig,
    mc_candidates: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """All three tasks on ``videos``: retrieval (``t2v/*``, ``v2t/*``), step localisation
    (``loc/*``) and, when there are enough distinct captions, multiple choice (``mc/*``)."""
    task = retrieval_task(videos, vc.eval_mode, vc.max_video_tokens)
    out = zero_shot_retrieval(model, tokenizer, task, vc.max_text_tokens, vc.max_video_tokens)
    out.update(
        step_localisation(
            model, tokenizer, videos, vc.loc_window, vc.loc_stride, vc.max_text_tokens
        )
    )
    if len({t for v in videos for t in v.texts}) >= mc_candidates:
        questions = choice_questions(
            videos, mc_candidates, np.random.default_rng(seed), vc.max_video_tokens
        )
        out.update(
            multiple_choice_accuracy(
                model, tokenizer, questions, vc.max_text_tokens, vc.max_video_tokens
            )
        )
    return out
