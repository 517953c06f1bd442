"""Search benchmark: exact vs IVF nearest-neighbour search over a clustered collection, plus the
cost of re-ranking the top K with the X-CLIP head.

The collection is a mixture of Gaussians on the unit sphere (``--clusters`` centres, points spread
around them), generated in chunks and held as float16 like the index's feature store. Queries are
fresh draws from the same mixture. For each index it reports single-query latency (p50/p95, one
query per call, as a search box issues them) and recall@10 against exact search; for IVF it sweeps
nprobe and picks the smallest one reaching ``--target-recall``.

    python benchmarks/search.py                 # 1,000,000 × 512 (about 3 GB of RAM)
    python benchmarks/search.py --n 100000      # quicker

Numbers depend on the machine and on what else runs on it; the script prints its thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from vtrkit.config import XClipConfig
from vtrkit.index.storage.ann import AnnConfig, AnnIndex, default_nlist
from vtrkit.index.storage.feature_store import FeatureStore


class Mixture:
    """A mixture of Gaussians on the unit sphere: ``clusters`` random unit centres with uneven
    (Zipf-like) weights; a point is centre + noise, normalised. The noise has a decaying spectrum
    (standard deviation ∝ i^-decay along axis i, total norm ``spread``), like real embeddings
    whose variance sits in a few hundred directions; ``decay=0`` is isotropic noise (an easier
    case for IVF, because neighbours then stay inside their cluster's list)."""

    def __init__(
        self, dim: int, clusters: int, spread: float, decay: float = 0.5, seed: int = 0
    ) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.5
        self.weights = weights / weights.sum()
        scale = np.arange(1, dim + 1, dtype=np.float64) ** -decay
        self.scale = (scale * spread / np.sqrt((scale**2).sum())).astype(np.float32)

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        """n points [n, dim] float16, generated in chunks to bound memory."""
        rng = np.random.default_rng(seed)
        dim = self.centres.shape[1]
        out = np.empty((n, dim), dtype=np.float16)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            labels = rng.choice(len(self.centres), m, p=self.weights)
            noise = rng.standard_normal((m, dim), dtype=np.float32) * self.scale
            x = self.centres[labels] + noise
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start : start + m] = x
        return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def single_query_latency(ann: AnnIndex, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    for q in queries[:3]:  # warm up caches
        ann.search(q[None], k)
    times = []
    for q in queries:
        t = time.perf_counter()
        ann.search(q[None], k)
        times.append(time.perf_counter() - t)
    return percentiles(times)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


def rerank_cost(k: int, dim: int, num_frames: int, num_words: int, reps: int) -> dict[str, float]:
    """Time of scoring one query against K candidates with the X-CLIP head, and of gathering the
    K candidates' features from a feature store on disk."""
    from vtrkit.models.xclip_head import XClipHead

    torch.manual_seed(0)
    head = XClipHead(dim, num_words, num_frames, XClipConfig()).eval()
    unit = torch.nn.functional.normalize
    sentence = unit(torch.randn(1, dim), dim=-1)
    words = unit(torch.randn(1, num_words, dim), dim=-1)
    word_mask = torch.ones(1, num_words, dtype=torch.bool)
    word_mask[:, 12:] = False
    rows = 10_000
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp), dim, num_frames, 0, writable=True)
        rng = np.random.default_rng(0)
        for _ in range(rows // 1000):
            store.append(
                rng.standard_normal((1000, dim), dtype=np.float32),
                rng.standard_normal((1000, num_frames, dim), dtype=np.float32),
                np.ones((1000, num_frames), bool),
            )
        store.flush()
        store.mark_committed(store.end)
        gather, score = [], []
        with torch.inference_mode():
            for _ in range(reps):
                pick = np.sort(rng.choice(rows, k, replace=False))
                t0 = time.perf_counter()
                video = torch.from_numpy(store.pooled(pick).astype(np.float32))
                frames = torch.from_numpy(store.frames(pick).astype(np.float32))
                mask = torch.from_numpy(store.mask(pick))
                t1 = time.perf_counter()
                prepared = head.prepare(unit(video, dim=-1), unit(frames, dim=-1), mask)
                scores = head(sentence, words, word_mask, prepared)
                t2 = time.perf_counter()
                assert scores.shape == (1, k)
                gather.append(t1 - t0)
                score.append(t2 - t1)
    g, s = percentiles(gather), percentiles(score)
    return {
        "k": k,
        "gather_p50_ms": g["p50_ms"],
        "gather_p95_ms": g["p95_ms"],
        "head_p50_ms": s["p50_ms"],
        "head_p95_ms": s["p95_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="collection size")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.7, help="noise norm around centres")
    parser.add_argument("--decay", type=float, default=0.5, help="noise spectrum decay (0: flat)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--exact-queries", type=int, default=30, help="single queries timed on flat"
    )
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists [default ~4*sqrt(n)]")
    parser.add_argument("--train-per-list", type=int, default=32)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rerank-k", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    report: dict = {**vars(args), "json": None, "cpus": os.cpu_count()}
    print(
        f"# search benchmark: n={args.n:,} D={args.dim}, {args.clusters} clusters (spread "
        f"{args.spread}, decay {args.decay}), {args.threads} threads, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )

    t = time.perf_counter()
    source = Mixture(args.dim, args.clusters, args.spread, args.decay)
    data = source.sample(args.n, seed=1)
    queries = source.sample(args.queries, seed=2).astype(np.float32)  # fresh draws
    report["generate_s"] = time.perf_counter() - t
    print(f"generated in {report['generate_s']:.1f} s")

    ids = np.arange(args.n, dtype=np.int64)
    read = lambda pos: data[pos].astype(np.float32)  # noqa: E731
    t = time.perf_counter()
    flat = AnnIndex.build_from(read, ids, args.dim, AnnConfig(exact_limit=args.n + 1))
    build_flat = time.perf_counter() - t
    t = time.perf_counter()
    _, truth = flat.search(queries, 10)  # batched: BLAS path
    batch_exact = time.perf_counter() - t
    exact = single_query_latency(flat, queries[: args.exact_queries])
    report["exact"] = {"build_s": build_flat, "batch_search_s": batch_exact, **exact}
    print(
        f"exact (flat): p50 {exact['p50_ms']:.1f} ms, p95 {exact['p95_ms']:.1f} ms per query; "
        f"{args.queries} queries batched in {batch_exact:.2f} s; recall@10 1.000"
    )
    del flat

    nlist = args.nlist or default_nlist(args.n)
    config = AnnConfig(exact_limit=0, nlist=nlist, train_per_list=args.train_per_list)
    t = time.perf_counter()
    ivf = AnnIndex.build_from(read, ids, args.dim, config)
    build_ivf = time.perf_counter() - t
    print(
        f"IVF{ivf.index.nlist}: built in {build_ivf:.1f} s (trained on "
        f"{min(args.n, args.train_per_list * nlist):,} vectors)"
    )
    sweep = []
    chosen = None
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        if nprobe > ivf.index.nlist:
            break
        ivf.nprobe = nprobe
        _, found = ivf.search(queries, 10)
        recall = recall_at(found, truth)
        lat = single_query_latency(ivf, queries)
        sweep.append({"nprobe": nprobe, "recall@10": recall, **lat})
        print(
            f"  nprobe {nprobe:4d}: recall@10 {recall:.3f}, p50 {lat['p50_ms']:.2f} ms, "
            f"p95 {lat['p95_ms']:.2f} ms"
        )
        if recall >= args.target_recall:
            chosen = sweep[-1]
            break
    report["ivf"] = {
        "nlist": int(ivf.index.nlist),
        "build_s": build_ivf,
        "sweep": sweep,
        "chosen": chosen,
    }
    if chosen:
        print(
            f"IVF chosen: nprobe {chosen['nprobe']}, recall@10 {chosen['recall@10']:.3f}, "
            f"p50 {chosen['p50_ms']:.2f} ms, p95 {chosen['p95_ms']:.2f} ms"
        )
    del ivf

    rr = rerank_cost(args.rerank_k, args.dim, num_frames=12, num_words=32, reps=30)
    report["rerank"] = {**rr, "head": "vtrkit.models.xclip_head.XClipHead (all four contrasts)"}
    print(
        f"re-rank K={rr['k']} with the X-CLIP head: gather {rr['gather_p50_ms']:.2f} ms, "
        f"head p50 {rr['head_p50_ms']:.1f} ms (p95 {rr['head_p95_ms']:.1f} ms)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
