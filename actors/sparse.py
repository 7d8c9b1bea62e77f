"""Sparse vectors: many rows of (index, value) pairs in three flat arrays, the layout of two Arrow
list columns (`indices: list<int32>`, `values: list<float32>`), which Qdrant's and other engines'
sparse vectors load. SPLADE models (on the device) and BM25 (actors/bm25.py, on CPU) both give them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class SparseVectors:
    """n sparse vectors: row i is indices[offsets[i]:offsets[i+1]] (ascending) and the values there."""

    offsets: np.ndarray  # int64 [n + 1]
    indices: np.ndarray  # int32
    values: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    @classmethod
    def from_coordinates(cls, n: int, rows: np.ndarray, indices: np.ndarray, values: np.ndarray) -> SparseVectors:
        """From (row, index, value) triples sorted by row then index (what a graph's NonZero gives)."""
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
        return cls(offsets, indices.astype(np.int32, copy=False), values.astype(np.float32, copy=False))

    @classmethod
    def concat(cls, parts: list[SparseVectors]) -> SparseVectors:
        shifts = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]).astype(np.int64)
        return cls(offsets, np.concatenate([p.indices for p in parts]).astype(np.int32),
                   np.concatenate([p.values for p in parts]).astype(np.float32))

    def take(self, rows: np.ndarray) -> SparseVectors:
        """These rows only, in this order (one gather)."""
        lengths = np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return SparseVectors(offsets, self.indices[positions], self.values[positions])

    def to_arrow(self) -> tuple[pa.ListArray, pa.ListArray]:
        offsets = pa.array(self.offsets.astype(np.int32))
        return (pa.ListArray.from_arrays(offsets, pa.array(self.indices, pa.int32())),
                pa.ListArray.from_arrays(offsets, pa.array(self.values, pa.float32())))
