"""From token vectors to one vector per row: the same functions run inside the exported ONNX graph
and in the torch backend, on the device. Only a request's own cut (Matryoshka
dimensions) and normalisation choice run on the host, in numpy (Embedder.finish).

The torch functions use tensor methods only, so this module imports without torch (a lean ONNX
worker has none).
"""

from __future__ import annotations

import numpy as np

from actors.spec import Pooling


def pool(pooling: Pooling, hidden, mask):
    """[rows, seq, hidden] token vectors and the [rows, seq] attention mask -> [rows, hidden], in fp32.

    Rows may be padded on either side (decoder models pad on the left): every mode finds the real
    tokens from the mask, as sentence-transformers' Pooling does, never from a fixed position.
    """
    hidden = hidden.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if pooling == "none":  # the model already gives [rows, dim] (a CLIP tower's projection)
        return hidden
    # The running count of real tokens: 1 at the first real token, its maximum first reached at the
    # last one, whichever side the padding is on. Float: ONNX Runtime's ArgMax has no int64 kernel.
    count = mask.float().cumsum(dim=1)
    if pooling == "cls":  # the first real token
        return _take(hidden, (count == 1).float().argmax(dim=1))
    if pooling == "last_token":
        return _take(hidden, count.argmax(dim=1))
    if pooling == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if pooling == "weighted_mean":  # weights 1, 2, 3... from the first real token on
        positions = (count * mask.to(count.dtype)).unsqueeze(-1)
        return (hidden * positions).sum(dim=1) / positions.sum(dim=1).clamp(min=1e-9)
    raise ValueError(f"unknown pooling {pooling!r}")


def _take(hidden, index):
    """hidden[row, index[row]] for each row. Indexed rather than squeezed: the exporter turns a
    squeeze of a dynamic shape into an If node, whose subgraph the graft in export.finish_graph
    would not rename."""
    return hidden.gather(1, index.view(-1, 1, 1).expand(-1, 1, hidden.size(-1)))[:, 0]


def clip_features(output):
    """A CLIP tower's vectors: transformers 5 returns an output object from get_*_features, 4 a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def l2_normalize(vectors):
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def unit(vectors, normalize: bool):
    """(the vectors, normalised where the model says; their L2 norms before that), the two outputs of
    every dense graph: with the norms a request that asks for raw vectors (`normalize: false`) has them
    from a model that normalises, and the device still does the normalising for all the others."""
    norms = vectors.norm(dim=-1)
    return (vectors / norms.clamp(min=1e-12).unsqueeze(-1) if normalize else vectors), norms


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
