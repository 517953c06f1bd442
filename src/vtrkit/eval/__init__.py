"""Retrieval evaluation: ranks and metrics, DSL / QB-Norm post-processing, streamed scoring."""

from vtrkit.eval.metrics import retrieval_metrics

__all__ = ["retrieval_metrics"]
