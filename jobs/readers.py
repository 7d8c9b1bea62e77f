"""Reading one unit of an input (jobs/sources.py plans them) as a stream of chunks of rows.

Memory per task is bounded by BUFFER_BYTES (plus one over-long line up to MAX_LINE_BYTES): line
files are read in buffers of whole lines, Parquet by row groups in batches, quoted CSV and .gz
through pyarrow's and gzip's streaming readers. Nothing a file holds stops the job: a row that cannot
be parsed is a row with a reason, and a unit that cannot be read at all is one such row.

Every row has a position (its row number, or the byte offset of its line) and a span: spans of a
unit's rows tile the positions the unit covers, so the writer can name each output part by the
positions it holds and a file is complete exactly when its parts tile it (jobs/sinks.py).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from actors import storage
from actors.errors import UserError
from jobs.sources import IMAGES, InputFile, ReadUnit, list_images

BUFFER_BYTES = 8 * 2**20
MAX_LINE_BYTES = 32 * 2**20
# A JSON array cannot be read in pieces; above this it must be written as JSON lines.
MAX_ARRAY_BYTES = 256 * 2**20
PARQUET_BATCH_ROWS = 8192


@dataclass(frozen=True)
class Chunk:
    """Rows of one unit, in file order, with a reason for each row the reader could not parse."""

    table: pa.Table  # the rows' columns as the file has them (None where a row could not be parsed)
    positions: np.ndarray  # int64 [n]: where each row is: its row number, or (by_bytes) its line's byte offset
    spans: np.ndarray  # int64 [n + 1]: row i covers positions spans[i]..spans[i+1]; may hold no rows
    errors: np.ndarray  # object [n]: why a row could not be parsed, else None
    by_bytes: bool
    ends_file: bool  # the last span ends the file

    def slices(self, rows: int) -> Iterator[Chunk]:
        """This chunk in pieces of at most `rows` rows (one piece if it has none)."""
        n = self.table.num_rows
        for lo in range(0, max(n, 1), rows):
            hi = min(lo + rows, n)
            yield Chunk(self.table.slice(lo, hi - lo), self.positions[lo:hi], self.spans[lo:hi + 1] if n else self.spans,
                        self.errors[lo:hi], self.by_bytes, self.ends_file and hi == n)


def read_unit(unit: ReadUnit, columns: dict, needed: list[str]) -> Iterator[Chunk]:
    """The unit's rows. `columns` says how to read text files (`id` and `text`: the id and text
    columns, `names`: a headerless TSV's columns); `needed`: the columns a row must have."""
    fmt = unit.file.format
    if fmt == IMAGES:
        yield from _images(unit)
    elif fmt == "parquet":
        yield from _parquet(unit, needed)
    elif fmt == "csv":
        yield from _csv(unit, columns, needed)
    else:
        yield from _lines(unit, columns, needed)


def _open(unit: ReadUnit):
    fh = storage.open_binary(unit.file.path)
    return gzip.GzipFile(fileobj=fh) if unit.file.compressed else fh


def _no_columns(rows: int) -> pa.Table:
    """A table of `rows` rows and no columns: the rows of a buffer where no line could be parsed."""
    return pa.table({"_": pa.nulls(rows)}).select([])


def _check(names: list[str], needed: list[str], where: str) -> None:
    missing = [c for c in needed if c not in names]
    if missing:
        raise UserError(f"{where} has no column {missing}; its columns are {names}")


# Parquet: row groups of the unit, read in batches of the needed columns only.

def _parquet(unit: ReadUnit, needed: list[str]) -> Iterator[Chunk]:
    with storage.open_binary(unit.file.path) as raw:
        source = pa.BufferReader(gzip.decompress(raw.read())) if unit.file.compressed else raw
        parquet = pq.ParquetFile(source)
        _check(parquet.schema_arrow.names, needed, unit.file.path)
        groups = list(range(unit.start, parquet.num_row_groups if unit.end is None else unit.end))
        position = sum(parquet.metadata.row_group(g).num_rows for g in range(unit.start))
        last = parquet.metadata.num_rows
        if not groups or position == last:
            yield _no_rows(position, position, False, position == last)
            return
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups, columns=needed):
            n = batch.num_rows
            spans = np.arange(position, position + n + 1, dtype=np.int64)
            position += n
            yield Chunk(pa.Table.from_batches([batch]), spans[:-1], spans, np.full(n, None, object), False, position == last)


def _no_rows(start: int, end: int, by_bytes: bool, ends_file: bool) -> Chunk:
    return Chunk(_no_columns(0), np.zeros(0, np.int64), np.array([start, end], np.int64), np.zeros(0, object), by_bytes,
                 ends_file)


# CSV (quoted, so a value may hold a newline): one task per file, through pyarrow's streaming reader.

def _csv(unit: ReadUnit, columns: dict, needed: list[str]) -> Iterator[Chunk]:
    bad: list[str] = []

    def invalid(row) -> str:
        bad.append(f"line {row.number}: {row.actual_columns} fields where the header has {row.expected_columns}")
        return "skip"

    with _open(unit) as fh:
        try:
            reader = pacsv.open_csv(
                fh,
                read_options=pacsv.ReadOptions(block_size=BUFFER_BYTES, use_threads=False),
                parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
                # Types are inferred from the first block and then held: ids as text, so that `7` then
                # `doc-8` is no conversion error half way through a file.
                convert_options=pacsv.ConvertOptions(column_types={columns["text"]: pa.binary(), columns["id"]: pa.string()}),
            )
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                yield _no_rows(0, 0, False, True)
                return
            raise
        _check(reader.schema.names, needed, unit.file.path)
        position = 0
        batches = iter(reader)
        while True:
            batch = next(batches, None)
            table = pa.Table.from_batches([batch]) if batch is not None else reader.schema.empty_table()
            errors = [None] * table.num_rows + bad
            if bad:  # the rows pyarrow skipped, as rows of their own after the batch they were met in
                table = pa.concat_tables([table, pa.table({c: pa.nulls(len(bad), t) for c, t in
                                                           zip(table.schema.names, table.schema.types)})])
                bad.clear()
            n = table.num_rows
            if n:
                spans = np.arange(position, position + n + 1, dtype=np.int64)
                position += n
                yield Chunk(table, spans[:-1], spans, np.array(errors, object), False, batch is None)
            elif batch is None:
                yield _no_rows(position, position, False, True)
            if batch is None:
                return


# JSON lines and TSV: buffers of whole lines; a unit owns the lines that start in its byte range.

@dataclass(frozen=True)
class _Buffer:
    data: bytes  # whole lines, the first starting at `base`; empty for a line skipped as too long
    base: int
    end: int
    ends_file: bool
    too_long: bool = False


def _line_buffers(fh, start: int, end: int | None, size: int | None) -> Iterator[_Buffer]:
    """Buffers of the whole lines that start in [start, end) (end None: to the end of the stream)."""
    position = start
    if start > 0:  # the line under way at `start` belongs to the unit before
        fh.seek(start - 1)
        if fh.read(1) != b"\n":
            position = start + _skip_line(fh)
    pending, yielded = b"", False
    while end is None or position < end:
        data = fh.read(BUFFER_BYTES)
        pending += data
        if not data:
            yield _Buffer(pending, position, position + len(pending), True)
            return
        cut = pending.rfind(b"\n") + 1
        if not cut:
            if len(pending) > MAX_LINE_BYTES:
                skipped = len(pending) + _skip_line(fh)
                yield _Buffer(b"", position, position + skipped, size is not None and position + skipped >= size, True)
                position, pending, yielded = position + skipped, b"", True
            continue
        lines, pending = pending[:cut], pending[cut:]
        if end is not None and position + cut > end:  # keep only the lines that start before `end`
            starts = np.flatnonzero(np.frombuffer(lines, np.uint8) == 10) + 1
            cut = int(starts[np.searchsorted(starts, end - position, side="left")])
            lines = lines[:cut]
        yield _Buffer(lines, position, position + cut, size is not None and position + cut >= size)
        position, yielded = position + cut, True
    if not yielded:  # no line starts in the unit (it lies inside one long line): it holds none
        yield _Buffer(b"", position, position, size is not None and position >= size)


def _skip_line(fh) -> int:
    """Read past the next newline; the bytes read."""
    skipped = 0
    while True:
        data = fh.read(BUFFER_BYTES)
        if not data:
            return skipped
        i = data.find(b"\n")
        if i >= 0:
            fh.seek(fh.tell() - len(data) + i + 1)
            return skipped + i + 1
        skipped += len(data)


def _lines(unit: ReadUnit, columns: dict, needed: list[str]) -> Iterator[Chunk]:
    with _open(unit) as fh:
        size = None if unit.file.compressed else unit.file.size
        head = fh.read(65536)
        fh.seek(0)
        if unit.file.format == "json" and head.lstrip()[:1] == b"[":
            yield _json_array(fh, unit, needed)
            return
        names = _tsv_header(head, columns, needed, unit) if unit.file.format == "tsv" else None
        for buffer in _line_buffers(fh, unit.start, unit.end, size):
            if buffer.too_long:
                yield _unparsed(buffer, f"a line of {buffer.end - buffer.base:,} bytes (limit {MAX_LINE_BYTES:,})")
            elif unit.file.format == "tsv":
                yield _tsv_rows(buffer, names, columns, skip_header=buffer.base == 0 and columns.get("names") is None)
            else:
                yield _json_rows(buffer, columns["text"])


def _unparsed(buffer: _Buffer, reason: str) -> Chunk:
    return Chunk(_no_columns(1), np.array([buffer.base]), np.array([buffer.base, buffer.end]), np.array([reason], object),
                 True, buffer.ends_file)


_BLANK = np.zeros(256, dtype=bool)
_BLANK[[9, 10, 13, 32]] = True  # tab, newline, carriage return, space


def _line_starts(buffer: _Buffer) -> tuple[np.ndarray, np.ndarray]:
    """The byte offset (in the buffer) of every line, and which lines are not blank. Byte-wide masks
    only: a buffer costs a few times its size, never eight (np.isin would widen to int64)."""
    data = np.frombuffer(buffer.data, np.uint8)
    starts = np.r_[0, np.flatnonzero(data == 10) + 1]
    if starts[-1] == len(data):
        starts = starts[:-1]
    filled = np.logical_or.reduceat(~_BLANK[data], starts) if len(starts) else np.zeros(0, dtype=bool)
    return starts, filled


def _line_array(buffer: _Buffer, starts: np.ndarray, filled: np.ndarray) -> pa.Array:
    """The non-blank lines as one binary array, without their line ends."""
    # Over the buffer's bytes, without a copy (a buffer is far below 2 GiB: int32 offsets).
    bounds = np.r_[starts, len(buffer.data)].astype(np.int32)
    lines = pa.BinaryArray.from_buffers(pa.binary(), len(starts), [None, pa.py_buffer(bounds), pa.py_buffer(buffer.data)])
    return pc.replace_substring_regex(lines.filter(pa.array(filled)), pattern="\r?\n$", replacement="")


def _spans(buffer: _Buffer, starts: np.ndarray) -> np.ndarray:
    """Row spans that tile the buffer: the first row's from the buffer's start (blank lines go with the row before)."""
    return np.r_[buffer.base, buffer.base + starts[1:], buffer.end].astype(np.int64) if len(starts) else \
        np.array([buffer.base, buffer.end], np.int64)


def _json_rows(buffer: _Buffer, text: str) -> Chunk:
    every, filled = _line_starts(buffer)
    starts = every[filled]
    positions, spans = buffer.base + starts, _spans(buffer, starts)
    table = None
    try:
        table = pajson.read_json(io.BytesIO(buffer.data), read_options=pajson.ReadOptions(
            use_threads=False, block_size=max(len(buffer.data) + 1, 2**20)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if table is not None and table.num_rows == len(starts):
        return Chunk(table, positions, spans, np.full(len(starts), None, object), True, buffer.ends_file)
    # Bad lines (or a line pyarrow read as two rows): parse line by line, so only those become errors.
    rows, errors = [], []
    for line in _line_array(buffer, every, filled).to_pylist():
        row, reason = _json_line(line)
        value = row.get(text)
        if value is not None and not isinstance(value, str):  # else its column would turn it into JSON text
            row[text], reason = None, reason or f"not text: got {type(value).__name__}"
        rows.append(row)
        errors.append(reason)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.table({k: _array([row.get(k) for row in rows]) for k in keys}) if keys else _no_columns(len(rows))
    return Chunk(table, positions, spans, np.array(errors, object), True, buffer.ends_file)


def _json_line(line: bytes) -> tuple[dict, str | None]:
    try:
        row = orjson.loads(line)  # orjson, unlike json, refuses invalid UTF-8 and lone surrogates
    except orjson.JSONDecodeError as e:
        reason = "not UTF-8" if "utf-8" in str(e).lower() else "invalid Unicode" if "surrogate" in str(e) else "invalid JSON"
        return {}, f"{reason} ({e})"
    if not isinstance(row, dict):
        return {}, f"a JSON {type(row).__name__}, not an object"
    return row, None


def _array(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A column that mixes types (ids as numbers and strings): keep its values as JSON text.
        return pa.array([v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values], pa.string())


def _json_array(fh, unit: ReadUnit, needed: list[str]) -> Chunk:
    data = fh.read(MAX_ARRAY_BYTES + 1)
    if len(data) > MAX_ARRAY_BYTES:
        raise UserError(f"a JSON array over {MAX_ARRAY_BYTES:,} bytes; write it as JSON lines (one object per line)")
    try:
        rows = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise UserError(f"invalid JSON ({e})") from None
    if not isinstance(rows, list):
        raise UserError("a .json file holds JSON lines or one array of objects")
    errors = np.array([None if isinstance(r, dict) else f"a JSON {type(r).__name__}, not an object" for r in rows], object)
    rows = [r if isinstance(r, dict) else {} for r in rows]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.table({k: _array([row.get(k) for row in rows]) for k in keys}) if keys else _no_columns(len(rows))
    spans = np.arange(len(rows) + 1, dtype=np.int64)
    return Chunk(table, spans[:-1], spans, errors, False, True)


def _tsv_header(head: bytes, columns: dict, needed: list[str], unit: ReadUnit) -> list[str]:
    """A TSV's column names: `names` when given (a file without a header, like MS MARCO's
    collection.tsv), else its first line."""
    if columns.get("names"):
        return list(columns["names"])
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace").split("\t")
    _check(first, needed, f"{unit.file.path} (its first line, read as the header; give --columns for a file without one)")
    return first


def _tsv_rows(buffer: _Buffer, names: list[str], columns: dict, skip_header: bool) -> Chunk:
    every, filled = _line_starts(buffer)
    lines, starts = _line_array(buffer, every, filled), every[filled]
    if skip_header and len(starts) and starts[0] == 0:
        lines, starts = lines[1:], starts[1:]
    fields = pc.split_pattern(lines, "\t")
    counts = pc.list_value_length(fields).to_numpy(zero_copy_only=False)
    good = counts == len(names)
    errors = np.where(good, None, [f"{c} tab-separated fields where the header has {len(names)}" for c in counts]) \
        if not good.all() else np.full(len(starts), None, object)
    fields = pc.split_pattern(pc.if_else(pa.array(good), lines, pa.scalar(b"\t" * (len(names) - 1), pa.binary())), "\t")
    table = pa.table({name: _tsv_column(pc.list_element(fields, i), name == columns["text"]) for i, name in enumerate(names)})
    return Chunk(table, buffer.base + starts, _spans(buffer, starts), errors.astype(object), True, buffer.ends_file)


def _tsv_column(values: pa.Array, is_text: bool) -> pa.Array:
    """Text stays bytes (invalid UTF-8 fails its row in tokenisation); other columns are strings where they decode."""
    if is_text:
        return values
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        return values


# An image folder: its files as rows of (id, uri), read and decoded later in the pipeline.

def _images(unit: ReadUnit) -> Iterator[Chunk]:
    found = list_images(unit.file.path)
    spans = np.arange(len(found) + 1, dtype=np.int64)
    table = pa.table({"id": pa.array([i for i, _ in found], pa.string()), "image": pa.array([u for _, u in found], pa.string())})
    yield Chunk(table, spans[:-1], spans, np.full(len(found), None, object), False, True)


def describe(error: BaseException) -> str:
    """A reason for a unit that could not be read, for its error row."""
    text = str(error) or type(error).__name__
    return text if isinstance(error, UserError) else f"cannot read: {type(error).__name__}: {text}"



def columns_of(file: InputFile, columns: dict) -> list[str] | None:
    """The column names of an input, read cheaply (Parquet: the footer; CSV, TSV: the header; JSON
    lines: its first buffer), or None where they cannot be told (a first buffer of bad lines, no rows)."""
    unit = ReadUnit(file)
    if file.format == IMAGES:
        return ["id", "image"]
    if file.format == "parquet" and not file.compressed:
        with storage.open_binary(file.path) as fh:
            return pq.ParquetFile(fh).schema_arrow.names
    if file.format == "tsv":
        with _open(unit) as fh:
            return _tsv_header(fh.read(65536), columns, [], unit)
    if file.format == "csv":
        with _open(unit) as fh:
            try:
                return pacsv.open_csv(fh, read_options=pacsv.ReadOptions(use_threads=False)).schema.names
            except pa.ArrowInvalid:  # an empty file: nothing to check
                return None
    first = next(iter(read_unit(unit, columns, [])), None)
    if first is None or not first.table.num_rows or any(e is not None for e in first.errors):
        return None
    return first.table.column_names
