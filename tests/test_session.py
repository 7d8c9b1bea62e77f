"""Device and provider choice, threads, and the race of two processes on one cache."""

import logging
import os
import subprocess
import sys

import pytest

from actors.devices import parse_device
from rayembed import Embedder


def test_a_gpu_asked_for_without_cuda_falls_back_to_cpu_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="rayembed"):
        embedder = Embedder("all-MiniLM-L6-v2", precision="fp32", device="cuda:1")
    assert str(embedder.device) == "cpu" and embedder.session.provider == "CPUExecutionProvider"
    assert "GPU cuda:1 was asked for but neither torch nor onnxruntime sees a CUDA device" in caplog.text
    assert "this machine has no NVIDIA device, so running on CPU" in caplog.text
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
        assert sorted(os.listdir(folder)) == ["_rayembed_manifest.json", "model.onnx", "tokenizer.json"]
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*tmp-*")]
    assert leftovers == []


def test_a_gpu_asked_for_on_a_machine_with_an_nvidia_device_but_unusable_is_an_error(monkeypatch):
    """A GPU worker whose image cannot reach its GPU must stop, not embed on one CPU thread and report success."""
    from actors import devices

    monkeypatch.setattr(devices, "nvidia_present", lambda: True)
    with pytest.raises(RuntimeError, match="refusing to run on CPU"):
        Embedder("all-MiniLM-L6-v2", precision="fp32", device="cuda:0")
    # A worker Ray gave no GPU is unaffected.
    assert Embedder("all-MiniLM-L6-v2", precision="fp32", device="cpu").embed(["fine"]).shape == (1, 384)


def test_the_onnx_session_checks_the_provider_it_really_got(monkeypatch):
    """get_available_providers() may list CUDA whose libraries then fail to load: the session's own
    providers decide, and on a machine with an NVIDIA device a CPU session for a GPU is an error."""
    import onnxruntime as ort

    from actors import devices
    from actors.devices import Device
    from actors.export import model_folder
    from actors.onnx_backend import OnnxSession
    from rayembed import CATALOG

    graph = model_folder(CATALOG.resolve("all-MiniLM-L6-v2"), "fp32") / "model.onnx"
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(devices, "nvidia_present", lambda: True)
    with pytest.raises(RuntimeError, match="onnxruntime could not use it"):
        OnnxSession(graph, Device("cuda", 0))


@pytest.mark.parametrize(("flags", "device", "expected"), [
    (frozenset({"avx2"}), "cpu", ("onnx", "fp32")),
    (frozenset({"avx2", "avx512_bf16", "amx_bf16"}), "cpu", ("torch", "bf16")),
    (frozenset({"avx2"}), "cuda", ("torch", "fp16")),
])
def test_auto_picks_the_measured_engine_per_device(flags, device, expected):
    from actors.devices import choose_engine

    assert choose_engine("auto", "auto", device, flags) == expected
    assert choose_engine("auto", "int8", device, flags)[0] == "onnx"
    assert choose_engine("onnx", "auto", device, flags)[0] == "onnx"


def test_backend_and_precision_that_do_not_go_together_are_refused():
    from actors.devices import choose_engine
    from rayembed import UserError

    with pytest.raises(UserError, match="backend torch runs fp32, fp16, bf16, not int8"):
        choose_engine("torch", "int8", "cpu")
    with pytest.raises(UserError, match="backend onnx runs fp32, fp16, int8, not bf16"):
        choose_engine("onnx", "bf16", "cpu")
