"""The output folder (local or `s3://`): vector parts, error parts, and the manifest.

Rows [a, b) of an input file KEY with n rows are written to `KEY.rows-<a>-<b>-of-<n>.parquet` (their
bad rows to `_errors/` under the same name, written first). Names depend only on which input rows a
file holds, so a retried task rewrites the same file and never duplicates rows, and an input is
complete exactly when its files' ranges tile [0, n): what `--resume` skips; a rerun without it clears
the input's files first. `_manifest.json` is written last; its presence means the output is complete.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from actors import storage

ERRORS_DIR = "_errors"
MANIFEST = "_manifest.json"
_PART = re.compile(r"^(?P<key>.+)\.rows-(?P<start>\d{9})-(?P<end>\d{9})-of-(?P<total>\d{9})\.parquet$")


def part_name(key: str, start: int, end: int, total: int) -> str:
    return f"{key}.rows-{start:09d}-{end:09d}-of-{total:09d}.parquet"


class OutputFolder:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = storage.filesystem(self.uri)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def _names(self, *folder: str) -> list[str]:
        path = self._path(*folder)
        if not self.fs.exists(path):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]

    def complete_keys(self) -> set[str]:
        """Inputs whose written row ranges tile all of their rows."""
        ranges: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for name in self._names():
            m = _PART.match(name)
            if m:
                ranges[m["key"]].append((int(m["start"]), int(m["end"]), int(m["total"])))
        done = set()
        for key, spans in ranges.items():
            position = 0
            for start, end, _ in sorted(spans):
                if start != position:
                    break
                position = end
            else:
                if position == spans[0][2] and len({t for _, _, t in spans}) == 1:
                    done.add(key)
        return done

    def remove(self, keys: set[str]) -> None:
        """Drop every part (and error part) of these inputs: a clean start for files about to be redone."""
        for folder in ((), (ERRORS_DIR,)):
            for name in self._names(*folder):
                m = _PART.match(name)
                if m and m["key"] in keys:
                    self.fs.rm(self._path(*folder, name))

    def write(self, key: str, start: int, end: int, total: int, vectors: pa.Table, errors: pa.Table) -> None:
        name = part_name(key, start, end, total)
        if errors.num_rows:
            self._write_table(errors, ERRORS_DIR, name)
        self._write_table(vectors, name)

    def _write_table(self, table: pa.Table, *names: str) -> None:
        path = self._path(*names)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if storage.is_s3(self.uri):
            # An S3 object appears whole when its upload completes.
            with self.fs.open(path, "wb") as fh:
                pq.write_table(table, fh)
            return
        tmp = f"{path}.tmp"
        pq.write_table(table, tmp)
        self.fs.mv(tmp, path)

    def count_rows(self) -> tuple[int, int]:
        """(vectors, errors) over the whole output, from the Parquet footers."""

        def total(*folder: str) -> int:
            rows = 0
            for name in self._names(*folder):
                if _PART.match(name):
                    with self.fs.open(self._path(*folder, name), "rb") as fh:
                        rows += pq.ParquetFile(fh).metadata.num_rows
            return rows

        return total(), total(ERRORS_DIR)

    def remove_manifest(self) -> None:
        if self.fs.exists(self._path(MANIFEST)):
            self.fs.rm(self._path(MANIFEST))

    def write_manifest(self, manifest: dict) -> None:
        with self.fs.open(self._path(MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=2)
