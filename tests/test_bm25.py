"""BM25 sparse vectors as a caller sees them: the formula's weights, the terms (stems, stop words, case,
hashed ids), bad rows, and retrieval with the IDF computed as Qdrant's `idf` modifier does."""

import mmh3
import numpy as np
import pytest

from actors.bm25 import BM25
from actors.sparse import SparseVectors


def term_id(stem: str) -> int:
    return abs(mmh3.hash(stem))


def as_dict(vectors: SparseVectors, row: int) -> dict[int, float]:
    indices, values = vectors.row(row)
    return dict(zip(indices.tolist(), values.tolist()))


def bm25_scores(docs: SparseVectors, queries: SparseVectors) -> np.ndarray:
    """[queries, docs] scores as Qdrant gives them with `modifier: idf`: each query term times
    ln(1 + (N - n + 0.5) / (n + 0.5)), N the documents and n those holding the term, dotted with the document."""
    vocab = np.unique(docs.indices)

    def dense(vectors: SparseVectors) -> np.ndarray:
        rows = np.repeat(np.arange(len(vectors)), np.diff(vectors.offsets))
        known = np.isin(vectors.indices, vocab)  # a query term no document holds scores nothing
        matrix = np.zeros((len(vectors), len(vocab)), dtype=np.float64)
        matrix[rows[known], np.searchsorted(vocab, vectors.indices[known])] = vectors.values[known]
        return matrix

    d = dense(docs)
    n = (d > 0).sum(axis=0)
    idf = np.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
    return dense(queries) @ (d * idf).T


def test_document_weights_equal_the_formula():
    text = "The cat sat on the mat, and the cat slept."
    # Kept after stop words (the, on, and): cat sat mat cat slept, so doc_len 5; cat twice.
    doc_len, k1, b, avg_len = 5, 1.2, 0.75, 256.0
    norm = k1 * (1 - b + b * doc_len / avg_len)
    vectors, errors = BM25().embed_documents([text])
    assert errors == []
    assert as_dict(vectors, 0) == pytest.approx({
        term_id("cat"): 2 * (k1 + 1) / (2 + norm),
        term_id("sat"): 1 * (k1 + 1) / (1 + norm),
        term_id("mat"): 1 * (k1 + 1) / (1 + norm),
        term_id("slept"): 1 * (k1 + 1) / (1 + norm),
    }, rel=1e-6)


def test_parameters_change_the_weights_as_the_formula_says():
    # k1 = 2, b = 0.5, avg_len = 4, doc_len 5: norm = 2 * (0.5 + 0.5 * 5 / 4) = 2.25.
    vectors, _ = BM25(k1=2.0, b=0.5, avg_len=4.0).embed_documents(["cat sat mat cat slept"])
    weights = as_dict(vectors, 0)
    assert weights[term_id("cat")] == pytest.approx(2 * 3 / (2 + 2.25), rel=1e-6)
    assert weights[term_id("mat")] == pytest.approx(3 / (1 + 2.25), rel=1e-6)
    # A longer document gives the same term count less weight (length normalisation).
    longer, _ = BM25(k1=2.0, b=0.5, avg_len=4.0).embed_documents(["cat sat mat cat slept " + "dog " * 10])
    assert as_dict(longer, 0)[term_id("cat")] < weights[term_id("cat")]


def test_stemming_merges_running_runs_run():
    vectors, _ = BM25().embed_documents(["running runs run"])
    norm = 1.2 * (0.25 + 0.75 * 3 / 256)
    assert as_dict(vectors, 0) == pytest.approx({term_id("run"): 3 * 2.2 / (3 + norm)}, rel=1e-6)
    queries, _ = BM25().embed_queries(["Running", "runs", "run"])
    assert [as_dict(queries, i) for i in range(3)] == [{term_id("run"): 1.0}] * 3


def test_stop_words_are_dropped_and_a_row_of_them_is_an_empty_vector():
    vectors, errors = BM25().embed_documents(["the cat", "To be, or not to be!", "Don't you?"])
    assert errors == []
    assert list(as_dict(vectors, 0)) == [term_id("cat")]
    assert np.diff(vectors.offsets).tolist() == [1, 0, 0]


def test_case_does_not_matter():
    vectors, _ = BM25().embed_documents(["Cat SAT", "cat sat", "CAT Sat"])
    assert as_dict(vectors, 0) == as_dict(vectors, 1) == as_dict(vectors, 2)


def test_term_ids_are_stable_known_values():
    # |MurmurHash3-32| of the stem, as fastembed's Qdrant/bm25: these must never change under an index.
    queries, _ = BM25().embed_queries(["run", "cats"])
    assert queries.indices.tolist() == [243905464, 1751422759]


def test_layout_indices_ascending_int32_values_float32_one_row_per_input():
    texts = ["zebra apple mango apple", "the sky above the port", "a b c d e f g h i j k"]
    for vectors, _ in (BM25().embed_documents(texts), BM25().embed_queries(texts)):
        assert len(vectors) == 3
        assert vectors.indices.dtype == np.int32 and vectors.values.dtype == np.float32
        for i in range(3):
            indices, _ = vectors.row(i)
            assert np.all(np.diff(indices) > 0) and np.all(indices >= 0)


def test_query_terms_weigh_one_each_however_often_they_occur():
    queries, _ = BM25().embed_queries(["apple apple apple pie"])
    assert as_dict(queries, 0) == {term_id("appl"): 1.0, term_id("pie"): 1.0}


def test_bad_rows_are_errors_at_their_index_with_empty_rows():
    texts = [None, "a cat", 42, "", "dogs"]
    for vectors, errors in (BM25().embed_documents(texts), BM25().embed_queries(texts)):
        assert [e.index for e in errors] == [0, 2, 3]
        assert errors[0].reason.startswith("null") and errors[1].reason == "not text: got int"
        assert errors[2].reason.startswith("empty")
        assert np.diff(vectors.offsets).tolist() == [0, 1, 0, 0, 1]
        assert list(as_dict(vectors, 1)) == [term_id("cat")] and list(as_dict(vectors, 4)) == [term_id("dog")]


def test_a_person_s_mistakes_are_refused():
    with pytest.raises(ValueError, match="only 'english'"):
        BM25(language="french")
    with pytest.raises(ValueError, match="avg_len"):
        BM25(avg_len=0)


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A recipe for apple pie with cinnamon and butter.",
    "Stock markets fell sharply as investors feared rising interest rates.",
    "The telescope captured images of a distant spiral galaxy.",
    "Running shoes for marathon runners and trail runs.",
    "Python is a programming language for data science.",
    "The orchestra played a symphony by Beethoven.",
    "Heavy rain caused flooding in the river valley.",
    "Bake the bread in a hot oven until golden.",
    "The football team won the championship final.",
]


@pytest.mark.parametrize(("query", "expected"), [
    ("galaxies seen through telescopes", 3),
    ("apple pie recipe", 1),
    ("why are the stock markets falling?", 2),
    ("shoes for running a marathon", 4),
    ("programming in Python", 5),
    ("floods in a valley", 7),
    ("baking bread", 8),
    ("who won the final?", 9),
])
def test_bm25_ranks_the_matching_document_first(query, expected):
    model = BM25(avg_len=5.6)  # the corpus's mean words kept after stop words
    docs, _ = model.embed_documents(CORPUS)
    queries, _ = model.embed_queries([query])
    scores = bm25_scores(docs, queries)[0]
    assert int(np.argmax(scores)) == expected
    assert np.sort(scores)[-2] < scores[expected]  # first alone, not tied


def test_rarer_terms_weigh_more_through_the_idf():
    docs, _ = BM25(avg_len=3.0).embed_documents(["red car", "red bike", "red bus", "blue car"])
    queries, _ = BM25().embed_queries(["red car", "blue car"])
    scores = bm25_scores(docs, queries)
    assert int(np.argmax(scores[0])) == 0 and int(np.argmax(scores[1])) == 3
    # "blue" is in one document, "red" in three: the match on blue scores higher.
    assert scores[1, 3] > scores[0, 0]


def test_sts_b_paired_sentence_ranks_in_the_top_5(sts_test):
    """Each first sentence as a query against the 1,379 second sentences: its own pair should be near the top."""
    model = BM25(avg_len=5.9)  # the second sentences keep 5.87 words on average after stop words
    docs, doc_errors = model.embed_documents(sts_test.second)
    queries, query_errors = model.embed_queries(sts_test.first)
    assert doc_errors == [] and query_errors == []
    scores = bm25_scores(docs, queries)
    own = np.diag(scores)
    # Ties count against the pair: its rank is the number of other sentences scoring at least as much.
    rank = (scores >= own[:, None]).sum(axis=1) - 1
    recall_at_5 = float(np.mean((rank < 5) & (own > 0)))
    # Measured 0.690 (0.743 with ties in the pair's favour); 9% of the pairs share no term at all.
    assert recall_at_5 >= 0.65, recall_at_5
