"""The output folder (local or `s3://`): vector parts, error parts, the run's lease and the manifest.

A part holds the rows of one input between two positions (row numbers, or byte offsets of lines:
jobs/readers.py) and is named by them: `KEY.pos-<start>-<end>[-end].parquet` (`-end`: the file's last
part); its bad rows go to `_errors/` under the same name. A run writes its parts under `_staging/`
and commits them at the end: a reader of OUTPUT sees the old output until then, never a mix of runs.

Exactly once: a retried task rewrites its rows, maybe cut into other parts than the first attempt's.
At commit, the parts of each input are reduced to one set that covers the most positions without
overlap (every row once), the rest are deleted; an input is complete when its parts tile it from 0
to a `-end` part. Each part says in its Parquet metadata which model made it, how (embedding type,
int8 ranges, truncation) and which version of its input it came from: what `--resume` checks before
it keeps a part.

Nothing is written where a reader would take it half made: local files are written to a hidden
temporary name and renamed; S3 objects are uploaded whole from memory (an error never commits an
upload); the manifest, written last, is replaced the same way.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
import uuid
from bisect import bisect_right
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from actors import storage
from actors.errors import UserError

ERRORS_DIR = "_errors"
STAGING = "_staging"
MANIFEST = "_manifest.json"
LEASE = "_lease.json"
METADATA_KEY = b"rayembed"
# A job renews its lease every LEASE_S / 4; a lease not renewed for LEASE_S is taken to be a dead job's.
LEASE_S = 120.0
_PART = re.compile(r"^(?P<key>.+)\.pos-(?P<start>\d{15})-(?P<end>\d{15})(?P<last>-end)?\.parquet$")
# The error row of a unit that could not be read (to its end), in _errors/ beside the parts.
_FAILURE = re.compile(r"^(?P<key>.+)\.unit-(?P<start>\d{15})\.failed\.parquet$")
# Keys of a part's metadata that describe it without being what --resume matches: the input's version
# (checked on its own) and where int8 ranges came from (their digest, `ranges_sha256`, is matched).
_NOT_IDENTITY = ("input", "ranges")


def part_name(key: str, start: int, end: int, last: bool) -> str:
    return f"{key}.pos-{start:015d}-{end:015d}{'-end' if last else ''}.parquet"


@dataclass(frozen=True, order=True)
class Part:
    key: str
    start: int
    end: int
    last: bool
    name: str

    @classmethod
    def named(cls, key: str, start: int, end: int, last: bool) -> Part:
        return cls(key, start, end, last, part_name(key, start, end, last))

    @classmethod
    def parse(cls, name: str) -> Part | None:
        m = _PART.match(name)
        return cls(m["key"], int(m["start"]), int(m["end"]), bool(m["last"]), name) if m else None


def choose_parts(parts: list[Part]) -> list[Part]:
    """The parts of one input that cover the most positions without overlapping (weighted interval
    scheduling): after retries, one copy of every row."""
    ordered = sorted(parts, key=lambda p: (p.end, p.start))
    ends = [p.end for p in ordered]
    best: list[tuple[int, list[Part]]] = [(0, [])]  # best[i]: over the first i parts
    for i, part in enumerate(ordered):
        before = best[bisect_right(ends, part.start, 0, i)]
        # Positions covered first; +1 a part, so that a part of no positions (an input without rows) is kept.
        with_it = (before[0] + (part.end - part.start) * 2**32 + 1, [*before[1], part])
        best.append(max(best[i], with_it, key=lambda b: b[0]))
    return best[-1][1]


def tiles(parts: list[Part]) -> bool:
    """Whether chosen parts cover their input from its start to its end."""
    position = 0
    for part in sorted(parts):
        if part.start != position:
            return False
        position = part.end
    return bool(parts) and max(parts).last


class OutputFolder:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = storage.filesystem(self.uri)
        self.s3 = storage.is_s3(self.uri)

    def _path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def _names(self, *folder: str) -> list[str]:
        path = self._path(*folder)
        if not self.fs.isdir(path):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]

    def parts(self, staged: bool = False) -> dict[str, list[Part]]:
        """Parts by input key, committed or (staged) of the run under way."""
        by_key: dict[str, list[Part]] = defaultdict(list)
        for name in self._names(*([STAGING] if staged else [])):
            part = Part.parse(name)
            if part:
                by_key[part.key].append(part)
        return dict(by_key)

    def failures(self, staged: bool = False) -> dict[str, list[str]]:
        """Names of the failed units' error files in _errors/, by input key."""
        by_key: dict[str, list[str]] = defaultdict(list)
        for name in self._names(*([STAGING] if staged else []), ERRORS_DIR):
            m = _FAILURE.match(name)
            if m:
                by_key[m["key"]].append(name)
        return dict(by_key)

    # Writing, from the read and write tasks.

    def write_failure(self, key: str, unit_start: int, errors: pa.Table) -> None:
        self._write_table(errors, STAGING, ERRORS_DIR, f"{key}.unit-{unit_start:015d}.failed.parquet")

    def write(self, part: Part, vectors: pa.Table, errors: pa.Table) -> None:
        """A staged part: its errors first, so that a part whose vectors are there has its errors too."""
        if errors.num_rows:
            self._write_table(errors, STAGING, ERRORS_DIR, part.name)
        self._write_table(vectors, STAGING, part.name)

    def _write_table(self, table: pa.Table, *names: str) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self._put(buffer.getvalue(), *names)

    def _put(self, data: bytes, *names: str) -> None:
        path = self._path(*names)
        folder, name = path.rsplit("/", 1)
        if self.s3:
            self.fs.pipe_file(path, data)  # one PUT (a multipart upload above 100 MB, aborted on error)
            return
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _rm(self, *names: str) -> None:
        path = self._path(*names)
        if self.fs.exists(path):
            self.fs.rm(path)

    # The run, from the driver.

    def start(self, model: dict, resume: bool, keys: dict[str, dict]) -> set[str]:
        """Get ready for a run of `model` over inputs `keys` ({key: identity}); the keys whose output is
        complete, of this model and of the input as it is now (with resume), are returned to be skipped.
        Without resume the staging area of an earlier run is cleared; the committed output stays until commit."""
        self.fs.makedirs(self.root, exist_ok=True)
        if not resume:
            self._clear_staging()
            return set()
        done: dict[bool, set[str]] = {False: set(), True: set()}  # by staged
        for staged in (False, True):
            for key, parts in self.parts(staged).items():
                chosen = choose_parts(parts)
                made_by = self._metadata(*([STAGING] if staged else []), chosen[0].name)
                if _identity(made_by) != _identity(model):
                    raise UserError(
                        f"{self.uri} holds vectors of {_describe(made_by)}; this run embeds with "
                        f"{_describe(model)}. Resuming would mix two models in one output: give another OUTPUT, "
                        "or run without --resume to replace it")
                if key in keys and made_by.get("input") == keys[key] and tiles(chosen) and key not in done[False]:
                    done[staged].add(key)
        # Staged parts other than whole inputs not yet committed are stale (an interrupted run's): the
        # commit would put them in place of complete output. A rerun writes them afresh.
        for key, parts in self.parts(staged=True).items():
            for part in parts if key not in done[True] else []:
                self._remove_part(part, staged=True)
        for key, names in self.failures(staged=True).items():
            for name in names if key not in done[True] else []:
                self._rm(STAGING, ERRORS_DIR, name)
        return done[False] | done[True]

    def _metadata(self, *names: str) -> dict:
        with self.fs.open(self._path(*names), "rb") as fh:
            raw = (pq.ParquetFile(fh).schema_arrow.metadata or {}).get(METADATA_KEY)
        return json.loads(raw) if raw else {}

    def _clear_staging(self) -> None:
        if self.fs.isdir(self._path(STAGING)):
            self.fs.rm(self._path(STAGING), recursive=True)

    def _remove_part(self, part: Part, staged: bool) -> None:
        folder = [STAGING] if staged else []
        self._rm(*folder, ERRORS_DIR, part.name)
        self._rm(*folder, part.name)

    def commit(self, keys: set[str], done: set[str]) -> dict:
        """Make the staged run the output: for each input redone, its old parts give way to the
        staged ones (one copy of each row); parts of inputs no longer in the corpus are removed.
        Returns what was done, and the inputs left incomplete (a unit could not be read)."""
        self._rm(MANIFEST)  # from here until the new manifest, the output is being replaced
        staged, failed = self.parts(staged=True), self.failures(staged=True)
        committed, committed_failed = self.parts(), self.failures()
        incomplete, vanished = [], sorted((set(committed) | set(committed_failed)) - keys)
        for key in set(vanished) | set(staged) | set(failed):  # old output of inputs gone or redone
            for part in committed.get(key, []):
                self._remove_part(part, staged=False)
            for name in committed_failed.get(key, []):
                self._rm(ERRORS_DIR, name)
        for key in set(staged) | set(failed):
            chosen = choose_parts(staged.get(key, []))
            for part in set(staged.get(key, [])) - set(chosen):
                self._remove_part(part, staged=True)
            self._move_in([p.name for p in chosen], failed.get(key, []))
            if key in failed or not tiles(chosen):
                incomplete.append(key)
        incomplete += sorted(keys - done - set(staged) - set(failed))
        self._clear_staging()
        return {"vanished": vanished, "incomplete": sorted(incomplete)}

    def _move_in(self, parts: list[str], failures: list[str]) -> None:
        """Staged files into the output: errors first, as they were written."""
        moves = [(ERRORS_DIR, name) for name in [*parts, *failures]] + [(None, name) for name in parts]
        self.fs.makedirs(self._path(ERRORS_DIR), exist_ok=True)

        def move(where: tuple[str | None, str]) -> None:
            folder = [where[0]] if where[0] else []
            source = self._path(STAGING, *folder, where[1])
            if self.fs.exists(source):
                self.fs.mv(source, self._path(*folder, where[1]))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(move, [m for m in moves if m[0]]))
            list(pool.map(move, [m for m in moves if not m[0]]))

    def count_rows(self) -> tuple[int, int]:
        """(vectors, errors) over the whole output, from the Parquet footers."""

        def rows(path: str) -> int:
            with self.fs.open(path, "rb") as fh:
                return pq.ParquetFile(fh).metadata.num_rows

        def total(*folder: str) -> int:
            paths = [self._path(*folder, n) for n in self._names(*folder) if Part.parse(n) or _FAILURE.match(n)]
            with ThreadPoolExecutor(16) as pool:
                return sum(pool.map(rows, paths))

        return total(), total(ERRORS_DIR)

    def write_manifest(self, manifest: dict) -> None:
        self._put(json.dumps(manifest, indent=2).encode(), MANIFEST)

    # One job at a time per output.

    def lease(self, run: str) -> Lease:
        return Lease(self, run)


def _dead_here(held: dict) -> bool:
    """Whether a lease's job ran on this host and its process is gone (a killed driver: no need to wait)."""
    if held.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(held.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _identity(model: dict) -> dict:
    return {k: v for k, v in model.items() if k not in _NOT_IDENTITY}


def _describe(model: dict) -> str:
    if "name" not in model:
        return "an unknown model (an output of an older rayembed)"
    ranges = f", ranges {model.get('ranges')} ({model.get('ranges_sha256')})" if model.get("ranges") else ""
    return (f"{model.get('name')} ({model.get('backend')} {model.get('precision')}, prompt {model.get('prompt')!r}, "
            f"{model.get('embedding_type')} vectors{ranges}, truncate {model.get('truncate')})")


class Lease:
    """`_lease.json`: which run writes this output, renewed while it runs. A second job on the same
    output is refused while the lease is fresh; a lease left by a killed job expires after LEASE_S
    (at once where that job ran on this host and its process is gone)."""

    def __init__(self, folder: OutputFolder, run: str) -> None:
        self.folder, self.run = folder, run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        held = self._read()
        if held and held.get("run") != self.run and held.get("expires", 0) > time.time() and not _dead_here(held):
            raise UserError(
                f"another job is writing {self.folder.uri} (run {held.get('run')} on {held.get('host')}, pid "
                f"{held.get('pid')}); wait for it, or if it is dead, its lease expires in "
                f"{held['expires'] - time.time():.0f} s (or delete {self.folder.uri}/{LEASE})")
        self._renew()
        if (self._read() or {}).get("run") != self.run:  # two jobs that started at once: the last writer holds it
            raise UserError(f"another job took {self.folder.uri} at the same moment; run one job per output")
        self._thread = threading.Thread(target=self._keep, name="rayembed-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if (self._read() or {}).get("run") == self.run:
            self.folder._rm(LEASE)

    def _read(self) -> dict | None:
        try:
            with self.folder.fs.open(self.folder._path(LEASE), "rb") as fh:
                return json.loads(fh.read())
        except (FileNotFoundError, ValueError):
            return None

    def _renew(self) -> None:
        self.folder._put(json.dumps({"run": self.run, "host": socket.gethostname(), "pid": os.getpid(),
                                     "expires": time.time() + LEASE_S}).encode(), LEASE)

    def _keep(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            self._renew()
