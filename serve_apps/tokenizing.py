"""Tokenisation off the event loop, for many requests at once.

A request's texts wait for the tokenizer threads (`tokenizer_threads` in the config); texts of the
requests that arrive meanwhile are tokenised together in one `encode_batch` call (Rust, no GIL per
text), then handed back per request. At low load a request goes straight to a free thread; under
load there is one thread hop per batch of requests, not per request, and the event loop (HTTP,
/healthz) never waits on a long text. A GPU replica gives the tokenizer its own CPUs this way, so
the device is not fed by the CPU that answers HTTP (docs/serving.md says how many).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from actors.embedder import Embedder
from actors.spec import Truncate
from actors.tokenize import RowError, Tokenized
from serve_apps import tracing


class TokenizeQueue:
    def __init__(self, embedder: Embedder | None, threads: int) -> None:
        self._embedder = embedder
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rayembed-tokenize")
        # Each request's texts, and the (prompt, query, truncate) they are encoded with (`query`: ColBERT's queries).
        self._waiting: list[tuple[list, tuple[str, bool, Truncate], asyncio.Future]] = []
        self._busy = 0

    async def tokenize(self, texts: list, prompt: str = "", query: bool = False, truncate: Truncate = "END") -> Tokenized:
        """The texts' tokens, each after `prompt` (the text the request's input_type or prompt_name gives),
        over-long ones cut or refused as `truncate` says."""
        loop = asyncio.get_running_loop()
        result = loop.create_future()
        self._waiting.append((texts, (prompt, query, truncate), result))
        if self._busy < self._threads:
            self._start(loop)
        with tracing.stage("tokenize"):
            return await result

    async def run(self, work, *args):
        """Other text work of one request on these threads: pairs for a reranker, BM25's weights."""
        with tracing.stage("tokenize"):
            return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, []
        self._busy += 1
        done = loop.run_in_executor(self._pool, self._tokenize_all, [(texts, how) for texts, how, _ in batch])
        done.add_done_callback(lambda outcome: self._finish(loop, batch, outcome))

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list, outcome: asyncio.Future) -> None:
        self._busy -= 1
        error = outcome.exception()
        for i, (_, _, result) in enumerate(batch):
            if result.done():  # a client that went away cancelled its future
                continue
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(outcome.result()[i])
        if self._waiting:
            self._start(loop)

    def _tokenize_all(self, requests: list[tuple[list, str]]) -> list[Tokenized]:
        """One encode per prompt for every request's texts (most requests share one), in request order."""
        out: list[Tokenized | None] = [None] * len(requests)
        for how in dict.fromkeys(how for _, how in requests):
            mine = [k for k, (_, h) in enumerate(requests) if h == how]
            for k, tokenized in zip(mine, self._tokenize([requests[k][0] for k in mine], *how), strict=True):
                out[k] = tokenized
        return out  # type: ignore[return-value]

    def _tokenize(self, requests: list[list], prompt: str, query: bool, truncate: Truncate) -> list[Tokenized]:
        """One encode for every request's texts, split back into one Tokenized per request."""
        joined = self._embedder.tokenizer.encode([text for texts in requests for text in texts], prompt, query=query,
                                                 truncate=truncate)
        if len(requests) == 1:
            return [joined]
        starts = np.cumsum([0] + [len(texts) for texts in requests])
        owner = np.searchsorted(starts, joined.rows, side="right") - 1  # the request each good row came from
        errors_by_request: list[list[RowError]] = [[] for _ in requests]
        for e in joined.errors:
            k = int(np.searchsorted(starts, e.index, side="right") - 1)
            errors_by_request[k].append(RowError(e.index - int(starts[k]), e.reason, e.tokens))
        out = []
        for k in range(len(requests)):
            mine = np.flatnonzero(owner == k)
            out.append(Tokenized(joined.tokens.take(mine), joined.rows[mine] - starts[k], errors_by_request[k]))
        return out
