"""The CPU stages around the device actors: read + tokenise (or read + decode images) before, write after.

Each is a plain function Ray Data runs as tasks on Arrow blocks, so they scale with the cluster's
CPUs and run ahead of the device actors, which only see token ids.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from actors import images
from actors.blocks import (
    BOOKKEEPING,
    ERROR,
    IMAGE_SOURCE,
    INDICES,
    INPUT,
    KEY,
    LAST,
    NO_ROWS,
    OFFSET,
    PIXELS,
    ROW,
    SPAN,
    SPAN_END,
    TOKENS,
    TRUNCATED,
    VALUES,
    pack_pixels,
    pack_tokens,
    require,
)
from actors.bm25 import BM25
from actors.catalog import ModelSpec
from actors.devices import Backend, Precision
from actors.embedder import settle
from actors.model_files import PREPROCESSOR_FILE
from actors.storage import read_bytes
from actors.tokenize import Tokenizer
from jobs.config import JobConfig
from jobs.readers import Chunk, describe, read_unit
from jobs.sinks import METADATA_KEY, OutputFolder, Part
from jobs.sources import InputFile, ReadUnit

ERROR_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("input", pa.string()), ("row", pa.int64()),
                          ("byte_offset", pa.int64())])


@functools.lru_cache(maxsize=4)
def _tokenizer(spec: ModelSpec, backend: Backend, precision: Precision) -> Tokenizer:
    return Tokenizer(spec, settle(spec, backend, precision, "cpu")[2])


def needed_columns(config: JobConfig) -> list[str]:
    pair = (config.query_column,) if config.model.task == "rerank" else ()
    return list(dict.fromkeys((config.id_column, *pair, config.image_column or config.text_column, *config.keep)))


def reader_columns(config: JobConfig) -> dict:
    return {"id": config.id_column, "text": config.text_column, "names": config.columns}


def unit_rows(unit: ReadUnit) -> dict:
    """A unit as a row of the job's first dataset (what Ray Data hands each read task)."""
    f = unit.file
    return {"path": f.path, "key": f.key, "format": f.format, "size": f.size, "version": f.version,
            "start": unit.start, "end": unit.end}


def read_and_tokenize(units: pa.Table, config: JobConfig) -> Iterator[pa.Table]:
    """For each unit: blocks of at most rows_per_part rows with token ids (or, for images, their
    sources), a reason for every bad row, and where each row came from."""
    tokenizer = None if config.model.task == "bm25" else _tokenizer(config.model, config.backend, config.precision)
    for u in units.to_pylist():
        unit = ReadUnit(InputFile(u["path"], u["key"], u["format"], u["size"], u["version"]), u["start"], u["end"])
        for chunk in _read(unit, config):
            for piece in chunk.slices(config.rows_per_part):
                piece = piece if piece.table.num_rows or len(piece.errors) else _placeholder(piece)
                if config.image_column:
                    yield _image_chunk(piece, config, unit)
                elif tokenizer is None:
                    yield _bm25_chunk(piece, config, unit)
                else:
                    yield _tokenize_chunk(piece, tokenizer, config, unit)


def _read(unit: ReadUnit, config: JobConfig) -> Iterator[Chunk]:
    """The unit's chunks. If it cannot be read (to the end), the reason goes to the errors output
    at once and the job goes on; the input stays incomplete, and --resume tries it again."""
    at = None
    try:
        for chunk in read_unit(unit, reader_columns(config), needed_columns(config)):
            at = int(chunk.spans[-1])
            yield chunk
    except (OSError, EOFError, ValueError, pa.ArrowException, zlib.error) as e:
        by_bytes = unit.file.format in ("jsonl", "json", "tsv")
        where = at if at is not None else unit.start
        row = pa.table([[None], [describe(e)], [unit.file.path], [None if by_bytes else at], [where if by_bytes else None]],
                       schema=ERROR_SCHEMA)
        OutputFolder(config.output).write_failure(unit.file.key, unit.start, row)


def _placeholder(piece: Chunk) -> Chunk:
    """A row standing for a stretch of the input without rows (blocks.NO_ROWS)."""
    return Chunk(pa.table({"_": pa.nulls(1)}).select([]), piece.spans[:1], piece.spans, np.array([NO_ROWS], object),
                 piece.by_bytes, piece.ends_file)


def _image_chunk(piece: Chunk, config: JobConfig, unit: ReadUnit) -> pa.Table:
    n = piece.table.num_rows
    ids, errors = _row_columns(piece, config, unit)
    sources = _column(piece.table, config.image_column)
    missing = pc.is_null(sources).to_numpy(zero_copy_only=False) & (errors == None)  # noqa: E711
    errors[missing] = "no image"
    return pa.table({
        **ids,
        IMAGE_SOURCE: sources,
        TRUNCATED: pa.array(np.zeros(n, dtype=bool)),
        ERROR: pa.array(errors, pa.string()),
    })


def _row_columns(piece: Chunk, config: JobConfig, unit: ReadUnit) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Where each row came from, its id (as text) and kept columns; and the reasons found so far."""
    n = piece.table.num_rows
    ids, id_errors = id_strings(_column(piece.table, config.id_column))
    errors = piece.errors.copy()
    unexplained = errors == None  # noqa: E711
    errors[unexplained & (id_errors != None)] = id_errors[unexplained & (id_errors != None)]  # noqa: E711
    positions = pa.array(piece.positions.astype(np.int64))
    nulls = pa.nulls(n, pa.int64())
    last = np.zeros(n, dtype=bool)
    last[-1:] = piece.ends_file
    return {
        KEY: pa.repeat(pa.scalar(unit.file.key, pa.string()), n),
        INPUT: pa.repeat(pa.scalar(unit.file.path, pa.string()), n),
        ROW: nulls if piece.by_bytes else positions,
        OFFSET: positions if piece.by_bytes else nulls,
        SPAN: pa.array(piece.spans[:-1].astype(np.int64)),
        SPAN_END: pa.array(piece.spans[1:].astype(np.int64)),
        LAST: pa.array(last),
        "id": ids,
        **{c: _column(piece.table, c) for c in config.keep},
    }, errors


def id_strings(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Ids as text, whatever the input holds: strings as they are, other values as their JSON text
    (`7`, `{"doc":1}`), so every output part has one id type. Binary ids must be UTF-8; null ids
    and ids that are not are reasons."""
    n = len(column)
    kind = column.type
    reasons = np.full(n, None, dtype=object)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = column.cast(pa.string())
    elif pa.types.is_null(kind):
        text = pa.nulls(n, pa.string())
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        text = column.cast(pa.string())
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        values = []
        for i, v in enumerate(column.to_pylist()):
            try:
                values.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(None)
                reasons[i] = f"id is not UTF-8: {v[:40]!r}"
        text = pa.array(values, pa.string())
    else:
        text = pa.array([None if v is None else orjson.dumps(v, default=str).decode() for v in column.to_pylist()],
                        pa.string())
    nulls = pc.is_null(text).to_numpy(zero_copy_only=False) & (reasons == None)  # noqa: E711
    reasons[nulls] = "null id"
    return text, reasons


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


def _tokenize_chunk(piece: Chunk, tokenizer: Tokenizer, config: JobConfig, unit: ReadUnit) -> pa.Table:
    n = piece.table.num_rows
    columns, errors = _row_columns(piece, config, unit)
    texts = _column(piece.table, config.text_column).to_pylist()
    if config.model.task == "rerank":
        tokenized = tokenizer.encode_pairs(_column(piece.table, config.query_column).to_pylist(), texts)
    else:  # `query` only matters to ColBERT, which tokenises queries otherwise than documents
        # Over-long texts are cut as --truncate says; with NONE they come back as errors giving their token counts.
        tokenized = tokenizer.encode(texts, config.prompt_used[1], query=config.input_type == "query",
                                     truncate=config.truncate)
    for e in tokenized.errors:
        if errors[e.index] is None:
            errors[e.index] = e.reason
    truncated = np.zeros(n, dtype=bool)
    truncated[tokenized.rows] = tokenized.tokens.truncated
    return pa.table({
        **columns,
        TOKENS: pack_tokens(tokenized.tokens, tokenized.rows, n),
        TRUNCATED: pa.array(truncated),
        ERROR: pa.array(errors, pa.string()),
    })


@functools.lru_cache(maxsize=1)
def _bm25() -> BM25:
    return BM25()


def _bm25_chunk(piece: Chunk, config: JobConfig, unit: ReadUnit) -> pa.Table:
    """BM25 needs no device: its sparse vectors are made here, in the read task, and go to the writer."""
    columns, errors = _row_columns(piece, config, unit)
    texts = _column(piece.table, config.text_column).to_pylist()
    bm25 = _bm25()
    vectors, bad = (bm25.embed_queries if config.input_type == "query" else bm25.embed_documents)(texts)
    for e in bad:
        if errors[e.index] is None:
            errors[e.index] = e.reason
    indices, values = vectors.to_arrow()
    return pa.table({**columns, INDICES: indices, VALUES: values,
                     TRUNCATED: pa.array(np.zeros(len(texts), dtype=bool)), ERROR: pa.array(errors, pa.string())})


def _column(table: pa.Table, name: str) -> pa.Array:
    if name in table.column_names:
        return table[name].combine_chunks()
    return pa.nulls(table.num_rows)  # only in files read line by line, where every line was bad


def write_parts(block: pa.Table, output: str, model: dict, inputs: dict[str, dict]) -> pa.Table:
    """Stage the block's rows, one part per run of consecutive rows of one input: vectors, and bad
    rows in _errors/. Ray Data batches regardless of inputs, so a block may hold several inputs'
    rows; parts are named by the positions they cover, so a retried block rewrites its rows under
    names the commit can reconcile (jobs/sinks.py)."""
    require(block, (KEY, INPUT, ROW, OFFSET, SPAN, SPAN_END, LAST, "id", ERROR, TRUNCATED), "the writer")
    folder = OutputFolder(output)
    block = block.sort_by([(KEY, "ascending"), (SPAN, "ascending")])
    keys = block[KEY].to_numpy(zero_copy_only=False)
    starts, ends = block[SPAN].to_numpy(), block[SPAN_END].to_numpy()
    # A run ends where the input changes or a span does not follow on from the one before.
    breaks = np.flatnonzero((keys[1:] != keys[:-1]) | (starts[1:] != ends[:-1])) + 1
    written = []
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(block)]):
        run = block.slice(lo, hi - lo)
        key = str(keys[lo])
        metadata = {METADATA_KEY: json.dumps({**model, "input": inputs[key]}).encode()}
        placeholder = pc.fill_null(pc.equal(run[ERROR], NO_ROWS), False)
        bad = pc.and_(pc.is_valid(run[ERROR]), pc.invert(placeholder))
        good_rows, bad_rows = run.filter(pc.invert(pc.is_valid(run[ERROR]))), run.filter(bad)
        vectors = good_rows.drop_columns(list(BOOKKEEPING)).replace_schema_metadata(metadata)
        errors = pa.table([bad_rows["id"], bad_rows[ERROR], bad_rows[INPUT], bad_rows[ROW], bad_rows[OFFSET]],
                          schema=ERROR_SCHEMA).replace_schema_metadata(metadata)
        part = Part.named(key, int(starts[lo]), int(ends[hi - 1]), bool(run[LAST][-1].as_py()))
        folder.write(part, vectors, errors)
        written.append({"embedded": good_rows.num_rows, "errors": bad_rows.num_rows,
                        "truncated": int(pc.sum(good_rows[TRUNCATED]).as_py() or 0)})
    return pa.Table.from_pylist(written)
