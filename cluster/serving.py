"""How Serve takes HTTP on every node rayembed serves from: set in the environment Ray starts in.

Serve's default ingress is a Python proxy actor per node that forwards each request to a replica:
two Python hops, each paying per-request CPU. On a 2-core machine that halved throughput at one
client and cost ~40% at 64 (bench/online.py). With `RAY_SERVE_ENABLE_HA_PROXY=1` Serve runs HAProxy
in front and each ingress replica answers HTTP itself ("direct ingress"), so a request's Python
work is one FastAPI call in the replica that embeds it. Serve reads these at start, in the
controller and replicas, so they must be in the environment of `ray start` / `ray.init`
(`rayembed serve` sets them; k8s/ puts them on every pod; the tests' cluster starts with them).
"""

from __future__ import annotations

import os

SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Part of Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED set: the handler runs on the replica's own event
    # loop (the engine already has its worker thread), the GC is frozen after start, and request
    # logs are buffered. Together +5-10% at 64 clients and at 32 inputs per request here. (The set's
    # other flags are left: replica logs still reach `serve run`'s console.)
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


def serve_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """SERVE_ENV under whatever the user already set (so `RAY_SERVE_ENABLE_HA_PROXY=0` turns it off)."""
    environ = os.environ if environ is None else environ
    return {key: environ.get(key, value) for key, value in SERVE_ENV.items()}
