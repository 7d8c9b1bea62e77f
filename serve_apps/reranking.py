"""The rerank protocol, and the response bodies of models that give no dense vector.

`POST /v1/rerank` takes the body Cohere, Jina, vLLM and infinity share -- `{"model", "query",
"documents": [str, ...], "top_n"?, "return_documents"?}` -- and answers `{"model", "results":
[{"index", "relevance_score", "document"?}], "usage"}`, results sorted by score, best first. A
sparse model's `/v1/embeddings` gives each `embedding` as `{"indices": [...], "values": [...]}`, a
late-interaction model's as a list of vectors (one per token).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import orjson

from actors.sparse import SparseVectors
from serve_apps.protocol import ModelCard, RequestError, json_object, model_card


@dataclass(frozen=True)
class RerankRequest:
    model: ModelCard
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


def parse_rerank(body: bytes, models: Mapping[str, ModelCard], *, max_documents: int) -> RerankRequest:
    payload = json_object(body)
    model = model_card(payload.get("model", ""), models)
    if model.spec.task != "rerank":
        raise RequestError(400, f"{model.name} is a {model.spec.task} model, not a reranker: POST /v1/embeddings, or "
                                "name a reranker", param="model")
    query, documents = payload.get("query"), payload.get("documents")
    if not isinstance(query, str):
        raise RequestError(400, "'query' must be a string", param="query")
    if not isinstance(documents, list) or not documents:
        raise RequestError(400, "'documents' must be a non-empty list of strings", param="documents")
    if len(documents) > max_documents:
        raise RequestError(400, f"{len(documents)} documents in one request; the limit is {max_documents}: split the "
                                "request", param="documents")
    for i, document in enumerate(documents):
        if not isinstance(document, str):
            # Cohere's older {"text": ...} documents are not taken: one shape, and the message says it.
            raise RequestError(400, f"documents[{i}] is not a string: send each document's text", param="documents")
    top_n = payload.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise RequestError(400, "'top_n' must be a positive integer", param="top_n")
    return_documents = payload.get("return_documents", False)
    if not isinstance(return_documents, bool):
        raise RequestError(400, "'return_documents' must be true or false", param="return_documents")
    return RerankRequest(model, query, documents, top_n, return_documents)


def rerank_body(request: RerankRequest, scores: np.ndarray, tokens: int) -> bytes:
    order = np.argsort(-scores, kind="stable")[: request.top_n]
    results = [{"index": int(i), "relevance_score": float(scores[i]),
                **({"document": {"text": request.documents[i]}} if request.return_documents else {})} for i in order]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "rerank", "model": request.model.name, "results": results, "usage": usage})


def sparse_body(vectors: SparseVectors, model: str, tokens: int, truncated: int) -> bytes:
    data = [{"object": "embedding", "index": i,
             "embedding": {"indices": vectors.row(i)[0], "values": vectors.row(i)[1]}} for i in range(len(vectors))]
    return _list_body(data, model, tokens, truncated)


def multi_vector_body(rows: list[np.ndarray], model: str, tokens: int, truncated: int) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": np.ascontiguousarray(row, dtype=np.float32)}
            for i, row in enumerate(rows)]
    return _list_body(data, model, tokens, truncated)


def _list_body(data: list, model: str, tokens: int, truncated: int) -> bytes:
    usage = {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": truncated}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage}, option=orjson.OPT_SERIALIZE_NUMPY)
