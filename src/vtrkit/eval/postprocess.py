"""Optional test-time post-processing of similarity matrices (SPEC §0): DSL and QB-Norm.

Both are *extras*: published reference numbers use neither, so results always report them beside
the raw numbers under their own label. Shapes: T texts, V videos, Q bank queries.

Scale: the temperatures here are meant for cosine-scale scores (about [-1, 1]). Model logits already
include λ = exp(logit_scale) ≈ 100, so callers holding logits pass ``temperature / λ`` (and
``beta / λ``), which is the same as dividing the scores by λ first; the evaluation loop does this.

Both functions compute in float64 and return float64: with a temperature of 100 the softmax weights
span e^-200, which float32 flushes to zero, and zeros would turn into ties (ranked in favour of the
ground truth, i.e. inflated recall).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtrkit.eval.metrics import ScoreMatrix, as_score_matrix


def dual_softmax(sim: ScoreMatrix, temperature: float = 100.0, dim: int = 0) -> Tensor:
    """Dual softmax (DSL): ``S ⊙ softmax(S · temperature, dim)``, float64 [T, V].

    The softmax runs over the *query* axis, i.e. it acts as a prior saying how strongly each
    candidate prefers this query over the other queries:

    - text→video ranking (queries are texts, rows): ``dim=0``, for every video a softmax over all
      texts; then each text row is ranked as usual.
    - video→text ranking (queries are videos, columns): ``dim=1``, for every text a softmax over
      all videos.

    sim: [T, V] scores; temperature > 0 multiplies the scores inside the softmax.
    """
    if temperature <= 0:
        raise ValueError(f"DSL temperature must be > 0 (eval.dsl_temperature), got {temperature}")
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (softmax over texts) or 1 (over videos), got {dim}")
    s = as_score_matrix(sim).double()
    return s * torch.softmax(s * temperature, dim=dim)


def querybank_normalize(
    sim: ScoreMatrix, bank: ScoreMatrix, beta: float = 20.0, k: int = 1
) -> Tensor:
    """Query-bank normalisation (QB-Norm with the dynamic inverted softmax), text→video only.

    sim: [T, V] test-query scores; bank: [Q, V] scores of a bank of other queries (e.g. training
    captions) against the same gallery. Returns float64 [T, V] scores to rank row by row.

    Precise variant implemented (Bogolin et al.'s dynamic inverted softmax):

    1. Activation set A: gallery items that appear in the top-``k`` of at least one bank query.
       These are the "hubs" that many queries retrieve.
    2. Inverted softmax of a score: ``exp(β·sim[t, j]) / Σ_q exp(β·bank[q, j])``, normalising each
       gallery item by how strongly the whole bank already retrieves it. It is returned in the
       log domain, ``β·sim[t, j] - logsumexp_q(β·bank[q, j])``, which orders a row identically
       and cannot overflow.
    3. A query row is normalised only when its own top-1 gallery item lies in A (the query hits
       a hub); other rows keep their raw scores.

    The decision is made per query row rather than per gallery item because normalised and raw
    scores are on different scales and must not be compared within one row. Rows are therefore
    on different scales, so only text→video (row-wise) ranking is meaningful on the result.
    """
    if beta <= 0:
        raise ValueError(f"QB-Norm beta must be > 0 (eval.qb_beta), got {beta}")
    s = as_score_matrix(sim).double()
    b = as_score_matrix(bank, "bank").double()
    if b.shape[1] != s.shape[1]:
        raise ValueError(
            f"the query bank scores {b.shape[1]} gallery items but sim has {s.shape[1]}: "
            "score the bank against the same videos"
        )
    if b.shape[0] == 0:
        raise ValueError("the query bank is empty; give it captions (e.g. the training split)")
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"QB-Norm top-k must be in [1, {s.shape[1]}] (eval.qb_k), got {k}")
    active = torch.zeros(s.shape[1], dtype=torch.bool)
    active[b.topk(k, dim=1).indices.reshape(-1)] = True
    normalised = beta * s - torch.logsumexp(beta * b, dim=0)[None, :]
    hits_hub = active[s.argmax(dim=1)]
    return torch.where(hits_hub[:, None], normalised, s)
