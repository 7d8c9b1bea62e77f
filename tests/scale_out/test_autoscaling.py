"""Autoscaling across nodes, on one machine: Ray's fake multi-node provider starts and stops real
raylets as simulated nodes when the autoscaler asks for them.

    python -m pytest -m scale_out      # its own invocation, after the main suite

These start their own cluster with `ray start` (and `ray stop --force` every Ray on the machine), so
they cannot share a session with the main suite's Ray; pyproject's addopts leave them out of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.scale_out

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
GPU_NODE = {"CPU": 2, "GPU": 1, "object_store_memory": 200 * 1024**2}


def fake_cluster_config(worker_types: dict) -> dict:
    """An autoscaling config for Ray's fake_multinode provider (the 2.60 wheel ships no example)."""
    return {
        "cluster_name": "rayembed-scale-out",
        "max_workers": 4,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            **{name: {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": most}
               for name, (resources, most) in worker_types.items()},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # nodes go 6 s after they empty, not AUTOSCALING's minute
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.fixture
def autoscaling_cluster(tmp_path, model_cache):
    """A head with 2 CPUs and no GPU; GPU nodes (2 CPUs, 1 fake GPU each) appear on demand, up to 2."""
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config({"gpu": (GPU_NODE, 2)})))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           # Simulated nodes share this machine's ports: one Serve proxy, on the head, and Python's
           # (HAProxy would bind the same ports once per node).
           "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    subprocess.run([RAY, "stop", "--force"], check=True, capture_output=True)
    subprocess.run([RAY, "start", "--head", f"--autoscaling-config={config}", "--num-cpus=2", "--num-gpus=0",
                    "--object-store-memory=300000000", "--disable-usage-stats"], check=True, env=env, capture_output=True)
    import ray

    ray.init(address="auto")
    yield env
    ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], check=True, capture_output=True)


def gpu_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def kill_node(node: dict) -> None:
    """SIGKILL a simulated node's raylet, as a lost machine would look to the cluster."""
    flag = f"--node_id={node['NodeID']}".encode()
    killed = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if flag in cmdline.read_bytes().split(b"\0"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError):
            continue  # a process that ended while we looked
    assert killed, f"no raylet for node {node['NodeID']}"


def test_job_pool_grows_onto_new_gpu_nodes_and_survives_losing_one(autoscaling_cluster, tmp_path):
    import ray
    from ray.util.state import list_actors

    corpus = tmp_path / "corpus.jsonl"
    sample = [json.loads(line) for name in ("part-1.jsonl", "part-2.jsonl")
              for line in (ROOT / "examples" / "stsb-corpus" / name).read_text().splitlines()]
    # Three copies of the sample corpus (16k rows): long enough for nodes to join and one to be lost.
    lines = [{**row, "id": f"{row['id']}-{copy}"} for copy in range(3) for row in sample]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out"
    assert not gpu_nodes()
    driver = subprocess.Popen([sys.executable, "-m", "jobs.embed_corpus", str(corpus), str(out), "--address", "auto",
                               "--gpus-per-actor", "1", "--max-actors", "2", "--rows-per-part", "128"],
                              cwd=ROOT, env={**autoscaling_cluster, "RAY_ADDRESS": "auto"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    def pool_nodes() -> set[str]:
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, timeout=10)
        return {a.node_id for a in alive if "EmbedActor" in a.class_name}

    # The pool asks for GPUs the cluster does not have: the autoscaler adds GPU nodes, one per actor.
    wait_for(lambda: len(pool_nodes()) == 2 or driver.poll() is not None, 240, "the pool on two new GPU nodes")
    assert driver.poll() is None, "the job ended before its pool reached two nodes"
    # Parts are staged while the job runs (the output is replaced only at its end).
    wait_for(lambda: len(list(out.glob("_staging/*.parquet"))) >= 3 or driver.poll() is not None, 240, "staged parts")
    assert driver.poll() is None, "the job ended before a node could be taken away"
    kill_node(next(n for n in gpu_nodes() if n["NodeID"] in pool_nodes()))  # a node with an actor at work
    log, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, log[-3000:]
    ids = pq.read_table(out, columns=["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(lines)  # every id exactly once
    assert json.loads((out / "_manifest.json").read_text())["counts"]["embedded"] == len(lines)
    # With nothing left to run, the GPU nodes are given back.
    wait_for(lambda: not gpu_nodes(), 120, "idle GPU nodes to be removed")
    assert ray.cluster_resources().get("GPU", 0) == 0


def test_serve_replicas_scale_onto_new_nodes_and_back_down(autoscaling_cluster, unused_port):
    from ray import serve

    from cluster.autoscaling import serve_autoscaling_config
    from serve_apps.openai_api import EmbeddingsAPI

    port = unused_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    scaling = {**serve_autoscaling_config(), "max_replicas": 2, "target_ongoing_requests": 2,
               "upscale_delay_s": 2, "downscale_delay_s": 5}
    app = EmbeddingsAPI.options(autoscaling_config=scaling, ray_actor_options={"num_cpus": 1, "num_gpus": 1})
    serve.run(app.bind({"models": [{"model": "all-MiniLM-L6-v2", "precision": "fp32"}]}), name="scaled",
              route_prefix="/")
    assert len(gpu_nodes()) == 1  # min_replicas: one replica, so one GPU node
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    body = json.dumps({"model": "all-MiniLM-L6-v2", "input": ["a sentence to embed under load"] * 8}).encode()
    stop, statuses = threading.Event(), []

    def client() -> None:
        while not stop.is_set():
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    statuses.append(response.status)
            except OSError as e:
                statuses.append(getattr(e, "code", 0))

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: len(gpu_nodes()) == 2 and _replicas("scaled") == 2, 240, "a second replica on a new node")
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert statuses.count(200) > 0 and set(statuses) <= {200, 503}
    wait_for(lambda: _replicas("scaled") == 1, 120, "replicas to scale down when idle")
    wait_for(lambda: len(gpu_nodes()) == 1, 120, "the emptied node to be removed")
    serve.shutdown()


def _replicas(app: str) -> int:
    from ray import serve

    deployment = serve.status().applications[app].deployments["EmbeddingsAPI"]
    return deployment.replica_states.get("RUNNING", 0)
