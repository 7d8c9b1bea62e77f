"""BM25 term weights as sparse vectors, computed on CPU: no model, no weights, no device actor.

The terms and weights are those of fastembed's `Qdrant/bm25`, so a collection indexed here can be queried
with fastembed's query vectors and the other way round: a word is a run of Unicode word characters of the
lower-cased text, English stop words are dropped, the rest go through the Snowball English stemmer, and a
stem's index is |MurmurHash3-32(stem, seed 0)| (signed). A document term's value is its saturated term
frequency tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc_len / avg_len)), doc_len counting the words kept;
a query term's value is 1.0, once per distinct term.

The inverse document frequency is the search engine's part, as it depends on the indexed corpus:
- Qdrant: give the sparse vector `"modifier": "idf"` in the collection's `sparse_vectors` config
  (qdrant-client: `SparseVectorParams(modifier=Modifier.IDF)`). At query time it multiplies each query
  term by idf = ln(1 + (N - n + 0.5) / (n + 0.5)), N the points with this vector and n those holding the
  term, so the dot product with a document is that document's BM25 score.
- An engine with a plain sparse dot product: count n per index over the indexed corpus and multiply the
  query values by the same idf before searching.

`avg_len` is the corpus's mean doc_len (words kept, not distinct terms). fastembed's 256 suits long
passages; a corpus of sentences should state its own, or document length barely counts.
"""

from __future__ import annotations

import re
import unicodedata

import mmh3
import numpy as np
from py_rust_stemmers import SnowballStemmer

from actors.sparse import SparseVectors
from actors.tokenize import RowError, check_text

# fastembed lower-cases, turns every non-word character into a space and splits: the words are exactly
# the runs of \w in the lower-cased text, found here in one pass of a compiled pattern.
_WORD = re.compile(r"\w+")

# fastembed's token_max_length: longer runs are hashes, ids or base64, not words worth a term.
MAX_WORD_CHARS = 40

# NLTK's English stop list, the one Qdrant/bm25 ships as english.txt (and Chroma's BM25 copies), so doc
# lengths and terms match fastembed's. It is written out here rather than read from a library so that an
# upgrade cannot change the vectors of an index already built. Its 26 forms with an apostrophe ("don't")
# are left out: a word never holds one, and their pieces ("don", "t") are in the list.
# scikit-learn's ENGLISH_STOP_WORDS was not taken: it also drops content words ("fire", "system", "two").
STOP_WORDS = frozenset("""
    a about above after again against ain all am an and any are aren as at be because been before being below
    between both but by can couldn d did didn do does doesn doing don down during each few for from further
    had hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it
    its itself just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or
    other our ours ourselves out over own re s same shan she should shouldn so some such t than that the
    their theirs them themselves then there these they this those through to too under until up ve very was
    wasn we were weren what when where which while who whom why will with won wouldn y you your yours
    yourself yourselves
""".split())

# |hash| of a signed 32-bit hash spans 0 .. 2**31; Arrow's and SparseVectors' int32 indices stop one short,
# so the one stem in 2**32 that hashes to -2**31 shares the top index.
_MAX_INDEX = np.iinfo(np.int32).max


def _is_term(word: str) -> bool:
    """fastembed's filters: no stop word, no over-long run, and no lone connector ("_" and its kin are word
    characters, but fastembed drops a token that is one Unicode punctuation character)."""
    return word not in STOP_WORDS and len(word) <= MAX_WORD_CHARS and not (
        len(word) == 1 and unicodedata.category(word) == "Pc")


class BM25:
    """Documents and queries to BM25 sparse vectors (see the module docstring for the IDF)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, avg_len: float = 256.0, language: str = "english") -> None:
        if language != "english":
            raise ValueError(f"BM25 language {language!r}: only 'english' is supported (its stop list is the one here)")
        if k1 < 0 or not 0 <= b <= 1 or avg_len <= 0:
            raise ValueError(f"BM25 needs k1 >= 0, 0 <= b <= 1 and avg_len > 0; got k1={k1}, b={b}, avg_len={avg_len}")
        self.k1, self.b, self.avg_len = k1, b, avg_len
        # The stemmer fastembed uses. PyStemmer 3 (Snowball 3.0) stems differently ("adding" to "add", not
        # "ad"; "international" to "internat", not "intern"), 7 of STS-B's 4,694 words, and would miss them.
        self._stemmer = SnowballStemmer(language)

    def embed_documents(self, texts: list) -> tuple[SparseVectors, list[RowError]]:
        """One vector per input, in order: each term's saturated frequency. Bad rows are empty, with a reason."""
        rows, ids, tf, doc_len, errors = self._count(texts)
        norm = self.k1 * (1 - self.b + self.b * doc_len[rows] / self.avg_len)
        return SparseVectors.from_coordinates(len(texts), rows, ids, tf * (self.k1 + 1) / (tf + norm)), errors

    def embed_queries(self, texts: list) -> tuple[SparseVectors, list[RowError]]:
        """One vector per input, in order: 1.0 for each distinct term. Bad rows are empty, with a reason."""
        rows, ids, _, _, errors = self._count(texts)
        return SparseVectors.from_coordinates(len(texts), rows, ids, np.ones(len(ids), dtype=np.float32)), errors

    def _count(self, texts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[RowError]]:
        """(row, term id, tf) for each distinct term of each row, sorted by row then id; each row's doc_len;
        the bad rows. A row of stop words only is no error: it is an empty vector."""
        words: list[str] = []
        words_per_row = np.zeros(len(texts), dtype=np.int64)
        errors: list[RowError] = []
        for i, value in enumerate(texts):
            text, reason = check_text(value)
            if reason:
                errors.append(RowError(i, reason))
                continue
            found = _WORD.findall(text.lower())
            words_per_row[i] = len(found)
            words.extend(found)
        # Each distinct word of the batch is filtered, stemmed (one batch call) and hashed once; words
        # then map to term ids by one dict lookup each. -1 marks a word that gives no term.
        distinct = list(filter(_is_term, dict.fromkeys(words)))
        term_of = dict.fromkeys(words, -1)
        term_of.update(zip(distinct, (abs(mmh3.hash(stem)) for stem in self._stemmer.stem_words(distinct))))
        ids = np.fromiter(map(term_of.__getitem__, words), dtype=np.int64, count=len(words))
        kept = ids >= 0
        rows = np.repeat(np.arange(len(texts)), words_per_row)[kept]
        # One sort counts every (row, id) pair: the key orders by row, then id (ids fit in 31 bits). Two stems
        # of a row with one id (h and -h, or a true collision: rare at 2**31 ids) count as one term, as the
        # engine's IDF, kept per id, sees them; fastembed keeps the weight of the later stem instead.
        keys, tf = np.unique(rows << 31 | np.minimum(ids[kept], _MAX_INDEX), return_counts=True)
        doc_len = np.bincount(rows, minlength=len(texts))
        return keys >> 31, keys & _MAX_INDEX, tf, doc_len, errors
