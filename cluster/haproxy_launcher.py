"""Start Serve's HAProxy the way `rayembed serve` needs it: on the app's host, and never outliving Serve.

Serve's controller runs HAProxy as its child, with a config whose Prometheus and stats frontends bind
every interface (`bind :9101`, `bind *:8404`; its template has no host for them). `rayembed serve`
points `RAY_SERVE_HAPROXY_BINARY_PATH` at a shim that runs this module, which
1. rewrites those two binds to the app's host (RAYEMBED_HAPROXY_HOST) in the config Serve just wrote,
2. asks Linux to send HAProxy SIGTERM when the controller that started it dies (PR_SET_PDEATHSIG):
   a SIGTERM to a server's process group stops Ray at once, and HAProxy, left without its parent,
   would otherwise keep both ports and make every later server fail to start,
3. and then becomes the real HAProxy (RAYEMBED_HAPROXY_BINARY) with the same arguments.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys

_PR_SET_PDEATHSIG = 1
# `bind :PORT` and `bind *:PORT`: a frontend on every interface. Binds with a host are left as they are.
_ANY_INTERFACE = re.compile(r"^(\s*bind\s+)\*?:(\d+)", re.MULTILINE)


def bind_to_host(config: str, host: str) -> str:
    return _ANY_INTERFACE.sub(lambda m: f"{m.group(1)}{host}:{m.group(2)}", config)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the parent died before the prctl took hold
        sys.exit(1)


def main(argv: list[str]) -> None:
    real, host = os.environ["RAYEMBED_HAPROXY_BINARY"], os.environ["RAYEMBED_HAPROXY_HOST"]
    if "-f" in argv:
        path = argv[argv.index("-f") + 1]
        with open(path) as fh:
            config = fh.read()
        rewritten = bind_to_host(config, host)
        if rewritten != config:
            with open(path, "w") as fh:
                fh.write(rewritten)
    _die_with_parent()
    os.execv(real, [real, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
