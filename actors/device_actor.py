"""A Ray actor hosting one engine session on the device Ray assigned to it.

Used as a Ray Data callable class: Ray creates one per pool slot with the slot's `num_gpus` and
`num_cpus`; the actor reads its GPU from Ray, warms up before taking work, embeds token blocks, and
reports what it ran to the job's stats collector.

A job's embedding type (int8, uint8, binary, ubinary) is made here, as soon as the vectors are, not
in the writers: the block leaving the actor is then 1/4 (int8) or 1/32 (bits) of float's bytes, and
that block is what crosses the network to writers on other nodes (6 MB of float32 per 4,096 x 384
block, 120 MB/s per GPU at the ~50 ms an H100-class GPU takes for one: docs/scaling.md). The device
waits little for it: on one core of this EPYC, 0.4 ms a block for packed bits (less than the 1.2 ms
that pickling its float32 took) and 3 ms for int8/uint8.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from actors import blocks
from actors.catalog import ModelSpec
from actors.devices import Backend, Precision
from actors.embedder import Embedder
from actors.quantize import EmbeddingType, Ranges, quantize
from cluster.resources import this_worker

log = logging.getLogger("rayembed")


class EmbedActor:
    """Adds an `embedding` column (of `embedding_type`, quantised with `ranges`) to blocks that carry a
    `tokens` (or `pixels`) column, or a sparse model's `indices` and `values`, or a reranker's
    `score`; rows with an `error` are skipped."""

    def __init__(self, spec: ModelSpec, backend: Backend, precision: Precision, device_batch_tokens: int | None,
                 stats_actor: str | None, query: bool = False, embedding_type: EmbeddingType = "float",
                 ranges: Ranges | None = None) -> None:
        import ray

        worker = this_worker()
        self.query = query  # ColBERT: the rows are queries (tokenised so), not documents
        self.embedding_type, self.ranges = embedding_type, ranges
        self.gpu_ids = list(worker.gpu_ids)
        self.embedder = Embedder(spec, backend=backend, precision=precision, device=worker.device, threads=worker.threads,
                                 device_batch_tokens=device_batch_tokens)
        self.embedder.warmup()
        try:
            self.stats_actor = ray.get_actor(stats_actor) if stats_actor else None
        except ValueError:  # the job ended (its collector with it) while this actor was still starting
            self.stats_actor = None
        self.actor_id = ray.get_runtime_context().get_actor_id()
        self.node = ray.get_runtime_context().get_node_id()
        log.info("embed actor %s ready on %s (Ray GPUs %s, %s)", self.actor_id, self.embedder.device, self.gpu_ids,
                 self.embedder.session.provider)
        self._report()

    def __call__(self, block: pa.Table) -> pa.Table:
        source = blocks.PIXELS if self.embedder.spec.is_clip and blocks.PIXELS in block.column_names else blocks.TOKENS
        blocks.require(block, (source, blocks.ERROR), "the embedding actor")
        rows = np.flatnonzero(block[blocks.ERROR].is_null().to_numpy(zero_copy_only=False))
        task = self.embedder.spec.task
        if task != "embed":  # sparse vectors or scores of the token rows; bad rows get empty ones
            tokens = blocks.unpack_tokens(block).take(rows)
            out = block.drop_columns([source])
            if task == "sparse":
                indices, values = blocks.pack_sparse(self.embedder.sparse_tokens(tokens), rows, len(block))
                out = out.append_column(blocks.INDICES, indices).append_column(blocks.VALUES, values)
            elif task == "late_interaction":
                vectors = blocks.pack_multi_vectors(self.embedder.multi_tokens(tokens, self.query), rows, len(block))
                out = out.append_column(blocks.EMBEDDING, vectors)
            else:
                scores = np.full(len(block), np.nan, dtype=np.float32)
                scores[rows] = self.embedder.score_tokens(tokens)
                out = out.append_column(blocks.SCORE, pa.array(scores))
            self._report()
            return out
        vectors = np.zeros((len(block), self.embedder.dimensions), dtype=np.float32)
        if len(rows) and source == blocks.PIXELS:
            vectors[rows] = self.embedder.embed_pixels(blocks.unpack_pixels(block, self.embedder.image_config.crop)[rows])
        elif len(rows):
            vectors[rows] = self.embedder.embed_tokens(blocks.unpack_tokens(block).take(rows))
        column = blocks.pack_embeddings(quantize(vectors, self.embedding_type, self.ranges), self.embedding_type)
        out = block.drop_columns([source]).append_column(blocks.EMBEDDING, column)
        self._report()
        return out

    def _report(self) -> None:
        if self.stats_actor is not None:
            self.stats_actor.report.remote(self.actor_id, self.report())

    def report(self) -> dict[str, Any]:
        s = self.embedder.stats
        return {"node": self.node, "pid": os.getpid(), "gpu_ids": self.gpu_ids, "device": str(self.embedder.device),
                "backend": self.embedder.backend, "precision": self.embedder.precision,
                "provider": self.embedder.session.provider, "rows": s.rows, "tokens": s.tokens,
                "padded_tokens": s.padded_tokens, "batches": s.batches, "seconds": round(s.seconds, 3), "at": time.time()}


class StatsCollector:
    """A small named actor the device actors report to; the driver reads it at the end."""

    def __init__(self) -> None:
        self.actors: dict[str, dict[str, Any]] = {}

    def report(self, actor_id: str, stats: dict[str, Any]) -> None:
        self.actors[actor_id] = stats

    def collect(self) -> dict[str, dict[str, Any]]:
        return self.actors
