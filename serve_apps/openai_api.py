"""The online app: an OpenAI-compatible `/v1/embeddings` on Ray Serve, over the same engine as the job.

One deployment is both the HTTP ingress and the engine host. Each served model has its own queues
(serve_apps/queues.py) that join concurrent requests into one engine call. A CLIP model also takes
images, as {"type": "image_url", "image_url": {"url": ...}} items or data:image URLs (paths only
under the configured image_roots, serve_apps/images.py), embedded into the same space as its text.
The request and response shapes are serve_apps/protocol.py's; the `args` are serve_apps/config.py's.

    serve run serve_apps/config.yaml          # or: rayembed serve
"""

# No `from __future__ import annotations` here: serve.ingress rebuilds the routes' signatures, and
# FastAPI cannot resolve string annotations there (`request: Request` became a query parameter, 422).
import asyncio
import hmac
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from actors.embedder import Embedder
from actors.errors import UserError
from actors.tokenize import Tokenized, Tokens
from cluster.autoscaling import serve_autoscaling_config
from cluster.resources import this_worker
from serve_apps.config import AppConfig, check_app_args
from serve_apps.images import ImageRefused, image_bytes
from serve_apps.protocol import ImageInput, ModelCard, RequestError, embeddings_body, parse_embeddings
from serve_apps.queues import BatchMetrics, ModelQueues, model_queues
from serve_apps.tokenizing import TokenizeQueue

api = FastAPI(title="rayembed", description="OpenAI-compatible embeddings")


@api.exception_handler(RequestError)
async def _refused(request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@api.exception_handler(Exception)
async def _failed(request: Request, error: Exception) -> JSONResponse:
    # A bug, not the client's doing. Starlette re-raises after answering, so Serve still logs the
    # traceback and counts the failure; the client gets OpenAI's shape instead of a text page.
    failure = RequestError(500, f"the server failed on this request ({type(error).__name__}); its log has the details",
                           error_type="server_error")
    return JSONResponse(failure.body(), status_code=500)


@dataclass(frozen=True)
class _Model:
    embedder: Embedder
    tokenizer: TokenizeQueue
    queues: ModelQueues


# Defined above the deployment: serve.ingress pickles the class where it is declared, with the
# module's globals as they are then.
def _model_entry(embedder: Embedder) -> dict:
    """A served model in `GET /v1/models`: OpenAI's fields, and what a client needs to call it right."""
    spec = embedder.spec
    return {"id": spec.name, "object": "model", "owned_by": "rayembed", "dimensions": spec.dimensions,
            "max_tokens": spec.max_tokens, "pooling": spec.pooling, "prompt_names": spec.prompt_names,
            "default_prompt_name": spec.default_prompt_name, "matryoshka_dims": list(spec.matryoshka_dims),
            "takes_images": spec.is_clip}


def _tokens(tokenized: Tokenized, rows: list[int]) -> Tokens:
    """The texts' tokens, or a 400 naming the first that cannot be embedded (`rows`: their places in the request)."""
    if tokenized.errors:
        first = tokenized.errors[0]
        raise RequestError(400, f"input[{rows[first.index]}] cannot be embedded: {first.reason}", param="input")
    return tokenized.tokens


@serve.deployment(name="EmbeddingsAPI")
@serve.ingress(api)
class EmbeddingsAPI:
    def __init__(self, config: dict) -> None:
        self.config = AppConfig.model_validate(config)
        worker = this_worker()
        batch_metrics = BatchMetrics()
        self.models: dict[str, _Model] = {}
        self.cards: dict[str, ModelCard] = {}  # by lower-cased name and alias
        for served in self.config.models:
            embedder = Embedder(served.model, backend=served.backend, precision=served.precision, device=worker.device,
                                threads=self.config.threads or worker.threads)
            embedder.warmup()
            name = embedder.spec.name
            self.models[name] = _Model(embedder, TokenizeQueue(embedder, self.config.tokenizer_threads),
                                       model_queues(embedder, served, batch_metrics))
            card = ModelCard(embedder.spec)
            for alias in (name, *embedder.spec.aliases):
                self.cards[alias.lower()] = card
        # Image files are read and decoded here, apart from the engine's and the tokenizer's threads.
        self.image_pool = ThreadPoolExecutor(2, thread_name_prefix="rayembed-images")
        # Read in the replica, never passed through Serve's config (which the dashboard shows).
        self.api_key = os.environ.get("RAYEMBED_API_KEY") or None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.models)}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._authorise(request)
        data = [_model_entry(self.models[name].embedder) for name in sorted(self.models)]
        return {"object": "list", "data": data}

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        self._authorise(request)
        parsed = parse_embeddings(await request.body(), self.cards, max_bytes=self.config.max_request_bytes,
                                  max_inputs=self.config.max_inputs_per_request, image_roots=self.config.image_roots)
        model = self.models[parsed.model.name]
        text_rows = [i for i, item in enumerate(parsed.items) if isinstance(item, str)]
        image_rows = [i for i, item in enumerate(parsed.items) if isinstance(item, ImageInput)]
        texts = [parsed.items[i] for i in text_rows]
        urls = [parsed.items[i].url for i in image_rows]
        # Everything that can refuse the request runs before any of it joins a queue.
        tokens = _tokens(await model.tokenizer.tokenize(texts, parsed.prompt), text_rows) if texts else None
        pixels = None
        if urls:
            loop = asyncio.get_running_loop()
            pixels = await loop.run_in_executor(self.image_pool, self._pixels, model.embedder, urls, image_rows)
        vectors = np.empty((len(parsed.items), parsed.dimensions or model.embedder.dimensions), dtype=np.float32)
        if pixels is not None:
            vectors[image_rows] = await model.queues.images(pixels, parsed.dimensions)
        if tokens is not None:
            vectors[text_rows] = await model.queues.text(tokens, parsed.dimensions)
        used, truncated = (int(tokens.offsets[-1]), int(tokens.truncated.sum())) if tokens is not None else (0, 0)
        body = embeddings_body(vectors, parsed.encoding_format, model.embedder.spec.name, used, truncated)
        return Response(body, media_type="application/json")

    def _authorise(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")

    def _pixels(self, embedder: Embedder, urls: list[str], rows: list[int]) -> np.ndarray:
        """The images decoded and cropped (CPU work: run off the event loop); `rows` as in `_tokens`."""
        blobs = []
        for url, row in zip(urls, rows, strict=True):
            try:
                blobs.append(image_bytes(url, self.config.image_roots))
            except ImageRefused as e:
                raise RequestError(403, f"input[{row}]: {e}", param="input", code="image_not_allowed") from None
            except UserError as e:
                raise RequestError(400, f"input[{row}] cannot be embedded: {e}", param="input") from None
        pixels, _, errors = embedder.prepare_images(blobs)
        if errors:
            first = errors[0]
            raise RequestError(400, f"input[{rows[first.index]}] cannot be embedded: {first.reason}", param="input")
        return pixels


def build_app(args: dict) -> serve.Application:
    """The Serve app from config.yaml's `args` (`import_path: serve_apps.openai_api:build_app`).

    The args are checked here, before anything is deployed: an unknown key or model fails
    `serve run` with a message that names it.
    """
    config = check_app_args(args)
    # Autoscaling from cluster/autoscaling.py, shared with the job; a deployment's
    # `autoscaling_config` in config.yaml still overrides it.
    return EmbeddingsAPI.options(autoscaling_config=serve_autoscaling_config()).bind(config.model_dump())
