"""Late interaction (ColBERT): one normalised vector per token, scored by MaxSim.

The rules are those of Stanford's colbert-ai (`colbert/modeling/colbert.py`, `tokenization/*.py`),
for folders laid out as `colbert-ir/colbertv2.0`: a transformers encoder (config.json + weights, the
weights also holding the projection `linear.weight`, no bias) and ColBERT's settings in
`artifact.metadata`.

- A query is `[CLS] [Q] tokens [SEP]`, cut to query_maxlen, then filled to exactly query_maxlen with
  [MASK] ("query augmentation"). The [MASK]s are not attended to (unless attend_to_mask_tokens) but
  their vectors are kept: they are most of what the query is scored with.
- A document is `[CLS] [D] tokens [SEP]`, cut to doc_maxlen; the vectors of punctuation
  (mask_punctuation) and padding are dropped.
- A vector is normalize(linear(last_hidden_state)); MaxSim(q, d) = sum over q's vectors of the
  largest dot product with d's.

[Q] and [D] are the tokens the settings name ([unused0] and [unused1] in BERT's vocabulary), put
after [CLS]; the cut keeps the closing [SEP], as the tokenizer's own truncation does.

This file imports without torch (tokens, scores and MUVERA run in ONNX workers); `ColbertHead`, a
torch module, is made on first use.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from actors.errors import NotFound, UserError
from actors.model_files import METADATA_FILE, ONNX_FILE, TOKENIZER_FILE, WEIGHT_FILES
from actors.tokenize import Tokenized, Tokenizer, Tokens, load_tokenizer

PROJECTION = "linear.weight"
# colbert-ai's defaults (colbert/infra/config/settings.py), for keys an artifact.metadata leaves out.
DEFAULTS = {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": 32, "doc_maxlen": 220,
            "dim": 128, "mask_punctuation": True, "attend_to_mask_tokens": False, "similarity": "cosine",
            "interaction": "colbert"}


@dataclass(frozen=True)
class ColbertSettings:
    """A ColBERT model's settings, with the token ids they name resolved in its tokenizer. Small and
    frozen: read once where the folder is, then sent to the workers that need it."""

    query_maxlen: int
    doc_maxlen: int
    dim: int
    mask_punctuation: bool
    attend_to_mask_tokens: bool
    query_marker_id: int
    doc_marker_id: int
    mask_id: int
    pad_id: int
    # The first token of each ASCII punctuation character, as colbert-ai's skiplist.
    punctuation_ids: tuple[int, ...]

    @classmethod
    def from_folder(cls, folder: Path) -> ColbertSettings:
        folder = Path(folder)
        missing = missing_files(folder)
        if missing:
            raise NotFound(f"{folder} is not a ColBERT folder (as colbert-ir/colbertv2.0): it has no {', no '.join(missing)}")
        meta = metadata_settings(json.loads((folder / METADATA_FILE).read_text()))
        if meta["similarity"] != "cosine" or meta["interaction"] != "colbert":
            # l2 similarity and "flipr" interaction score differently from MaxSim over dot products.
            raise UserError(f"{folder}/{METADATA_FILE}: similarity {meta['similarity']!r} and interaction "
                            f"{meta['interaction']!r}; rayembed scores ColBERT's default, cosine and colbert")
        if min(meta["query_maxlen"], meta["doc_maxlen"]) < 3:
            raise UserError(f"{folder}/{METADATA_FILE}: query_maxlen and doc_maxlen must leave room for [CLS], a marker and [SEP]")
        tokenizer = load_tokenizer(folder)

        def token_id(token: str, what: str) -> int:
            found = tokenizer.token_to_id(token)
            if found is None:
                raise UserError(f"{folder}: its tokenizer has no {token!r} ({what})")
            return found

        punctuation = tokenizer.encode_batch(list(string.punctuation), add_special_tokens=False)
        return cls(
            query_maxlen=int(meta["query_maxlen"]), doc_maxlen=int(meta["doc_maxlen"]), dim=int(meta["dim"]),
            mask_punctuation=bool(meta["mask_punctuation"]), attend_to_mask_tokens=bool(meta["attend_to_mask_tokens"]),
            query_marker_id=token_id(meta["query_token_id"], "query_token_id, the query marker"),
            doc_marker_id=token_id(meta["doc_token_id"], "doc_token_id, the document marker"),
            mask_id=token_id(_special_token(folder, "mask_token", "[MASK]"), "the mask token queries are filled with"),
            pad_id=token_id(_special_token(folder, "pad_token", "[PAD]"), "the pad token"),
            punctuation_ids=tuple(sorted({e.ids[0] for e in punctuation if e.ids})),
        )

    @property
    def max_tokens(self) -> int:
        """The fewest tokens the model's Tokenizer must keep: the longer side's limit less its marker."""
        return tokens_needed(self.query_maxlen, self.doc_maxlen)


def metadata_settings(meta: dict) -> dict:
    """artifact.metadata's settings, colbert-ai's defaults for the keys it leaves out."""
    return {**DEFAULTS, **meta.get("config", meta)}  # older checkpoints nest the settings under "config"


def tokens_needed(query_maxlen: int, doc_maxlen: int) -> int:
    """ColbertSettings.max_tokens from the two limits alone (what a folder's spec is given, actors/st_folder.py)."""
    return max(query_maxlen, doc_maxlen) - 1


def missing_files(folder: Path) -> list[str]:
    """What a ColBERT folder lacks: ColBERT's settings, a tokenizer, and config.json + weights, or
    the graph exported from them (a cache entry: actors/model_files.py model_files)."""
    missing = [] if (folder / METADATA_FILE).is_file() else [f"{METADATA_FILE} (ColBERT's settings)"]
    if not (folder / TOKENIZER_FILE).is_file() and not (folder / "tokenizer_config.json").is_file():
        missing.append(f"{TOKENIZER_FILE} or tokenizer_config.json")
    if (folder / ONNX_FILE).is_file():
        return missing
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        missing.append(f"{' or '.join(WEIGHT_FILES)} (the encoder and {PROJECTION})")
    return missing


def _special_token(folder: Path, key: str, default: str) -> str:
    """A special token's text as transformers' files name it (a string, or an AddedToken's dict)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
        if value:
            return value["content"] if isinstance(value, dict) else value
    return default


# Tokens ---------------------------------------------------------------------------------------------


def encode_queries(tokenizer: Tokenizer, texts: list, settings: ColbertSettings) -> Tokenized:
    """Queries as ColBERT reads them, each exactly query_maxlen tokens; unusable texts in `errors`."""
    tokenized = _tokenize(tokenizer, texts, settings)
    marked = _mark(tokenized.tokens, settings.query_marker_id, settings.query_maxlen, fill=settings.mask_id)
    return Tokenized(marked, tokenized.rows, tokenized.errors)


def encode_documents(tokenizer: Tokenizer, texts: list, settings: ColbertSettings) -> Tokenized:
    """Documents as ColBERT reads them, at most doc_maxlen tokens; unusable texts in `errors`."""
    tokenized = _tokenize(tokenizer, texts, settings)
    return Tokenized(_mark(tokenized.tokens, settings.doc_marker_id, settings.doc_maxlen), tokenized.rows, tokenized.errors)


def _tokenize(tokenizer: Tokenizer, texts: list, settings: ColbertSettings) -> Tokenized:
    if tokenizer.spec.max_tokens < settings.max_tokens:
        # A shorter cut in the tokenizer would drop tokens ColBERT keeps, silently.
        raise UserError(f"model {tokenizer.spec.name!r}: max_tokens {tokenizer.spec.max_tokens} is below "
                        f"{settings.max_tokens}, the longest ColBERT row less its marker")
    return tokenizer.encode_plain(texts)


def _mark(tokens: Tokens, marker: int, maxlen: int, fill: int | None = None) -> Tokens:
    """`[CLS] marker rest` cut to maxlen keeping the last token ([SEP]); with `fill`, every row is
    filled to maxlen with it. One gather over a [rows, width] grid."""
    lengths = tokens.lengths
    kept = np.minimum(lengths + 1, maxlen)
    width = maxlen if fill is not None else int(kept.max(initial=0))
    position = np.arange(width)[None, :]
    last = kept[:, None] - 1
    # Position p holds the token at p - 1 (the marker took position 1); the last kept position holds
    # the row's last token, which is the same token unless the row was cut.
    source = np.where(position == last, lengths[:, None] - 1, np.maximum(position - 1, 0))
    real = position < kept[:, None]
    grid = np.where(position == 1, marker, tokens.ids[np.where(real, tokens.offsets[:-1, None] + source, 0)])
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    if fill is not None:
        ids = np.where(real, grid, fill).ravel()
        offsets[1:] = np.arange(1, len(kept) + 1) * maxlen
    else:
        ids = grid[real]
        np.cumsum(kept, out=offsets[1:])
    return Tokens(ids.astype(np.int32, copy=False), offsets, tokens.truncated | (lengths + 1 > maxlen))


def skiplist_mask(ids: np.ndarray, settings: ColbertSettings) -> np.ndarray:
    """True where a document token's vector is kept (colbert-ai's `mask`): not padding, and not
    punctuation where the model masks it."""
    skip = [settings.pad_id, *(settings.punctuation_ids if settings.mask_punctuation else ())]
    return ~np.isin(ids, skip)


def query_inputs(tokens: Tokens, rows: np.ndarray, settings: ColbertSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, keep), int32 [rows, query_maxlen], for these rows of encode_queries'
    tokens. The [MASK]s filling a query are not attended to unless the model says so, but are kept."""
    ids, real = tokens.padded(rows)
    attention = real
    if not settings.attend_to_mask_tokens:
        # The filling is the run of [MASK] after the last other token ([SEP]); a [MASK] the text
        # itself holds stays attended, as in colbert-ai, which marks the filling before adding it.
        last = np.where(ids != settings.mask_id, np.arange(ids.shape[1]), -1).max(axis=1, keepdims=True)
        attention = real * (np.arange(ids.shape[1]) <= last)
    return ids, attention.astype(np.int32), real


def document_inputs(tokens: Tokens, rows: np.ndarray, settings: ColbertSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, keep), int32 [rows, longest], for these rows of encode_documents'
    tokens: padding and punctuation are attended to as any token but not kept."""
    ids, real = tokens.padded(rows)
    return ids, real, (real.astype(bool) & skiplist_mask(ids, settings)).astype(np.int32)


# Vectors and scores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiVectors:
    """n rows of token vectors: row i is vectors[offsets[i]:offsets[i+1]], the layout of an Arrow
    list<fixed_size_list<float32>[dim]> column."""

    vectors: np.ndarray  # float32 [tokens, dim]
    offsets: np.ndarray  # int64 [n + 1]

    @classmethod
    def from_padded(cls, vectors: np.ndarray, keep: np.ndarray) -> MultiVectors:
        """The kept tokens of a [rows, seq, dim] batch (what the head or the graph gives), in order."""
        keep = keep.astype(bool)
        offsets = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
        return cls(np.ascontiguousarray(vectors[keep], dtype=np.float32), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    def to_arrow(self) -> pa.ListArray:
        tokens = pa.FixedSizeListArray.from_arrays(pa.array(self.vectors.ravel(), pa.float32()), self.vectors.shape[1])
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), tokens)


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """ColBERT's score: for each query vector the largest dot product with a document vector, summed.
    The document's vectors are its kept ones only: a zeroed one would count as a similarity of 0."""
    return float((query @ document.T).max(axis=1).sum())


def maxsim_many(query: np.ndarray, documents: MultiVectors) -> np.ndarray:
    """maxsim of one query against each document, float32 [n]: one matrix product and a segmented max."""
    lengths = np.diff(documents.offsets)
    if (lengths == 0).any():
        # reduceat gives the next segment's first row for an empty one, not an error.
        raise ValueError(f"documents {np.flatnonzero(lengths == 0).tolist()} have no vectors to score")
    similarities = documents.vectors @ query.T  # [tokens, query tokens]
    return np.maximum.reduceat(similarities, documents.offsets[:-1], axis=0).sum(axis=1)


class Muvera:
    """MUVERA's fixed-dimensional encodings (Dhulipala et al. 2024): one vector per row whose dot
    products approximate MaxSim, so an ordinary vector index can find candidates for MaxSim to rerank.

    Each of `repetitions` SimHashes (`k_sim` random hyperplanes) splits the space into 2^k_sim parts;
    a part holds the sum of a query's vectors in it, or the mean of a document's (an empty part takes
    the first vector of the nearest non-empty part by Hamming distance), projected to `dim_proj` by a
    random ±1 matrix. The random draws and the fill rule are fastembed's (`postprocess/muvera.py`,
    binary part ids, no final projection), so the same seed gives its encodings.
    """

    def __init__(self, dim: int, k_sim: int = 5, dim_proj: int = 16, repetitions: int = 20, seed: int = 42) -> None:
        if dim_proj > dim:
            raise UserError(f"MUVERA projects to at most the vectors' width ({dim}), not {dim_proj}")
        self.dim, self.k_sim, self.dim_proj = dim, k_sim, dim_proj
        rng = np.random.default_rng(seed)
        self.hyperplanes = np.stack([rng.normal(size=(dim, k_sim)) for _ in range(repetitions)])  # [r, dim, k]
        self.projections = rng.choice([-1, 1], size=(repetitions, dim, dim_proj))  # [r, dim, dim_proj]
        # Bits differing between every two part ids [parts, parts]: how near an empty part is to the others.
        ids = np.arange(2**k_sim)
        self.hamming = (((ids[:, None] ^ ids[None, :])[..., None] >> np.arange(k_sim)) & 1).sum(axis=-1)

    @property
    def output_dim(self) -> int:
        return len(self.hyperplanes) * 2**self.k_sim * self.dim_proj

    def encode_query(self, vectors: np.ndarray) -> np.ndarray:
        return self._encode(vectors, document=False)

    def encode_document(self, vectors: np.ndarray) -> np.ndarray:
        return self._encode(vectors, document=True)

    def _encode(self, vectors: np.ndarray, document: bool) -> np.ndarray:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or not len(vectors):
            raise ValueError(f"MUVERA encodes [tokens >= 1, {self.dim}] vectors, got {vectors.shape}")
        vectors = vectors.astype(np.float64)
        parts = 2**self.k_sim
        part = (np.einsum("nd,rdk->rnk", vectors, self.hyperplanes) > 0) @ (1 << np.arange(self.k_sim))  # [r, n]
        member = part[:, :, None] == np.arange(parts)  # [r, n, parts]
        centers = np.einsum("rnp,nd->rpd", member.astype(np.float64), vectors)
        if document:
            counts = member.sum(axis=1)  # [r, parts]
            centers /= np.maximum(counts, 1)[..., None]
            empty = counts == 0
            nearest = np.where(empty[:, None, :], self.k_sim + 1, self.hamming[None]).argmin(axis=2)  # [r, parts]
            first = np.where(member, np.arange(len(vectors))[None, :, None], len(vectors)).min(axis=1)  # [r, parts]
            fill = vectors[np.take_along_axis(first, nearest, axis=1)]  # [r, parts, dim]
            centers = np.where(empty[..., None], fill, centers)
        if self.dim_proj < self.dim:
            centers = centers @ self.projections / np.sqrt(self.dim_proj)
        return centers.reshape(-1).astype(np.float32)


# The head and the graph -----------------------------------------------------------------------------


def __getattr__(name: str):
    # ColbertHead is made on first use: it is a torch module, and the rest of this file runs without torch.
    if name == "ColbertHead":
        return _head_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _head_class():
    import torch

    from actors.pooling import l2_normalize

    class ColbertHead(torch.nn.Module):
        """Token vectors [rows, seq, hidden] and which to keep [rows, seq] -> normalize(linear(x)),
        zero where not kept, float32 [rows, seq, dim]. Which vectors are kept is its own input, not the
        attention mask: a query's [MASK] filling is kept though not attended to."""

        def __init__(self, folder: Path, settings: ColbertSettings) -> None:
            super().__init__()
            weight = _projection(Path(folder))
            if weight.shape[0] != settings.dim:
                raise UserError(f"{folder}: {PROJECTION} projects to {weight.shape[0]}, its {METADATA_FILE} says dim {settings.dim}")
            self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            self.linear.load_state_dict({"weight": weight.float()})

        def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            vectors = l2_normalize(self.linear(hidden.float()))
            return vectors * keep.unsqueeze(-1).to(vectors.dtype)

    ColbertHead.__qualname__ = "ColbertHead"  # so pickle (and Ray) find it by name, through __getattr__
    return ColbertHead


def _projection(folder: Path):
    """`linear.weight` from the folder's weights, where colbert-ai saves it beside the encoder's."""
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            if PROJECTION in f.keys():
                return f.get_tensor(PROJECTION)
    elif (folder / "pytorch_model.bin").is_file():
        import torch

        weight = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True).get(PROJECTION)
        if weight is not None:
            return weight
    raise NotFound(f"{folder}: its weights have no {PROJECTION} (ColBERT's projection to its token vectors)")


def export_colbert(source: Path, out: Path, settings: ColbertSettings) -> None:
    """`out/model.onnx`: int32 input_ids, attention_mask and keep [rows, seq] -> float32 token vectors
    [rows, seq, dim], the encoder and ColbertHead in one graph (opset 17), for queries and documents."""
    import warnings

    import torch
    from transformers import AutoModel

    from actors.export import OPSET

    # AutoModel reads the encoder out of colbert-ai's weights (their "bert." prefix is its own) and
    # leaves linear.weight to the head.
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    head = _head_class()(source, settings).eval()

    class Colbert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.head = model, head  # submodules, so the exporter sees weights as weights

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            # No token_type_ids: colbert-ai passes none, so all tokens are segment 0.
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.head(hidden, keep)

    example = tuple(torch.ones((2, 8), dtype=torch.int32) for _ in range(3))
    axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "keep", "embeddings")}
    # As export._export: the TorchScript exporter, its tracer's warnings on transformers' mask code
    # silenced (the graph is checked against transformers across shapes in the tests).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Colbert().eval(), example, str(out / ONNX_FILE), input_names=["input_ids", "attention_mask", "keep"],
                          output_names=["embeddings"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
