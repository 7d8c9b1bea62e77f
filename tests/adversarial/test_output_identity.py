"""An output belongs to one run's identity: --resume redoes what changed and never mixes models,
a rerun replaces the old output only when it is complete, and no half-written file is ever read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.embed_corpus import main as embed_corpus

ROOT = Path(__file__).resolve().parents[2]
CPU_FLAGS = ["--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--max-actors", "1"]


def corpus(folder: Path, files: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in files.items():
        (folder / name).write_text("".join(json.dumps({"id": f"{name}-{i}", "text": f"sentence {i} of {name}"}) + "\n"
                                           for i in range(n)))


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def output_ids(out: Path) -> list[str]:
    return pq.read_table(out)["id"].to_pylist()


def test_resume_redoes_an_input_that_grew(ray_cluster, tmp_path):
    corpus(tmp_path / "in", {"a.jsonl": 30, "b.jsonl": 30})
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "in"), str(out), *CPU_FLAGS]) == 0
    with open(tmp_path / "in" / "a.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "a.jsonl-new", "text": "appended since"}) + "\n")
    assert embed_corpus([str(tmp_path / "in"), str(out), "--resume", *CPU_FLAGS]) == 0
    ids = output_ids(out)
    assert "a.jsonl-new" in ids and len(ids) == len(set(ids)) == 61
    assert manifest(out)["files_skipped"] == 1  # b.jsonl, unchanged


def test_resume_refuses_to_mix_models(ray_cluster, tmp_path, capsys):
    corpus(tmp_path / "in", {"a.jsonl": 10})
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "in"), str(out), *CPU_FLAGS]) == 0
    assert embed_corpus([str(tmp_path / "in"), str(out), "--resume", "--prompt", "query: ", *CPU_FLAGS]) == 2
    assert "Resuming would mix two models in one output" in capsys.readouterr().err
    assert len(output_ids(out)) == 10


def test_a_relative_and_an_absolute_path_are_one_corpus(ray_cluster, tmp_path, monkeypatch):
    corpus(tmp_path / "in", {"a.jsonl": 10})
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert embed_corpus(["in", str(out), *CPU_FLAGS]) == 0
    assert embed_corpus([str(tmp_path / "in"), str(out), "--resume", *CPU_FLAGS]) == 0
    assert manifest(out)["files_skipped"] == 1 and len(output_ids(out)) == 10


def test_parts_of_vanished_inputs_are_removed_and_said(ray_cluster, tmp_path, capsys):
    corpus(tmp_path / "in", {"a.jsonl": 10, "gone.jsonl": 10})
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "in"), str(out), *CPU_FLAGS]) == 0
    (tmp_path / "in" / "gone.jsonl").unlink()
    assert embed_corpus([str(tmp_path / "in"), str(out), "--resume", *CPU_FLAGS]) == 0
    assert "removed the output of gone.jsonl" in capsys.readouterr().err
    assert sorted(set(i.split("-")[0] for i in output_ids(out))) == ["a.jsonl"]
    assert manifest(out)["counts"]["embedded"] == 10


def test_a_second_job_on_the_same_output_is_refused(ray_cluster, tmp_path, capsys):
    corpus(tmp_path / "in", {"a.jsonl": 400})
    out = tmp_path / "out"
    first: list[int] = []
    job = threading.Thread(target=lambda: first.append(embed_corpus([str(tmp_path / "in"), str(out), "--rows-per-part", "20",
                                                                     *CPU_FLAGS])))
    job.start()
    deadline = time.monotonic() + 120
    while not (out / "_lease.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert embed_corpus([str(tmp_path / "in"), str(out), *CPU_FLAGS]) == 2
    assert "another job is writing" in capsys.readouterr().err
    job.join(timeout=300)
    assert first == [0] and len(output_ids(out)) == 400


def test_an_interrupted_rerun_leaves_the_old_output_whole(ray_cluster, tmp_path):
    corpus(tmp_path / "in", {"a.jsonl": 300, "b.jsonl": 300})
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "in"), str(out), *CPU_FLAGS]) == 0
    before = sorted(output_ids(out))
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    rerun = subprocess.Popen([sys.executable, "-m", "jobs.embed_corpus", str(tmp_path / "in"), str(out), "--rows-per-part", "20",
                              *CPU_FLAGS], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    # Until the rerun has staged parts (or, as it once did, removed the old output's manifest).
    while not list(out.glob("_staging/*.parquet")) and (out / "_manifest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rerun.kill()  # mid-run: some parts staged, the rest not written
    rerun.wait()
    # The old output is still the output, whole, with its manifest; nothing half-made is read.
    assert sorted(output_ids(out)) == before and (out / "_manifest.json").exists()
    assert embed_corpus([str(tmp_path / "in"), str(out), "--resume", *CPU_FLAGS]) == 0
    assert sorted(output_ids(out)) == before


def test_a_failed_s3_write_leaves_no_object(bucket):
    from actors.storage import s3_filesystem
    from jobs.sinks import OutputFolder, Part

    folder = OutputFolder(f"{bucket}/out")
    part = Part.named("input-1", 0, 10, True)
    # Parquet cannot hold this type: pyarrow fails inside the write, as a full disk or a bug would.
    unwritable = pa.table({"id": ["a"], "x": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})
    with pytest.raises(pa.ArrowNotImplementedError):
        folder.write(part, unwritable, unwritable.slice(0, 0))
    assert not s3_filesystem().exists(f"{bucket[5:]}/out/_staging/{part.name}")


def test_a_failed_local_write_leaves_nothing_a_reader_finds(tmp_path):
    from jobs.sinks import OutputFolder, Part

    folder = OutputFolder(str(tmp_path / "out"))
    unwritable = pa.table({"id": ["a"], "x": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})
    with pytest.raises(pa.ArrowNotImplementedError):
        folder.write(Part.named("input-1", 0, 10, True), unwritable, unwritable.slice(0, 0))
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
