"""Sparse (SPLADE, BM25) and reranking models in the online app, over real Serve HTTP: `/v1/rerank`
as Cohere, Jina, vLLM and infinity share it, and sparse vectors from `/v1/embeddings`."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import post_json
from openai import OpenAI

from serve_apps.openai_api import build_app

SPLADE, RERANKER, BM25 = "splade", "random-reranker", "Qdrant/bm25"


@pytest.fixture(scope="module")
def tasks_url(ray_cluster, unused_port, splade_folder, random_cross_encoder):
    from ray import serve

    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    models = [{"model": {"name": SPLADE, "model_location": str(splade_folder), "task": "sparse"}, "precision": "fp32"},
              {"model": {"name": RERANKER, "model_location": str(random_cross_encoder[0])}, "precision": "fp32"},
              {"model": BM25}]
    serve.run(build_app({"models": models, "max_inputs_per_request": 64}), name="tasks", route_prefix="/tasks")
    yield f"http://127.0.0.1:{port}/tasks"
    serve.shutdown()


def test_rerank_scores_equal_cross_encoder_predict_sorted_with_top_n(tasks_url, random_cross_encoder, sts_test):
    _, reference = random_cross_encoder
    query, documents = sts_test.first[0], sts_test.second[:40]
    status, body = post_json(f"{tasks_url}/v1/rerank", {"model": RERANKER, "query": query, "documents": documents})
    assert status == 200 and body["model"] == RERANKER
    want = reference.predict([(query, d) for d in documents])
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert sorted(got) == list(range(40))
    np.testing.assert_allclose([got[i] for i in range(40)], want, atol=1e-4)
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and "document" not in body["results"][0]
    assert body["usage"]["total_tokens"] > 0

    status, top = post_json(f"{tasks_url}/v1/rerank", {"model": RERANKER, "query": query, "documents": documents, "top_n": 3,
                                                  "return_documents": True})
    assert status == 200 and [r["index"] for r in top["results"]] == [r["index"] for r in body["results"][:3]]
    assert all(r["document"] == {"text": documents[r["index"]]} for r in top["results"])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": RERANKER, "query": "q", "documents": []}, "'documents' must be a non-empty list of strings"),
        ({"model": RERANKER, "query": "q", "documents": ["ok", 7]}, "documents[1] is not a string"),
        ({"model": RERANKER, "documents": ["a"]}, "'query' must be a string"),
        ({"model": RERANKER, "query": "q", "documents": ["a"] * 65}, "65 documents in one request; the limit is 64"),
        ({"model": RERANKER, "query": "q", "documents": ["a"], "top_n": 0}, "'top_n' must be a positive integer"),
        ({"model": SPLADE, "query": "q", "documents": ["a"]}, "is a sparse model, not a reranker"),
        ({"model": RERANKER, "query": "q", "documents": [""]}, "documents[0] cannot be scored: document: empty"),
    ],
)
def test_bad_rerank_requests_get_a_4xx_that_says_what_to_fix(tasks_url, body, says):
    status, error = post_json(f"{tasks_url}/v1/rerank", body)
    assert status == 400 and says in error["error"]["message"], error


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": SPLADE, "input": "x", "embedding_types": ["float"]}, "embedding types apply to dense vectors only"),
        ({"model": SPLADE, "input": "x", "encoding_format": "int8"}, "embedding types apply to dense vectors only"),
        ({"model": BM25, "input": "x", "truncate": "START"}, "truncate START applies to embed and sparse models only"),
    ],
)
def test_sparse_models_refuse_what_only_dense_and_truncatable_models_take(tasks_url, body, says):
    status, error = post_json(f"{tasks_url}/v1/embeddings", body)
    assert status == 400 and says in error["error"]["message"], error


def test_splade_embeddings_are_indices_and_values_equal_to_sparse_encoder(tasks_url, splade_reference, sts_test):
    texts = sts_test.first[:50]
    status, body = post_json(f"{tasks_url}/v1/embeddings", {"model": SPLADE, "input": texts})
    assert status == 200
    reference = splade_reference.encode(texts).to_dense().numpy()
    for item in body["data"]:
        want = np.flatnonzero(reference[item["index"]])
        assert item["embedding"]["indices"] == want.tolist()
        np.testing.assert_allclose(item["embedding"]["values"], reference[item["index"]][want], rtol=1e-4, atol=1e-5)


def test_the_openai_client_passes_sparse_embeddings_through(tasks_url):
    client = OpenAI(base_url=f"{tasks_url}/v1", api_key="unused", max_retries=0)
    [item] = client.embeddings.create(model=BM25, input=["Dogs are running in the park"]).data
    sparse = item.embedding if isinstance(item.embedding, dict) else item.model_extra["embedding"]
    assert len(sparse["indices"]) == len(sparse["values"]) == 3  # dog, run, park


def test_bm25_queries_weigh_each_term_once(tasks_url):
    from actors.bm25 import BM25 as Bm25

    status, body = post_json(f"{tasks_url}/v1/embeddings", {"model": BM25, "input": ["running dogs run"], "input_type": "query"})
    want, _ = Bm25().embed_queries(["running dogs run"])
    assert status == 200 and body["data"][0]["embedding"] == {"indices": want.row(0)[0].tolist(), "values": [1.0, 1.0]}
