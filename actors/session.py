"""The ONNX Runtime session: which device and execution provider, how many threads.

Providers, in order: TensorRT (only when asked), CUDA on the given device ordinal, then CPU. A GPU
asked for but not usable (no onnxruntime-gpu, no driver) falls back to CPU with a log line that
says so, because a silent fallback makes a GPU cluster run at CPU speed unnoticed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger("rayembed")

CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda"
    index: int = 0  # the CUDA ordinal as this process sees it (after CUDA_VISIBLE_DEVICES)

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def cuda_available() -> bool:
    return CUDA_EP in ort.get_available_providers()


def parse_device(device: str | Device) -> Device:
    """`auto` (a GPU if onnxruntime can use one, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if isinstance(device, Device):
        return device
    if device == "auto":
        return Device("cuda", 0) if cuda_available() else Device("cpu")
    if device == "cpu":
        return Device("cpu")
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return Device("cuda", int(index or 0))


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


class OnnxSession:
    """One model on one device. `run` takes int64 feeds by name and returns the first output."""

    def __init__(self, model: Path, device: Device, threads: int | None = None, tensorrt: bool = False) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads from the CPUs this caller was given (an actor's num_cpus), not the machine's count:
        # ten actors on a 64-core node must not start 64 threads each.
        self.threads = max(1, threads or available_cpus())
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), options, providers=self._providers(device, tensorrt))
        self.provider = self.session.get_providers()[0]
        self.device = device if self.provider in (CUDA_EP, TENSORRT_EP) else Device("cpu")
        if device.kind == "cuda" and self.device.kind == "cpu":
            log.warning(
                "GPU %s was asked for but onnxruntime could not use it (providers available: %s); "
                "running on CPU. On GPU nodes swap onnxruntime for onnxruntime-gpu (README, section GPUs).",
                device,
                ", ".join(ort.get_available_providers()),
            )
        log.info("onnxruntime session on %s with %s, %d threads", self.device, self.provider, self.threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    @staticmethod
    def _providers(device: Device, tensorrt: bool) -> list:
        if device.kind != "cuda" or not cuda_available():
            return [CPU_EP]
        gpu = {"device_id": device.index}
        providers: list = [(TENSORRT_EP, {**gpu, "trt_fp16_enable": True})] if tensorrt else []
        return [*providers, (CUDA_EP, gpu), CPU_EP]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
        return self.session.run([self.output_name], {n: feeds[n] for n in self.input_names})[0]

    def run_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """An image tower: float32 [n, 3, h, w] in, [n, dim] out."""
        return self.session.run([self.output_name], {self.input_names[0]: pixel_values})[0]
