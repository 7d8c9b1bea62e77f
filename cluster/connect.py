"""Find or start the Ray cluster a command runs on.

With no address (and no `RAY_ADDRESS`) rayembed starts an embedded local Ray in this process: no
setup at all; its workers inherit this environment. With one, it joins that cluster and passes on
the settings workers need (S3 endpoint and region, the cache location). Credentials are not passed:
a runtime env is shown by the dashboard and job APIs, so keys must come from the cluster's own
environment (a Kubernetes Secret, an instance role, or the shell that ran `ray start`).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("rayembed")

# What an existing cluster's workers must see as the driver does (no secrets: see above).
WORKER_ENV = (
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_EC2_METADATA_DISABLED",
    "RAYEMBED_CACHE",
    "RAYEMBED_CACHE_URI",
    "RAYEMBED_CACHE_LOCK_TIMEOUT",
)


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """Join the cluster at `address` / `RAY_ADDRESS`, or start an embedded one. Returns a description."""
    import ray

    if ray.is_initialized():
        return "the Ray already connected in this process"
    address = address or os.environ.get("RAY_ADDRESS") or None
    env_vars = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
        return f"the Ray cluster at {address}"
    # Embedded default: workers are forked from this environment, so they already see env_vars.
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    resources = ray.cluster_resources()
    return f"an embedded local Ray ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)"
