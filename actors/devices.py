"""Devices, the CPU features that decide the fast path, and the one rule for a GPU that cannot be used.

`choose_engine` picks a backend and precision per device by what was measured on these machines
(the table below); `gpu_fallback` says what happens when a GPU was asked for but no backend could
run on it: on a machine with an NVIDIA device that is a broken image or driver and an error; on one
without (a laptop, the fake GPUs Ray tests with) a warning and CPU.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from actors.errors import UserError

log = logging.getLogger("rayembed")

Backend = Literal["onnx", "torch"]
BACKENDS: tuple[str, ...] = get_args(Backend)
Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# What each backend can run: ONNX Runtime has no bf16 GEMM on CPU and torch no int8 path here.
SUPPORTED: dict[str, tuple[str, ...]] = {"onnx": ("fp32", "fp16", "int8"), "torch": ("fp32", "fp16", "bf16")}


@dataclass(frozen=True)
class Device:
    type: str  # "cpu" or "cuda"
    index: int = 0  # the CUDA ordinal as this process sees it (after CUDA_VISIBLE_DEVICES)

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"cuda:{self.index}"


def parse_device(device: str | Device) -> Device:
    """`auto` (a GPU if a backend can use one, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if isinstance(device, Device):
        return device
    if device == "auto":
        return Device("cuda", 0) if cuda_usable() else Device("cpu")
    if device == "cpu":
        return Device("cpu")
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return Device("cuda", int(index or 0))


def cuda_usable() -> bool:
    """A CUDA device that torch can run on (the torch backend's GPU path)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def nvidia_present() -> bool:
    """An NVIDIA device node or driver on this machine, whatever any library says."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.isdir("/proc/driver/nvidia/gpus")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def has_bf16_matmul(flags: frozenset[str] | None = None) -> bool:
    """AMX or AVX-512 BF16: oneDNN runs bf16 GEMMs in hardware (torch's fast CPU path)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


# backend="auto", precision="auto": what runs, by device. Measured (bench/engine.py; docs in the
# README's Benchmarks), all-MiniLM-L6-v2 on 2 cores:
#   AMD EPYC (AVX2, no bf16), ~240-token abstracts: ONNX Runtime fp32 1.69x sentence-transformers
#     fp32; torch fp32 (SDPA) ~1.0x: ONNX Runtime.
#   Intel Xeon with AMX + avx512_bf16: ONNX Runtime fp32 1.1-1.3x; torch bf16 2.0-2.1x at min cos
#     0.9997 (ONNX Runtime has no bf16 GEMM on CPU): torch bf16.
#   CUDA: torch fp16 with SDPA (the GPU test machine has torch for CUDA and no onnxruntime-gpu;
#     bench/gpu.py measures it against the forward-pass ceiling when a GPU is lent).
AUTO_TABLE = {"cuda": ("torch", "fp16"), "cpu-bf16": ("torch", "bf16"), "cpu": ("onnx", "fp32")}


def _device_row(device: Device, flags: frozenset[str] | None) -> str:
    if device.type == "cuda":
        return "cuda"
    return "cpu-bf16" if has_bf16_matmul(flags) else "cpu"


def choose_engine(backend: str, precision: str, device: Device | str, flags: frozenset[str] | None = None,
                  torch_weights: bool = True) -> tuple[Backend, Precision]:
    """(backend, precision) for a request that may say `auto` for either, on this device.

    `torch_weights`: the model has weights torch can load (a model given only as ONNX has none)."""
    device = parse_device(device)
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"backend must be auto or one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in ("auto", *PRECISIONS):
        raise UserError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    best_backend, best_precision = AUTO_TABLE[_device_row(device, flags)]
    if not torch_weights:
        if backend == "torch":
            raise UserError("backend torch needs the model's weights (config.json + model.safetensors); "
                            "this model is given as ONNX only: use backend onnx")
        best_backend, best_precision = "onnx", ("fp16" if device.type == "cuda" else "fp32")
    if backend == "auto" and precision == "auto":
        return best_backend, best_precision  # type: ignore[return-value]
    if backend == "auto":  # the precision decides where it can run
        if precision in SUPPORTED[best_backend]:
            return best_backend, precision  # type: ignore[return-value]
        other = "onnx" if best_backend == "torch" else "torch"
        if other == "torch" and not torch_weights:
            raise UserError(f"precision {precision} needs the torch backend, which needs the model's weights")
        return other, precision  # type: ignore[return-value]
    if precision == "auto":
        if backend == best_backend:
            return best_backend, best_precision  # type: ignore[return-value]
        return backend, ("fp16" if device.type == "cuda" else "fp32")  # type: ignore[return-value]
    if precision not in SUPPORTED[backend]:
        raise UserError(f"backend {backend} runs {', '.join(SUPPORTED[backend])}, not {precision}")
    return backend, precision  # type: ignore[return-value]


def gpu_fallback(asked: Device, got: str, why: str) -> Device:
    """The device to run on when `asked` is a GPU and the backend ended up on `got`.

    On a machine that has an NVIDIA device, a GPU asked for and not used means a mismatched image
    (CUDA, cuDNN, driver): running on one CPU thread instead and reporting success would be worse
    than stopping, so it is an error. Without one (a laptop, Ray's fake GPUs in tests) it is a
    warning and CPU.
    """
    if asked.type != "cuda" or got == "cuda":
        return asked
    if nvidia_present():
        raise RuntimeError(f"GPU {asked} was asked for on a machine with an NVIDIA device, but {why}. The image's "
                           "CUDA/cuDNN do not match its GPU libraries (README, section GPUs); refusing to run on CPU.")
    log.warning("GPU %s was asked for but %s; this machine has no NVIDIA device, so running on CPU.", asked, why)
    return Device("cpu")
