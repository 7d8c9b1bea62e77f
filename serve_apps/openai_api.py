"""The online app: an OpenAI-compatible `/v1/embeddings` on Ray Serve, over the same engine as the job.

One deployment is both the HTTP ingress and the engine host. Each served model has its own
`serve.batch` queue: requests that arrive together are tokenised and embedded as one token-packed
batch, on a worker thread so the event loop keeps taking requests while the device works. A CLIP
model also takes images, as {"type": "image_url", "image_url": {"url": ...}} items or data:image
URLs (paths only under the configured image_roots), embedded into the same space as its text.

    serve run serve_apps/config.yaml          # or: rayembed serve
"""


import asyncio
import base64
import binascii
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

from actors import pooling, storage
from actors.catalog import CATALOG, DEFAULT_MODEL
from actors.device_actor import assigned_device
from actors.embedder import Embedder
from actors.tokenize import Tokens, check_text
from cluster.autoscaling import serve_autoscaling_config
from jobs.sources import read_bytes


class ServedModel(BaseModel):
    """One model the app serves, and how its requests are batched."""

    model: str | dict = DEFAULT_MODEL  # a catalogue name or custom model properties
    precision: str = "auto"
    # Requests are joined into engine batches of up to this many tokens (serve.batch's batch_size_fn);
    # a request larger than that is a batch of its own.
    max_batch_tokens: int = 16384
    max_batch_images: int = 64  # CLIP models: images per engine batch
    batch_wait_timeout_s: float = 0.002


class AppConfig(BaseModel):
    """The `args` of the app in serve_apps/config.yaml."""

    models: list[ServedModel] = Field(default_factory=lambda: [ServedModel()])
    threads: int | None = None  # ONNX Runtime threads per replica (default: the CPUs Ray gave it)
    max_inputs_per_request: int = 2048
    max_request_bytes: int = 8 * 1024 * 1024
    # Where a CLIP model may read images named by path: local folders or s3:// prefixes. Empty: only
    # images sent in the request (data: URLs). Never arbitrary files.
    image_roots: list[str] = Field(default_factory=list)


class ImageRefused(ValueError):
    """An image the request named but the app may not read (not under image_roots)."""


def image_bytes(url: str, roots: list[str]) -> bytes:
    """An image's bytes from a `data:image/...;base64,` URL, or a path/URI under one of `roots`."""
    if not url:
        raise ValueError("an image_url needs a url")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise ValueError("a data URL must be data:image/<type>;base64,<data>")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise ValueError("the data URL's base64 is invalid") from None
    if storage.is_s3(url):
        allowed = any(url.startswith(r.rstrip("/") + "/") for r in roots if storage.is_s3(r)) and ".." not in url.split("/")
    else:
        url = url.removeprefix("file://")
        real = os.path.realpath(url)  # links and .. resolved before the check
        allowed = any(real.startswith(os.path.realpath(r).rstrip("/") + "/") for r in roots if not storage.is_s3(r))
        url = real
    if not allowed:
        where = ", ".join(roots) if roots else "nowhere (image_roots is empty): send a data: URL"
        raise ImageRefused(f"images are read only from data: URLs or under {where}")
    try:
        return read_bytes(url)
    except OSError as e:
        raise ValueError(f"cannot read {url}: {e}") from None


@dataclass
class _Job:
    tokens: Tokens
    dimensions: int | None


@dataclass
class _ImageJob:
    pixels: np.ndarray  # uint8 [n, h, w, 3], decoded and cropped
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
        self.batchers, self.image_batchers = {}, {}
        for served in self.config.models:
            embedder = Embedder(served.model, precision=served.precision, device=device, threads=threads)
            embedder.warmup()
            name = embedder.spec.name
            self.models[name] = embedder
            for alias in (name, *embedder.spec.aliases):
                self.aliases[alias.lower()] = name
            self.batchers[name], self.image_batchers[name] = self._batcher(embedder, served)
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

        # A CLIP model's images are batched across requests too, by image count.
        @serve.batch(max_batch_size=served.max_batch_images, batch_wait_timeout_s=served.batch_wait_timeout_s,
                     batch_size_fn=lambda jobs: sum(len(job.pixels) for job in jobs))
        async def embed_images(jobs: list[_ImageJob]) -> list[np.ndarray]:
            vectors = await asyncio.to_thread(embedder.embed_pixels, np.concatenate([job.pixels for job in jobs]))
            inputs.inc(len(vectors), tags)
            ends = np.cumsum([len(job.pixels) for job in jobs])
            return [shaped(part, job.dimensions) for part, job in zip(np.split(vectors, ends[:-1]), jobs)]

        async def run_images(job: _ImageJob) -> np.ndarray:
            if len(job.pixels) > served.max_batch_images:
                return shaped(await asyncio.to_thread(embedder.embed_pixels, job.pixels), job.dimensions)
            return await embed_images(job)

        return run, run_images

    def _unauthorised(self, request: Request) -> JSONResponse | None:
        if self.api_key is None:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.api_key.encode()):
            return None
        return openai_error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    def _image_url(self, item) -> str | None:
        """The image an input names: {"type": "image_url", "image_url": {"url": ...}}, a data:image URL,
        or a path/URI under image_roots; None for text."""
        if isinstance(item, dict) and item.get("type") == "image_url":
            url = item.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            return url if isinstance(url, str) else ""
        if isinstance(item, str) and (item.startswith("data:image/") or any(item.startswith(r) for r in self.config.image_roots)):
            return item
        return None

    def _prepare_images(self, embedder: Embedder, urls: list[str], rows: list[int]) -> np.ndarray:
        blobs = []
        for url, row in zip(urls, rows):
            try:
                blobs.append(image_bytes(url, self.config.image_roots))
            except ImageRefused as e:
                raise ImageRefused(f"input[{row}]: {e}") from None
            except ValueError as e:
                raise ValueError(f"input[{row}] cannot be embedded: {e}") from None
        pixels, _, errors = embedder.prepare_images(blobs)
        if errors:
            raise ValueError(f"input[{rows[errors[0].index]}] cannot be embedded: {errors[0].reason}")
        return pixels

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
        items = [inputs] if isinstance(inputs, (str, dict)) else inputs
        if not isinstance(items, list) or not items:
            return openai_error(400, "'input' must be a string or a non-empty list of strings", param="input")
        if len(items) > self.config.max_inputs_per_request:
            return openai_error(400, f"{len(items)} inputs in one request; the limit is {self.config.max_inputs_per_request}: split the request", param="input")
        embedder = self.models[name]
        clip = embedder.spec.modality == "clip"
        texts, text_rows, urls, image_rows = [], [], [], []
        for i, item in enumerate(items):
            url = self._image_url(item) if clip else None
            if url is not None:
                urls.append(url)
                image_rows.append(i)
                continue
            if isinstance(item, dict):
                hint = "" if clip else f": {name} embeds text only"
                return openai_error(400, f"input[{i}] is an object; images are accepted only by CLIP models{hint}", param="input")
            if not isinstance(item, str):
                return openai_error(400, f"input[{i}] is not a string (token arrays are not accepted): send text", param="input")
            _, reason = check_text(item)
            if reason:
                return openai_error(400, f"input[{i}] cannot be embedded: {reason}", param="input")
            texts.append(item)
            text_rows.append(i)
        encoding = payload.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return openai_error(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        dimensions = payload.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or not 1 <= dimensions <= embedder.dimensions):
            return openai_error(400, f"'dimensions' must be an integer from 1 to {embedder.dimensions} for {name}", param="dimensions")
        image_vectors = text_vectors = None
        tokens = truncated = 0
        if urls:
            try:
                pixels = await asyncio.to_thread(self._prepare_images, embedder, urls, image_rows)
            except ImageRefused as e:
                return openai_error(403, str(e), param="input", code="image_not_allowed")
            except ValueError as e:
                return openai_error(400, str(e), param="input")
            image_vectors = await self.image_batchers[name](_ImageJob(pixels, dimensions))
        if texts:
            tokenized = embedder.tokenize(texts)
            text_vectors = await self.batchers[name](_Job(tokenized.tokens, dimensions))
            tokens, truncated = int(tokenized.tokens.offsets[-1]), int(tokenized.tokens.truncated.sum())
        if image_vectors is None or text_vectors is None:  # one kind of input: already in request order
            vectors = text_vectors if image_vectors is None else image_vectors
        else:
            vectors = np.empty((len(items), text_vectors.shape[1]), dtype=np.float32)
            vectors[image_rows], vectors[text_rows] = image_vectors, text_vectors
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
    # Autoscaling from cluster/autoscaling.py, shared with the job; a deployment's
    # `autoscaling_config` in config.yaml still overrides it.
    return EmbeddingsAPI.options(autoscaling_config=serve_autoscaling_config()).bind(config.model_dump())
