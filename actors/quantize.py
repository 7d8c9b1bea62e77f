"""Embedding types: float vectors as int8, uint8 or packed bits, as sentence-transformers'
`quantize_embeddings` defines them (tests/test_engine.py, test_online_app.py and
test_offline_types.py hold them equal).

Its definitions are a few numpy lines, written out here rather than imported: importing
sentence_transformers costs 5 s on top of torch and transformers (measured on these machines), paid
by every replica and every job worker, for code that must never change what it computes.

int8 and uint8 cut each dimension's [min, max] into 256 buckets, so they need those ranges from a
representative set: the model's catalogue entry names a file of them (actors/ranges/), or a
calibration set given in config replaces it (`Ranges.load`). Ranges are never taken from the
vectors being quantised: a request of one text would be its own calibration, and two requests of
the same text would differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from actors.errors import UserError
from actors.spec import ModelSpec

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary"]
EMBEDDING_TYPES: tuple[str, ...] = get_args(EmbeddingType)
NEEDS_RANGES = ("int8", "uint8")  # the types cut into buckets of each dimension's range
# The catalogue's ranges files, by the name an entry gives in `quantization_ranges`.
RANGES_FOLDER = Path(__file__).parent / "ranges"


@dataclass(frozen=True, eq=False)  # an array inside: compared by identity, never by value
class Ranges:
    """Each dimension's (min, max), float32 [2, dim], and where they came from (said in /info and the job's metadata)."""

    values: np.ndarray
    source: str

    @classmethod
    def load(cls, spec: ModelSpec, calibration: str | None = None, backend: str = "auto") -> Ranges | None:
        """The ranges int8/uint8 use for `spec`: from `calibration` (a .npy of [2, dim] ranges, or a text
        file of one text per line, embedded here), else from the catalogue entry's file, else none
        (int8 and uint8 are then refused, naming the fix).

        Calibration texts are embedded in fp32 on the CPU with the model's default prompt, whatever
        device and precision the caller serves with: the job's driver and every replica then derive
        the same ranges, and queries and documents, online and offline, share them."""
        if calibration:
            given = check_calibration(spec, calibration)
            if isinstance(given, np.ndarray):
                return cls(given, f"config: {calibration}")
            from actors.embedder import Embedder  # not at the top: the engine imports this module

            vectors = Embedder(spec, backend=backend, precision="fp32", device="cpu").embed(given)
            return cls(np.vstack((vectors.min(axis=0), vectors.max(axis=0))).astype(np.float32),
                       f"config: {calibration} ({len(given)} texts)")
        if spec.quantization_ranges:
            path = RANGES_FOLDER / spec.quantization_ranges
            return cls(_checked(np.load(path), spec, str(path)), f"catalogue: {spec.quantization_ranges}")
        return None


def check_calibration(spec: ModelSpec, calibration: str) -> np.ndarray | list[str]:
    """A calibration file's ranges (a .npy) or texts, checked; a UserError saying what a usable one is."""
    path = Path(calibration)
    if spec.task != "embed":
        raise UserError(f"calibration {calibration!r} is for dense models; {spec.name} is a {spec.task} model")
    if not path.is_file():
        raise UserError(f"calibration {calibration!r} is not a file: give a .npy of [2, dim] ranges or a text file of "
                        "one text per line")
    if path.suffix == ".npy":
        return _checked(np.load(path), spec, calibration)
    if spec.is_clip:
        raise UserError(f"calibration {calibration!r}: {spec.name} embeds images and texts into different ranges; give "
                        "a .npy of [2, dim] ranges taken from the kind of input you will quantise")
    texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) < 100:
        raise UserError(f"calibration {calibration!r} has {len(texts)} texts: int8 ranges need at least 100 "
                        "representative ones (a few thousand is better)")
    return texts


def _checked(values: np.ndarray, spec: ModelSpec, source: str) -> np.ndarray:
    if values.shape != (2, spec.dimensions):
        raise UserError(f"{source}: ranges must be a [2, {spec.dimensions}] array of (min, max) per dimension for "
                        f"{spec.name}, got shape {list(values.shape)}")
    if not np.all(values[0] <= values[1]):
        raise UserError(f"{source}: a minimum is above its maximum: row 0 holds the minima, row 1 the maxima")
    return values.astype(np.float32, copy=False)


def check_type(embedding_type: str, ranges: Ranges | None, model: str) -> EmbeddingType:
    """`embedding_type` if it is one and can be made for this model; a UserError saying what to give otherwise."""
    if embedding_type not in EMBEDDING_TYPES:
        raise UserError(f"embedding type must be one of {', '.join(EMBEDDING_TYPES)}, got {embedding_type!r}")
    if embedding_type in NEEDS_RANGES and ranges is None:
        raise UserError(f"{embedding_type} needs calibration ranges, and {model} has none in the catalogue: give "
                        "`calibration` (a text file of representative texts, or a .npy of ranges) in its config")
    return embedding_type  # type: ignore[return-value]


def quantize(vectors: np.ndarray, embedding_type: EmbeddingType, ranges: Ranges | None = None) -> np.ndarray:
    """float32 [n, dim] -> float32 [n, dim], int8/uint8 [n, dim], or int8/uint8 [n, ceil(dim / 8)] packed bits
    (big-endian within a byte, as numpy's packbits)."""
    if embedding_type == "float":
        return vectors
    if embedding_type in ("binary", "ubinary"):
        bits = np.packbits(vectors > 0, axis=-1)
        # binary: the unsigned byte shifted into int8's range, as sentence-transformers defines it.
        return (bits - 128).astype(np.int8) if embedding_type == "binary" else bits
    assert ranges is not None, "check_type refuses int8 without ranges"
    starts, ends = ranges.values
    steps = (ends - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if embedding_type == "uint8" else (buckets - 128).astype(np.int8)
