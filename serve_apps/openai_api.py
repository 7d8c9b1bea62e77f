"""The online app: an OpenAI-compatible `/v1/embeddings` on Ray Serve, over the same engine as the job.

One deployment is both the HTTP ingress and the engine host. Each served model has its own queues
(serve_apps/queues.py) that join concurrent requests into one engine call. A CLIP model also takes
images, as {"type": "image_url", "image_url": {"url": ...}} items or data:image URLs (paths only
under the configured image_roots, serve_apps/images.py), embedded into the same space as its text.
The request and response shapes are serve_apps/protocol.py's; the `args` are serve_apps/config.py's.
Every request gets one vector per input, in order, or an error in OpenAI's shape naming the first bad
input; nothing a request sends runs on the event loop for long (docs/serving.md: what a request cannot do).

    serve run serve_apps/config.yaml          # or: rayembed serve
"""

# No `from __future__ import annotations` here: serve.ingress rebuilds the routes' signatures, and
# FastAPI cannot resolve string annotations there (`request: Request` became a query parameter, 422).
import asyncio
import hmac
import importlib.metadata
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException

from actors.bm25 import BM25
from actors.catalog import CATALOG, ModelSpec
from actors.embedder import Embedder
from actors.errors import UserError
from actors.images import MAX_BYTES as MAX_IMAGE_BYTES
from actors.quantize import EMBEDDING_TYPES, NEEDS_RANGES, Ranges
from actors.tokenize import Tokenized
from cluster.autoscaling import serve_autoscaling_config
from cluster.resources import this_worker
from serve_apps import tracing
from serve_apps.bodies import read_body
from serve_apps.config import AppConfig, ServedModel, check_app_args
from serve_apps.images import ImageReader, ImageReadTimeout, ImageRefused, ImageTooLarge, image_pixels
from serve_apps.protocol import (
    EmbeddingsRequest,
    ImageInput,
    ModelCard,
    RequestError,
    embeddings_body,
    parse_embeddings,
    parse_tokenize,
)
from serve_apps.queues import NO_FINISH, BatchMetrics, ModelQueues, model_queues
from serve_apps.reranking import multi_vector_body, parse_rerank, rerank_body, sparse_body
from serve_apps.tokenizing import TokenizeQueue

# FastAPI's own /docs, /redoc and /openapi.json are off; the app serves the first and last itself when
# its config says so (`api_docs`).
api = FastAPI(title="rayembed", description="OpenAI-compatible embeddings", docs_url=None, redoc_url=None,
              openapi_url=None)
# Bodies and responses of at least this many bytes (or floats) are parsed and written on the JSON
# thread: ~2 ms of orjson at most on the event loop, where /healthz and every other request wait.
BIG_BODY_BYTES = 1 << 20
BIG_RESPONSE_FLOATS = 1 << 16

Refusal = tuple[int, RequestError]  # an input that cannot be embedded: its place in the request, and the 4xx
try:
    _VERSION = importlib.metadata.version("rayembed")
except importlib.metadata.PackageNotFoundError:  # run from the repository as Ray's working_dir, not installed
    _VERSION = "unknown (not installed)"


@api.exception_handler(RequestError)
async def _refused(request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@api.exception_handler(HTTPException)
async def _no_route(request: Request, error: HTTPException) -> JSONResponse:
    # Starlette's own answers (no such route, wrong method) in OpenAI's shape like every other error.
    message = f"{request.method} {request.url.path}: {error.detail}; this app serves POST /v1/embeddings, " \
              "POST /v1/rerank, POST /tokenize, GET /v1/models, GET /info and GET /healthz"
    return JSONResponse(RequestError(error.status_code, message).body(), status_code=error.status_code,
                        headers=error.headers)


@api.exception_handler(Exception)
async def _failed(request: Request, error: Exception) -> JSONResponse:
    # A bug, not the client's doing. Starlette re-raises after answering, so Serve still logs the
    # traceback and counts the failure; the client gets OpenAI's shape instead of a text page.
    failure = RequestError(500, f"the server failed on this request ({type(error).__name__}); its log has the details",
                           error_type="server_error")
    return JSONResponse(failure.body(), status_code=500)


# Every response, errors too, carries Serve's own request id in `x-request-id` (the client's, if it
# sent one): Serve's proxy or the replica's direct ingress adds it, in its logs too. Where an OTLP
# endpoint is configured, FastAPI makes each request's span and this puts the id on it.
api.add_middleware(tracing.RequestIds)


@dataclass(frozen=True)
class _Model:
    spec: ModelSpec
    tokenizer: TokenizeQueue
    embedder: Embedder | None = None  # none for BM25, which needs no model
    queues: ModelQueues | None = None
    bm25: BM25 | None = None
    ranges: Ranges | None = None  # int8/uint8 calibration (dense models only)
    served: ServedModel | None = None  # how the config serves it


# Defined above the deployment: serve.ingress pickles the class where it is declared, with the
# module's globals as they are then.
def _call_fields(spec: ModelSpec) -> dict:
    """What a client needs to call a model right: in both `GET /v1/models` and `GET /info`."""
    return {"task": spec.task, "dimensions": spec.dimensions, "max_tokens": spec.max_tokens, "pooling": spec.pooling,
            "default_prompt_name": spec.default_prompt_name, "matryoshka_dims": list(spec.matryoshka_dims),
            "takes_images": spec.is_clip}


def _model_entry(spec: ModelSpec) -> dict:
    """A served model in `GET /v1/models`: OpenAI's fields, and how to call it."""
    return {"id": spec.name, "object": "model", "owned_by": "rayembed", **_call_fields(spec),
            "prompt_names": spec.prompt_names}


def _model_info(model: _Model) -> dict:
    """A served model in `GET /info`: how to call it, its prompts' texts, and how it runs here."""
    spec, embedder = model.spec, model.embedder
    engine = {"precision": embedder.precision, "backend": embedder.backend, "device": str(embedder.device),
              "max_batch_tokens": model.served.queue_batch_tokens} if embedder is not None else \
        {"precision": None, "backend": "builtin", "device": "cpu", "max_batch_tokens": None}
    dense = spec.task == "embed"
    types = [t for t in EMBEDDING_TYPES if t not in NEEDS_RANGES or model.ranges is not None] if dense else ["float"]
    return {"name": spec.name, "aliases": list(spec.aliases), **_call_fields(spec), "normalize": spec.normalize,
            "prompts": dict(spec.prompts), **engine, "embedding_types": types,
            "calibration": model.ranges.source if model.ranges is not None else None}


def _not_embedded(row: int, reason: object) -> Refusal:
    return row, RequestError(400, f"input[{row}] cannot be embedded: {reason}", param="input")


def _over_budget(row: int, budget: int, of: str) -> RequestError:
    return RequestError(413, f"input[{row}]: the request's images come to over {budget:,} {of} (the app's "
                             f"max_image_{of}_per_request): send fewer or smaller images", param="input")


def _text_refusals(tokenized: Tokenized, rows: list[int], spec: ModelSpec) -> list[Refusal]:
    """The tokenizer's verdict on the first text it refused, if any (`rows`: the texts' places in the
    request); texts refused for their length (truncate NONE) are named all together, with their counts."""
    errors = tokenized.errors  # in the texts' order
    if errors and errors[0].tokens is not None:  # the first refused text is over the limit: name all that are
        over = [e for e in errors if e.tokens is not None]
        listed = ", ".join(f"input[{rows[e.index]}] has {e.tokens:,}" for e in over[:32])
        more = f" and {len(over) - 32} more" if len(over) > 32 else ""
        message = (f"{len(over)} input{'s are' if len(over) > 1 else ' is'} over {spec.name}'s limit of {spec.max_tokens} "
                   f"tokens, and truncate is NONE: {listed} tokens{more}; shorten them, or send truncate END or START")
        return [(rows[over[0].index], RequestError(400, message, param="input", code="input_too_long"))]
    return [_not_embedded(rows[e.index], e.reason) for e in errors[:1]]


@serve.deployment(name="EmbeddingsAPI")
@serve.ingress(api)
class EmbeddingsAPI:
    def __init__(self, config: dict) -> None:
        self.config = AppConfig.model_validate(config)
        tracing.setup(self.config.otlp_endpoint)
        worker = this_worker()
        batch_metrics = BatchMetrics()
        self.models: dict[str, _Model] = {}
        self.cards: dict[str, ModelCard] = {}  # by lower-cased name and alias
        for served in self.config.models:
            spec = CATALOG.resolve(served.model)
            if spec.task == "bm25":  # term weights on the tokenizer's threads: no engine
                model = _Model(spec, TokenizeQueue(None, self.config.tokenizer_threads), bm25=BM25(), served=served)
            else:
                embedder = Embedder(spec, backend=served.backend, precision=served.precision, device=worker.device,
                                    threads=self.config.threads or worker.threads)
                embedder.warmup()
                ranges = Ranges.load(spec, served.calibration, served.backend) if spec.task == "embed" else None
                model = _Model(spec, TokenizeQueue(embedder, self.config.tokenizer_threads), embedder,
                               model_queues(embedder, served, batch_metrics), ranges=ranges, served=served)
            self.models[spec.name] = model
            card = ModelCard(spec, model.ranges)
            for alias in (spec.name, *spec.aliases):
                self.cards[alias.lower()] = card
        # Models do not change after this: /info's body is made once.
        self.info_body = {"version": _VERSION, "models": [_model_info(self.models[name]) for name in sorted(self.models)]}
        # Images are decoded on threads of their own, apart from the engine's and the tokenizer's; files
        # are read on others, which a request waits on only until its deadline.
        self.image_pool = ThreadPoolExecutor(2, thread_name_prefix="rayembed-images")
        self.image_reader = ImageReader(self.config.image_roots, threads=4)
        # Big bodies are parsed, and big responses written, here: off the event loop, one at a time
        # (orjson holds the GIL, so a second thread would only take turns with this one).
        self.json_pool = ThreadPoolExecutor(1, thread_name_prefix="rayembed-json")
        # Read in the replica, never passed through Serve's config (which the dashboard shows).
        self.api_key = os.environ.get("RAYEMBED_API_KEY") or None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.models)}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._authorise(request)
        data = [_model_entry(self.models[name].spec) for name in sorted(self.models)]
        return {"object": "list", "data": data}

    @api.get("/info")
    async def info(self, request: Request) -> dict:
        """What each served model is and how it runs here (TEI's /info, for every model the app serves)."""
        self._authorise(request)
        return self.info_body

    @api.post("/tokenize")
    async def tokenize(self, request: Request) -> Response:
        """Token ids of texts, whole, as TEI's /tokenize gives them (one list of tokens per input)."""
        self._authorise(request)
        body = await read_body(request, self.config.max_request_bytes)
        parsed = parse_tokenize(body, self.cards, max_inputs=self.config.max_inputs_per_request)
        tokenizer = self.models[parsed.model.name].embedder.tokenizer
        tokens = await self.models[parsed.model.name].tokenizer.run(tokenizer.tokens_of, parsed.texts, parsed.prompt,
                                                                    parsed.add_special_tokens)
        return Response(await self._json(partial(orjson.dumps, tokens)), media_type="application/json")

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> dict:
        self._docs_on()
        return request.app.openapi()

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        self._docs_on()
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json", title=api.title)

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        self._authorise(request)
        with tracing.stage("parse"):
            body = await read_body(request, self.config.max_request_bytes)
            parse = partial(parse_embeddings, body, self.cards, max_inputs=self.config.max_inputs_per_request,
                            image_roots=self.config.image_roots)
            parsed = await self._json(parse) if len(body) >= BIG_BODY_BYTES else parse()
        tracing.describe(parsed.model.name, len(parsed.items))
        model = self.models[parsed.model.name]
        if model.spec.task != "embed":
            return await self._not_dense(model, parsed)
        text_rows = [i for i, item in enumerate(parsed.items) if isinstance(item, str)]
        image_rows = [i for i, item in enumerate(parsed.items) if isinstance(item, ImageInput)]
        # Everything that can refuse the request runs before any of it joins a queue: texts on the
        # tokenizer's threads and images on theirs, at once; the first input either refuses is named.
        decoding = None
        if image_rows:
            urls = [parsed.items[i].url for i in image_rows]
            decoding = asyncio.get_running_loop().run_in_executor(self.image_pool, self._pixels, model.embedder, urls,
                                                                  image_rows)
        tokenized = await model.tokenizer.tokenize([parsed.items[i] for i in text_rows], parsed.prompt,
                                                   truncate=parsed.truncate) if text_rows else None
        pixels, refusals = await decoding if decoding is not None else (None, [])
        if tokenized is not None:
            refusals = refusals + _text_refusals(tokenized, text_rows, model.spec)
        if refusals:
            raise min(refusals, key=lambda refusal: refusal[0])[1]
        vectors = np.empty((len(parsed.items), parsed.dimensions or model.embedder.dimensions), dtype=np.float32)
        finish = (parsed.dimensions, parsed.normalize)
        if pixels is not None:
            vectors[image_rows] = await model.queues.images(pixels, finish)
        tokens = tokenized.tokens if tokenized is not None else None
        if tokens is not None:
            vectors[text_rows] = await model.queues.text(tokens, finish)
        used, truncated = (int(tokens.offsets[-1]), int(tokens.truncated.sum())) if tokens is not None else (0, 0)
        write = partial(embeddings_body, vectors, parsed, model.embedder.spec.name, used, truncated)
        with tracing.stage("encode"):
            return Response(await self._json(write) if vectors.size >= BIG_RESPONSE_FLOATS else write(),
                            media_type="application/json")

    @api.post("/v1/rerank")
    async def rerank(self, request: Request) -> Response:
        """Scores of (query, document) pairs, best first: the body Cohere, Jina, vLLM and infinity share."""
        self._authorise(request)
        with tracing.stage("parse"):
            body = await read_body(request, self.config.max_request_bytes)
            parse = partial(parse_rerank, body, self.cards, max_documents=self.config.max_inputs_per_request)
            parsed = await self._json(parse) if len(body) >= BIG_BODY_BYTES else parse()
        tracing.describe(parsed.model.name, len(parsed.documents))
        model = self.models[parsed.model.name]
        n = len(parsed.documents)
        tokenized = await model.tokenizer.run(model.embedder.tokenize_pairs, [parsed.query] * n, parsed.documents)
        if tokenized.errors:
            first = tokenized.errors[0]
            if first.reason.startswith("query:"):
                raise RequestError(400, f"the query cannot be scored: {first.reason[len('query: '):]}", param="query")
            raise RequestError(400, f"documents[{first.index}] cannot be scored: {first.reason}", param="documents")
        scores = await model.queues.text(tokenized.tokens, NO_FINISH)
        with tracing.stage("encode"):
            return Response(rerank_body(parsed, scores, int(tokenized.tokens.offsets[-1])), media_type="application/json")

    async def _not_dense(self, model: _Model, parsed: EmbeddingsRequest) -> Response:
        """/v1/embeddings on a sparse (SPLADE, BM25) or late-interaction (ColBERT) model."""
        spec, texts = model.spec, parsed.items
        if spec.task == "rerank":
            raise RequestError(400, f"{spec.name} is a reranker: POST /v1/rerank with a query and documents", param="model")
        query = parsed.input_type == "query"  # BM25 and ColBERT encode a query otherwise than a document
        if model.bm25 is not None:
            vectors, errors = await model.tokenizer.run(model.bm25.embed_queries if query else model.bm25.embed_documents,
                                                        texts)
            if errors:
                raise _not_embedded(errors[0].index, errors[0].reason)[1]
            return Response(sparse_body(vectors, spec.name, 0, 0), media_type="application/json")
        colbert = spec.task == "late_interaction"
        tokenized = await model.tokenizer.tokenize(texts, parsed.prompt, query=query and colbert, truncate=parsed.truncate)
        refusals = _text_refusals(tokenized, list(range(len(texts))), spec)
        if refusals:
            raise refusals[0][1]
        tokens = tokenized.tokens
        used, truncated = int(tokens.offsets[-1]), int(tokens.truncated.sum())
        if colbert:
            out = await (model.queues.queries if query else model.queues.text)(tokens, NO_FINISH)
            write = partial(multi_vector_body, [out.row(i) for i in range(len(out))], spec.name, used, truncated)
        else:
            write = partial(sparse_body, await model.queues.text(tokens, NO_FINISH), spec.name, used, truncated)
        with tracing.stage("encode"):
            return Response(await self._json(write), media_type="application/json")

    async def _json(self, work):
        return await asyncio.get_running_loop().run_in_executor(self.json_pool, work)

    def _docs_on(self) -> None:
        if not self.config.api_docs:
            raise HTTPException(404, "Not Found")

    def _authorise(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")

    def _pixels(self, embedder: Embedder, urls: list[str], rows: list[int]) -> tuple[np.ndarray | None, list[Refusal]]:
        """The images read, decoded and cropped (CPU work: run off the event loop), and the first that cannot
        be embedded, if any; `rows`: their places in the request. A request over its budget of bytes or
        pixels, or whose files are not read by its deadline, is refused whole, naming where it went over."""
        config = self.config
        deadline = time.monotonic() + config.image_read_timeout_s
        blobs: list[bytes] = []
        readable: list[int] = []
        refusals: list[Refusal] = []
        read_bytes = pixels = 0
        for url, row in zip(urls, rows, strict=True):
            try:
                left = config.max_image_bytes_per_request - read_bytes
                blob = self.image_reader.read(url, min(MAX_IMAGE_BYTES, left), deadline)
            except ImageTooLarge as e:
                if e.size <= MAX_IMAGE_BYTES:
                    raise _over_budget(row, config.max_image_bytes_per_request, "bytes") from None
                refusals.append(_not_embedded(row, f"file of {e.size:,} bytes is over the {MAX_IMAGE_BYTES:,}-byte "
                                                   "limit"))
                break
            except ImageRefused as e:
                refusals.append((row, RequestError(403, f"input[{row}]: {e}", param="input", code="image_not_allowed")))
                break
            except ImageReadTimeout as e:
                raise RequestError(504, f"input[{row}]: {e} (image_read_timeout_s is {config.image_read_timeout_s:g})",
                                   param="input", code="image_read_timeout", error_type="server_error") from None
            except UserError as e:
                refusals.append(_not_embedded(row, e))
                break
            read_bytes += len(blob)
            pixels += image_pixels(blob)
            if pixels > config.max_image_pixels_per_request:
                raise _over_budget(row, config.max_image_pixels_per_request, "pixels")
            blobs.append(blob)
            readable.append(row)
        if not blobs:
            return None, refusals
        # Only the images before a refused one are decoded: one of them may be the first bad input.
        prepared, _, errors = embedder.prepare_images(blobs)
        return prepared, [_not_embedded(readable[e.index], e.reason) for e in errors[:1]] + refusals


def build_app(args: dict) -> serve.Application:
    """The Serve app from config.yaml's `args` (`import_path: serve_apps.openai_api:build_app`).

    The args are checked here, before anything is deployed: an unknown key or model fails
    `serve run` with a message that names it.
    """
    config = check_app_args(args)
    # Autoscaling from cluster/autoscaling.py, shared with the job; a deployment's
    # `autoscaling_config` in config.yaml still overrides it.
    return EmbeddingsAPI.options(autoscaling_config=serve_autoscaling_config()).bind(config.model_dump())
