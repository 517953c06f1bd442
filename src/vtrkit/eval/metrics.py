"""Retrieval ranks and recall metrics (SPEC §0, "Metrics").

Shapes: T texts (captions), V videos. A similarity matrix ``sim`` is [T, V] (row = caption,
column = video) and ``text_to_video`` [T] long gives each caption's ground-truth video column.

Rank convention, used everywhere in this module: for one query,

    rank = 1 + (number of candidates scoring *strictly* higher than the ground truth)

so ties are resolved in favour of the ground truth: a caption whose score equals that of another
video still counts as rank 1. This is the optimistic convention; it matters for integer-valued or
saturated scores (e.g. post-processed scores that underflow to equal values), never for generic
floating-point similarities.

Directions:

- text→video: every caption is a query; candidates are all V videos.
- video→text: every video with at least one caption is a query; candidates are the *caption
  groups*, one per video that has captions, and a group scores against video j as the maximum of
  ``sim[c, j]`` over its captions c. The ground-truth group is the video's own. With one caption
  per video this is ranking on ``sim.T``. Videos without captions are distractors for
  text→video and neither queries nor candidates for video→text.

Streaming: every text→video row is ranked on its own, so :func:`ranks_text_to_video` can be called
on any block of rows (with that block's ``text_to_video``) and the results concatenated. The
video→text side only needs the [V, V] group maxima, which :func:`video_group_scores` accumulates
block by block through its ``out`` argument; the full [T, V] matrix is never required. (The
evaluation loop still keeps [T, V] because DSL normalises over all texts; at 10k×10k float32 that
is 400 MB, at MSR-VTT's 1k×1k 4 MB.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

RECALL_AT = (1, 5, 10)
METRIC_NAMES = ("R@1", "R@5", "R@10", "MdR", "MnR")
"""Per-direction metric names, in table order; keys are ``t2v/<name>`` and ``v2t/<name>``."""

ScoreMatrix = Tensor | np.ndarray
IndexLike = Tensor | np.ndarray | Sequence[int]


def as_score_matrix(sim: ScoreMatrix, name: str = "sim") -> Tensor:
    """Return ``sim`` as a 2-D floating tensor on the CPU; rejects NaN (a NaN never ranks)."""
    t = torch.as_tensor(sim).detach().cpu()
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [T, V] score matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN; fix the model or post-processing that produced it")
    return t


def as_text_to_video(text_to_video: IndexLike, num_texts: int, num_videos: int) -> Tensor:
    """Validate the caption→video index: [T] long with values in [0, V)."""
    idx = torch.as_tensor(text_to_video).detach().cpu()
    if idx.ndim != 1 or idx.shape[0] != num_texts:
        raise ValueError(
            f"text_to_video must have shape [{num_texts}] (one entry per similarity row), "
            f"got {tuple(idx.shape)}"
        )
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"text_to_video must hold integer video indices, got dtype {idx.dtype}")
    idx = idx.long()
    if num_texts and (idx.min() < 0 or idx.max() >= num_videos):
        raise ValueError(
            f"text_to_video values must lie in [0, {num_videos}) (the similarity columns), "
            f"got range [{int(idx.min())}, {int(idx.max())}]"
        )
    return idx


def ranks_text_to_video(sim: ScoreMatrix, text_to_video: IndexLike) -> Tensor:
    """Rank of each caption's ground-truth video among all videos.

    sim: [T, V] scores (any block of rows works: rows are independent);
    text_to_video: [T] ground-truth column per row. Returns ranks [T] long, 1 = best,
    ties counted in favour of the ground truth.
    """
    s = as_score_matrix(sim)
    idx = as_text_to_video(text_to_video, s.shape[0], s.shape[1])
    return 1 + _count_above(s, s.gather(1, idx[:, None]))


def _count_above(scores: Tensor, gt: Tensor, chunk: int = 512) -> Tensor:
    """[N] count of entries of each row of scores [N, C] strictly above gt [N, 1].

    Row chunks keep the temporary boolean matrix small (10k×10k would otherwise be 100 MB).
    """
    counts = [
        (scores[a : a + chunk] > gt[a : a + chunk]).sum(dim=1)
        for a in range(0, scores.shape[0], chunk)
    ]
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)


def video_group_scores(
    sim: ScoreMatrix, text_to_video: IndexLike, out: Tensor | None = None
) -> Tensor:
    """Score of every caption group against every video: [V, V] with ``[g, j]`` = max over the
    captions c of video g of ``sim[c, j]``; ``-inf`` where video g has no caption (yet).

    Row g plays the role a caption row plays in ``sim``: the group of captions of video g.
    sim: [T, V]; text_to_video: [T]. Pass the previous result as ``out`` to accumulate over
    blocks of captions: the running maximum is updated in place and returned, so feeding the
    blocks of a matrix one by one gives the same result as the whole matrix at once.
    """
    s = as_score_matrix(sim)
    num_videos = s.shape[1]
    idx = as_text_to_video(text_to_video, s.shape[0], num_videos)
    if out is None:
        out = torch.full((num_videos, num_videos), -torch.inf, dtype=s.dtype)
    elif out.shape != (num_videos, num_videos):
        raise ValueError(
            f"out must be [{num_videos}, {num_videos}] (one row and column per video), "
            f"got {tuple(out.shape)}"
        )
    # out[idx[c], j] = max(out[idx[c], j], s[c, j]) for every caption c of the block.
    index = idx[:, None].expand(-1, num_videos)
    out.scatter_reduce_(0, index, s.to(out.dtype), reduce="amax", include_self=True)
    return out


def ranks_video_to_text(sim: ScoreMatrix, text_to_video: IndexLike) -> tuple[Tensor, Tensor]:
    """Rank of each video's own caption group among all caption groups.

    sim: [T, V]; text_to_video: [T]. Returns ``(ranks [Q] long, videos [Q] long)`` for the Q
    videos that have at least one caption (ascending column order). Ties favour the ground truth.
    """
    s = as_score_matrix(sim)
    idx = as_text_to_video(text_to_video, s.shape[0], s.shape[1])
    return ranks_from_group_scores(video_group_scores(s, idx), idx.unique())


def ranks_from_group_scores(group: Tensor, videos: IndexLike) -> tuple[Tensor, Tensor]:
    """Video→text ranks from accumulated group scores.

    group: [V, V] ``[g, j]`` from :func:`video_group_scores`; videos: [Q] query video columns,
    each of which must have captions. Returns ``(ranks [Q] long, videos [Q] long)``.
    """
    videos = torch.as_tensor(videos).long().reshape(-1)
    gt = group[videos, videos]
    empty = gt == -torch.inf
    if empty.any():
        missing = videos[empty].tolist()[:10]
        raise ValueError(
            f"video columns {missing} have no caption (or only -inf scores) and cannot be queries"
        )
    # A query is a column; groups without captions hold -inf and never count as higher.
    # Column chunks keep the temporary boolean matrix small.
    chunk = 512
    counts = [
        (group[:, videos[a : a + chunk]] > gt[None, a : a + chunk]).sum(dim=0)
        for a in range(0, videos.shape[0], chunk)
    ]
    return 1 + torch.cat(counts), videos


def rank_summary(ranks: Tensor, prefix: str) -> dict[str, float]:
    """R@1/5/10 in percent, median rank and mean rank of [Q] ranks, keys ``<prefix>/<name>``."""
    r = torch.as_tensor(ranks).double()
    if r.numel() == 0:
        raise ValueError(f"no {prefix} queries to summarise (empty rank list)")
    out = {f"{prefix}/R@{k}": float(100.0 * (r <= k).double().mean()) for k in RECALL_AT}
    # np.median averages the two middle ranks for an even count, as the reference code does.
    out[f"{prefix}/MdR"] = float(np.median(r.numpy()))
    out[f"{prefix}/MnR"] = float(r.mean())
    return out


def _query_mask(query_videos: IndexLike | None, num_videos: int) -> Tensor | None:
    if query_videos is None:
        return None
    q = torch.as_tensor(query_videos).long().reshape(-1)
    if q.numel() and (q.min() < 0 or q.max() >= num_videos):
        raise ValueError(f"query_videos must be video columns in [0, {num_videos})")
    mask = torch.zeros(num_videos, dtype=torch.bool)
    mask[q] = True
    return mask


def text_to_video_metrics(
    sim: ScoreMatrix, text_to_video: IndexLike, query_videos: IndexLike | None = None
) -> dict[str, float]:
    """``t2v/*`` metrics of [T, V] scores; ``query_videos`` keeps only captions of those video
    columns as queries (all V videos remain candidates)."""
    s = as_score_matrix(sim)
    idx = as_text_to_video(text_to_video, s.shape[0], s.shape[1])
    mask = _query_mask(query_videos, s.shape[1])
    if mask is not None:
        keep = mask[idx]
        s, idx = s[keep], idx[keep]
    return rank_summary(ranks_text_to_video(s, idx), "t2v")


def video_to_text_metrics(
    sim: ScoreMatrix, text_to_video: IndexLike, query_videos: IndexLike | None = None
) -> dict[str, float]:
    """``v2t/*`` metrics of [T, V] scores (caption groups scored by their maximum);
    ``query_videos`` keeps only those videos as queries (all caption groups remain candidates)."""
    s = as_score_matrix(sim)
    idx = as_text_to_video(text_to_video, s.shape[0], s.shape[1])
    videos = idx.unique()
    mask = _query_mask(query_videos, s.shape[1])
    if mask is not None:
        videos = videos[mask[videos]]
    ranks, _ = ranks_from_group_scores(video_group_scores(s, idx), videos)
    return rank_summary(ranks, "v2t")


def retrieval_metrics(
    sim: ScoreMatrix,
    text_to_video: IndexLike,
    query_videos: IndexLike | None = None,
    v2t_sim: ScoreMatrix | None = None,
) -> dict[str, float]:
    """Both directions: keys ``t2v/R@1, t2v/R@5, t2v/R@10, t2v/MdR, t2v/MnR`` and ``v2t/...``.

    sim: [T, V] scores, T may differ from V (several captions per video, captionless videos);
    text_to_video: [T] ground-truth column per caption; query_videos: optional video columns
    restricting the queries of both directions (a subset), candidates stay all videos;
    v2t_sim: optional separate [T, V] matrix for the video→text direction (post-processing such
    as DSL normalises along a direction-dependent axis).
    """
    out = text_to_video_metrics(sim, text_to_video, query_videos)
    out.update(
        video_to_text_metrics(sim if v2t_sim is None else v2t_sim, text_to_video, query_videos)
    )
    return out
