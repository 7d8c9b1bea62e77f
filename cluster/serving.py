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


def exposure_warning(host: str, environ: dict[str, str] | None = None) -> str | None:
    """What to say at start when the app listens beyond this machine with no API key (None: nothing to say).

    The replicas read RAYEMBED_API_KEY from their environment, which an embedded Ray takes from this
    process; a cluster's replicas (--address) from the cluster's, which cannot be seen from here.
    """
    import ipaddress

    environ = os.environ if environ is None else environ
    if environ.get("RAYEMBED_API_KEY"):
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        loopback = False
    if loopback:
        return None
    return (f"rayembed: WARNING: listening on {host}, beyond this machine, with no RAYEMBED_API_KEY: anyone who "
            "reaches the port can embed with it and list its models. Set RAYEMBED_API_KEY (clients send "
            "'Authorization: Bearer <key>'), or serve on --host 127.0.0.1.")


# Serve's defaults for HAProxy's own frontends (stats page, Prometheus); taken when free.
HAPROXY_STATS_PORT, HAPROXY_METRICS_PORT = 8404, 9101


def free_port(host: str, preferred: int | None = None) -> int:
    """`preferred` if nothing listens there on `host`, else a port the OS says is free."""
    import socket

    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free port on {host}")


def haproxy_env(host: str, run_dir: str) -> dict[str, str]:
    """The environment that puts HAProxy's stats and Prometheus frontends on `host`, on free ports,
    and makes HAProxy die with the Serve controller that started it (cluster/haproxy_launcher.py)."""
    import shutil
    import stat
    import sys

    from ray.serve._private.haproxy import get_haproxy_binary

    shim = os.path.join(run_dir, "haproxy")
    with open(shim, "w") as fh:
        fh.write(f'#!/bin/sh\nexec "{sys.executable}" -m cluster.haproxy_launcher "$@"\n')
    os.chmod(shim, os.stat(shim).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    bind_host = "127.0.0.1" if host in ("localhost", "") else host
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": shim,
        "RAYEMBED_HAPROXY_BINARY": shutil.which(get_haproxy_binary()) or get_haproxy_binary(),
        "RAYEMBED_HAPROXY_HOST": bind_host,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port(bind_host, HAPROXY_STATS_PORT)),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port(bind_host, HAPROXY_METRICS_PORT)),
    }


def run_serve(config: dict, address: str | None = None, log=print) -> int:
    """Run a Serve config (the `serve run` file format) until SIGINT, SIGTERM or SIGHUP, and stop
    everything it started: Serve, HAProxy, and the embedded Ray. An application that fails to
    deploy is reported once, with Serve's message, and ends the command (exit 1).

    This is `serve run CONFIG` made to own its processes: Serve's CLI retries a failed deploy for
    ever, and a signal to its process group leaves HAProxy behind holding its ports.
    """
    import fcntl
    import signal
    import tempfile
    import threading
    import time

    import ray
    from ray import serve
    from ray.serve._private.api import serve_start  # what `serve run` itself calls to deploy a config file
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    host = schema.http_options.host
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(number, frame) -> None:
        caught.append(number)
        stop.set()

    previous: dict = {}
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Servers starting at once on one machine would each find HAProxy's default ports free: from the
    # choice of ports until HAProxy holds them (the app runs, or failed), one server starts at a time.
    ports_lock = open(os.path.join(tempfile.gettempdir(), "rayembed-serve-ports.lock"), "w")
    with ports_lock, tempfile.TemporaryDirectory(prefix="rayembed-serve-") as run_dir:
        fcntl.flock(ports_lock, fcntl.LOCK_EX)
        ports = f"HTTP {host}:{schema.http_options.port}"
        if not address:  # a Ray of our own: it starts with the ingress settings
            os.environ.update(serve_env())
            # A stopping replica stays open this long for load balancers to let go of it: Serve's 30 s
            # is for balancers across nodes; here the one HAProxy reloads in under a second. With 30,
            # a SIGTERM took 37 s to stop everything, past a supervisor's usual 30 s grace period.
            os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
            if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
                os.environ.update(haproxy_env(host, run_dir))
                ports += (f", HAProxy stats {os.environ['RAYEMBED_HAPROXY_HOST']}:{os.environ['RAY_SERVE_HAPROXY_STATS_PORT']}"
                          f" and Prometheus {os.environ['RAYEMBED_HAPROXY_HOST']}:{os.environ['RAY_SERVE_HAPROXY_METRICS_PORT']}")
        try:
            if address:
                ray.init(address=address, namespace="serve", log_to_driver=True)
            else:
                ray.init(namespace="serve", include_dashboard=False)
            client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                                 grpc_options=schema.grpc_options.model_dump())
            # After ray.init, which installs Ray's own SIGTERM handler in this process (a signal before
            # this point still stops everything: HAProxy dies with its parent, workers with the raylet).
            previous.update({s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)})
            client.deploy_apps(schema, _blocking=False)
            names = [app.name for app in schema.applications]
            running = False
            while not stop.wait(0.5):
                statuses = serve.status().applications
                failed = [(n, statuses[n]) for n in names if n in statuses and statuses[n].status == ApplicationStatus.DEPLOY_FAILED]
                if failed:
                    fcntl.flock(ports_lock, fcntl.LOCK_UN)
                    name, status = failed[0]
                    log(f"rayembed: error: application {name!r} failed to deploy:\n{status.message.strip()}")
                    return 1
                if not running and all(n in statuses and statuses[n].status == ApplicationStatus.RUNNING for n in names):
                    running = True
                    fcntl.flock(ports_lock, fcntl.LOCK_UN)
                    log(f"rayembed: serving {', '.join(names)}; listening on {ports} (Ctrl-C, SIGTERM or SIGHUP stops it)")
            log(f"rayembed: stopping on {signal.Signals(caught[0]).name}")
            return 0
        finally:
            started = time.monotonic()
            try:
                if caught and not address and _head_hit(caught[0]):
                    log(f"rayembed: {signal.Signals(caught[0]).name} reached Ray's own processes too (a signal to the "
                        "process group): stopping them without Serve's graceful shutdown")
                elif ray.is_initialized():
                    serve.shutdown()
            finally:
                ray.shutdown()
                for number, handler in previous.items():
                    signal.signal(number, handler)
            log(f"rayembed: stopped in {time.monotonic() - started:.1f} s")


def _head_hit(number: int) -> bool:
    """Whether the signal that stops the server went to the processes of the Ray it started too: a
    SIGTERM or SIGHUP to the whole process group (systemd's default stop, `kill -- -PGID`, a closed
    terminal) reaches Ray's GCS and raylet, and Serve's shutdown would then wait 60 s on the GCS before
    Ray ends this process with exit 1. Nothing is left to stop gracefully then: the replicas die with
    the raylet, HAProxy with its actor, and `ray.shutdown` reaps the rest. Ray blocks SIGINT in its
    processes, so Ctrl-C never reaches them."""
    import signal
    import time

    import ray

    node = ray._private.worker._global_node  # the processes this driver started (no public API lists them)
    if number == signal.SIGINT or node is None:
        return False
    deadline = time.monotonic() + 1.5  # a process that got it ends in well under this (its log monitor at once)
    while time.monotonic() < deadline:
        if node.dead_processes():
            return True
        time.sleep(0.05)
    return False
