"""The CPU stages around the device actors: read + tokenise (or read + decode images) before, write after.

Each is a plain function Ray Data runs as tasks on Arrow blocks, so they scale with the cluster's
CPUs and run ahead of the device actors, which only see token ids.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors import images
from actors.blocks import (
    BOOKKEEPING,
    ERROR,
    IMAGE_SOURCE,
    INPUT,
    KEY,
    PIXELS,
    ROW,
    ROWS,
    TOKENS,
    TRUNCATED,
    pack_pixels,
    pack_tokens,
    require,
)
from actors.catalog import ModelSpec
from actors.devices import Backend, Precision
from actors.embedder import settle
from actors.errors import UserError
from actors.model_files import PREPROCESSOR_FILE
from actors.storage import read_bytes
from actors.tokenize import Tokenizer
from jobs.config import JobConfig
from jobs.sinks import OutputFolder
from jobs.sources import LINE_ERROR, read_table

ERROR_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("input", pa.string()), ("row", pa.int64())])


@functools.lru_cache(maxsize=4)
def _tokenizer(spec: ModelSpec, backend: Backend, precision: Precision) -> Tokenizer:
    return Tokenizer(spec, settle(spec, backend, precision, "cpu")[2])


def missing_columns(columns: list[str], config: JobConfig) -> list[str]:
    return [c for c in (config.id_column, config.image_column or config.text_column, *config.keep) if c not in columns]


def read_and_tokenize(files: pa.Table, config: JobConfig) -> Iterator[pa.Table]:
    """For each input file: blocks of rows with token ids (or, for images, their sources), and a
    reason for every bad row."""
    tokenizer = _tokenizer(config.model, config.backend, config.precision)
    for path, key, fmt in zip(files["path"].to_pylist(), files["key"].to_pylist(), files["format"].to_pylist()):
        table = read_table(path, config.text_column, fmt)
        if LINE_ERROR not in table.column_names:
            missing = missing_columns(table.column_names, config)
            if missing:
                raise UserError(f"{path} has no column {missing}; its columns are {table.column_names}")
        for start in range(0, table.num_rows, config.rows_per_part):
            chunk = table.slice(start, config.rows_per_part)
            if config.image_column:
                yield _image_chunk(chunk, config, path, key, start, table.num_rows)
            else:
                yield _tokenize_chunk(chunk, tokenizer, config, path, key, start, table.num_rows)


def _image_chunk(chunk: pa.Table, config: JobConfig, path: str, key: str, start: int, total: int) -> pa.Table:
    n = chunk.num_rows
    ids, sources = _column(chunk, config.id_column), _column(chunk, config.image_column)
    errors = np.full(n, None, dtype=object)
    errors[pc.is_null(sources).to_numpy(zero_copy_only=False)] = "no image"
    errors[pc.is_null(ids).to_numpy(zero_copy_only=False)] = "null id"
    return pa.table({
        **_row_columns(chunk, config, path, key, start, total),
        IMAGE_SOURCE: sources,
        TRUNCATED: pa.array(np.zeros(n, dtype=bool)),
        ERROR: pa.array(errors, pa.string()),
    })


def _row_columns(chunk: pa.Table, config: JobConfig, path: str, key: str, start: int, total: int) -> dict[str, pa.Array]:
    """Where each row came from (input, key, row number, the input's row count), its id and kept columns."""
    n = chunk.num_rows
    return {
        KEY: pa.repeat(pa.scalar(key, pa.string()), n),
        INPUT: pa.repeat(pa.scalar(path, pa.string()), n),
        ROW: pa.array(np.arange(start, start + n, dtype=np.int64)),
        ROWS: pa.array(np.full(n, total, dtype=np.int64)),
        "id": _column(chunk, config.id_column),
        **{c: _column(chunk, c) for c in config.keep},
    }


def decode_images(block: pa.Table, spec: ModelSpec, backend: Backend, precision: Precision) -> pa.Table:
    """Read (bytes, a local path or s3://), decode, resize and crop each image: uint8 pixels for the
    device, or a reason in `error` for an image that can't be had."""
    require(block, (IMAGE_SOURCE, ERROR), "image decoding")
    config = _image_config(spec, backend, precision)
    errors = block[ERROR].to_pylist()
    blobs = []
    for i, source in enumerate(block[IMAGE_SOURCE].to_pylist()):
        if errors[i] is None and isinstance(source, str):
            try:
                source = read_bytes(source)
            except OSError as e:
                errors[i], source = f"cannot read {source}: {e}", None
        blobs.append(source if errors[i] is None else None)
    wanted = [i for i, e in enumerate(errors) if e is None]
    pixels, rows, bad = images.prepare([blobs[i] for i in wanted], config)
    for j, reason in bad:
        errors[wanted[j]] = reason
    column = pack_pixels(pixels, np.asarray(wanted, dtype=np.int64)[rows], block.num_rows)
    out = block.drop_columns([IMAGE_SOURCE, ERROR])
    return out.append_column(PIXELS, column).append_column(ERROR, pa.array(errors, pa.string()))


@functools.lru_cache(maxsize=4)
def _image_config(spec: ModelSpec, backend: Backend, precision: Precision) -> images.ImageConfig:
    return images.ImageConfig.from_file(settle(spec, backend, precision, "cpu")[2] / PREPROCESSOR_FILE)


def _tokenize_chunk(chunk: pa.Table, tokenizer: Tokenizer, config: JobConfig, path: str, key: str, start: int, total: int) -> pa.Table:
    n = chunk.num_rows
    texts = _column(chunk, config.text_column).to_pylist()
    tokenized = tokenizer.encode(texts, config.prompt_used[1])
    errors = np.full(n, None, dtype=object)
    for e in tokenized.errors:
        errors[e.index] = e.reason
    ids = _column(chunk, config.id_column)
    errors[pc.is_null(ids).to_numpy(zero_copy_only=False) & (errors == None)] = "null id"  # noqa: E711
    if LINE_ERROR in chunk.column_names:
        line_errors = chunk[LINE_ERROR].to_numpy(zero_copy_only=False)
        errors[line_errors != None] = line_errors[line_errors != None]  # noqa: E711
    truncated = np.zeros(n, dtype=bool)
    truncated[tokenized.rows] = tokenized.tokens.truncated
    columns = {
        **_row_columns(chunk, config, path, key, start, total),
        TOKENS: pack_tokens(tokenized.tokens, tokenized.rows, n),
        TRUNCATED: pa.array(truncated),
        ERROR: pa.array(errors, pa.string()),
    }
    return pa.table(columns)


def _column(table: pa.Table, name: str) -> pa.Array:
    if name in table.column_names:
        return table[name].combine_chunks()
    return pa.nulls(table.num_rows)  # only in files read line by line, where every line was bad


def write_parts(block: pa.Table, output: str, metadata: dict[bytes, bytes]) -> pa.Table:
    """Write the block's rows, one file per run of consecutive rows of one input: vectors to the
    output, bad rows to _errors/. Ray Data batches regardless of input files, so a block may hold
    several inputs' rows; names come from the rows, so a retried block rewrites the same files."""
    require(block, (KEY, ROW, ROWS, INPUT, "id", ERROR, TRUNCATED), "the writer")
    folder = OutputFolder(output)
    block = block.sort_by([(KEY, "ascending"), (ROW, "ascending")])
    keys = block[KEY].to_numpy(zero_copy_only=False)
    rows = block[ROW].to_numpy()
    # A run ends where the input changes or a row number is skipped.
    breaks = np.flatnonzero((keys[1:] != keys[:-1]) | (rows[1:] != rows[:-1] + 1)) + 1
    written = []
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(block)]):
        run = block.slice(lo, hi - lo)
        bad = pc.is_valid(run[ERROR])
        good_rows, bad_rows = run.filter(pc.invert(bad)), run.filter(bad)
        vectors = good_rows.drop_columns(list(BOOKKEEPING)).replace_schema_metadata(metadata)
        errors = pa.table(
            [pc.cast(bad_rows["id"], pa.string()), bad_rows[ERROR], bad_rows[INPUT], bad_rows[ROW]], schema=ERROR_SCHEMA
        )
        folder.write(str(keys[lo]), int(rows[lo]), int(rows[hi - 1]) + 1, int(run[ROWS][0].as_py()), vectors, errors)
        written.append({"embedded": good_rows.num_rows, "errors": bad_rows.num_rows,
                        "truncated": int(pc.sum(good_rows[TRUNCATED]).as_py() or 0)})
    return pa.Table.from_pylist(written)
