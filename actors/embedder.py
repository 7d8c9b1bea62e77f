"""The engine: one model, one precision, one device. The offline job and the online app both call it.

The flow is tokenise (CPU, can run elsewhere) -> pack batches by tokens -> session -> pool ->
normalise, with vectors returned in the caller's order. `tokenize` and `embed_tokens` are separate
so that a pipeline can tokenise in CPU tasks and keep the device busy with `embed_tokens` only.

A CLIP model's images take the same road: decode and crop (CPU, `prepare_images`) -> batch ->
image session -> normalise (`embed_pixels`), into the space its text lands in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors import images, pooling
from actors.batching import pack_by_tokens
from actors.catalog import CATALOG, DEFAULT_MODEL, Kind, ModelSpec
from actors.export import PRECISIONS, Precision, model_folder
from actors.model_files import IMAGE_ONNX_FILE, ONNX_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE
from actors.session import Device, OnnxSession, parse_device
from actors.tokenize import RowError, Tokenized, Tokenizer, Tokens

log = logging.getLogger("rayembed")

# Tokens and rows per batch, by device. On CPU large batches lose to cache misses (a sweep on 2
# cores: 1-4k tokens best for fp32 and int8, 16k 20% slower), and batches of at most 16 rows were
# 30% faster than 64 on short sentences and 5% on mixed texts (8 was slower again: fixed cost per
# run). A GPU wants large batches to stay busy.
BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}
MAX_BATCH_ROWS = {"cpu": 16, "cuda": 512}
IMAGES_PER_BATCH = {"cpu": 8, "cuda": 256}


def resolve_precision(precision: str, device: Device) -> Precision:
    """`auto` is fp16 on a GPU and fp32 on CPU (fp16 kernels on CPU are slow; int8 is the CPU speed-up)."""
    if precision == "auto":
        return "fp16" if device.kind == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


@dataclass(frozen=True)
class Embedded:
    """Vectors for the good rows of an input, and a reason for each bad one."""

    vectors: np.ndarray  # float32 [len(rows), dim]
    rows: np.ndarray  # int64: input index of each vector, ascending
    errors: list[RowError]
    tokens: int  # tokens embedded
    truncated: int  # rows cut to the model's max tokens


@dataclass
class Stats:
    """What an engine has done since it started: the actor reports these."""

    rows: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0


class Embedder:
    """Text to vectors with one model on one device.

    >>> Embedder("all-MiniLM-L6-v2").embed(["a sentence"]).shape
    (1, 384)
    """

    def __init__(
        self,
        model: str | ModelSpec | dict[str, Any] = DEFAULT_MODEL,
        precision: str = "auto",
        device: str | Device = "auto",
        threads: int | None = None,
        batch_tokens: int | None = None,
        tensorrt: bool = False,
    ) -> None:
        self.spec = CATALOG.resolve(model)
        requested = parse_device(device)
        self.precision = resolve_precision(precision, requested)
        folder = model_folder(self.spec, self.precision)
        self.tokenizer = Tokenizer(self.spec, folder / TOKENIZER_FILE)
        self.session = OnnxSession(folder / ONNX_FILE, requested, threads=threads, tensorrt=tensorrt)
        self.device = self.session.device
        self.batch_tokens = batch_tokens or BATCH_TOKENS[self.device.kind]
        self.stats = Stats()
        self.image_session: OnnxSession | None = None
        if self.spec.modality == "clip":
            self.image_session = OnnxSession(folder / IMAGE_ONNX_FILE, requested, threads=threads, tensorrt=tensorrt)
            self.image_config = images.ImageConfig.from_file(folder / PREPROCESSOR_FILE)

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    def tokenize(self, texts: list, kind: Kind = "passage") -> Tokenized:
        return self.tokenizer.encode(texts, kind)

    def embed_tokens(self, tokens: Tokens, dimensions: int | None = None) -> np.ndarray:
        """float32 [len(tokens), dim] in the order of `tokens`."""
        dim = self._check_dimensions(dimensions)
        out = np.empty((len(tokens), self.spec.dimensions), dtype=np.float32)
        if not len(tokens):
            return out[:, :dim]
        started = time.perf_counter()
        for rows in pack_by_tokens(tokens.lengths, self.batch_tokens, MAX_BATCH_ROWS[self.device.kind]):
            input_ids, mask = tokens.padded(rows)
            hidden = self.session.run(input_ids, mask)
            out[rows] = pooling.POOLERS[self.spec.pooling](hidden, mask)
            self.stats.batches += 1
            self.stats.padded_tokens += input_ids.size
        if self.spec.normalize:
            out = pooling.normalize(out)
        if dim != self.spec.dimensions:
            out = pooling.truncate(out, dim)
        self.stats.rows += len(tokens)
        self.stats.tokens += int(tokens.offsets[-1])
        self.stats.seconds += time.perf_counter() - started
        return out

    def embed_rows(self, texts: list, kind: Kind = "passage", dimensions: int | None = None) -> Embedded:
        """Vectors for the rows that can be embedded; bad rows (null, empty, not text) come back as errors."""
        tokenized = self.tokenize(texts, kind)
        vectors = self.embed_tokens(tokenized.tokens, dimensions)
        return Embedded(
            vectors=vectors,
            rows=tokenized.rows,
            errors=tokenized.errors,
            tokens=int(tokenized.tokens.offsets[-1]),
            truncated=int(tokenized.tokens.truncated.sum()),
        )

    def embed(self, texts: list[str], kind: Kind = "passage", dimensions: int | None = None) -> np.ndarray:
        """float32 [len(texts), dim]; a ValueError naming every bad row if any cannot be embedded."""
        result = self.embed_rows(texts, kind, dimensions)
        if result.errors:
            listed = "; ".join(f"row {e.index}: {e.reason}" for e in result.errors[:10])
            more = f" (and {len(result.errors) - 10} more)" if len(result.errors) > 10 else ""
            raise ValueError(f"{len(result.errors)} of {len(texts)} inputs cannot be embedded: {listed}{more}")
        return result.vectors

    def prepare_images(self, blobs: list) -> tuple[np.ndarray, np.ndarray, list[RowError]]:
        """Decoded, resized and cropped uint8 [n, h, w, 3] for the good images, their input indices,
        and a reason for each bad one (CPU work: the job runs it in tasks before the device)."""
        if self.image_session is None:
            raise ValueError(f"{self.spec.name} is a text model: images need a CLIP model")
        pixels, rows, errors = images.prepare(blobs, self.image_config)
        return pixels, rows, [RowError(i, reason) for i, reason in errors]

    def embed_pixels(self, pixels: np.ndarray, dimensions: int | None = None) -> np.ndarray:
        """float32 [n, dim] from prepared uint8 [n, h, w, 3]."""
        if self.image_session is None:
            raise ValueError(f"{self.spec.name} is a text model: images need a CLIP model")
        dim = self._check_dimensions(dimensions)
        started = time.perf_counter()
        step = IMAGES_PER_BATCH[self.device.kind]
        out = np.empty((len(pixels), self.spec.dimensions), dtype=np.float32)
        for start in range(0, len(pixels), step):
            out[start : start + step] = self.image_session.run_pixels(images.normalize(pixels[start : start + step], self.image_config))
            self.stats.batches += 1
        if self.spec.normalize:
            out = pooling.normalize(out)
        self.stats.rows += len(pixels)
        self.stats.seconds += time.perf_counter() - started
        return out if dim == self.spec.dimensions else pooling.truncate(out, dim)

    def embed_images(self, blobs: list, dimensions: int | None = None) -> np.ndarray:
        """float32 [len(blobs), dim] from encoded image files (bytes); a ValueError naming every bad one."""
        pixels, _, errors = self.prepare_images(blobs)
        if errors:
            listed = "; ".join(f"image {e.index}: {e.reason}" for e in errors[:10])
            raise ValueError(f"{len(errors)} of {len(blobs)} images cannot be embedded: {listed}")
        return self.embed_pixels(pixels, dimensions)

    def warmup(self) -> None:
        """Run one batch so the first real request does not pay for the session's lazy setup."""
        self.embed(["warm up"] * 4)
        if self.image_session is not None:
            self.embed_pixels(np.zeros((2, *self.image_config.crop, 3), dtype=np.uint8))
        self.stats = Stats()

    def _check_dimensions(self, dimensions: int | None) -> int:
        if dimensions is None:
            return self.spec.dimensions
        if not 1 <= dimensions <= self.spec.dimensions:
            raise ValueError(f"dimensions must be between 1 and {self.spec.dimensions} for {self.spec.name}, got {dimensions}")
        return dimensions
