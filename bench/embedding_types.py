"""Online speed by embedding type: one `rayembed serve`, the same load with float, base64 and binary
answers, in rounds that each start with the next type, so that the machine's noise and any drift
of the server fall on all of them alike.

    python bench/embedding_types.py [--seconds 6] [--rounds 5] [--out bench/results/embedding_types.json]

Levels: one sentence per request at 16 clients (the answer is a small part of the work) and 64
sentences per request at 4 clients (writing 64 vectors is a large part). Each type's figure is the
median of its rounds; its ratio is against float at the same level, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from online import Server, closed_loop, free_port, serving  # noqa: E402

LEVELS = [(16, 1), (4, 64)]  # (clients, inputs per request)
TYPES = {"float": {"encoding_format": "float"}, "base64": {"encoding_format": "base64"},
         "binary": {"encoding_format": "binary"}, "ubinary base64": {"embedding_types": ["ubinary"], "encoding_format": "base64"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "embedding_types.json"))
    args = parser.parse_args()

    from texts import stsb_sentences

    from actors.devices import cpu_flags, cpu_model

    sentences = stsb_sentences()
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
    print(f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} CPUs; flags: {', '.join(flags) or 'none of note'}")
    port = free_port()
    server = Server("rayembed serve", [sys.executable, "-m", "rayembed", "serve", "--port", str(port)], "/healthz")
    with serving(server, port) as url:
        asyncio.run(closed_loop(url, sentences, 4, 8, 3))  # warm up
        runs: dict[str, dict[str, list[dict]]] = {}
        for clients, per_request in LEVELS:
            level = f"{per_request}/req c={clients}"
            runs[level] = {name: [] for name in TYPES}
            names = list(TYPES)
            for k in range(args.rounds):
                for name in names[k % len(names):] + names[: k % len(names)]:  # each round starts with the next type
                    runs[level][name].append(asyncio.run(closed_loop(url, sentences, clients, per_request, args.seconds,
                                                                     TYPES[name])))

    failed = [f"{level} {name}" for level, by_type in runs.items() for name, rounds in by_type.items()
              if any(r["errors"] for r in rounds)]
    if failed:  # a refused body would be measured as a fast error, not as the type
        raise SystemExit(f"requests failed for {', '.join(failed)}")
    results = {}
    print(f"{'level':>14} {'type':>16} {'inputs/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs float':>9} {'errors':>7}")
    for level, by_type in runs.items():
        results[level] = {}
        for name, rounds in by_type.items():
            results[level][name] = {"inputs_per_s": statistics.median(r["inputs_per_s"] for r in rounds),
                                    "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
                                    "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
                                    "errors": sum(r["errors"] for r in rounds), "rounds": rounds}
        base = results[level]["float"]["inputs_per_s"]
        for name, row in results[level].items():
            row["vs_float"] = round(row["inputs_per_s"] / base, 3)
            print(f"{level:>14} {name:>16} {row['inputs_per_s']:>10.0f} {row['p50_ms']:>8} {row['p99_ms']:>8} "
                  f"{row['vs_float']:>8.2f}x {row['errors']:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "embedding_types", "cpu": cpu_model(), "flags": flags,
                               "cpus": len(os.sched_getaffinity(0)), "seconds_per_round": args.seconds,
                               "rounds": args.rounds, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
