"""Online throughput and latency of the Serve app, closed loop, as `rayembed serve` runs it.

    python bench/online.py [--seconds 15] [--out bench/results/online.json]

Starts `rayembed serve` (serve_apps/config.yaml) on a free port, then for each load level runs C
clients that each send one request after another for S seconds: one STS-B sentence per request at
c=1, 16 and 64, and 32 sentences per request at c=4. Prints requests/s (inputs/s for the batch
level) and p50/p99 latency, and writes JSON.

Not yet here (issue 5's full benchmark): the sentence-transformers/FastAPI and infinity-emb
baselines in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

LEVELS = [(1, 1), (16, 1), (64, 1), (4, 32)]  # (clients, inputs per request)


async def closed_loop(url: str, sentences: list[str], clients: int, per_request: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < stop:
            batch = [sentences[(i + j) % len(sentences)] for j in range(per_request)]
            i += clients * per_request
            start = time.perf_counter()
            async with session.post(url, json={"model": "all-MiniLM-L6-v2", "input": batch}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    continue
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(k, session) for k in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return {"clients": clients, "inputs_per_request": per_request, "requests_per_s": round(n / elapsed, 1),
            "inputs_per_s": round(n * per_request / elapsed, 1), "errors": errors,
            "p50_ms": round(1000 * latencies[n // 2], 1) if n else None,
            "p99_ms": round(1000 * latencies[min(n - 1, int(n * 0.99))], 1) if n else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "online.json"))
    args = parser.parse_args()

    from engine import mixed_texts

    sentences = [t for t in mixed_texts(2000) if len(t) < 200]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    server = subprocess.Popen([sys.executable, "-m", "rayembed", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the app did not come up")
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        asyncio.run(closed_loop(url, sentences, 4, 1, 3))  # warm up
        results = [asyncio.run(closed_loop(url, sentences, c, k, args.seconds)) for c, k in LEVELS]
    finally:
        server.terminate()  # SIGTERM: `serve run` cleans up on it
        server.wait(timeout=60)

    print(f"rayembed serve (serve_apps/config.yaml), {len(os.sched_getaffinity(0))} CPUs, {args.seconds:g} s per level")
    print(f"{'level':>22} {'req/s':>8} {'inputs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        level = f"c={r['clients']}, {r['inputs_per_request']} input(s)/req"
        print(f"{level:>22} {r['requests_per_s']:>8} {r['inputs_per_s']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['errors']:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "online", "seconds_per_level": args.seconds, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
