"""The Embedder as a caller sees it: order, bad rows, truncation, dimensions, batching."""

import numpy as np
import pytest

from actors.batching import pack_by_tokens
from rayembed import Embedder, Tokens, UserError


def test_vectors_come_back_in_input_order(fp32_embedder, sts_test):
    texts = sts_test.first[:64]
    # Mixed lengths force the length sort to reorder rows inside the engine.
    texts = [t * (1 + i % 7) for i, t in enumerate(texts)]
    together = fp32_embedder.embed(texts)
    one_by_one = np.vstack([fp32_embedder.embed([t]) for t in texts])
    assert together.dtype == np.float32 and together.shape == (64, 384)
    assert np.allclose(together, one_by_one, atol=1e-5)


def test_bad_rows_are_reported_and_good_rows_still_embedded(fp32_embedder):
    texts = ["a good sentence", None, "", "   ", 42, b"\xff\xfe not utf-8", "another good one", "x\udcff"]
    result = fp32_embedder.embed_rows(texts)
    assert result.rows.tolist() == [0, 6]
    assert np.allclose(result.vectors, fp32_embedder.embed(["a good sentence", "another good one"]), atol=1e-6)
    reasons = {e.index: e.reason for e in result.errors}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 7]
    assert reasons[1].startswith("null")
    assert reasons[2].startswith("empty") and reasons[3].startswith("empty")
    assert reasons[4] == "not text: got int"
    assert reasons[5].startswith("undecodable: not UTF-8")
    assert reasons[7].startswith("undecodable: invalid Unicode")


def test_embed_names_the_bad_rows(fp32_embedder):
    with pytest.raises(ValueError, match=r"2 of 3 inputs cannot be embedded: row 0: null.*row 2: empty"):
        fp32_embedder.embed([None, "fine", ""])


def test_utf8_bytes_are_text(fp32_embedder):
    assert np.allclose(fp32_embedder.embed([b"caf\xc3\xa9"]), fp32_embedder.embed(["café"]), atol=1e-6)


def test_long_text_is_truncated_not_rejected(fp32_embedder):
    long = "the quick brown fox jumps over the lazy dog " * 200
    result = fp32_embedder.embed_rows([long, "short"])
    assert result.rows.tolist() == [0, 1]
    assert result.truncated == 1
    assert result.tokens == 256 + len(fp32_embedder.tokenize(["short"]).tokens.ids)
    # Truncation keeps the head: the vector equals the one for its first 256 tokens.
    head = fp32_embedder.tokenize([long]).tokens
    assert np.allclose(result.vectors[0], fp32_embedder.embed_tokens(head)[0], atol=1e-6)


def test_huge_text_is_rejected_with_a_reason(fp32_embedder):
    result = fp32_embedder.embed_rows(["x " * 600_000])
    assert result.rows.size == 0 and result.errors[0].reason.startswith("too long")


def test_dimensions_truncate_and_renormalise_where_the_model_declares_matryoshka_sizes(fp32_embedder):
    # all-MiniLM-L6-v2 was not trained for shorter vectors: `dimensions` is refused, naming the model...
    with pytest.raises(ValueError, match="model 'sentence-transformers/all-MiniLM-L6-v2' declares no Matryoshka dimensions"):
        fp32_embedder.embed(["x"], dimensions=64)
    # ...unless the user's properties say it was.
    said = Embedder({"name": "all-MiniLM-L6-v2", "matryoshka_dims": [64]}, precision="fp32", device="cpu")
    full = said.embed(["matryoshka dolls"])
    short = said.embed(["matryoshka dolls"], dimensions=64)
    assert short.shape == (1, 64)
    assert np.isclose(np.linalg.norm(short), 1.0, atol=1e-6)
    assert np.allclose(short, full[:, :64] / np.linalg.norm(full[:, :64]), atol=1e-6)
    with pytest.raises(ValueError, match="between 64 and 384"):
        said.embed(["x"], dimensions=1000)


def test_tokenise_in_one_place_embed_in_another(fp32_embedder):
    texts = ["tokenised on a CPU worker", "embedded on the device"]
    tokenized = fp32_embedder.tokenize(texts)
    # Through Arrow, as a Ray Data block carries them between stages.
    tokens = Tokens.from_arrow(tokenized.tokens.to_arrow())
    assert np.allclose(fp32_embedder.embed_tokens(tokens), fp32_embedder.embed(texts), atol=1e-6)


def test_empty_input_gives_an_empty_matrix(fp32_embedder):
    assert fp32_embedder.embed([]).shape == (0, 384)


def test_small_token_budget_gives_the_same_vectors(fp32_embedder, sts_test):
    texts = sts_test.second[:40]
    small = Embedder("all-MiniLM-L6-v2", precision="fp32", device="cpu", device_batch_tokens=64)
    assert np.allclose(small.embed(texts), fp32_embedder.embed(texts), atol=1e-5)
    assert small.stats.batches > 5


def test_batches_cover_every_row_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(1, 300, size=1000)
    batches = pack_by_tokens(lengths, budget=2048, max_rows=64)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000))
    for batch in batches:
        assert len(batch) <= 64
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 2048


def test_stats_count_what_was_done(sts_test):
    embedder = Embedder("all-MiniLM-L6-v2", precision="fp32", device="cpu")
    tokenized = embedder.tokenize(sts_test.first[:100])
    embedder.embed_tokens(tokenized.tokens)
    assert embedder.stats.rows == 100
    assert embedder.stats.tokens == len(tokenized.tokens.ids)
    assert embedder.stats.padded_tokens >= embedder.stats.tokens
    assert embedder.stats.batches >= 1 and embedder.stats.seconds > 0


def test_each_embedding_type_is_sentence_transformers_quantize_embeddings(fp32_embedder, tmp_path):
    from sentence_transformers.util.quantization import quantize_embeddings

    from actors.quantize import EMBEDDING_TYPES, Ranges, quantize

    rng = np.random.default_rng(17)
    vectors = rng.normal(size=(300, 100)).astype(np.float32)  # 100: not a multiple of 8, bits are padded
    vectors[0, :10] = 0.0  # zero is not > 0: a 0 bit, as sentence-transformers packs it
    ranges = Ranges(np.vstack((vectors[:200].min(0), vectors[:200].max(0))), "test")
    for kind in EMBEDDING_TYPES:
        expected = quantize_embeddings(vectors, "float32" if kind == "float" else kind, ranges=ranges.values)
        got = quantize(vectors, kind, ranges)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), kind  # values outside the ranges too
    # A calibration set in config: its texts' vectors' ranges, as quantize_embeddings computes them.
    texts = [f"calibration sentence number {i} about topic {i % 7}" for i in range(120)]
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    from_texts = Ranges.load(fp32_embedder.spec, str(tmp_path / "texts.txt"))  # in fp32 on the CPU, as fp32_embedder
    floats = fp32_embedder.embed(texts[:5])
    assert np.array_equal(quantize(floats, "int8", from_texts),
                          quantize_embeddings(floats, "int8", calibration_embeddings=fp32_embedder.embed(texts)))
    assert from_texts.source.endswith("texts.txt (120 texts)")
    assert Ranges.load(fp32_embedder.spec).source == "catalogue: all-MiniLM-L6-v2.npy"


def test_a_clip_model_takes_calibration_ranges_not_texts(random_clip, tmp_path):
    from actors.catalog import CATALOG
    from actors.quantize import Ranges

    (tmp_path / "texts.txt").write_text("\n".join(f"a photo of thing {i}" for i in range(120)))
    with pytest.raises(UserError, match="embeds images and texts into different ranges; give a .npy"):
        Ranges.load(CATALOG.resolve(random_clip["spec"]), str(tmp_path / "texts.txt"))


def test_truncate_start_and_none(fp32_embedder):
    long = "first words here " + " ".join(f"t{i}" for i in range(400)) + " the very end"
    end = fp32_embedder.tokenize(["short", long])
    start = fp32_embedder.tokenize(["short", long], truncate="START")
    refused = fp32_embedder.tokenize(["short", long, "short again"], truncate="NONE")
    whole = [t["id"] for t in fp32_embedder.tokenizer.tokens_of([long])[0]]
    row = slice(int(start.tokens.offsets[1]), int(start.tokens.offsets[2]))
    assert start.tokens.ids[row].tolist() == whole[:1] + whole[-255:] and start.tokens.truncated.tolist() == [False, True]
    assert end.tokens.ids[row].tolist() == whole[:255] + whole[-1:]
    assert refused.rows.tolist() == [0, 2] and [(e.index, e.tokens) for e in refused.errors] == [(1, len(whole))]
    assert f"too long: {len(whole):,} tokens" in refused.errors[0].reason
    # With a prompt, START keeps it: [CLS], the prompt's tokens, then the text's last tokens.
    prompted = fp32_embedder.tokenizer.encode([long], "query: ", truncate="START").tokens.ids.tolist()
    prompt = [t["id"] for t in fp32_embedder.tokenizer.tokens_of(["query:"], add_special_tokens=False)[0]]
    assert len(prompt) == 2 and prompted == whole[:1] + prompt + whole[-253:]
