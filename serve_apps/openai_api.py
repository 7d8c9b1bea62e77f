"""The online app: an OpenAI-compatible `/v1/embeddings` on Ray Serve, over the same engine as the job.

One deployment is both the HTTP ingress and the engine host, so a request makes one hop (proxy ->
replica). Each served model has its own `serve.batch` queue: requests that arrive together are
tokenised and embedded as one token-packed batch, on a worker thread so the event loop keeps taking
requests while the device works.

    serve run serve_apps/config.yaml          # or: rayembed serve
"""


import asyncio
import base64
import hmac
import json
import math
import os
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
import ray
from ray import serve
from ray.serve import metrics

from actors import pooling
from actors.catalog import CATALOG, DEFAULT_MODEL
from actors.device_actor import assigned_device
from actors.embedder import Embedder
from actors.tokenize import Tokens, check_text

class ServedModel(BaseModel):
    """One model the app serves, and how its requests are batched."""

    model: str | dict = DEFAULT_MODEL  # a catalogue name or custom model properties
    precision: str = "auto"
    # Requests are joined into engine batches of up to this many tokens (serve.batch's batch_size_fn);
    # a request larger than that is a batch of its own.
    max_batch_tokens: int = 16384
    batch_wait_timeout_s: float = 0.002


class AppConfig(BaseModel):
    """The `args` of the app in serve_apps/config.yaml."""

    models: list[ServedModel] = Field(default_factory=lambda: [ServedModel()])
    threads: int | None = None  # ONNX Runtime threads per replica (default: the CPUs Ray gave it)
    max_inputs_per_request: int = 2048
    max_request_bytes: int = 8 * 1024 * 1024


@dataclass
class _Job:
    tokens: Tokens
    dimensions: int | None


def openai_error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


api = FastAPI(title="rayembed", description="OpenAI-compatible embeddings")


@serve.deployment(name="EmbeddingsAPI")
@serve.ingress(api)
class EmbeddingsAPI:
    def __init__(self, config: dict) -> None:
        self.config = AppConfig.model_validate(config)
        device, _ = assigned_device()
        # ONNX Runtime threads from the CPUs this replica holds, not the node's count.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        threads = self.config.threads or (max(1, math.ceil(cpus)) if cpus else None)
        self.models: dict[str, Embedder] = {}
        self.aliases: dict[str, str] = {}
        self.batchers = {}
        for served in self.config.models:
            embedder = Embedder(served.model, precision=served.precision, device=device, threads=threads)
            embedder.warmup()
            name = embedder.spec.name
            self.models[name] = embedder
            for alias in (name, *embedder.spec.aliases):
                self.aliases[alias.lower()] = name
            self.batchers[name] = self._batcher(embedder, served)
        # Read in the replica, never passed through Serve's config (which the dashboard shows).
        self.api_key = os.environ.get("RAYEMBED_API_KEY") or None

    @staticmethod
    def _batcher(embedder: Embedder, served: ServedModel):
        # On Ray's Prometheus endpoint next to Serve's own metrics, under one prefix.
        tags = {"model": embedder.spec.name}
        inputs = metrics.Counter("rayembed_inputs", "Inputs embedded.", tag_keys=("model",))
        token_count = metrics.Counter("rayembed_tokens", "Tokens embedded.", tag_keys=("model",))
        batch_rows = metrics.Histogram("rayembed_batch_inputs", "Inputs per engine batch.",
                                       boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], tag_keys=("model",))

        def compute(tokens: Tokens) -> np.ndarray:
            vectors = embedder.embed_tokens(tokens)
            inputs.inc(len(tokens), tags)
            token_count.inc(int(tokens.offsets[-1]), tags)
            batch_rows.observe(len(tokens), tags)
            return vectors

        def shaped(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
            return vectors if dimensions in (None, embedder.dimensions) else pooling.truncate(vectors, dimensions)

        @serve.batch(max_batch_size=served.max_batch_tokens, batch_wait_timeout_s=served.batch_wait_timeout_s,
                     batch_size_fn=lambda jobs: sum(int(job.tokens.offsets[-1]) for job in jobs))
        async def embed(jobs: list[_Job]) -> list[np.ndarray]:
            vectors = await asyncio.to_thread(compute, Tokens.concat([job.tokens for job in jobs]))
            ends = np.cumsum([len(job.tokens) for job in jobs])
            return [shaped(part, job.dimensions) for part, job in zip(np.split(vectors, ends[:-1]), jobs)]

        async def run(job: _Job) -> np.ndarray:
            if job.tokens.offsets[-1] > served.max_batch_tokens:  # a batch on its own
                return shaped(await asyncio.to_thread(compute, job.tokens), job.dimensions)
            return await embed(job)

        return run

    def _unauthorised(self, request: Request) -> JSONResponse | None:
        if self.api_key is None:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.api_key.encode()):
            return None
        return openai_error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.models)}

    @api.get("/v1/models")
    async def list_models(self, request: Request):
        if (denied := self._unauthorised(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "rayembed"} for n in sorted(self.models)]}

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request):
        if (denied := self._unauthorised(request)) is not None:
            return denied
        body = await request.body()
        if len(body) > self.config.max_request_bytes:
            return openai_error(413, f"request body is {len(body):,} bytes; the limit is {self.config.max_request_bytes:,}: send fewer or shorter inputs")
        try:
            payload = json.loads(body)
        except ValueError:
            return openai_error(400, "the body is not valid JSON")
        if not isinstance(payload, dict):
            return openai_error(400, "the body must be a JSON object with 'model' and 'input'")
        name = self.aliases.get(str(payload.get("model", "")).lower())
        if name is None:
            return openai_error(404, f"model {payload.get('model')!r} is not served here; served models: {', '.join(sorted(self.models))}",
                                param="model", code="model_not_found")
        inputs = payload.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts:
            return openai_error(400, "'input' must be a string or a non-empty list of strings", param="input")
        if len(texts) > self.config.max_inputs_per_request:
            return openai_error(400, f"{len(texts)} inputs in one request; the limit is {self.config.max_inputs_per_request}: split the request", param="input")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                return openai_error(400, f"input[{i}] is not a string (token arrays are not accepted): send text", param="input")
            _, reason = check_text(text)
            if reason:
                return openai_error(400, f"input[{i}] cannot be embedded: {reason}", param="input")
        encoding = payload.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return openai_error(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        dimensions = payload.get("dimensions")
        embedder = self.models[name]
        if dimensions is not None and (not isinstance(dimensions, int) or not 1 <= dimensions <= embedder.dimensions):
            return openai_error(400, f"'dimensions' must be an integer from 1 to {embedder.dimensions} for {name}", param="dimensions")
        tokenized = embedder.tokenize(texts)
        vectors = await self.batchers[name](_Job(tokenized.tokens, dimensions))
        tokens, truncated = int(tokenized.tokens.offsets[-1]), int(tokenized.tokens.truncated.sum())
        if encoding == "base64":
            data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                    for i, v in enumerate(vectors)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": truncated}
        return Response(json.dumps({"object": "list", "data": data, "model": name, "usage": usage}), media_type="application/json")


def build_app(args: dict) -> serve.Application:
    """The Serve app from config.yaml's `args` (`import_path: serve_apps.openai_api:build_app`)."""
    config = AppConfig.model_validate(args or {})
    for served in config.models:
        CATALOG.resolve(served.model)  # an unknown model fails at deploy time, naming the known ones
    return EmbeddingsAPI.bind(config.model_dump())
