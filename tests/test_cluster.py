"""Pool sizes from the cluster's devices, and actors spread over several (simulated) nodes."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.resources import plan_pool

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_only_node_gets_one_wide_actor_with_room_for_the_cpu_stages():
    plan = plan_pool({"CPU": 2.0}, [2.0])
    assert (plan.min_actors, plan.max_actors, plan.gpus_per_actor, plan.cpus_per_actor) == (1, 1, 0.0, 1.5)
    assert plan.threads_per_actor == 2


def test_big_cpu_nodes_get_several_actors_of_at_most_8_cpus():
    plan = plan_pool({"CPU": 64.0}, [32.0, 32.0])
    assert (plan.max_actors, plan.cpus_per_actor) == (8, 8.0)


def test_one_actor_per_gpu_or_per_gpu_share():
    assert plan_pool({"CPU": 16.0, "GPU": 4.0}, [16.0]).max_actors == 4
    half = plan_pool({"CPU": 16.0, "GPU": 4.0}, [16.0], gpus_per_actor=0.5)
    assert (half.max_actors, half.gpus_per_actor, half.cpus_per_actor) == (8, 0.5, 1.0)


def test_impossible_requests_are_refused():
    with pytest.raises(ValueError, match="the cluster has 0 GPUs"):
        plan_pool({"CPU": 2.0}, [2.0], gpus_per_actor=1)
    with pytest.raises(ValueError, match="--min-actors 3 is more than --max-actors 2"):
        plan_pool({"CPU": 2.0, "GPU": 2.0}, [2.0], min_actors=3)
    with pytest.raises(ValueError, match="fraction of one GPU or a whole number"):
        plan_pool({"CPU": 2.0, "GPU": 4.0}, [2.0], gpus_per_actor=1.5)


SIMULATED_NODES = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from jobs.embed_corpus import main

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    corpus, out = sys.argv[1], sys.argv[2]
    code = main([corpus, out, "--precision", "fp32", "--gpus-per-actor", "1", "--cpus-per-actor", "1",
                 "--min-actors", "2", "--max-actors", "2", "--rows-per-part", "25"])
    manifest = json.load(open(out + "/_manifest.json"))
    print(json.dumps({"code": code, "gpu_nodes": sorted(n.node_id for n in gpu_nodes),
                      "actor_nodes": sorted(a["node"] for a in manifest["actors"]),
                      "embedded": manifest["counts"]["embedded"]}))
    ray.shutdown()
    cluster.shutdown()
""")


def test_actors_spread_across_simulated_gpu_nodes(tmp_path, sts_test):
    """Two nodes with one (fake) GPU each: the two 1-GPU actors must land one per node."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(sts_test.first[:200])))
    # Its own process: this test session may already be connected to another Ray.
    done = subprocess.run([sys.executable, "-c", SIMULATED_NODES, str(corpus), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["embedded"] == 200
    assert result["actor_nodes"] == result["gpu_nodes"]
