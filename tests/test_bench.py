"""The benchmark scripts still run and still write the report their readers (bench/scaling.py, people) expect.

Their quick modes measure nothing; they keep the scripts from rotting between full runs and GPU loans.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        cwd=ROOT,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_gpu_bench_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    run_bench("gpu.py", "--device", "cpu", "--budget-s", "240", "--out", str(out))  # a slow CI machine still sweeps
    report = json.loads(out.read_text())
    assert {
        "device",
        "cpu",
        "texts",
        "fidelity",
        "ceiling",
        "sentence_transformers",
        "sweep",
        "best_torch",
        "end_to_end",
        "tokenizer_tokens_per_s_per_core",
        "cpu_cores_per_device",
        "utilization",
        "targets",
    } <= set(report)
    assert {"name", "torch", "cuda"} <= set(report["device"])
    assert set(report["texts"]) == {"long", "short"}
    assert {r["contender"] for r in report["fidelity"]} == {"torch fp32", "torch bf16"}
    assert all(r["min_cos"] >= 0.999 for r in report["fidelity"])
    assert report["sweep"] and report["best_torch"]["long"]["tokens_per_s"] > 0
    assert all({"target", "value", "needed", "met"} <= set(t) for t in report["targets"])


def test_engine_bench_runs(tmp_path):
    out = tmp_path / "engine.json"
    run_bench("engine.py", "--out", str(out))
    report = json.loads(out.read_text())
    assert {"cpu", "auto", "sets", "tokenizer_tokens_per_s_per_core", "results", "skipped", "targets"} <= set(report)
    assert {"model", "flags", "bf16_matmul"} <= set(report["cpu"])
    assert set(report["sets"]) == {"long", "short"}
    rows = report["results"]
    assert {"set", "contender", "docs_per_s", "tokens_per_s", "vs_st_fp32", "vs_best_st", "min_cos"} <= set(rows[0])
    for name in ("long", "short"):
        mine = [r for r in rows if r["set"] == name]
        assert sum(r["auto"] for r in mine) == 1
        names = {r["contender"].removesuffix(" (auto)") for r in mine}
        assert {
            "sentence-transformers fp32",
            "rayembed onnx fp32",
            "rayembed onnx int8",
            "rayembed torch fp32",
        } <= names
    assert {t["target"].split(":")[0] for t in report["targets"]} == {"long", "short"}
