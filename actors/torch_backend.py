"""The torch backend: the model as `transformers` loads it, with pooling and normalisation on the device.

On CUDA the weights are cast to fp16 or bf16 and attention runs through
`scaled_dot_product_attention` where the model supports it (transformers' default; MPNet has only
eager attention); the head (pooling, Dense layers, normalisation: actors/heads.py) stays fp32. On a CPU with AMX or avx512_bf16, bf16 runs as autocast over fp32
weights (measured closer to sentence-transformers, min cos 0.99997, than weights loaded in bf16,
0.9965, at the same speed). Only [rows, dim] is copied back to the host.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from actors.devices import Device, available_cpus, gpu_fallback
from actors.pooling import clip_features, unit
from actors.spec import ModelSpec

log = logging.getLogger("rayembed")


class TorchSession:
    """One model on one device. `run` takes token ids and the attention mask; `run_pixels` (CLIP) an image batch."""

    backend = "torch"

    def __init__(self, source: Path, spec: ModelSpec, device: Device, precision: str, threads: int | None = None) -> None:
        import torch

        self.torch, self.spec = torch, spec
        if device.type == "cuda" and not torch.cuda.is_available():
            device = gpu_fallback(device, "cpu", "torch sees no CUDA device")
        self.device = device
        self.threads = max(1, threads or available_cpus())
        if device.type == "cpu":
            torch.set_num_threads(self.threads)  # the CPUs this worker holds, not the node's
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        on_gpu = device.type == "cuda"
        weights = dtype if on_gpu else torch.float32
        self._autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" and not on_gpu \
            else contextlib.nullcontext
        if precision == "fp16" and not on_gpu:
            # fp16 is a GPU precision: CPU kernels for it are many times slower than fp32, so a GPU
            # worker that fell back to CPU (no NVIDIA device: a laptop, Ray's fake GPUs) computes in fp32.
            log.warning("torch fp16 on CPU runs as fp32 (fp16 is for GPUs)")
            precision = "fp32"
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per load in every actor's log says nothing
        self.head = self.task_model = None
        if spec.task == "late_interaction":
            from transformers import AutoModel

            from actors.colbert import ColbertHead, ColbertSettings

            # As export_colbert: the encoder read out of colbert-ai's weights, the projection its own head.
            model = AutoModel.from_pretrained(source, dtype=weights)
            self.head = ColbertHead(source, ColbertSettings.from_folder(source)).eval().to(str(device))
        elif spec.task != "embed":
            from actors.heads import TaskModel

            self.task_model = model = TaskModel(spec, source, attn="sdpa", dtype=weights)
        elif spec.is_clip:
            from transformers import CLIPModel

            model = CLIPModel.from_pretrained(source, attn_implementation="sdpa", dtype=weights)
        else:
            from transformers import AutoModel

            from actors.heads import Head

            model = AutoModel.from_pretrained(source, dtype=weights, trust_remote_code=spec.trust_remote_code)
            self.head = Head(spec, source).eval().to(str(device))
        self.model = model.eval().to(str(device))
        self.provider = f"torch-{device.type}-{precision}"
        log.info("torch session on %s, %s, %d threads", device, precision, self.threads)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [rows, dim], pooled (and normalised where the model says) on the device, and their
        norms before normalisation (pooling.unit), as OnnxSession.run."""
        vectors, norms = self.run_all(input_ids, attention_mask)
        return vectors, norms

    def run_all(self, input_ids: np.ndarray, attention_mask: np.ndarray, keep: np.ndarray | None = None) -> list[np.ndarray]:
        """What the model gives, as the ONNX graph of the same task does (OnnxSession.run_all)."""
        torch = self.torch
        with torch.inference_mode(), self._autocast():
            ids = torch.from_numpy(input_ids).to(str(self.device), non_blocking=True)
            mask = torch.from_numpy(attention_mask).to(str(self.device), non_blocking=True)
            if self.task_model is not None:
                out = self.task_model(ids.long(), mask)
                return [t.cpu().numpy() for t in (out if isinstance(out, tuple) else (out,))]
            if self.head is None:
                vectors = clip_features(self.model.get_text_features(input_ids=ids.long(), attention_mask=mask)).float()
                return self._finish(vectors)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            # ColBERT's head keeps the vectors `keep` names, not the attended ones (a query's [MASK] filling).
            second = mask if keep is None else torch.from_numpy(keep).to(str(self.device), non_blocking=True)
            return [t.float().cpu().numpy() for t in _outputs(self.head(hidden, second))]

    def run_pixels(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode(), self._autocast():
            pixels = torch.from_numpy(pixel_values).to(str(self.device), dtype=next(self.model.parameters()).dtype)
            vectors, norms = self._finish(clip_features(self.model.get_image_features(pixel_values=pixels)).float())
            return vectors, norms

    def _finish(self, vectors) -> list[np.ndarray]:
        """A CLIP tower's vectors, normalised where the model says, and their norms, to the host."""
        return [t.float().cpu().numpy() for t in unit(vectors.float(), self.spec.normalize)]


def _outputs(out) -> tuple:
    """A head's outputs as a tuple: a dense head gives (vectors, norms), ColBERT's one tensor."""
    return out if isinstance(out, tuple) else (out,)
