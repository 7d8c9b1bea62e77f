"""What the benchmarks share: the CPU they ran on, how close two sets of vectors are, the tokenizer's rate
per core, and writing the JSON. Needs no Ray (bench/gpu.py runs where there is none)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from actors.devices import available_cpus, cpu_flags, cpu_model, has_bf16_matmul

# The flags that pick a CPU's fast path: AVX2/AVX-512 GEMMs, bf16 in hardware (AMX, avx512_bf16), int8 dot
# products (VNNI).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")


def cpu_info() -> dict:
    flags = cpu_flags()
    return {
        "model": cpu_model(),
        "cpus": available_cpus(),
        "flags": {f: f in flags for f in FLAGS},
        "bf16_matmul": has_bf16_matmul(flags),
    }


def describe_cpu(info: dict) -> str:
    flags = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in info["flags"].items())
    bf16 = "yes" if info["bf16_matmul"] else "no"
    return f"CPU: {info['model']}, {info['cpus']} CPUs; {flags}; bf16 matmul in hardware: {bf16}"


def token_counts(tokens) -> dict:
    """A text set's size as the model sees it: texts, tokens, mean tokens, share cut to the model's cap."""
    return {
        "texts": len(tokens),
        "tokens": int(tokens.offsets[-1]),
        "mean_tokens": round(float(tokens.lengths.mean()), 1),
        "truncated": round(float(tokens.truncated.mean()), 3),
    }


def min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """The worst row's cosine; both sides are L2-normalised, so a row-wise dot product."""
    return float(np.min(np.sum(np.asarray(vectors, np.float32) * np.asarray(reference, np.float32), axis=1)))


def tokenize_rate_per_core(embedder, texts: list[str]) -> float:
    """Tokens/s of `embedder.tokenize` in one thread: what one CPU core of the job's tokenising tasks does."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # `tokenizers` reads it on every batch call
    try:
        embedder.tokenize(texts[:16])  # the first call builds lazy state
        start = time.perf_counter()
        tokens = int(embedder.tokenize(texts).tokens.offsets[-1])
        return tokens / (time.perf_counter() - start)
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}", flush=True)
