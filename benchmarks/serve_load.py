"""Load test of `vtrkit serve`: N concurrent clients, M searches each, against 127.0.0.1 only.

For each model it builds a random checkpoint from an architecture config (nothing downloaded),
indexes a few synthetic test videos with it, starts the real `vtrkit serve` command on a free
local port and runs a bounded closed loop: every client sends its M requests one after the
other (``/api/search?q=...&k=10``, the server's default re-ranking), each query text unique
unless ``--repeat`` says otherwise. It prints requests/s and latency percentiles for one client
and for N clients, and the server's passes (how many searches ran together in each).

    python benchmarks/serve_load.py                          # demo-sized and ViT-B/32-sized
    python benchmarks/serve_load.py --models b32 --clients 20 --requests 10

Models: ``demo`` is configs/demo.yaml's X-CLIP (text tower 128 wide, 2 layers); ``b32`` the
same with a ViT-B/32-sized text tower (512 wide, 12 layers, 8 heads, 77 positions, D = 512,
32 words per query); its vision tower stays small because no video is encoded while serving.
Figures depend on the machine and on what else runs on it (the clients share its cores).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
B32 = (
    "model.backbone.arch={embed_dim: 512, image_size: 32, patch_size: 16, vision_width: 128, "
    "vision_layers: 2, vision_heads: 4, text_width: 512, text_layers: 12, text_heads: 8, "
    "context_length: 77, vocab_size: 49408}"
)
MODELS = {"demo": [], "b32": [B32, "data.max_words=32"]}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
SHAPES = ("circle", "square", "triangle", "star")
EVENTS = (
    "moves left",
    "moves right",
    "moves up",
    "moves down",
    "appears",
    "disappears",
    "grows",
    "shrinks",
    "turns red",
    "turns blue",
)


def queries(count: int, repeat: float, seed: int) -> list[str]:
    """``count`` captions in the synthetic benchmark's style; a share ``repeat`` of them repeat
    an earlier one (to show the cache), the rest are all different."""
    rng = random.Random(seed)
    seen: list[str] = []
    out: list[str] = []
    while len(out) < count:
        if seen and rng.random() < repeat:
            out.append(rng.choice(seen))
            continue
        parts = [
            f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} {rng.choice(EVENTS)}"
            for _ in range(rng.randint(1, 3))
        ]
        text = ", then ".join(parts)
        if text not in seen:
            seen.append(text)
            out.append(text)
    return out


def make_checkpoint(name: str, folder: Path) -> Path:
    from vtrkit.config import load_config
    from vtrkit.models.build import build_model
    from vtrkit.train.checkpoint import save_checkpoint

    cfg = load_config(ROOT / "configs" / "demo.yaml", MODELS[name])
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, cfg.data)
    return save_checkpoint(folder / "best", model, cfg)


def build_library(checkpoint: Path, videos: Path, out: Path) -> None:
    from vtrkit.index import VideoIndex, load_model_for_index

    VideoIndex.build(videos, out, load_model_for_index(checkpoint)).close()


def count_windows(library: Path) -> int:
    from vtrkit.index.storage.library import Library

    lib = Library.open(library)
    try:
        return lib.catalog.counts()["windows"]
    finally:
        lib.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(conn: http.client.HTTPConnection, path: str) -> dict:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
    return json.loads(body)


def encoding_stats(port: int) -> dict:
    """The server's batching counters (a fresh connection: idle ones are closed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        return get(conn, "/api/status")["batching"]
    finally:
        conn.close()


def start_server(library: Path, port: int, precision: str, batch: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "vtrkit", "serve", str(library), "--port", str(port)]
    command += ["--query-precision", precision, "--max-batch", str(batch)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            get(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "/api/status")
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not answer within 300 s")


def run_clients(port: int, texts: list[str], clients: int) -> tuple[float, list[float]]:
    """Each client sends its share of ``texts`` one by one; returns (wall seconds, latencies)."""
    shares = [texts[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start.wait()
        try:
            for text in shares[i]:
                began = time.perf_counter()
                get(conn, "/api/search?" + urllib.parse.urlencode({"q": text, "k": 10}))
                latencies[i].append(time.perf_counter() - began)
        except BaseException as exc:  # reported after the run
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed; first: {errors[0]}")
    return wall, [x for per in latencies for x in per]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def measure(
    name: str, precision: str, batch: int, args: argparse.Namespace, work: Path, videos: Path
) -> list[dict]:
    library = work / f"{name}.vtr"
    if not library.exists():  # one index per model, served once per precision
        build_library(make_checkpoint(name, work / name), videos, library)
    windows = count_windows(library)
    port = free_port()
    server = start_server(library, port, precision, batch)
    rows = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for text in queries(5, 0.0, seed=999):  # warm-up: first-call costs, ANN loaded
            get(conn, "/api/search?" + urllib.parse.urlencode({"q": text, "k": 10}))
        for seed, clients in enumerate((1, args.clients), 1):
            total = clients * args.requests
            before = encoding_stats(port)
            wall, lat = run_clients(port, queries(total, args.repeat, seed), clients)
            after = encoding_stats(port)
            passes = after["passes"] - before["passes"]
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "max_batch": batch,
                    "windows": windows,
                    "clients": clients,
                    "requests": total,
                    "requests_per_s": total / wall,
                    "p50_ms": 1000 * statistics.median(lat),
                    "p95_ms": 1000 * percentile(lat, 95),
                    "max_ms": 1000 * max(lat),
                    "passes": passes,
                    "queries_per_pass": total / max(1, passes),
                    "cache_hits": after["cache_hits"] - before["cache_hits"],
                }
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["demo", "b32"])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="per client")
    parser.add_argument("--videos", type=int, default=200, help="synthetic test videos indexed")
    parser.add_argument("--repeat", type=float, default=0.0, help="share of repeated queries")
    parser.add_argument(
        "--query-precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"]
    )
    parser.add_argument(
        "--max-batch",
        nargs="+",
        type=int,
        default=[64],
        help="server --max-batch values to compare (1: no batching, as before)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or not 0 <= args.repeat < 1:
        parser.error("--clients and --requests must be positive, --repeat in [0, 1)")

    from vtrkit.data.synthetic import generate

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "data", n_train=0, n_test=args.videos, n_long=0, seed=0)
        for name in args.models:
            for precision in args.query_precision:
                for batch in args.max_batch:
                    rows += measure(name, precision, batch, args, work, work / "data" / "videos")
    print(
        f"\nvtrkit serve on 127.0.0.1, {os.cpu_count()} CPUs; unique queries "
        f"(repeat share {args.repeat:g}); server default re-ranking"
    )
    header = f"{'model':6} {'query':5} {'batch':>5} {'clients':>7} {'requests':>8} {'req/s':>7}"
    print(header + f" {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'passes':>6} {'per pass':>8}")
    for r in rows:
        print(
            f"{r['model']:6} {r['precision']:5} {r['max_batch']:>5} {r['clients']:>7} "
            f"{r['requests']:>8} {r['requests_per_s']:>7.1f} {r['p50_ms']:>7.0f} "
            f"{r['p95_ms']:>7.0f} {r['max_ms']:>7.0f} {r['passes']:>6} "
            f"{r['queries_per_pass']:>8.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
