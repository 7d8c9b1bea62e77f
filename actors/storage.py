"""Files that live elsewhere: `s3://` with timeouts and retries, and archives extracted safely.

S3 is reached through s3fs with the standard AWS variables (keys, `AWS_REGION`, `AWS_ENDPOINT_URL`
or `AWS_ENDPOINT_URL_S3` for a non-AWS server), so a local test server and a real bucket take the
same code path.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from actors.errors import NotFound, UserError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class UnsafeArchiveError(UserError):
    """An archive entry would land outside the folder it is extracted into."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem():
    """An s3fs filesystem with bounded timeouts and botocore's standard retries (throttling, dropped connections)."""
    import s3fs

    endpoint = s3_endpoint()
    return s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": endpoint} if endpoint else {},
        config_kwargs={
            "connect_timeout": 10,
            "read_timeout": 60,
            "retries": {"max_attempts": 5, "mode": "standard"},
        },
        # Other processes write the shared cache and outputs: always ask S3, never a stale listing.
        use_listings_cache=False,
    )


def filesystem(uri: str):
    """(fsspec filesystem, path on it) for a local path or an `s3://` URI: the one way files are reached.

    Paths on S3 come back without the scheme (`bucket/key`), as fsspec's filesystems take them;
    local paths come back absolute (fsspec lists them so). `uri_of` turns a path back into a URI.
    """
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://") :]
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def uri_of(fs, path: str) -> str:
    """The URI of a path on a filesystem from `filesystem`."""
    return f"s3://{path}" if "s3" in _protocols(fs) else path


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def open_binary(uri: str):
    fs, path = filesystem(uri)
    return fs.open(path, "rb")


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.pipe_file(path, data)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def download_prefix(uri: str, dest: Path) -> None:
    """Copy every object under an `s3://` prefix (or one object) into `dest`, keeping relative paths."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    if fs.isfile(root):
        dest.mkdir(parents=True, exist_ok=True)
        fs.get_file(root, str(dest / PurePosixPath(root).name))
        return
    keys = [k for k in fs.find(root) if not k.endswith("/")]
    if not keys:
        raise NotFound(f"nothing found under {uri}")
    for key in keys:
        target = inside(dest, key[len(root) + 1 :])
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))


def download_file(uri: str, target: Path) -> None:
    """Copy one object (or local file) to `target`, making its folder."""
    fs, path = filesystem(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(target))


def file_versions(uri: str) -> list[tuple[str, int, str]]:
    """(path under `uri`, size, version) for the file at `uri` or each file under it, sorted.

    The version is what changes when a file is rewritten: its ETag on S3, its modification time
    locally. A lone file's path is its own name.
    """
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    if fs.isfile(root):
        found = {root: fs.info(root)}
        prefix = root.rsplit("/", 1)[0]
    else:
        found = {k: v for k, v in fs.find(root, detail=True).items() if v.get("type") != "directory" and not k.endswith("/")}
        prefix = root
    if not found:
        raise NotFound(f"nothing found under {uri}")
    return sorted((key[len(prefix) + 1 :], int(info["size"]), str(info.get("ETag") or info.get("mtime")))
                  for key, info in found.items())


def upload_folder(folder: Path, uri: str) -> None:
    fs, root = filesystem(uri)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(folder).as_posix()}")


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refusing names that would leave the folder (zip slip, absolute paths)."""
    root = folder.resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"entry {name!r} would be written outside {folder}")
    return target


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a .zip or .tar(.gz), refusing any entry whose path or link target leaves `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                inside(dest, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(f"entry {info.filename!r} is a symbolic link; links are not extracted")
            zf.extractall(dest)
        return
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            inside(dest, m.name)
            if m.issym() or m.islnk():
                raise UnsafeArchiveError(f"entry {m.name!r} is a link; links are not extracted")
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"entry {m.name!r} is not a regular file or folder")
        # The checks above already refuse what the 'data' filter would; the filter also drops
        # set-uid bits and odd permissions.
        tf.extractall(dest, members=members, filter="data")


def check_archive_bounds(archive: Path, max_entries: int, max_bytes: int) -> None:
    """Refuse an archive with more than `max_entries` entries or more than `max_bytes` once extracted
    (a decompression bomb), by the sizes its entries declare, which are what extraction writes. A
    tar is read header by header, so a bomb is refused at its first oversized entry, before its
    data is decompressed."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            sizes = (info.file_size for info in zf.infolist())
            _within(archive, sizes, max_entries, max_bytes)
        return
    with tarfile.open(archive) as tf:
        _within(archive, (m.size for m in tf), max_entries, max_bytes)


def _within(archive: Path, sizes, max_entries: int, max_bytes: int) -> None:
    entries = total = 0
    for size in sizes:
        entries += 1
        total += size
        if entries > max_entries:
            raise UnsafeArchiveError(f"{archive} has more than {max_entries} entries: refused")
        if total > max_bytes:
            raise UnsafeArchiveError(f"{archive} would extract to more than {max_bytes:,} bytes: refused")
