"""Video–text matching (vtm) on hard negatives, CLIP2TV (SPEC §2).

For every text one negative video and for every video one negative text are drawn from the other
items of the (gathered) batch, with probability proportional to the softmax of the vta similarity
row restricted to the allowed items. Positives and items whose caption is identical to the query's
caption (and, when given, items of the same video) are never drawn: they are not negatives, and
training the matcher to reject them is exactly the false-negative problem SD addresses.

Shapes: B items of the gathered batch (text i and video i form a positive pair), P pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NO_NEGATIVE = -1
"""Index returned for a query whose every other batch item is a positive or a duplicate caption."""


def _forbidden_pairs(caption_key: Tensor, video_key: Tensor | None) -> Tensor:
    """[B, B] bool: True where (text i, video j) must not be used as a negative pair.

    The relation is symmetric, so one matrix serves both sampling directions.
    """
    forbidden = caption_key[:, None] == caption_key[None, :]
    # An explicit diagonal keeps positives out even if a caller passes unique-per-video keys.
    forbidden |= torch.eye(len(caption_key), dtype=torch.bool, device=caption_key.device)
    if video_key is not None:
        forbidden |= video_key[:, None] == video_key[None, :]
    return forbidden


def _sample_rows(scores: Tensor, forbidden: Tensor, generator: torch.Generator | None) -> Tensor:
    """One column index per row of ``scores`` [B, B], drawn from softmax over allowed columns.

    Returns [B] long; rows with no allowed column get ``NO_NEGATIVE``.
    """
    has_choice = ~forbidden.all(dim=1)
    logits = scores.detach().float().masked_fill(forbidden, float("-inf"))
    # Rows without any allowed column would softmax to NaN; give them a harmless uniform row and
    # overwrite their draw afterwards.
    logits = torch.where(has_choice[:, None], logits, torch.zeros_like(logits))
    probs = torch.softmax(logits, dim=1)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.where(has_choice, drawn, torch.full_like(drawn, NO_NEGATIVE))


def sample_hard_negatives(
    sim: Tensor,
    caption_key: Tensor,
    generator: torch.Generator | None = None,
    video_key: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw one hard negative video per text and one hard negative text per video.

    Args:
        sim: [B, B] vta similarities (text i, video j) of the gathered batch; the softmax is taken
            over these values as given (pass logits, i.e. already scaled by λ). No gradient flows.
        caption_key: [B] long; equal keys mean identical caption text. Video j's caption is text j.
        generator: random source (on ``sim``'s device); None uses the global torch RNG.
        video_key: optional [B] long video identity; items of the same video are excluded too
            (expanded-sentence batches may hold two captions of one video).

    Returns:
        (neg_video_for_text [B], neg_text_for_video [B]), long indices into the batch, with
        ``NO_NEGATIVE`` (-1) where no allowed item exists. For text i the draw follows
        softmax(sim[i, allowed]); for video j it follows softmax(sim[allowed, j]).
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square [B, B] matrix, got shape {tuple(sim.shape)}")
    if caption_key.shape != (sim.shape[0],):
        raise ValueError(
            f"caption_key must have shape [{sim.shape[0]}] to match sim, got {tuple(caption_key.shape)}"
        )
    if video_key is not None:
        video_key = video_key.to(sim.device)
    forbidden = _forbidden_pairs(caption_key.to(sim.device), video_key)
    neg_video_for_text = _sample_rows(sim, forbidden, generator)
    neg_text_for_video = _sample_rows(sim.t(), forbidden.t(), generator)
    return neg_video_for_text, neg_text_for_video


def matching_pairs(
    neg_video_for_text: Tensor, neg_text_for_video: Tensor, rows: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The vtm training pairs: every positive, one negative per text and one per video.

    Args:
        neg_video_for_text, neg_text_for_video: [B] from :func:`sample_hard_negatives`.
        rows: optional [b] long global indices of the items this process owns (distributed
            training scores only its own items against the gathered batch); None means all.

    Returns:
        (text_index [P], video_index [P], label [P]) with label 1 for the positives (i, i) and 0
        for (i, neg_video_for_text[i]) and (neg_text_for_video[j], j); P = 3b minus the queries
        that had no allowed negative.
    """
    if rows is None:
        rows = torch.arange(len(neg_video_for_text), device=neg_video_for_text.device)
    neg_v = neg_video_for_text[rows]
    neg_t = neg_text_for_video[rows]
    keep_v = neg_v != NO_NEGATIVE
    keep_t = neg_t != NO_NEGATIVE
    text_index = torch.cat([rows, rows[keep_v], neg_t[keep_t]])
    video_index = torch.cat([rows, neg_v[keep_v], rows[keep_t]])
    label = torch.cat(
        [
            torch.ones_like(rows),
            torch.zeros_like(rows[keep_v]),
            torch.zeros_like(rows[keep_t]),
        ]
    )
    return text_index, video_index, label


def vtm_loss(match_logits: Tensor, label: Tensor) -> Tensor:
    """Cross-entropy of the 2-way match head over all pairs.

    Args:
        match_logits: [P, 2] (column 1 = "match").
        label: [P] long, 1 for a positive pair, 0 for a negative.

    Returns:
        Scalar mean over the P pairs, in float32 at least (half-precision logits are upcast;
        float64 stays float64).
    """
    return F.cross_entropy(
        match_logits.to(torch.promote_types(match_logits.dtype, torch.float32)), label
    )
