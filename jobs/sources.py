"""Corpus files: finding them (a file, a folder or a glob; local or `s3://`), what identifies each,
and how each is cut into read units that tasks read side by side (jobs/readers.py reads one).

Formats by suffix: Parquet, JSON lines (.jsonl/.ndjson, and .json: lines, or one array), CSV and
TSV, each optionally .gz. Names starting with `_` or `.` are skipped at every depth (Spark's
`_temporary/`, `.staging/`, our own `_errors/`), and so is the output folder.

A unit is a range of a file: row groups of a Parquet file, a byte range of an uncompressed JSON-lines
or TSV file (a line belongs to the unit its first byte lies in). A quoted CSV (a value may hold a
newline), a .gz file or a JSON array is read from its start by one task, streamed. A large file is
so spread over the pool from the start, and no task holds more than a unit's chunk in memory.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from actors import storage
from actors.errors import NotFound, UserError

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# An image folder is one input: its rows are the image files (sorted), `id` their path under it.
IMAGES = "images"
# A splittable file is cut into units of at most UNIT_BYTES (--read-bytes), and into at least two
# units per actor where that keeps units above MIN_UNIT_BYTES (each unit costs a task).
UNIT_BYTES = 64 * 2**20
MIN_UNIT_BYTES = 4 * 2**20


@dataclass(frozen=True)
class InputFile:
    path: str  # an absolute local path or an s3:// URI (for an image folder: the folder or glob)
    key: str  # a stable, unique name for this file's outputs, made from the normalised path
    format: str  # a FORMATS value, or IMAGES
    size: int
    version: str  # the ETag on S3, the modification time locally: with the size, what identifies the content

    @property
    def compressed(self) -> bool:
        return self.path.lower().endswith(".gz")

    @property
    def identity(self) -> dict:
        return {"path": self.path, "size": self.size, "version": self.version}


@dataclass(frozen=True)
class ReadUnit:
    """Part of one input: bytes [start, end) of a line file, row groups [start, end) of a Parquet
    file, or (end None) the whole file from its start."""

    file: InputFile
    start: int = 0
    end: int | None = None


def file_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise UserError(f"{path}: unknown format; inputs are {', '.join(sorted(FORMATS))} files (optionally .gz)")


def list_inputs(source: str, images: bool = False, exclude: str | None = None) -> list[InputFile]:
    """The corpus files named by a file, a folder (searched recursively) or a glob, never those under
    `exclude` (the output folder). With `images` (a CLIP model), a folder or glob holding image files
    and no corpus files is one image input."""
    found, root = _find(source, exclude)
    files = sorted((p for p in found if _is_corpus_file(p)), key=lambda p: p)
    if not files and images and any(_is_image(p) for p in found):
        uri = storage.uri_of(*_root(source))
        return [InputFile(uri, f"images-{_digest(uri)}", IMAGES, sum(found[p][0] for p in found if _is_image(p)),
                          _digest("".join(f"{p}{found[p]}" for p in sorted(found) if _is_image(p))))]
    if not files:
        looked = ", ".join(sorted(FORMATS)) + (" or image files" if images else "")
        raise NotFound(f"no corpus files at {source} (looked for {looked}, optionally .gz)")
    return [InputFile(p, file_key(p, root), file_format(p), *found[p]) for p in files]


def _root(source: str):
    fs, path = storage.filesystem(source)
    return fs, path.rstrip("/")


def _find(source: str, exclude: str | None = None) -> tuple[dict[str, tuple[int, str]], str]:
    """{uri: (size, version)} of every visible file under a file, folder or glob, and the root their
    names are relative to. Hidden names (`_x`, `.x`) are skipped at every depth below the root."""
    fs, path = _root(source)
    if globlib.has_magic(path):
        infos = fs.glob(path, detail=True)
        root = path.split("*")[0].rsplit("/", 1)[0]
    elif fs.isdir(path):
        infos = fs.find(path, detail=True)
        root = path
    else:
        infos = {path: fs.info(path)} if fs.isfile(path) else {}
        root = path.rsplit("/", 1)[0]
    skip = storage.filesystem(exclude)[1].rstrip("/") + "/" if exclude else None
    found = {}
    for p, info in infos.items():
        relative = p[len(root):].lstrip("/") if p.startswith(root) else PurePosixPath(p).name
        if info.get("type") != "file" or any(part.startswith(("_", ".")) for part in relative.split("/")):
            continue
        if skip and (p + "/").startswith(skip):
            continue
        found[storage.uri_of(fs, p)] = (int(info.get("size") or 0), _version(info))
    return found, storage.uri_of(fs, root)


def _version(info: dict) -> str:
    """What changes when a file's content does: S3's ETag, else the modification time (ns where given)."""
    for field in ("ETag", "etag"):
        if info.get(field):
            return str(info[field]).strip('"')
    return str(info.get("mtime") or info.get("LastModified") or info.get("created") or "")


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def list_images(source: str) -> list[tuple[str, str]]:
    """An image folder's (id, uri) pairs, sorted: the id is the path under the folder."""
    found, root = _find(source)
    paths = sorted(p for p in found if _is_image(p))
    return [(p[len(root):].lstrip("/") if p.startswith(root) else PurePosixPath(p).name, p) for p in paths]


def _is_corpus_file(path: str) -> bool:
    try:
        file_format(path)
    except UserError:
        return False
    return True


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def file_key(path: str, root: str) -> str:
    """`dir--name.jsonl-1a2b3c4d`: readable, and unique even if two names sanitise alike. `path` is
    normalised (absolute, or an s3:// URI), so a corpus named two ways gets one key."""
    relative = path[len(root) :].lstrip("/") if path.startswith(root) else PurePosixPath(path).name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", relative).strip("-")[-80:]
    return f"{readable}-{_digest(path)}"


def plan_units(file: InputFile, actors: int, unit_bytes: int = UNIT_BYTES) -> list[ReadUnit]:
    """The units one file is read in: several for a large splittable file, else the whole file."""
    splittable = not file.compressed and file.format in ("jsonl", "tsv", "parquet")
    smallest = min(MIN_UNIT_BYTES, unit_bytes)
    if not splittable or file.size <= smallest:
        return [ReadUnit(file)]
    pieces = max(math.ceil(file.size / unit_bytes), min(2 * actors, file.size // smallest))
    if file.format == "parquet":
        return _row_group_units(file, pieces)
    step = math.ceil(file.size / pieces)
    return [ReadUnit(file, start, min(start + step, file.size)) for start in range(0, file.size, step)]


def _row_group_units(file: InputFile, pieces: int) -> list[ReadUnit]:
    """Runs of whole row groups of about equal bytes (a row group is Parquet's smallest readable part)."""
    import pyarrow.parquet as pq

    with storage.open_binary(file.path) as fh:
        metadata = pq.ParquetFile(fh).metadata
    sizes = [metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups)]
    target, units, first, taken = sum(sizes) / pieces, [], 0, 0
    for g, size in enumerate(sizes):
        taken += size
        if taken >= target * (len(units) + 1) or g == len(sizes) - 1:
            units.append(ReadUnit(file, first, g + 1))
            first = g + 1
    return units or [ReadUnit(file)]
