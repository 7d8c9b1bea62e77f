"""Corpus files: finding them (a file, a folder or a glob; local or `s3://`) and reading one into Arrow.

Formats by suffix: Parquet, JSON lines (.jsonl/.json/.ndjson) and CSV, each optionally .gz. Readers
are pyarrow's; a JSON-lines file that pyarrow refuses (a line of bad JSON, invalid UTF-8) is read
again line by line so that only the bad lines become errors and the rest of the file is embedded.
"""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from actors import storage
from actors.errors import NotFound, UserError

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# An image folder is one input: its rows are the image files (sorted), `id` their path under it.
IMAGES = "images"
# Columns the reader adds for rows it could not parse; dropped before output.
LINE_ERROR = "__line_error"


@dataclass(frozen=True)
class InputFile:
    path: str  # local path or s3:// URI (for an image folder: the folder or glob)
    key: str  # a stable, unique name for this file's outputs
    format: str  # a FORMATS value, or IMAGES


def file_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise UserError(f"{path}: unknown format; inputs are {', '.join(sorted(FORMATS))} files (optionally .gz)")


def list_inputs(source: str, images: bool = False) -> list[InputFile]:
    """The corpus files named by a file, a folder (searched recursively) or a glob. With `images`
    (a CLIP model), a folder or glob holding image files and no corpus files is one image input."""
    found, root = _find(source)
    files = sorted(p for p in found if _is_corpus_file(p))
    if not files and images and any(_is_image(p) for p in found):
        return [InputFile(source, f"images-{hashlib.sha1(source.encode()).hexdigest()[:8]}", IMAGES)]
    if not files:
        looked = ", ".join(sorted(FORMATS)) + (" or image files" if images else "")
        raise NotFound(f"no corpus files at {source} (looked for {looked}, optionally .gz)")
    return [InputFile(p, file_key(p, root), file_format(p)) for p in files]


def _find(source: str) -> tuple[list[str], str]:
    """Every file under a file, folder or glob, local or s3://, and the root their keys are relative to."""
    fs, path = storage.filesystem(source)
    path = path.rstrip("/")
    if globlib.has_magic(path):
        found = [p for p, info in fs.glob(path, detail=True).items() if info["type"] == "file"]
        root = path.split("*")[0]
    elif fs.isdir(path):
        found = fs.find(path)
        root = path
    else:
        found = [path] if fs.isfile(path) else []
        root = path.rsplit("/", 1)[0]
    return [storage.uri_of(fs, p) for p in found], storage.uri_of(fs, root)


def _is_image(path: str) -> bool:
    name = PurePosixPath(path).name
    return not name.startswith(("_", ".")) and name.lower().endswith(IMAGE_SUFFIXES)


def list_images(source: str) -> pa.Table:
    """An image folder as rows: `id` (the path under the folder) and `image` (where to read it), sorted."""
    found, root = _find(source)
    paths = sorted(p for p in found if _is_image(p))
    ids = [p[len(root):].lstrip("/") if p.startswith(root) else PurePosixPath(p).name for p in paths]
    return pa.table({"id": pa.array(ids, pa.string()), "image": pa.array(paths, pa.string())})


def _is_corpus_file(path: str) -> bool:
    name = PurePosixPath(path).name
    if name.startswith(("_", ".")):
        return False
    try:
        file_format(path)
    except UserError:
        return False
    return True


def file_key(path: str, root: str) -> str:
    """`dir--name.jsonl-1a2b3c4d`: readable, and unique even if two names sanitise alike."""
    relative = path[len(root) :].lstrip("/") if path.startswith(root) else PurePosixPath(path).name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", relative).strip("-")[-80:]
    return f"{readable}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def read_table(path: str, text_column: str, fmt: str) -> pa.Table:
    """The whole file as an Arrow table. The text column is read as bytes where the format allows, so
    that invalid UTF-8 fails one row (in tokenisation) instead of the file."""
    if fmt == IMAGES:
        return list_images(path)
    data = storage.read_bytes(path)
    if path.lower().endswith(".gz"):
        data = gzip.decompress(data)
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data))
    if fmt == "csv":
        return pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types={text_column: pa.binary()}))
    try:
        return pajson.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _read_json_lines_one_by_one(data, text_column)


def _read_json_lines_one_by_one(data: bytes, text_column: str) -> pa.Table:
    """The slow path for a JSON-lines file with bad lines: good lines as rows, bad ones flagged."""
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            rows.append({LINE_ERROR: f"line {number}: undecodable (not UTF-8)"})
            continue
        except ValueError as e:
            rows.append({LINE_ERROR: f"line {number}: invalid JSON ({e})"})
            continue
        if not isinstance(row, dict):
            rows.append({LINE_ERROR: f"line {number}: a JSON {type(row).__name__}, not an object"})
            continue
        text = row.get(text_column)
        if text is not None and not isinstance(text, str):
            row[text_column] = None
            row[LINE_ERROR] = f"not text: got {type(text).__name__}"
        rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({k: _array([row.get(k) for row in rows]) for k in keys})


def _array(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A column that mixes types (ids as numbers and strings): keep its values as JSON text.
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def columns_of(file: InputFile) -> list[str]:
    """Column names of a corpus file, cheaply where the format allows (Parquet: the footer only)."""
    if file.format == IMAGES:
        return ["id", "image"]
    if file.format == "parquet" and not file.path.endswith(".gz"):
        with storage.open_binary(file.path) as fh:
            return pq.ParquetFile(fh).schema_arrow.names
    return read_table(file.path, "", file.format).column_names
