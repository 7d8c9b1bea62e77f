"""OpenAI's embeddings protocol: a request body to a typed request, vectors to a response body.

Everything a client can get wrong is raised as one `RequestError`, which the app answers in
OpenAI's error shape; nothing here knows how a vector is computed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from actors.errors import UserError
from actors.quantize import EMBEDDING_TYPES, NEEDS_RANGES, EmbeddingType, Ranges, check_type, quantize
from actors.spec import TRUNCATABLE_TASKS, TRUNCATES, ModelSpec, Truncate
from actors.tokenize import check_text, unencodable
from serve_apps.images import names_image

# How an embedding is written: JSON numbers, or base64 of its bytes (float32 little-endian, int8, uint8).
# `encoding_format` also takes an embedding type's name: that type, as JSON numbers.
Encoding = Literal["float", "base64"]
ENCODING_FORMATS: tuple[str, ...] = ("float", "base64", *EMBEDDING_TYPES[1:])
# What LangChain's OpenAIEmbeddings sends unless told otherwise, and how to tell it.
TOKEN_ARRAYS = ("token arrays are not accepted: rayembed tokenises text with each model's own tokenizer, and ids "
                "from another (tiktoken's, which LangChain's OpenAIEmbeddings sends by default) are wrong for every "
                "model here: send the text (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))")


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
    dimensions), whether it takes images, and its int8 calibration ranges, if it has any."""

    spec: ModelSpec
    ranges: Ranges | None = None

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
    encoding: Encoding
    # The embedding types asked for (Cohere's `embedding_types`, NIM's `embedding_type`, or an
    # `encoding_format` that names one), and whether each `embedding` is an object by type (Cohere's list).
    types: tuple[EmbeddingType, ...]
    by_type: bool
    dimensions: int | None
    normalize: bool | None  # None: as the model says
    truncate: Truncate
    prompt: str  # the text put before each input: from input_type or prompt_name, else the model's default
    input_type: str | None  # query, passage or document: a BM25 or ColBERT model encodes queries its own way


def parse_embeddings(body: bytes, models: Mapping[str, ModelCard], *, max_inputs: int,
                     image_roots: list[str]) -> EmbeddingsRequest:
    """The request in a `/v1/embeddings` body (read under its size limit: serve_apps/bodies.py); `models` maps
    each lower-cased served name and alias to its card."""
    payload = json_object(body)
    model = model_card(payload.get("model", ""), models)
    items = _items(payload.get("input"), max_inputs)
    encoding, types, by_type = _types(payload, model)
    dimensions, normalize = _dimensions(payload.get("dimensions"), model), _normalize(payload.get("normalize"), model)
    if any(t in NEEDS_RANGES for t in types) and (dimensions not in (None, model.dimensions)
                                                  or normalize not in (None, model.spec.normalize)):
        # Calibration ranges are those of the model's own full vectors: a cut and re-normalised or an
        # unnormalised vector lies on another scale, and most of its values would clip.
        raise RequestError(400, f"int8 and uint8 use {model.name}'s calibration ranges, which are those of its full "
                                f"{'unit-length ' if model.spec.normalize else ''}vectors: leave dimensions and normalize "
                                "out, or ask for binary (signs need no ranges)",
                           param="dimensions" if dimensions not in (None, model.dimensions) else "normalize")
    return EmbeddingsRequest(
        model=model,
        items=[_item(i, item, model, image_roots) for i, item in enumerate(items)],
        encoding=encoding,
        types=types,
        by_type=by_type,
        dimensions=dimensions,
        normalize=normalize,
        truncate=truncate_of(payload.get("truncate"), model),
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


def _items(inputs: object, max_inputs: int, param: str = "input") -> list:
    items = [inputs] if isinstance(inputs, (str, dict)) else inputs
    if not isinstance(items, list) or not items:
        raise RequestError(400, f"'{param}' must be a string or a non-empty list of strings", param=param)
    if all(isinstance(item, int) for item in items):  # one token array: OpenAI's `input: [1, 2, 3]`
        raise RequestError(400, f"'{param}' is a list of token ids: {TOKEN_ARRAYS}", param=param)
    if len(items) > max_inputs:
        raise RequestError(400, f"{len(items)} inputs in one request; the limit is {max_inputs}: split the request",
                           param=param)
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
    if isinstance(item, list) and item and all(isinstance(t, int) for t in item):
        raise RequestError(400, f"input[{i}] is a list of token ids: {TOKEN_ARRAYS}", param="input")
    if not isinstance(item, str):
        raise RequestError(400, f"input[{i}] is not a string: send text", param="input")
    return item


def _types(payload: dict, model: ModelCard) -> tuple[Encoding, tuple[EmbeddingType, ...], bool]:
    """(encoding, embedding types, whether each embedding is an object by type) from `encoding_format`,
    `embedding_types` (Cohere: a list, and the embeddings come by type) or `embedding_type` (NIM: one)."""
    fmt = payload.get("encoding_format", "float")
    if fmt not in ENCODING_FORMATS:
        raise RequestError(400, f"'encoding_format' must be one of {', '.join(map(repr, ENCODING_FORMATS))}",
                           param="encoding_format")
    named = {k: payload[k] for k in ("embedding_types", "embedding_type") if payload.get(k) is not None}
    if fmt not in ("float", "base64"):
        named["encoding_format"] = fmt
    if len(named) > 1:
        raise RequestError(400, f"{' and '.join(named)} each name the embedding type: give one", param=next(iter(named)))
    param, asked = next(iter(named.items()), ("encoding_format", "float"))
    by_type = param == "embedding_types"
    if by_type and (not isinstance(asked, list) or not asked):
        raise RequestError(400, "'embedding_types' must be a non-empty list of types", param=param)
    # A sparse or ColBERT model's embeddings come as it gives them: never quantised, nor objects by type.
    if model.spec.task != "embed" and (by_type or asked != "float"):
        raise RequestError(400, f"{model.name} is a {model.spec.task} model: embedding types apply to dense vectors only; "
                                f"leave {param} out", param=param)
    types = []
    for name in asked if by_type else [asked]:
        try:
            types.append(check_type(name, model.ranges, model.name))
        except UserError as e:
            raise RequestError(400, str(e), param=param) from None
    if fmt == "base64" and not by_type and types != ["float"]:
        # The openai client asks for base64 when encoding_format is left out, and reads every base64
        # embedding as float32: int8 or bits there would be read as wrong floats, silently.
        raise RequestError(400, f"encoding_format base64 with {param} {types[0]}: the openai client asks for base64 by "
                                "default and reads it as float32; send encoding_format "
                                f"'{types[0]}' (JSON integers), or embedding_types: ['{types[0]}'] for base64 of its bytes",
                           param="encoding_format")
    return ("base64" if fmt == "base64" else "float"), tuple(dict.fromkeys(types)), by_type


def _normalize(value: object, model: ModelCard) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise RequestError(400, "'normalize' must be true or false", param="normalize")
    if model.spec.task != "embed":
        raise RequestError(400, f"{model.name} is a {model.spec.task} model: 'normalize' applies to dense vectors only",
                           param="normalize")
    return value


def truncate_of(value: object, model: ModelCard) -> Truncate:
    """`truncate` as NIM and Cohere spell it: END (the default; null too, as for the other fields), START or NONE."""
    if value is None:
        return "END"
    if value not in TRUNCATES:
        raise RequestError(400, f"'truncate' must be one of {', '.join(TRUNCATES)} (END cuts an over-long input's end, "
                                "START its start, NONE refuses it)", param="truncate")
    if value != "END" and model.spec.task not in TRUNCATABLE_TASKS:
        raise RequestError(400, f"{model.name} is a {model.spec.task} model: truncate {value} applies to "
                                f"{' and '.join(TRUNCATABLE_TASKS)} models only; leave truncate at END", param="truncate")
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


def embeddings_body(vectors: np.ndarray, request: EmbeddingsRequest, model: str, tokens: int, truncated: int) -> bytes:
    """The response body: one embedding per input in request order, of each type asked, as JSON numbers
    or base64 of its bytes (float32 little-endian; int8 and uint8 as they are)."""
    columns = {t: _encoded(quantize(vectors, t, request.model.ranges), request.encoding) for t in request.types}
    if request.by_type:
        embeddings: list = [{t: column[i] for t, column in columns.items()} for i in range(len(vectors))]
    else:
        (embeddings,) = columns.values()
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": truncated}
    body = {"object": "list", "data": data, "model": model, "usage": usage}
    if any(t in NEEDS_RANGES for t in request.types):  # which ranges made them
        body["calibration"] = request.model.ranges.source
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _encoded(values: np.ndarray, encoding: Encoding) -> list:
    if encoding == "base64":
        little = values.astype("<f4", copy=False) if values.dtype == np.float32 else values
        return [base64.b64encode(row.tobytes()).decode() for row in little]
    # orjson writes float32 rows as they are (the shortest text that reads back to the same float32):
    # 19x faster than tolist() + json.dumps here, and half the bytes; int8 and uint8 rows as integers.
    return list(np.ascontiguousarray(values))


@dataclass(frozen=True)
class TokenizeRequest:
    model: ModelCard
    texts: list[str]
    prompt: str
    add_special_tokens: bool


def parse_tokenize(body: bytes, models: Mapping[str, ModelCard], *, max_inputs: int) -> TokenizeRequest:
    """TEI's `/tokenize` body, `{"inputs": str | [str], "add_special_tokens"?, "prompt_name"?}`, with the
    model named as in `/v1/embeddings` (`model`; it may be left out where one model is served)."""
    payload = json_object(body)
    served = {card.name: card for card in models.values()}
    if "model" not in payload and len(served) == 1:
        model = next(iter(served.values()))
    else:
        model = model_card(payload.get("model", ""), models)
    if model.spec.task == "bm25":
        raise RequestError(400, f"{model.name} splits words with a stemmer, not a tokenizer: it has no token ids",
                           param="model")
    texts = _items(payload.get("inputs"), max_inputs, "inputs")
    for i, text in enumerate(texts):
        # The tokenizer's own row checks, in its words; but a blank text is no error here: its tokens are the special ones.
        blank = isinstance(text, str) and not text.strip()
        reason = "" if blank else check_text(text)[1] or unencodable(text)
        if reason:
            raise RequestError(400, f"inputs[{i}] cannot be tokenised: {reason}", param="inputs")
    add_special_tokens = payload.get("add_special_tokens", True)
    if not isinstance(add_special_tokens, bool):
        raise RequestError(400, "'add_special_tokens' must be true or false", param="add_special_tokens")
    return TokenizeRequest(model, texts, _prompt(payload.get("input_type"), payload.get("prompt_name"), model),
                           add_special_tokens)
