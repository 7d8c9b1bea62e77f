"""The CPU stages around the device actors: read + tokenise before, write after.

Each is a plain function Ray Data runs as tasks on Arrow blocks, so they scale with the cluster's
CPUs and run ahead of the device actors, which only see token ids.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.catalog import ModelSpec
from actors.device_actor import ERROR_COLUMN, TOKENS_COLUMN, TRUNCATED_COLUMN
from actors.export import model_folder
from actors.model_files import TOKENIZER_FILE
from actors.tokenize import Tokenizer
from jobs.config import JobConfig
from jobs.sinks import OutputFolder
from jobs.sources import LINE_ERROR, read_table

# Bookkeeping columns that travel with each row between stages and are dropped on output.
KEY, ROW, ROWS, INPUT = "__key", "__row", "__rows", "__input"
ERROR_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("input", pa.string()), ("row", pa.int64())])


@functools.lru_cache(maxsize=4)
def _tokenizer(spec: ModelSpec, precision: str) -> Tokenizer:
    return Tokenizer(spec, model_folder(spec, precision) / TOKENIZER_FILE)


def missing_columns(columns: list[str], config: JobConfig) -> list[str]:
    return [c for c in (config.id_column, config.text_column, *config.keep) if c not in columns]


def read_and_tokenize(files: pa.Table, config: JobConfig, precision: str) -> Iterator[pa.Table]:
    """For each input file: blocks of rows with token ids, and a reason for every bad row."""
    tokenizer = _tokenizer(config.model, precision)
    for path, key in zip(files["path"].to_pylist(), files["key"].to_pylist()):
        table = read_table(path, config.text_column)
        if LINE_ERROR not in table.column_names:
            missing = missing_columns(table.column_names, config)
            if missing:
                raise ValueError(f"{path} has no column {missing}; its columns are {table.column_names}")
        for start in range(0, table.num_rows, config.rows_per_part):
            chunk = table.slice(start, config.rows_per_part)
            yield _tokenize_chunk(chunk, tokenizer, config, path, key, start, table.num_rows)


def _tokenize_chunk(chunk: pa.Table, tokenizer: Tokenizer, config: JobConfig, path: str, key: str, start: int, total: int) -> pa.Table:
    n = chunk.num_rows
    texts = _column(chunk, config.text_column).to_pylist()
    tokenized = tokenizer.encode(texts, config.kind)  # type: ignore[arg-type]
    errors = np.full(n, None, dtype=object)
    for e in tokenized.errors:
        errors[e.index] = e.reason
    ids = _column(chunk, config.id_column)
    errors[pc.is_null(ids).to_numpy(zero_copy_only=False) & (errors == None)] = "null id"  # noqa: E711
    if LINE_ERROR in chunk.column_names:
        line_errors = chunk[LINE_ERROR].to_numpy(zero_copy_only=False)
        errors[line_errors != None] = line_errors[line_errors != None]  # noqa: E711
    # Token lists for every row (empty for rows that were not tokenised), as one Arrow list column.
    lengths = np.zeros(n, dtype=np.int64)
    lengths[tokenized.rows] = tokenized.tokens.lengths
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    truncated = np.zeros(n, dtype=bool)
    truncated[tokenized.rows] = tokenized.tokens.truncated
    columns = {
        KEY: pa.array([key] * n, pa.string()),
        INPUT: pa.array([path] * n, pa.string()),
        ROW: pa.array(np.arange(start, start + n, dtype=np.int64)),
        ROWS: pa.array(np.full(n, total, dtype=np.int64)),
        "id": ids,
        **{c: _column(chunk, c) for c in config.keep},
        TOKENS_COLUMN: pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokenized.tokens.ids)),
        TRUNCATED_COLUMN: pa.array(truncated),
        ERROR_COLUMN: pa.array(errors, pa.string()),
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
    folder = OutputFolder(output)
    block = block.sort_by([(KEY, "ascending"), (ROW, "ascending")])
    keys = block[KEY].to_numpy(zero_copy_only=False)
    rows = block[ROW].to_numpy()
    # A run ends where the input changes or a row number is skipped.
    breaks = np.flatnonzero((keys[1:] != keys[:-1]) | (rows[1:] != rows[:-1] + 1)) + 1
    written = []
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(block)]):
        run = block.slice(lo, hi - lo)
        bad = pc.is_valid(run[ERROR_COLUMN])
        good_rows, bad_rows = run.filter(pc.invert(bad)), run.filter(bad)
        vectors = good_rows.drop_columns([KEY, ROW, ROWS, INPUT, TRUNCATED_COLUMN, ERROR_COLUMN]).replace_schema_metadata(metadata)
        errors = pa.table(
            [pc.cast(bad_rows["id"], pa.string()), bad_rows[ERROR_COLUMN], bad_rows[INPUT], bad_rows[ROW]], schema=ERROR_SCHEMA
        )
        folder.write(str(keys[lo]), int(rows[lo]), int(rows[hi - 1]) + 1, int(run[ROWS][0].as_py()), vectors, errors)
        written.append({"embedded": good_rows.num_rows, "errors": bad_rows.num_rows,
                        "truncated": int(pc.sum(good_rows[TRUNCATED_COLUMN]).as_py() or 0)})
    return pa.Table.from_pylist(written)
