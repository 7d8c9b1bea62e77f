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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actors import colbert, images, pooling
from actors.batching import pack_by_tokens
from actors.catalog import CATALOG, DEFAULT_MODEL, ModelSpec
from actors.devices import Backend, Device, Precision, choose_engine, cuda_usable, gpu_fallback, parse_device
from actors.errors import UserError
from actors.export import model_folder
from actors.model_files import IMAGE_ONNX_FILE, ONNX_FILE, PREPROCESSOR_FILE, has_torch_weights, locate
from actors.sparse import SparseVectors
from actors.spec import Truncate
from actors.tokenize import RowError, Tokenized, Tokenizer, Tokens

log = logging.getLogger("rayembed")

# Padded tokens and rows per device run, by device. On CPU large batches lose to cache misses (a sweep on 2
# cores: 1-4k tokens best for fp32 and int8, 16k 20% slower), and batches of at most 16 rows were
# 30% faster than 64 on short sentences and 5% on mixed texts (8 was slower again: fixed cost per
# run). A GPU wants large batches to stay busy, short texts too (bench/gpu.py sweeps both).
DEVICE_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}
# A SPLADE model's MLM logits are [tokens, vocabulary] (30522 floats a token, 122 KB): fewer tokens a run.
SPARSE_BATCH_TOKENS = {"cpu": 1024, "cuda": 8192}
MAX_BATCH_ROWS = {"cpu": 16, "cuda": 4096}
IMAGES_PER_BATCH = {"cpu": 8, "cuda": 256}


@dataclass(frozen=True)
class Embedded:
    """Vectors for the good rows of an input, and a reason for each bad one."""

    vectors: np.ndarray  # float32 [len(rows), dim]
    rows: np.ndarray  # int64: input index of each vector, ascending
    errors: list[RowError]
    tokens: int  # tokens embedded
    truncated: int  # rows cut to the model's max tokens


@dataclass(frozen=True)
class Dense:
    """Full-width vectors of n rows as the model gives them (normalised where it says), and their norms
    before normalisation: what one engine call gives requests that each cut and normalise their own
    rows (`Embedder.finish`)."""

    vectors: np.ndarray  # float32 [n, dim]
    norms: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.vectors)

    def split(self, ends: np.ndarray) -> list[Dense]:
        return [Dense(v, n) for v, n in zip(np.split(self.vectors, ends), np.split(self.norms, ends), strict=True)]


@dataclass
class Stats:
    """What an engine has done since it started: the actor reports these."""

    rows: int = 0
    tokens: int = 0
    padded_tokens: int = 0  # tokens the device ran, padding included: padded / tokens is the waste
    batches: int = 0
    seconds: float = 0.0


def settle(spec: ModelSpec, backend: str, precision: str, device: Device | str) -> tuple[Backend, Precision, Path]:
    """The backend and precision that run `spec` on this kind of device (either may be asked as
    `auto`: actors.devices.AUTO_TABLE), and the folder their files come from: the ONNX export for
    onnx, the model's own folder for torch. The job settles once on its driver; an Embedder on its device."""
    chosen, chosen_precision = choose_engine(backend, precision, device)
    if chosen == "torch":
        source = locate(spec)
        if has_torch_weights(source):
            return chosen, chosen_precision, source
        chosen, chosen_precision = choose_engine(backend, precision, device, torch_weights=False)
    return chosen, chosen_precision, model_folder(spec, chosen_precision)


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
        device_batch_tokens: int | None = None,
        tensorrt: bool = False,
        backend: str = "auto",
    ) -> None:
        self.spec = CATALOG.resolve(model)
        requested = parse_device(device)
        if requested.type == "cuda" and not (cuda_usable() or _onnx_cuda_listed()):
            requested = gpu_fallback(requested, "cpu", "neither torch nor onnxruntime sees a CUDA device")
        self.backend, self.precision, folder = settle(self.spec, backend, precision, requested)
        self.tokenizer = Tokenizer(self.spec, folder)
        if self.backend == "torch":
            from actors.torch_backend import TorchSession

            self.session = TorchSession(folder, self.spec, requested, self.precision, threads=threads)
        else:
            from actors.onnx_backend import OnnxSession

            self.session = OnnxSession(folder / ONNX_FILE, requested, threads=threads, tensorrt=tensorrt)
        self.device = self.session.device
        budget = SPARSE_BATCH_TOKENS if self.spec.task == "sparse" else DEVICE_BATCH_TOKENS
        self.device_batch_tokens = device_batch_tokens or budget[self.device.type]
        self.stats = Stats()
        # On a GPU the next batch is padded on a CPU thread while one runs; on CPU that thread would
        # only take cores from the run.
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="rayembed-pad") if self.device.type == "cuda" else None
        self.image_session = None
        if self.spec.is_clip:
            self.image_session = self.session if self.backend == "torch" else \
                OnnxSession(folder / IMAGE_ONNX_FILE, requested, threads=threads, tensorrt=tensorrt)
            self.image_config = images.ImageConfig.from_file(folder / PREPROCESSOR_FILE)

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    def tokenize(self, texts: list, input_type: str | None = None, prompt_name: str | None = None,
                 prompt: str | None = None, truncate: Truncate = "END") -> Tokenized:
        """Token ids with the model's prompt for the side of a retrieval pair (query, passage or
        document), a prompt it names, or a prompt's text; none given: its default prompt (ModelSpec.prompt).
        A ColBERT model has no prompts: its input_type says whether the texts are queries or documents.
        Over-long texts are cut at their end or start, or refused, as `truncate` says."""
        return self.tokenizer.encode(texts, self.spec.prompt(input_type, prompt_name, prompt)[1], query=input_type == "query",
                                     truncate=truncate)

    def embed_tokens(self, tokens: Tokens, dimensions: int | None = None) -> np.ndarray:
        """float32 [len(tokens), dim] in the order of `tokens`, cut and normalised as `finish` says."""
        self._check_dimensions(dimensions)
        return self.finish(self.dense_tokens(tokens), dimensions)

    def dense_tokens(self, tokens: Tokens) -> Dense:
        """The full-width vectors of `tokens`' rows, in its order."""
        self._expect("embed")
        dense = Dense(np.empty((len(tokens), self.spec.dimensions), dtype=np.float32), np.empty(len(tokens), dtype=np.float32))
        if not len(tokens):
            return dense
        started = time.perf_counter()
        batches = pack_by_tokens(tokens.lengths, self.device_batch_tokens, MAX_BATCH_ROWS[self.device.type])
        for rows, (input_ids, mask) in zip(batches, self._padded(tokens, batches)):
            dense.vectors[rows], dense.norms[rows] = self.session.run(input_ids, mask)  # pooled and normalised on the device
            self.stats.batches += 1
            self.stats.padded_tokens += input_ids.size
        self.stats.rows += len(tokens)
        self.stats.tokens += int(tokens.offsets[-1])
        self.stats.seconds += time.perf_counter() - started
        return dense

    def sparse_tokens(self, tokens: Tokens) -> SparseVectors:
        """A SPLADE model's sparse vectors, one per row of `tokens` in its order (only the non-zero
        terms come back from the device)."""
        self._expect("sparse")
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for rows, _, out in self._runs(tokens):
            batch_rows, terms, weights = out
            parts.append((rows[batch_rows], terms, weights))
        if not parts:
            return SparseVectors.from_coordinates(len(tokens), *(np.zeros(0, np.int64),) * 2, np.zeros(0, np.float32))
        rows, terms, weights = (np.concatenate(column) for column in zip(*parts))
        order = np.lexsort((terms, rows))  # batches are packed by length, not in row order
        return SparseVectors.from_coordinates(len(tokens), rows[order], terms[order], weights[order])

    def score_tokens(self, tokens: Tokens) -> np.ndarray:
        """A reranker's float32 score for each (query, document) pair in `tokens` (Tokenizer.encode_pairs)."""
        self._expect("rerank")
        scores = np.empty(len(tokens), dtype=np.float32)
        for rows, _, (batch_scores,) in self._runs(tokens):
            scores[rows] = batch_scores
        return scores

    def multi_tokens(self, tokens: Tokens, query: bool = False) -> colbert.MultiVectors:
        """A ColBERT model's normalised token vectors for each row of `tokens` in its order, from
        Tokenizer.encode with the same `query`: a query's [MASK] filling is kept, a document's
        punctuation and padding are not."""
        self._expect("late_interaction")
        settings = self.tokenizer.colbert
        inputs = colbert.query_inputs if query else colbert.document_inputs
        counts = np.zeros(len(tokens), dtype=np.int64)
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for rows, (_, _, keep), (vectors,) in self._runs(tokens, lambda rows: inputs(tokens, rows, settings)):
            keep = keep.astype(bool)
            counts[rows] = keep.sum(axis=1)
            parts.append((rows, vectors[keep]))
        offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = np.empty((offsets[-1], settings.dim), dtype=np.float32)
        for rows, kept in parts:
            # A batch's kept vectors are its rows' one after another; each row's go to its place in
            # the caller's order (batches are packed by length).
            n = counts[rows]
            out[np.repeat(offsets[rows] - (np.cumsum(n) - n), n) + np.arange(n.sum())] = kept
        return colbert.MultiVectors(out, offsets)

    def tokenize_pairs(self, queries: list, documents: list) -> Tokenized:
        return self.tokenizer.encode_pairs(queries, documents)

    def rerank(self, query: str, documents: list) -> np.ndarray:
        """Scores of `query` against each document, in the documents' order; a UserError naming bad ones."""
        tokenized = self.tokenize_pairs([query] * len(documents), documents)
        if tokenized.errors:
            listed = "; ".join(f"document {e.index}: {e.reason}" for e in tokenized.errors[:10])
            raise UserError(f"{len(tokenized.errors)} of {len(documents)} pairs cannot be scored: {listed}")
        return self.score_tokens(tokenized.tokens)

    def _runs(self, tokens: Tokens, inputs=None):
        """(rows, the session's inputs, its outputs) for each token-budget batch of `tokens`, with the
        stats kept. `inputs(rows)` makes a batch's inputs where they are more than the padded ids and mask."""
        if not len(tokens):
            return
        started = time.perf_counter()
        batches = pack_by_tokens(tokens.lengths, self.device_batch_tokens, MAX_BATCH_ROWS[self.device.type])
        for rows, feeds in zip(batches, self._padded(tokens, batches, inputs)):
            yield rows, feeds, self.session.run_all(*feeds)
            self.stats.batches += 1
            self.stats.padded_tokens += feeds[0].size
        self.stats.rows += len(tokens)
        self.stats.tokens += int(tokens.offsets[-1])
        self.stats.seconds += time.perf_counter() - started

    def _expect(self, task: str) -> None:
        if self.spec.task != task:
            calls = {"embed": "embed_tokens", "sparse": "sparse_tokens", "rerank": "score_tokens", "late_interaction": "multi_tokens"}
            raise UserError(f"{self.spec.name} is a {self.spec.task} model: call {calls.get(self.spec.task, 'its own method')}, "
                            f"not {calls[task]}")

    def _padded(self, tokens: Tokens, batches: list[np.ndarray], inputs=None):
        """Each batch's (ids, mask), or what `inputs(rows)` makes, the next one prepared while the
        caller runs this one (GPU only)."""
        left = self.spec.padding_side == "left"
        prepare = inputs or (lambda rows: tokens.padded(rows, left))
        if self._prefetch is None:
            yield from (prepare(rows) for rows in batches)
            return
        pending = self._prefetch.submit(prepare, batches[0])
        for following in [*batches[1:], None]:
            ready = pending.result()
            if following is not None:
                pending = self._prefetch.submit(prepare, following)
            yield ready

    def embed_rows(self, texts: list, input_type: str | None = None, dimensions: int | None = None, *,
                   prompt_name: str | None = None, prompt: str | None = None) -> Embedded:
        """Vectors for the rows that can be embedded; bad rows (null, empty, not text) come back as errors."""
        tokenized = self.tokenize(texts, input_type, prompt_name, prompt)
        vectors = self.embed_tokens(tokenized.tokens, dimensions)
        return Embedded(
            vectors=vectors,
            rows=tokenized.rows,
            errors=tokenized.errors,
            tokens=int(tokenized.tokens.offsets[-1]),
            truncated=int(tokenized.tokens.truncated.sum()),
        )

    def embed(self, texts: list[str], input_type: str | None = None, dimensions: int | None = None, *,
              prompt_name: str | None = None, prompt: str | None = None) -> np.ndarray:
        """float32 [len(texts), dim]; a UserError naming every bad row if any cannot be embedded."""
        result = self.embed_rows(texts, input_type, dimensions, prompt_name=prompt_name, prompt=prompt)
        if result.errors:
            listed = "; ".join(f"row {e.index}: {e.reason}" for e in result.errors[:10])
            more = f" (and {len(result.errors) - 10} more)" if len(result.errors) > 10 else ""
            raise UserError(f"{len(result.errors)} of {len(texts)} inputs cannot be embedded: {listed}{more}")
        return result.vectors

    def prepare_images(self, blobs: list) -> tuple[np.ndarray, np.ndarray, list[RowError]]:
        """Decoded, resized and cropped uint8 [n, h, w, 3] for the good images, their input indices,
        and a reason for each bad one (CPU work: the job runs it in tasks before the device)."""
        if self.image_session is None:
            raise UserError(f"{self.spec.name} is a text model: images need a CLIP model")
        pixels, rows, errors = images.prepare(blobs, self.image_config)
        return pixels, rows, [RowError(i, reason) for i, reason in errors]

    def embed_pixels(self, pixels: np.ndarray, dimensions: int | None = None) -> np.ndarray:
        """float32 [n, dim] from prepared uint8 [n, h, w, 3], cut and normalised as `finish` says."""
        self._check_dimensions(dimensions)
        return self.finish(self.dense_pixels(pixels), dimensions)

    def dense_pixels(self, pixels: np.ndarray) -> Dense:
        """The full-width vectors of prepared uint8 [n, h, w, 3] images."""
        if self.image_session is None:
            raise UserError(f"{self.spec.name} is a text model: images need a CLIP model")
        started = time.perf_counter()
        step = IMAGES_PER_BATCH[self.device.type]
        dense = Dense(np.empty((len(pixels), self.spec.dimensions), dtype=np.float32), np.empty(len(pixels), dtype=np.float32))
        for start in range(0, len(pixels), step):
            batch = images.normalize(pixels[start : start + step], self.image_config)
            dense.vectors[start : start + step], dense.norms[start : start + step] = self.image_session.run_pixels(batch)
            self.stats.batches += 1
        self.stats.rows += len(pixels)
        self.stats.seconds += time.perf_counter() - started
        return dense

    def embed_images(self, blobs: list, dimensions: int | None = None) -> np.ndarray:
        """float32 [len(blobs), dim] from encoded image files (bytes); a ValueError naming every bad one."""
        pixels, _, errors = self.prepare_images(blobs)
        if errors:
            listed = "; ".join(f"image {e.index}: {e.reason}" for e in errors[:10])
            raise UserError(f"{len(errors)} of {len(blobs)} images cannot be embedded: {listed}")
        return self.embed_pixels(pixels, dimensions)

    def warmup(self) -> None:
        """Run one batch so the first real request does not pay for the session's lazy setup."""
        if self.spec.task == "rerank":
            self.score_tokens(self.tokenize_pairs(["warm up"] * 4, ["a document"] * 4).tokens)
        elif self.spec.task == "sparse":
            self.sparse_tokens(self.tokenize(["warm up"] * 4).tokens)
        elif self.spec.task == "late_interaction":
            for query in (True, False):  # a query's rows are all query_maxlen long, a document's as its text
                self.multi_tokens(self.tokenizer.encode(["warm up"] * 4, query=query).tokens, query)
        else:
            self.embed(["warm up"] * 4)
        if self.image_session is not None:
            self.embed_pixels(np.zeros((2, *self.image_config.crop, 3), dtype=np.uint8))
        self.stats = Stats()

    def finish(self, dense: Dense, dimensions: int | None = None, normalize: bool | None = None) -> np.ndarray:
        """Full-width vectors as a caller asked for them: cut to `dimensions` (Matryoshka-style, the first
        N values), and unit-length or not as `normalize` says. None: as the model says, and unit-length
        when cut, as OpenAI's `dimensions`. A model that normalises gives raw vectors back from the norms
        its graph kept. For callers that embed at full size and finish per request (the app's batches)."""
        dim = self._check_dimensions(dimensions)
        normalize = (self.spec.normalize or dim < self.spec.dimensions) if normalize is None else normalize
        vectors = dense.vectors
        if self.spec.normalize and not normalize:
            vectors = vectors * dense.norms[:, None]
        if dim < self.spec.dimensions:
            vectors = vectors[:, :dim]
        if normalize and (dim < self.spec.dimensions or not self.spec.normalize):
            vectors = pooling.normalize(vectors)
        return vectors

    def _check_dimensions(self, dimensions: int | None) -> int:
        return self.spec.check_dimensions(dimensions)


def _onnx_cuda_listed() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()
