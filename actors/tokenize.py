"""Text to token ids with `tokenizers` (Rust, batch encode), and the row checks that go with it.

Token ids travel as one flat array plus offsets, the layout of an Arrow list column: a pipeline
stage hands them to the next one without a copy or a Python list per row.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers

from actors.errors import UserError
from actors.model_files import TOKENIZER_FILE
from actors.spec import ModelSpec, Truncate

# Texts longer than this are refused, not truncated: tokenising megabytes to keep 256 tokens wastes
# CPU that the device is waiting on. Over-long ordinary text is truncated to the model's max tokens.
MAX_CHARS = 1_000_000


@dataclass(frozen=True)
class RowError:
    """A row that could not be embedded: its position in the caller's input, and why."""

    index: int
    reason: str
    tokens: int | None = None  # a text refused for its length (truncate NONE): how many tokens it has


@dataclass(frozen=True)
class Tokens:
    """Token ids of n rows: row i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray  # int32, flat
    offsets: np.ndarray  # int64, n + 1
    truncated: np.ndarray  # bool, n: the row was cut to the model's max tokens

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, rows: np.ndarray, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) for these rows, padded to the longest of them (int32), on the
        right or, for decoder models whose tokenizer says so, on the left."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        positions = np.arange(width)[None, :]
        start = (width - lengths)[:, None] if left else np.zeros((len(rows), 1), dtype=np.int64)
        mask = (positions >= start) & (positions < start + lengths[:, None])
        gather = np.where(mask, self.offsets[rows][:, None] + positions - start, 0)
        ids = np.where(mask, self.ids[gather], 0).astype(np.int32, copy=False)
        return ids, mask.astype(np.int32)

    def take(self, rows: np.ndarray) -> Tokens:
        """These rows only, in this order (one gather, no loop per row)."""
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Tokens(self.ids[positions], offsets, self.truncated[rows])

    @classmethod
    def concat(cls, parts: list[Tokens]) -> Tokens:
        """Several token sets as one, in order (requests joined into one engine batch)."""
        shifts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + shift for p, shift in zip(parts, shifts)])
        return cls(np.concatenate([p.ids for p in parts]), offsets.astype(np.int64), np.concatenate([p.truncated for p in parts]))

    def to_arrow(self) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.ids))

    @classmethod
    def from_arrow(cls, column: pa.Array | pa.ChunkedArray, truncated: np.ndarray | None = None) -> Tokens:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        offsets = column.offsets.to_numpy().astype(np.int64)
        ids = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]].astype(np.int32, copy=False)
        offsets = offsets - offsets[0]
        if truncated is None:
            truncated = np.zeros(len(offsets) - 1, dtype=bool)
        return cls(ids=ids, offsets=offsets, truncated=truncated)


@dataclass(frozen=True)
class Tokenized:
    """The result of tokenising a list of inputs: tokens for the good rows, reasons for the rest."""

    tokens: Tokens
    rows: np.ndarray  # int64: the input index of each tokenised row
    errors: list[RowError]


def load_tokenizer(folder: Path, trust_remote_code: bool = False) -> HFTokenizer:
    """The folder's tokenizer as transformers (and so sentence-transformers) reads it: where
    tokenizer_config.json is there, its settings (the class's own normaliser, the BOS/EOS a decoder
    model adds) are applied to tokenizer.json. A folder with tokenizer.json alone (an export in the
    cache, read by a worker that may have no transformers) is read as it is."""
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        return HFTokenizer.from_str(loaded.backend_tokenizer.to_str())
    return HFTokenizer.from_file(str(folder / TOKENIZER_FILE))


class Tokenizer:
    """The model's tokenizer with its truncation and lower-casing, and no padding (batches pad themselves)."""

    def __init__(self, spec: ModelSpec, folder: Path) -> None:
        self.spec = spec
        self._tok = load_tokenizer(folder, spec.trust_remote_code)
        if spec.lowercase:
            # As sentence-transformers' do_lower_case: a Lowercase before the tokenizer's own normaliser
            # (lower-casing twice changes nothing, so no need to look whether it already does).
            own = self._tok.normalizer
            self._tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), *([own] if own else [])])
        # tokenizer.json files often carry another length (all-MiniLM-L6-v2's says 128, its model 256).
        self._tok.enable_truncation(max_length=spec.max_tokens)
        self._tok.no_padding()
        # A ColBERT model's markers, query filling and limits (actors/colbert.py), read once here.
        self.colbert = None
        if spec.task == "late_interaction":
            from actors.colbert import ColbertSettings  # not at the top: actors/colbert.py builds on this module

            self.colbert = ColbertSettings.from_folder(folder)

    def encode_pairs(self, queries: list, documents: list) -> Tokenized:
        """Token ids of (query, document) pairs, as a cross-encoder reads them (`[CLS] q [SEP] d [SEP]`),
        cut to the model's max tokens from the longer side first (transformers' longest_first)."""
        good: list[tuple[str, str]] = []
        rows: list[int] = []
        errors: list[RowError] = []
        for i, (query, document) in enumerate(zip(queries, documents, strict=True)):
            query, reason = check_text(query)
            document, doc_reason = check_text(document) if not reason else ("", "")
            if reason or doc_reason:
                errors.append(RowError(i, f"query: {reason}" if reason else f"document: {doc_reason}"))
            elif _encodable(query, i, errors) and _encodable(document, i, errors):
                rows.append(i)
                good.append((query, document))
        encodings = self._tok.encode_batch(good, add_special_tokens=True)
        return self._tokenized([e.ids for e in encodings], [bool(e.overflowing) for e in encodings], rows, errors)

    def encode(self, texts: list, prompt: str = "", query: bool = False, truncate: Truncate = "END") -> Tokenized:
        """Token ids of `prompt + text` for each usable text: the prompt's tokens count toward the
        limit and the token counts, as in sentence-transformers. A ColBERT model's rows are its
        queries (`query`) or documents, marked as it marks them, with no prompt; other models ignore `query`."""
        if self.colbert is None:
            return self.encode_plain(texts, prompt, truncate)
        if truncate != "END":
            raise UserError(f"model {self.spec.name!r} is a ColBERT model: its texts are cut at their end (truncate END)")
        from actors.colbert import encode_documents, encode_queries

        if prompt:
            raise UserError(f"model {self.spec.name!r} is a ColBERT model: its [Q] and [D] markers say which side a "
                            "text is, and it takes no prompt")
        return (encode_queries if query else encode_documents)(self, texts, self.colbert)

    def encode_plain(self, texts: list, prompt: str = "", truncate: Truncate = "END") -> Tokenized:
        """`encode` without a task's own marking: the tokenizer's ids, the prompt before each text, an
        over-long text cut or refused as `truncate` says."""
        good: list[str] = []
        rows: list[int] = []
        errors: list[RowError] = []
        for i, text in enumerate(texts):
            text, reason = check_text(text)
            if reason:
                errors.append(RowError(i, reason))
            else:
                rows.append(i)
                good.append(prompt + text)
        # END lets the tokenizer cut; START and NONE encode whole (tokenizers encode a text whole before
        # cutting it anyway), then cut or refuse the over-long rows: one pass either way.
        tok = self._tok if truncate == "END" else self._untruncated
        try:
            encodings = tok.encode_batch(good, add_special_tokens=True)
        except (TypeError, ValueError, UnicodeError):
            # Rare (lone surrogates from a lossy decode): find the bad rows, then encode the rest.
            keep = [j for j, text in enumerate(good) if _encodable(text, rows[j], errors)]
            good, rows = [good[j] for j in keep], [rows[j] for j in keep]
            errors.sort(key=lambda e: e.index)
            encodings = tok.encode_batch(good, add_special_tokens=True)
        if truncate == "END":
            return self._tokenized([e.ids for e in encodings], [bool(e.overflowing) for e in encodings], rows, errors)
        limit = self.spec.max_tokens
        truncated = [len(e) > limit for e in encodings]
        if truncate == "START":
            ids = [self._keep_end(e, len(prompt)) if cut else e.ids for e, cut in zip(encodings, truncated, strict=True)]
            return self._tokenized(ids, truncated, rows, errors)
        for j, (encoding, cut) in enumerate(zip(encodings, truncated, strict=True)):
            if cut:
                errors.append(RowError(rows[j], f"too long: {len(encoding):,} tokens, over {self.spec.name}'s limit of "
                                                f"{limit} (truncate NONE)", tokens=len(encoding)))
        errors.sort(key=lambda e: e.index)
        keep = [j for j, cut in enumerate(truncated) if not cut]
        return self._tokenized([encodings[j].ids for j in keep], [False] * len(keep), [rows[j] for j in keep], errors)

    def tokens_of(self, texts: list[str], prompt: str = "", add_special_tokens: bool = True) -> list[list[dict]]:
        """Each text's tokens, whole (never truncated: the count is the text's real length), as TEI's
        /tokenize gives them: id, text, special, and start/stop, the token's characters in the text
        (None for the prompt's tokens and the special ones, whose text is the token's own)."""
        out = []
        for text, encoding in zip(texts, self._untruncated.encode_batch([prompt + t for t in texts],
                                                                         add_special_tokens=add_special_tokens), strict=True):
            tokens = []
            for token_id, token, special, (start, stop) in zip(encoding.ids, encoding.tokens, encoding.special_tokens_mask,
                                                               encoding.offsets, strict=True):
                inside = not special and start >= len(prompt)
                tokens.append({"id": token_id, "text": text[start - len(prompt) : stop - len(prompt)] if inside else token,
                               "special": bool(special), "start": start - len(prompt) if inside else None,
                               "stop": stop - len(prompt) if inside else None})
            out.append(tokens)
        return out

    @cached_property
    def _untruncated(self) -> HFTokenizer:
        whole = HFTokenizer.from_str(self._tok.to_str())
        whole.no_truncation()
        return whole

    def _keep_end(self, encoding, prompt_chars: int) -> list[int]:
        """An over-long row cut from its start: its leading special tokens and the tokens of its prompt
        (the first `prompt_chars` characters, counted in this encoding: a prompt's last token may join
        the text's first), then as many of its last tokens (the trailing special tokens among them) as
        the model takes. A prompt keeps at most half the model's tokens: it never crowds the text out."""
        ids, special = encoding.ids, encoding.special_tokens_mask  # each read copies the whole row out of Rust
        lead = next((k for k, is_special in enumerate(special) if not is_special), 0)
        head = lead
        # The prompt's tokens only: never a walk over the (long) rest of the row.
        while head < self.spec.max_tokens // 2 and not special[head] and 0 < encoding.token_to_chars(head)[1] <= prompt_chars:
            head += 1
        return ids[:head] + ids[len(ids) - (self.spec.max_tokens - head):]

    @staticmethod
    def _tokenized(ids: list[list[int]], truncated: list[bool], rows: list[int], errors: list[RowError]) -> Tokenized:
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        return Tokenized(Tokens(flat, offsets, np.asarray(truncated, dtype=bool)), np.asarray(rows, dtype=np.int64), errors)


def check_text(value: object) -> tuple[str, str]:
    """(text, "") for a usable row, ("", reason) for one that must go to the errors output."""
    if value is None:
        return "", "null: no text"
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return "", f"undecodable: not UTF-8 ({e.reason} at byte {e.start})"
    if not isinstance(value, str):
        return "", f"not text: got {type(value).__name__}"
    if len(value) > MAX_CHARS:
        return "", f"too long: {len(value):,} characters (limit {MAX_CHARS:,}); split it into passages"
    if not value.strip():
        return "", "empty: no text to embed"
    return value, ""


def unencodable(text: str) -> str:
    """Why the tokenizer cannot take `text` (a lone surrogate from a lossy decode), or ""."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"undecodable: invalid Unicode ({e.reason} at character {e.start})"
    return ""


def _encodable(text: str, index: int, errors: list[RowError]) -> bool:
    reason = unencodable(text)
    if reason:
        errors.append(RowError(index, reason))
    return not reason
