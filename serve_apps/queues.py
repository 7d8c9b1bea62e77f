"""Per-model serve.batch queues: requests that arrive together become one engine call.

Texts are joined by unpadded tokens, a CLIP model's images by count. Engine calls run on the
model's own engine thread (never the default pool that image decoding and Serve share), so the event
loop keeps taking requests while the device works, and `max_concurrent_batches` lets the next call
be joined and padded while one runs. One call can join requests that ask for different `dimensions`
and `normalize`, so it embeds at full width and the engine finishes each request's part afterwards. A joined call that fails is run again request by request, so that one
request's bad inputs fail that request alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from ray import serve
from ray.serve import metrics

from actors.colbert import MultiVectors
from actors.embedder import Dense, Embedder
from actors.sparse import SparseVectors
from actors.tokenize import Tokens
from serve_apps import tracing
from serve_apps.config import ServedModel

Inputs = TypeVar("Inputs", Tokens, np.ndarray)
# What an engine call gives: dense vectors (with their norms), a reranker's scores, a SPLADE model's
# sparse vectors, ColBERT's per-token ones.
Outputs = Dense | np.ndarray | SparseVectors | MultiVectors
# How a request wants its dense vectors finished: (dimensions, normalize), None for the model's own.
Finish = tuple[int | None, bool | None]
Queue = Callable[[Inputs, Finish], Awaitable[Outputs]]


class BatchMetrics:
    """On Ray's Prometheus endpoint next to Serve's own metrics, under one prefix; one update per engine call."""

    def __init__(self) -> None:
        self.inputs = metrics.Counter("rayembed_inputs", "Inputs embedded.", tag_keys=("model",))
        self.tokens = metrics.Counter("rayembed_tokens", "Tokens embedded.", tag_keys=("model",))
        self.batch_inputs = metrics.Histogram("rayembed_batch_inputs", "Inputs per engine batch.",
                                              boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
                                              tag_keys=("model",))

    def record(self, model: str, inputs: int, tokens: int = 0) -> None:
        tags = {"model": model}
        self.inputs.inc(inputs, tags)
        self.batch_inputs.observe(inputs, tags)
        if tokens:
            self.tokens.inc(tokens, tags)


@dataclass(frozen=True)
class ModelQueues:
    """The queues of one served model: `text(tokens, finish)` (what the model gives for texts: vectors,
    sparse vectors, a reranker's pair scores, ColBERT's document vectors), `images(pixels, finish)` for
    CLIP, `queries(tokens, NO_FINISH)` for ColBERT's queries (tokenised and run otherwise than documents)."""

    text: Queue[Tokens]
    images: Queue[np.ndarray] | None = None
    queries: Queue[Tokens] | None = None


def _split_rows(out: Outputs, ends: np.ndarray) -> list[Outputs]:
    """A joined call's output cut back into each request's rows (`ends`: where each but the last ends)."""
    if isinstance(out, Dense):
        return out.split(ends)
    if isinstance(out, np.ndarray):
        return np.split(out, ends)
    bounds = np.r_[0, ends, len(out)]
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        a, b = out.offsets[lo], out.offsets[hi]
        offsets = out.offsets[lo : hi + 1] - a
        parts.append(SparseVectors(offsets, out.indices[a:b], out.values[a:b]) if isinstance(out, SparseVectors)
                     else MultiVectors(out.vectors[a:b], offsets))
    return parts


NO_FINISH: Finish = (None, None)


def _whole(out: Outputs, finish: Finish) -> Outputs:
    return out  # outputs other than dense vectors have no dimensions to cut (the protocol refuses them)


def model_queues(embedder: Embedder, served: ServedModel, batch_metrics: BatchMetrics) -> ModelQueues:
    name = embedder.spec.name

    task = embedder.spec.task
    run_text = {"embed": embedder.dense_tokens, "sparse": embedder.sparse_tokens, "rerank": embedder.score_tokens,
                "late_interaction": embedder.multi_tokens}[task]

    def embed_text(tokens: Tokens, run=run_text) -> Outputs:
        out = run(tokens)
        batch_metrics.record(name, len(tokens), int(tokens.offsets[-1]))
        return out

    def embed_queries(tokens: Tokens) -> Outputs:
        return embed_text(tokens, lambda t: embedder.multi_tokens(t, query=True))

    def embed_pixels(pixels: np.ndarray) -> Dense:
        vectors = embedder.dense_pixels(pixels)
        batch_metrics.record(name, len(pixels))
        return vectors

    engine = ThreadPoolExecutor(1, thread_name_prefix=f"rayembed-engine-{name}")
    common = {"wait_s": served.batch_wait_timeout_s, "concurrent": served.max_concurrent_batches,
              "shape": (lambda dense, finish: embedder.finish(dense, *finish)) if task == "embed" else _whole,
              "executor": engine}
    by_tokens = (Tokens.concat, lambda tokens: int(tokens.offsets[-1]), served.queue_batch_tokens)
    text = batch_queue(embed_text, *by_tokens, **common)
    images = batch_queue(embed_pixels, np.concatenate, len, served.max_batch_images, **common) if embedder.spec.is_clip else None
    queries = batch_queue(embed_queries, *by_tokens, **common) if task == "late_interaction" else None
    return ModelQueues(text, images, queries)


@dataclass(frozen=True)
class _Job(Generic[Inputs]):
    inputs: Inputs
    finish: Finish
    waiting: tracing.RequestSpan | None = None  # its request's queue span, when traced


def batch_queue(
    embed: Callable[[Inputs], Outputs],
    join: Callable[[list[Inputs]], Inputs],
    size: Callable[[Inputs], int],
    max_size: int,
    *,
    wait_s: float,
    concurrent: int,
    shape: Callable[[Outputs, Finish], Outputs],
    executor: ThreadPoolExecutor,
) -> Queue[Inputs]:
    """A queue that joins requests' inputs (`join`) up to `max_size` (by `size`), embeds them in one
    call (`embed`, full width, on `executor`) and gives each request its rows finished as it asked (`shape`)."""

    async def run(inputs: Inputs) -> np.ndarray:
        work = tracing.in_thread("engine", embed, inputs=len(inputs))
        return await asyncio.get_running_loop().run_in_executor(executor, work, inputs)

    async def alone(job: _Job[Inputs]) -> np.ndarray | Exception:
        try:
            return shape(await run(job.inputs), job.finish)
        except Exception as e:  # handed to its own request, which raises it
            return e

    async def call(jobs: list[_Job[Inputs]]) -> list[np.ndarray | Exception]:
        try:
            vectors = await run(join([job.inputs for job in jobs]))
        except Exception:
            if len(jobs) == 1:
                raise
            # One request's inputs failed a call the others share: each is embedded alone, so the
            # failure is its request's only (serve.batch would hand one exception to them all).
            return [await alone(job) for job in jobs]
        ends = np.cumsum([len(job.inputs) for job in jobs])[:-1]
        return [shape(part, job.finish) for part, job in zip(_split_rows(vectors, ends), jobs, strict=True)]

    @serve.batch(max_batch_size=max_size, batch_wait_timeout_s=wait_s, max_concurrent_batches=concurrent,
                 batch_size_fn=lambda jobs: sum(size(job.inputs) for job in jobs))
    async def joined(jobs: list[_Job[Inputs]]) -> list[np.ndarray | Exception]:
        with tracing.batch((job.waiting, len(job.inputs)) for job in jobs):
            return await call(jobs)

    async def submit(inputs: Inputs, finish: Finish) -> np.ndarray:
        if size(inputs) > max_size:  # serve.batch refuses an item larger than a batch: it is a call of its own
            return shape(await run(inputs), finish)
        waiting = tracing.queued(len(inputs))
        try:
            vectors = await joined(_Job(inputs, finish, waiting))
        finally:
            tracing.left(waiting)  # a request cancelled while it waited never reaches a batch, which ends it
        if isinstance(vectors, Exception):
            raise vectors
        return vectors

    return submit
