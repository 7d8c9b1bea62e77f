"""The benchmarks' two text sets, measured apart because they stress an engine differently.

"short": STS-B sentences (~14 tokens: per-batch overhead and padding dominate).
"long": passages of consecutive STS-B sentences joined until they reach a length drawn evenly from
PASSAGE_TOKENS by the model's own tokenizer: ~240 tokens after all-MiniLM-L6-v2's 256-token cap, which about
half of them reach (the shape of a corpus of abstracts; the GEMMs dominate).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The data sits in shared/ beside the checkout; RAYEMBED_STSB points elsewhere (bench/gpu.py's prepared copy).
STSB = Path(os.environ.get("RAYEMBED_STSB", ROOT.parent / "shared" / "data" / "stsbenchmark"))
PASSAGE_TOKENS = (192, 320)
# Passage k starts at sentence k * STRIDE (mod the count): neighbouring passages overlap little, and as
# STRIDE shares no factor with the sentence count (5,758), every start is used before any repeats.
STRIDE = 7


def stsb_sentences(folder: Path = STSB) -> list[str]:
    """The STS-B test and dev sentences, in file order (tab-separated, no quoting: split on tabs)."""
    sentences = []
    for split in ("sts-test.csv", "sts-dev.csv"):
        for line in (folder / split).read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            sentences += [fields[5], fields[6]]
    return sentences


def text_sets(n_long: int, n_short: int, tokenizer_file: Path, folder: Path = STSB) -> dict[str, list[str]]:
    """{"long": n_long passages, "short": n_short sentences}, the same on every run and machine."""
    sentences = stsb_sentences(folder)
    return {
        "long": passages(sentences, content_tokens(sentences, tokenizer_file), n_long),
        "short": [sentences[i % len(sentences)] for i in range(n_short)],
    }


def content_tokens(sentences: list[str], tokenizer_file: Path) -> np.ndarray:
    """Tokens per sentence without special tokens, truncation or padding (tokenizer.json may carry its own)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return np.array([len(e.ids) for e in tokenizer.encode_batch(sentences, add_special_tokens=False)])


def passages(sentences: list[str], lengths: np.ndarray, n: int) -> list[str]:
    """n passages, each the fewest consecutive sentences (wrapping past the end) that reach its length
    with [CLS] and [SEP] counted."""
    low, high = PASSAGE_TOKENS
    total = len(sentences)
    ends = np.cumsum(np.concatenate([lengths, lengths]))  # twice over, so a passage can wrap
    out = []
    for k in range(n):
        start = (k * STRIDE) % total
        before = ends[start - 1] if start else 0
        # 37 and the range's width share no factor: lengths walk the whole range before repeating.
        length = low + (k * 37) % (high - low + 1)
        stop = int(np.searchsorted(ends, before + length - 2)) + 1
        out.append(" ".join(sentences[i % total] for i in range(start, stop)))
    return out
