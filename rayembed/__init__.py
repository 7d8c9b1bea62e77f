"""rayembed: embedding compute on Ray. The public face of the engine.

>>> from rayembed import Embedder
>>> Embedder("all-MiniLM-L6-v2").embed(["hello"]).shape
(1, 384)
"""

from actors.catalog import CATALOG, DEFAULT_MODEL, ModelSpec
from actors.embedder import Embedded, Embedder
from actors.tokenize import RowError, Tokens

__all__ = ["CATALOG", "DEFAULT_MODEL", "Embedded", "Embedder", "ModelSpec", "RowError", "Tokens"]
