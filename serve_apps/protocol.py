"""OpenAI's embeddings protocol: a request body to a typed request, vectors to a response body.

Everything a client can get wrong is raised as one `RequestError`, which the app answers in
OpenAI's error shape; nothing here knows how a vector is computed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import orjson

from actors.errors import UserError
from actors.spec import ModelSpec
from serve_apps.images import names_image

EncodingFormat = Literal["float", "base64"]
ENCODING_FORMATS: tuple[str, ...] = get_args(EncodingFormat)


class RequestError(Exception):
    """A request the app will not serve, with what OpenAI's error body says about it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ModelCard:
    """What a request is checked against: a served model's spec (name, width, prompts, Matryoshka
    dimensions) and whether it takes images."""

    spec: ModelSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    @property
    def takes_images(self) -> bool:
        return self.spec.is_clip


@dataclass(frozen=True)
class ImageInput:
    url: str  # a data:image URL, or a path/URI that serve_apps.images checks against image_roots


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: ModelCard
    items: list[str | ImageInput]  # in the request's order
    encoding_format: EncodingFormat
    dimensions: int | None
    prompt: str  # the text put before each input: from input_type or prompt_name, else the model's default
    input_type: str | None  # query, passage or document: a BM25 or ColBERT model encodes queries its own way


def parse_embeddings(body: bytes, models: Mapping[str, ModelCard], *, max_inputs: int,
                     image_roots: list[str]) -> EmbeddingsRequest:
    """The request in a `/v1/embeddings` body (read under its size limit: serve_apps/bodies.py); `models` maps
    each lower-cased served name and alias to its card."""
    payload = json_object(body)
    model = model_card(payload.get("model", ""), models)
    items = _items(payload.get("input"), max_inputs)
    return EmbeddingsRequest(
        model=model,
        items=[_item(i, item, model, image_roots) for i, item in enumerate(items)],
        encoding_format=_encoding_format(payload.get("encoding_format", "float")),
        dimensions=_dimensions(payload.get("dimensions"), model),
        prompt=_prompt(payload.get("input_type"), payload.get("prompt_name"), model),
        input_type=payload.get("input_type"),
    )


def json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = _json_orjson_refuses(body)
    if not isinstance(payload, dict):
        raise RequestError(400, "the body must be a JSON object with 'model' and 'input'")
    return payload


def _json_orjson_refuses(body: bytes) -> Any:
    """What orjson refused, read by the standard library's parser: it takes JSON that orjson does not, a
    lone surrogate escape ("\\ud800", which RFC 8259 allows) above all, so that such a text is refused by
    the tokenizer as the input it is, named, not as a body that is not JSON."""
    try:
        return json.loads(body)
    except RecursionError:
        raise RequestError(400, "the body's JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise RequestError(400, f"the body is not valid JSON: {e}") from None


def model_card(name: object, models: Mapping[str, ModelCard]) -> ModelCard:
    """The served model a request names, by its name or an alias (any case), or a 404 listing those served."""
    card = models.get(str(name).lower())
    if card is None:
        served = ", ".join(sorted({c.name for c in models.values()}))
        raise RequestError(404, f"model {name!r} is not served here; served models: {served}", param="model",
                           code="model_not_found")
    return card


def _items(inputs: object, max_inputs: int) -> list:
    items = [inputs] if isinstance(inputs, (str, dict)) else inputs
    if not isinstance(items, list) or not items:
        raise RequestError(400, "'input' must be a string or a non-empty list of strings", param="input")
    if len(items) > max_inputs:
        raise RequestError(400, f"{len(items)} inputs in one request; the limit is {max_inputs}: split the request",
                           param="input")
    return items


def _item(i: int, item: object, model: ModelCard, image_roots: list[str]) -> str | ImageInput:
    if model.takes_images:
        if isinstance(item, dict) and item.get("type") == "image_url":
            url = item.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            return ImageInput(url if isinstance(url, str) else "")
        if isinstance(item, str) and names_image(item, image_roots):
            return ImageInput(item)
    if isinstance(item, dict):
        hint = "" if model.takes_images else f": {model.name} embeds text only"
        raise RequestError(400, f"input[{i}] is an object; images are accepted only by CLIP models{hint}",
                           param="input")
    if not isinstance(item, str):
        raise RequestError(400, f"input[{i}] is not a string (token arrays are not accepted): send text", param="input")
    return item


def _encoding_format(value: object) -> EncodingFormat:
    # A sparse or late-interaction model's embeddings are JSON objects or lists whatever this says: the
    # openai client asks for base64 by default, and passes through what is not a base64 string.
    if value not in ENCODING_FORMATS:
        raise RequestError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    return value  # type: ignore[return-value]


def _dimensions(value: object, model: ModelCard) -> int | None:
    if value is None:
        return None
    if model.spec.task != "embed":
        raise RequestError(400, f"{model.name} is a {model.spec.task} model: 'dimensions' cuts dense vectors only",
                           param="dimensions")
    # bool is an int in Python; `"dimensions": true` is not a width.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= model.dimensions:
        raise RequestError(400, f"'dimensions' must be an integer from 1 to {model.dimensions} for {model.name}",
                           param="dimensions")
    try:
        return model.spec.check_dimensions(value)
    except UserError as e:  # a model not trained for shorter vectors: refused, as vLLM does
        raise RequestError(400, str(e), param="dimensions") from None


def _prompt(input_type: object, prompt_name: object, model: ModelCard) -> str:
    """`input_type` (query, passage or document: NIM's and Cohere's word) or `prompt_name` (TEI's)."""
    for param, value in (("input_type", input_type), ("prompt_name", prompt_name)):
        if value is not None and not isinstance(value, str):
            raise RequestError(400, f"'{param}' must be a string", param=param)
    try:
        return model.spec.prompt(input_type, prompt_name)[1]  # type: ignore[arg-type]
    except UserError as e:
        raise RequestError(400, str(e), param="prompt_name" if prompt_name is not None else "input_type") from None


def embeddings_body(vectors: np.ndarray, encoding_format: EncodingFormat, model: str, tokens: int,
                    truncated: int) -> bytes:
    """The response body: one embedding per input in request order, float lists or base64 little-endian float32."""
    if encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        encoded: list = [base64.b64encode(row.tobytes()).decode() for row in little]
    else:
        # orjson writes float32 rows as they are (the shortest text that reads back to the same
        # float32): 19x faster than tolist() + json.dumps here, and half the bytes.
        encoded = list(np.ascontiguousarray(vectors, dtype=np.float32))
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": truncated}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage},
                        option=orjson.OPT_SERIALIZE_NUMPY)
