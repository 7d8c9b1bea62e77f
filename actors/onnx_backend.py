"""The ONNX Runtime backend: one exported graph on one device (CPU, CUDA or TensorRT).

The graph ends in pooling and L2 normalisation (actors/export.py), so a run returns [rows, dim] and
only that crosses back from the device. Inputs go in the dtype the graph declares (int32 for graphs
rayembed exports), and only the inputs it has (no all-zero token_type_ids).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from actors.devices import Device, available_cpus, gpu_fallback

log = logging.getLogger("rayembed")

CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
CPU_EP = "CPUExecutionProvider"
_NUMPY = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}


class OnnxSession:
    """One graph on one device. `run` takes token ids and the attention mask; `run_pixels` an image batch."""

    backend = "onnx"

    def __init__(self, model: Path, device: Device, threads: int | None = None, tensorrt: bool = False) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads from the CPUs this caller was given (an actor's num_cpus), not the machine's count.
        self.threads = max(1, threads or available_cpus())
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if device.type == "cuda":
            _preload_cuda_libraries()
        self.session = ort.InferenceSession(str(model), options, providers=self._providers(device, tensorrt))
        # The provider the session really got: get_available_providers() lists CUDA even when its
        # libraries then fail to load, so only a real session tells.
        self.provider = self.session.get_providers()[0]
        got = "cuda" if self.provider in (CUDA_EP, TENSORRT_EP) else "cpu"
        self.device = gpu_fallback(device, got, f"onnxruntime could not use it (providers available: "
                                   f"{', '.join(ort.get_available_providers())}; GPU nodes need onnxruntime-gpu)")
        log.info("onnxruntime session on %s with %s, %d threads", self.device, self.provider, self.threads)
        self.inputs = {i.name: _NUMPY.get(i.type, np.int64) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @staticmethod
    def _providers(device: Device, tensorrt: bool) -> list:
        if device.type != "cuda" or CUDA_EP not in ort.get_available_providers():
            return [CPU_EP]
        gpu = {"device_id": device.index}
        providers: list = [(TENSORRT_EP, {**gpu, "trt_fp16_enable": True})] if tensorrt else []
        return [*providers, (CUDA_EP, gpu), CPU_EP]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [rows, dim] pooled (and normalised where the model says) inside the graph, and [rows]
        their norms before normalisation (pooling.unit)."""
        vectors, norms = self.run_all(input_ids, attention_mask)
        return vectors, norms

    def run_all(self, input_ids: np.ndarray, attention_mask: np.ndarray, keep: np.ndarray | None = None) -> list[np.ndarray]:
        """Every output of the graph: a SPLADE graph's (rows, terms, weights), a reranker's scores, a
        ColBERT graph's token vectors (which it keeps is `keep`, not the mask: actors/colbert.py)."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, **({"keep": keep} if keep is not None else {})}
        # A user's own graph may take token_type_ids: single texts are all segment 0.
        feeds = {name: given.get(name, np.zeros_like(input_ids)).astype(dtype, copy=False) for name, dtype in self.inputs.items()}
        return self._run(feeds)

    def run_pixels(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An image tower: float32 [n, 3, h, w] in, [n, dim] and their norms out, as `run`."""
        vectors, norms = self._run({next(iter(self.inputs)): pixel_values})
        return vectors, norms

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.device.type != "cuda":
            return self.session.run(self.output_names, feeds)
        # On CUDA the inputs are copied once into device buffers and the outputs stay there until
        # the one copy back of what the graph gives ([rows, dim], or a SPLADE graph's non-zero entries).
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device.index)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu (1.21+) can load CUDA and cuDNN from the nvidia-* wheels torch brings, so the
    image needs only the driver; older builds and CPU builds have no such call."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as e:  # a missing library shows as the provider the session gets, below
            log.info("onnxruntime.preload_dlls: %s", e)
