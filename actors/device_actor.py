"""A Ray actor hosting one engine session on the device Ray assigned to it.

Used as a Ray Data callable class: Ray creates one per pool slot with the slot's `num_gpus` and
`num_cpus`; the actor reads its GPU from Ray, warms up before taking work, embeds token blocks, and
reports what it ran to the job's stats collector.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from actors.catalog import ModelSpec
from actors.embedder import Embedder
from actors.tokenize import Tokens

log = logging.getLogger("rayembed")

TOKENS_COLUMN = "tokens"
PIXELS_COLUMN = "pixels"  # a CLIP job's images: uint8 [h, w, 3] per row, decoded and cropped
TRUNCATED_COLUMN = "truncated"
ERROR_COLUMN = "error"
EMBEDDING_COLUMN = "embedding"


def assigned_device() -> tuple[str, list[str]]:
    """("cuda:0", ["3"]) for an actor Ray gave GPU 3, ("cpu", []) for one with none.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so inside the actor the first one is
    ordinal 0 whatever its number on the node; the Ray ids are kept for the report.
    """
    import ray

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    return ("cuda:0" if gpu_ids else "cpu"), gpu_ids


def embedding_type(dimensions: int) -> pa.DataType:
    return pa.list_(pa.float32(), dimensions)


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """Vectors as Arrow `fixed_size_list<float32>[dim]`, without a copy per row."""
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


class EmbedActor:
    """Adds an `embedding` column to blocks that carry a `tokens` (or `pixels`) column; rows with an
    `error` are skipped."""

    def __init__(self, spec: ModelSpec, precision: str, threads: int, batch_tokens: int | None, stats_actor: str | None) -> None:
        import ray

        device, self.gpu_ids = assigned_device()
        self.embedder = Embedder(spec, precision=precision, device=device, threads=threads, batch_tokens=batch_tokens)
        self.embedder.warmup()
        self.stats_actor = ray.get_actor(stats_actor) if stats_actor else None
        self.actor_id = ray.get_runtime_context().get_actor_id()
        self.node = ray.get_runtime_context().get_node_id()
        log.info("embed actor %s ready on %s (Ray GPUs %s, %s)", self.actor_id, self.embedder.device, self.gpu_ids, self.embedder.session.provider)
        self._report()

    def __call__(self, block: pa.Table) -> pa.Table:
        ok = block[ERROR_COLUMN].is_null().to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(ok)
        vectors = np.zeros((len(block), self.embedder.dimensions), dtype=np.float32)
        if PIXELS_COLUMN in block.column_names:
            column, done = block[PIXELS_COLUMN].combine_chunks(), PIXELS_COLUMN
            if len(rows):
                height, width = self.embedder.image_config.crop
                pixels = np.frombuffer(column.buffers()[1], dtype=np.uint8)[column.offset * column.type.byte_width :]
                pixels = pixels[: len(block) * column.type.byte_width].reshape(len(block), height, width, 3)
                vectors[rows] = self.embedder.embed_pixels(pixels[rows])
        else:
            done = TOKENS_COLUMN
            if len(rows):
                vectors[rows] = self.embedder.embed_tokens(Tokens.from_arrow(block[TOKENS_COLUMN]).take(rows))
        out = block.drop_columns([done]).append_column(EMBEDDING_COLUMN, embedding_array(vectors))
        self._report()
        return out

    def _report(self) -> None:
        if self.stats_actor is not None:
            self.stats_actor.report.remote(self.actor_id, self.report())

    def report(self) -> dict[str, Any]:
        s = self.embedder.stats
        return {"node": self.node, "pid": os.getpid(), "gpu_ids": self.gpu_ids, "device": str(self.embedder.device),
                "provider": self.embedder.session.provider, "rows": s.rows, "tokens": s.tokens,
                "batches": s.batches, "seconds": round(s.seconds, 3), "at": time.time()}


class StatsCollector:
    """A small named actor the device actors report to; the driver reads it at the end."""

    def __init__(self) -> None:
        self.actors: dict[str, dict[str, Any]] = {}

    def report(self, actor_id: str, stats: dict[str, Any]) -> None:
        self.actors[actor_id] = stats

    def collect(self) -> dict[str, dict[str, Any]]:
        return self.actors
