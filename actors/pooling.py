"""From token vectors to one vector per row, in numpy, batch at a time."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from actors.catalog import Pooling


def mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask.astype(hidden.dtype)[:, :, None]
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def cls(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return hidden[:, 0]


def last_token(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Batches are right-padded, so the last real token sits at length - 1.
    last = mask.sum(axis=1) - 1
    return hidden[np.arange(len(hidden)), last]


def none(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The graph already gives [batch, dim] (a CLIP tower's projected output)."""
    return hidden


POOLERS: dict[Pooling, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": mean,
    "cls": cls,
    "last_token": last_token,
    "none": none,
}


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka-style: keep the first `dimensions` values and re-normalise, as OpenAI's `dimensions` does."""
    return normalize(vectors[:, :dimensions])
