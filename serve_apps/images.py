"""Which images a request may name, and their bytes: data: URLs, or paths under the configured image_roots.

A request must never make the replica read arbitrary files or buckets, so a path or URI is read only
when it lies under a root, with links and `..` resolved before the check.
"""

from __future__ import annotations

import base64
import binascii
import os

from actors import storage
from actors.errors import UserError


class ImageRefused(UserError):
    """An image the request named but the app may not read (not under image_roots)."""


def names_image(text: str, roots: list[str]) -> bool:
    """Whether a plain string input is an image reference rather than text to embed."""
    return text.startswith("data:image/") or any(text.startswith(root) for root in roots)


def image_bytes(url: str, roots: list[str]) -> bytes:
    """An image's bytes from a `data:image/...;base64,` URL, or a path/URI under one of `roots`."""
    if not url:
        raise UserError("an image_url needs a url")
    if url.startswith("data:"):
        return _data_url_bytes(url)
    if storage.is_s3(url):
        allowed = ".." not in url.split("/") and any(url.startswith(_as_prefix(r)) for r in roots if storage.is_s3(r))
    else:
        url = os.path.realpath(url.removeprefix("file://"))
        allowed = any(url.startswith(_as_prefix(os.path.realpath(r))) for r in roots if not storage.is_s3(r))
    if not allowed:
        where = ", ".join(roots) if roots else "nowhere (image_roots is empty): send a data: URL"
        raise ImageRefused(f"images are read only from data: URLs or under {where}")
    try:
        return storage.read_bytes(url)
    except OSError as e:
        raise UserError(f"cannot read {url}: {e}") from None


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
