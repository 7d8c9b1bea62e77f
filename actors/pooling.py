"""From token vectors to one vector per row: the same functions run inside the exported ONNX graph
and in the torch backend, on the device. Only Matryoshka truncation runs on the host, in numpy.

The torch functions use tensor methods only, so this module imports without torch (a lean ONNX
worker has none).
"""

from __future__ import annotations

import numpy as np

from actors.catalog import Pooling


def pool(pooling: Pooling, hidden, mask):
    """[rows, seq, hidden] token vectors and the [rows, seq] attention mask -> [rows, hidden], in fp32."""
    hidden = hidden.float()
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last_token":
        # Right-padded batches: the last real token sits at length - 1.
        last = (mask.sum(dim=1) - 1).long().view(-1, 1, 1).expand(-1, 1, hidden.size(-1))
        return hidden.gather(1, last).squeeze(1)
    if pooling == "none":  # the model already gives [rows, dim] (a CLIP tower's projection)
        return hidden
    raise ValueError(f"unknown pooling {pooling!r}")


def clip_features(output):
    """A CLIP tower's vectors: transformers 5 returns an output object from get_*_features, 4 a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def l2_normalize(vectors):
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka-style: keep the first `dimensions` values and re-normalise, as OpenAI's `dimensions` does."""
    return normalize(vectors[:, :dimensions])
