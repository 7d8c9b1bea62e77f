"""Device and provider choice, threads, and the race of two processes on one cache."""

import logging
import os
import subprocess
import sys

import pytest

from actors.session import parse_device
from rayembed import Embedder


def test_a_gpu_asked_for_without_cuda_falls_back_to_cpu_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="rayembed"):
        embedder = Embedder("all-MiniLM-L6-v2", precision="fp32", device="cuda:1")
    assert str(embedder.device) == "cpu" and embedder.session.provider == "CPUExecutionProvider"
    assert "GPU cuda:1 was asked for but onnxruntime could not use it" in caplog.text
    assert "running on CPU" in caplog.text
    assert embedder.embed(["still works"]).shape == (1, 384)


def test_auto_precision_is_fp32_on_cpu():
    assert Embedder("all-MiniLM-L6-v2", device="cpu").precision == "fp32"


def test_threads_come_from_the_caller():
    embedder = Embedder("all-MiniLM-L6-v2", precision="fp32", device="cpu", threads=1)
    assert embedder.session.threads == 1
    assert embedder.session.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu:0"])
def test_bad_device_names_are_refused(bad):
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        parse_device(bad)


def test_two_processes_exporting_at_once_both_succeed_and_share_the_file(tmp_path):
    env = {**os.environ, "RAYEMBED_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "rayembed", "export", "--precision", "fp32", "int8"]
    racers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=600) for r in racers]
    assert [r.returncode for r in racers] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    folders = [line.split("\t")[1] for line in outputs[0][0].splitlines()]
    for folder in folders:
        assert sorted(os.listdir(folder)) == ["model.onnx", "tokenizer.json"]
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*tmp-*")]
    assert leftovers == []
