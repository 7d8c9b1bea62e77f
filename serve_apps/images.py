"""Which images a request may name, and their bytes: data: URLs, or paths under the configured image_roots.

A request must never make the replica read arbitrary files or buckets, so a path or URI is read only
when it lies under a root, with links and `..` resolved before the check. Nor may it hold a thread:
a file is opened without waiting (a FIFO would wait for a writer for ever) and must be a regular
file, its size is checked before any of it is read, and reads run on threads of their own that the
request waits on only until its deadline.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from PIL import Image

from actors import storage
from actors.errors import UserError
from actors.images import ACCEPTED


class ImageRefused(UserError):
    """An image the request named but the app may not read (not under image_roots)."""


class ImageTooLarge(UserError):
    """An image of more bytes than the caller said it may read; `size` says how many (known before reading)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class ImageReadTimeout(UserError):
    """An image file whose storage did not answer before the request's deadline."""


def names_image(text: str, roots: list[str]) -> bool:
    """Whether a plain string input is an image reference rather than text to embed."""
    return text.startswith("data:image/") or any(text.startswith(root) for root in roots)


def image_pixels(data: bytes) -> int:
    """Width x height from the file's header (nothing decoded); 0 where it is no accepted image (decoding says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED) as image:
            width, height = image.size
    except Exception:  # any failure to read a header is the decoder's to explain, row by row
        return 0
    return width * height


class ImageReader:
    """Reads the images requests name, by path or URI on `threads` threads of its own.

    A read is waited on until the request's deadline and then given up: a store that never answers
    (a hung network mount) keeps one of these threads, never the request, and never more threads than
    `threads`.
    """

    def __init__(self, roots: list[str], threads: int) -> None:
        self.roots = roots
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rayembed-image-read")

    def read(self, url: str, max_bytes: int, deadline: float) -> bytes:
        """The bytes of a `data:image/...;base64,` URL or of a file under a root, at most `max_bytes`
        (ImageTooLarge, before reading), by `deadline` (time.monotonic(); ImageReadTimeout)."""
        if not url:
            raise UserError("an image_url needs a url")
        if url.startswith("data:"):
            data = _data_url_bytes(url)
            _check_size("the data URL's image", len(data), max_bytes)
            return data
        location = self._allowed(url)
        future = self._pool.submit(_read_s3 if storage.is_s3(location) else _read_local, location, max_bytes)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            raise ImageReadTimeout(f"{location} could not be read in time") from None
        except OSError as e:
            raise UserError(f"cannot read {location}: {e.strerror or e}") from None

    def _allowed(self, url: str) -> str:
        if storage.is_s3(url):
            prefixes = [_as_prefix(r) for r in self.roots if storage.is_s3(r)]
            allowed = ".." not in url.split("/") and any(url.startswith(p) for p in prefixes)
        else:
            url = os.path.realpath(url.removeprefix("file://"))
            allowed = any(url.startswith(_as_prefix(os.path.realpath(r))) for r in self.roots if not storage.is_s3(r))
        if not allowed:
            where = ", ".join(self.roots) if self.roots else "nowhere (image_roots is empty): send a data: URL"
            raise ImageRefused(f"images are read only from data: URLs or under {where}")
        return url


def _read_local(path: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: open() itself returns at once, for a FIFO too (which fstat then refuses); it changes
    # nothing for a regular file's reads.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not a regular file")
        _check_size(path, info.st_size, max_bytes)
        data = fh.read(max_bytes + 1)  # a file that grew since fstat is read no further than the limit
    _check_size(path, len(data), max_bytes)
    return data


def _read_s3(uri: str, max_bytes: int) -> bytes:
    fs, path = storage.filesystem(uri)
    _check_size(uri, int(fs.info(path)["size"]), max_bytes)
    return fs.cat_file(path)


def _check_size(what: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLarge(f"{what} is {size:,} bytes; {max_bytes:,} may be read", size)


def _data_url_bytes(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise UserError("a data URL must be data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise UserError("the data URL's base64 is invalid") from None


def _as_prefix(root: str) -> str:
    # With the separator, so a root /data/img does not admit /data/img-private.
    return root.rstrip("/") + "/"
