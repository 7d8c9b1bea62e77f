"""The layout of the Arrow blocks that travel between the job's stages, in one place.

Each stage adds or takes columns by these names and nowhere else: read + tokenise (or decode images)
-> device actor -> write. Each packed column has its pack/unpack pair here, so a block's bytes are
laid out and read back by the same code, and a stage checks the columns it needs with `require`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from actors.colbert import MultiVectors
from actors.sparse import SparseVectors
from actors.tokenize import Tokens

# Data columns.
TOKENS = "tokens"  # list<int32>: token ids per row (empty for rows with an error)
PIXELS = "pixels"  # fixed_size_binary[h*w*3]: a CLIP job's decoded, cropped uint8 image per row
TRUNCATED = "truncated"  # bool: the row was cut to the model's max tokens
ERROR = "error"  # string: why the row cannot be embedded; null for good rows
# The output vector, as the job's embedding type makes it (`pack_embeddings`): fixed_size_list<float32>[dim],
# fixed_size_list<int8|uint8>[dim], or fixed_size_binary[dim / 8] of packed bits.
EMBEDDING = "embedding"
INDICES, VALUES = "indices", "values"  # list<int32>, list<float32>: a sparse model's output, indices ascending
SCORE = "score"  # float32: a reranker's output for a (query, text) pair
# Bookkeeping: where each row came from (jobs/readers.py), dropped before output. ROW is a row's
# number in its input, or OFFSET the byte offset of its line; [SPAN, SPAN_END) the positions it
# covers, LAST whether its span ends the input.
KEY, INPUT, ROW, OFFSET, SPAN, SPAN_END, LAST = "__key", "__input", "__row", "__offset", "__span", "__span_end", "__last"
IMAGE_SOURCE = "__image"  # an image's bytes, or the path/URI to read them from, until decoded
BOOKKEEPING = (KEY, INPUT, ROW, OFFSET, SPAN, SPAN_END, LAST, TRUNCATED, ERROR)
# The error of a row that stands for a stretch of an input with no rows (an empty file, blank
# lines): it is never embedded or written, but its span counts toward the input's completeness.
NO_ROWS = "\x00no rows"
# Output columns a job's --keep may not name.
RESERVED = ("id", EMBEDDING, INDICES, VALUES, SCORE, TOKENS, PIXELS, IMAGE_SOURCE, *BOOKKEEPING)


class BlockLayoutError(RuntimeError):
    """A stage got a block without the columns it needs: a bug in the pipeline, not in the data."""


def require(block: pa.Table, columns: tuple[str, ...], stage: str) -> None:
    missing = [c for c in columns if c not in block.column_names]
    if missing:
        raise BlockLayoutError(f"{stage} needs columns {missing}; the block has {block.column_names}")


def pack_tokens(tokens: Tokens, rows: np.ndarray, n: int) -> pa.ListArray:
    """Token lists for all `n` rows of a block, from `tokens` of the good `rows` (others get none)."""
    lengths = np.zeros(n, dtype=np.int64)
    lengths[rows] = tokens.lengths
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Tokens(tokens.ids, offsets, np.zeros(n, dtype=bool)).to_arrow()


def unpack_tokens(block: pa.Table) -> Tokens:
    return Tokens.from_arrow(block[TOKENS])


def pack_pixels(pixels: np.ndarray, rows: np.ndarray, n: int) -> pa.FixedSizeBinaryArray:
    """One fixed-size binary value per row of a block from uint8 [len(rows), h, w, 3] (zeros elsewhere)."""
    width = int(np.prod(pixels.shape[1:]))
    flat = np.zeros((n, width), dtype=np.uint8)
    flat[rows] = pixels.reshape(len(rows), width)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(flat)])


def unpack_pixels(block: pa.Table, crop: tuple[int, int]) -> np.ndarray:
    """uint8 [n, h, w, 3] over the column's buffer, without a copy."""
    column = block[PIXELS].combine_chunks()
    size = column.type.byte_width
    flat = np.frombuffer(column.buffers()[1], dtype=np.uint8)[column.offset * size : (column.offset + len(column)) * size]
    return flat.reshape(len(column), crop[0], crop[1], 3)


def pack_embeddings(vectors: np.ndarray, embedding_type: str = "float") -> pa.Array:
    """Vectors made by `quantize(..., embedding_type)` as the `embedding` column, without a copy per row.

    float32, int8 or uint8 values are a fixed-size list of `dim` (Parquet keeps them as lists, which
    DuckDB reads as FLOAT[] / TINYINT[] / UTINYINT[] and LanceDB as a vector column). Packed bits are
    `fixed_size_binary[dim / 8]` (a BLOB in DuckDB: `bit_count(xor(a::BIT, b::BIT))` is their Hamming
    distance), written as they are: ubinary's uint8 bytes, binary's int8 values as the bytes of their
    two's complement (the bytes of sentence-transformers' int8 array; each is ubinary's byte with its
    top bit flipped, so a XOR of two binary vectors equals the XOR of their ubinary ones)."""
    if embedding_type in ("binary", "ubinary"):
        flat = np.ascontiguousarray(vectors).view(np.uint8)
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(flat.shape[1]), len(flat), [None, pa.py_buffer(flat)])
    value = {"float": np.float32, "int8": np.int8, "uint8": np.uint8}[embedding_type]
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1).astype(value, copy=False)), vectors.shape[1])


def pack_sparse(vectors: SparseVectors, rows: np.ndarray, n: int) -> tuple[pa.ListArray, pa.ListArray]:
    """`indices` and `values` columns for all `n` rows of a block from the vectors of the good `rows`
    (ascending; others get empty lists)."""
    lengths = np.zeros(n, dtype=np.int64)
    lengths[rows] = np.diff(vectors.offsets)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return SparseVectors(offsets, vectors.indices, vectors.values).to_arrow()


def pack_multi_vectors(vectors: MultiVectors, rows: np.ndarray, n: int) -> pa.ListArray:
    """`embedding` as list<fixed_size_list<float32>[dim]> (one vector per token) for all `n` rows of a
    block from the good `rows` (ascending; others get no vectors)."""
    lengths = np.zeros(n, dtype=np.int64)
    lengths[rows] = np.diff(vectors.offsets)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return MultiVectors(vectors.vectors, offsets).to_arrow()
