"""The local cache of model files and exports, safe for processes that race on it, checked when used.

Everything in the cache is built once under a file lock, in a temporary sibling, then renamed into
place: a reader never sees half a file, and a second process waits (at most
`RAYEMBED_CACHE_LOCK_TIMEOUT` seconds) and reuses the first one's work. Each entry holds a manifest
of its files' sizes and sha256 digests, made when it is built. Every use checks the sizes (a few
`stat` calls: a truncated or missing file is rebuilt); the digests are checked in full where bytes
arrive from elsewhere, on a fetch from the remote cache, since hashing a GB-sized graph on every
load would cost seconds per worker start.

`RAYEMBED_CACHE_URI=s3://bucket/prefix` (or a shared folder) adds a remote cache: a local miss is
fetched from it before anything is built, and what is built is pushed to it, manifest last, so
workers on other nodes (or a lean GPU image without torch) skip the export. A remote this process
may not write to is used read-only, with a warning.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from actors import storage
from actors.errors import UserError

log = logging.getLogger("rayembed")

# Written into every entry; on the remote it is written last, so it also says the entry is whole.
MANIFEST = "_rayembed_manifest.json"
# An export of a large model on CPU, or fetching one, takes minutes: a wait this long means a stuck holder.
DEFAULT_LOCK_TIMEOUT_S = 3600.0
_POLL_S = 0.5


def cache_root() -> Path:
    return Path(os.environ.get("RAYEMBED_CACHE") or Path.home() / ".cache" / "rayembed")


def remote_root() -> str | None:
    return os.environ.get("RAYEMBED_CACHE_URI") or None


def lock_timeout() -> float:
    value = os.environ.get("RAYEMBED_CACHE_LOCK_TIMEOUT") or DEFAULT_LOCK_TIMEOUT_S
    try:
        return float(value)
    except ValueError:
        raise UserError(f"RAYEMBED_CACHE_LOCK_TIMEOUT must be a number of seconds, not {value!r}") from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock beside `path`, waiting at most `lock_timeout()`. The holder writes who it is into
    the lock file, so a waiter that gives up can say whom it waited for."""
    lock = path.parent / f".{path.name}.lock"
    timeout = lock_timeout()
    deadline = time.monotonic() + timeout
    # "a+": opening must not truncate the file, or a waiter would erase the holder's note.
    with open(lock, "a+") as fh:
        waited = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for %s (%s) to finish building %s", lock, _holder(fh), path.name)
                    waited = True
                if time.monotonic() >= deadline:
                    raise UserError(
                        f"waited {timeout:g} s for the cache lock {lock}, held by {_holder(fh)}: if that process "
                        f"is stuck or gone, stop it or remove {lock}, then retry "
                        f"(RAYEMBED_CACHE_LOCK_TIMEOUT sets how long to wait)") from None
                time.sleep(_POLL_S)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _holder(fh) -> str:
    fh.seek(0)
    return fh.read().strip() or "a process that has not said who it is"


def build_once(key: str, build: Callable[[Path], None]) -> Path:
    """The cache folder for `key`, made by `build(tmp_folder)` only if no one has made it yet.

    `build` checks what it made (a UserError leaves nothing cached); a damaged entry is made again."""
    final = cache_root() / key
    if final.is_dir() and _damage(final) is None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final):
        if final.is_dir():
            damage = _damage(final)
            if damage is None:
                return final
            log.warning("the cache entry %s is damaged (%s): making it again", final, damage)
            shutil.rmtree(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            remote = remote_root()
            remote_key = f"{remote.rstrip('/')}/{key}" if remote else None
            if not (remote_key and _fetch(remote_key, tmp)):
                build(tmp)
                manifest = json.dumps(_manifest(tmp), indent=1).encode()
                if remote_key:
                    _push(tmp, remote_key, manifest)
                (tmp / MANIFEST).write_bytes(manifest)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)
    return {"files": {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(data: bytes) -> dict[str, dict]:
    manifest = json.loads(data)
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(m, dict) and {"size", "sha256"} <= m.keys() for m in files.values()):
        raise ValueError("files is not a map of name to size and sha256")
    return files


def _damage(folder: Path, full: bool = False) -> str | None:
    """What is wrong with an entry by its manifest, or None: sizes always, digests too when `full`."""
    try:
        files = _read_manifest((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        return "it has no manifest"
    except (ValueError, KeyError, TypeError) as e:
        return f"its manifest is unreadable ({e})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, its manifest says {expected['size']}"
        if full and _sha256(path) != expected["sha256"]:
            return f"{name}'s sha256 is not its manifest's"
    return None


def _fetch(remote_key: str, tmp: Path) -> bool:
    """Fetch an entry from the remote cache into `tmp`, every file checked against its manifest."""
    try:
        manifest = storage.read_bytes(f"{remote_key}/{MANIFEST}")
    except FileNotFoundError:
        return False
    try:
        for name in _read_manifest(manifest):
            # inside(): a manifest is data from elsewhere; its names must not lead out of the entry.
            storage.download_file(f"{remote_key}/{name}", storage.inside(tmp, name))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        damage = f"it is incomplete or its manifest is unreadable ({e})"
    else:
        (tmp / MANIFEST).write_bytes(manifest)
        damage = _damage(tmp, full=True)
    if damage is None:
        log.info("fetched %s from the remote cache", remote_key)
        return True
    log.warning("the remote cache's %s is damaged (%s): making it here instead", remote_key, damage)
    for child in tmp.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return False


def _push(tmp: Path, remote_key: str, manifest: bytes) -> None:
    try:
        storage.upload_folder(tmp, remote_key)
        # Last: other nodes take a remote entry only once its manifest is there.
        storage.write_bytes(f"{remote_key}/{MANIFEST}", manifest)
    except PermissionError as e:
        log.warning("the remote cache %s is read-only for this process (%s): %s is kept in the local cache only",
                    remote_root(), e, remote_key)
