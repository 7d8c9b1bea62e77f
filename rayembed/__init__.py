"""rayembed: embedding compute on Ray. The public face of the engine.

>>> from rayembed import Embedder
>>> Embedder("all-MiniLM-L6-v2").embed(["hello"]).shape
(1, 384)

Names load on first use, so `rayembed --help` does not load the engine (onnxruntime, tokenizers).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CATALOG": "actors.catalog",
    "DEFAULT_MODEL": "actors.catalog",
    "ModelSpec": "actors.catalog",
    "Embedded": "actors.embedder",
    "Embedder": "actors.embedder",
    "RowError": "actors.tokenize",
    "Tokens": "actors.tokenize",
    "UserError": "actors.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayembed' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
