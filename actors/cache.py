"""The local cache of model files and exports, safe for processes that race on it.

Everything in the cache is built once under a file lock, in a temporary sibling, then renamed into
place: a reader never sees half a file, and a second process waits and reuses the first one's work.
`RAYEMBED_CACHE_URI=s3://bucket/prefix` adds a shared remote cache: a local miss is fetched from it
before anything is built, and what is built is pushed to it, so workers on other nodes (or a lean
GPU image without torch) skip the export.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from actors import storage

log = logging.getLogger("rayembed")

_COMPLETE = "_COMPLETE"


def cache_root() -> Path:
    return Path(os.environ.get("RAYEMBED_CACHE") or Path.home() / ".cache" / "rayembed")


def remote_root() -> str | None:
    return os.environ.get("RAYEMBED_CACHE_URI") or None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(key: str, build: Callable[[Path], None]) -> Path:
    """The cache folder for `key`, made by `build(tmp_folder)` only if no one has made it yet."""
    final = cache_root() / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final):
        if final.is_dir():
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            remote = remote_root()
            remote_key = f"{remote.rstrip('/')}/{key}" if remote else None
            if remote_key and storage.exists(f"{remote_key}/{_COMPLETE}"):
                storage.download_prefix(remote_key, tmp)
                (tmp / _COMPLETE).unlink(missing_ok=True)
                log.info("fetched %s from the remote cache %s", key, remote)
            else:
                build(tmp)
                if remote_key:
                    storage.upload_folder(tmp, remote_key)
                    # Written last: other nodes take a remote entry only once it is whole.
                    storage.write_bytes(f"{remote_key}/{_COMPLETE}", b"")
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final

