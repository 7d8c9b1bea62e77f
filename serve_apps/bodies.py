"""A request's body, read under the app's size limit while it arrives.

A Content-Length over the limit is refused before any of the body is read, and a chunked body (whose
length nobody says) as soon as what has come passes the limit: no client makes the replica wait for,
or hold, more than `max_request_bytes` of one request.
"""

from __future__ import annotations

from starlette.requests import Request

from serve_apps.protocol import RequestError


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(f"{int(declared):,} bytes", max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(f"over {max_bytes:,} bytes", max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, max_bytes: int) -> RequestError:
    return RequestError(413, f"request body is {size}; the limit is {max_bytes:,}: send fewer or shorter inputs")
