"""The cost model of docs/scaling.md: a 100M-passage corpus on 1 to 64 GPUs, from the benchmark JSON.

    python bench/scaling.py [--out docs/scaling.png]        # needs the bench extra (matplotlib)

Measured inputs (bench/results/): tokenisation per CPU core (engine.json, the tokenizer in one thread
on long texts), the job's efficiency against the engine alone (offline.json, auto), and the device rate:
from gpu.json (bench/gpu.py: the best torch setting on long texts) for the GPU class its device belongs
to, else an assumed rate per GPU class (GPU_CLASSES; the table says which). Limits modelled per GPU count: the
GPUs themselves, tokenising CPUs on the GPU nodes, S3 write bandwidth, and the job's driver, which
schedules three tasks per part. Prints a table, writes docs/scaling.json and the plot.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Cluster:
    """What k8s/raycluster.yaml sets, and prices (assumptions, per hour, on-demand)."""

    passages: int = 100_000_000
    tokens_per_passage: int = 128  # a retrieval chunk; the STS-B job corpus is 76
    dimensions: int = 384  # all-MiniLM-L6-v2, float32
    cpus_per_gpu_node: int = 8  # k8s gpu group: 1 for the embedding actor, 7 tokenise and write
    rows_per_part: int = 4096  # jobs/config.py: one actor call and at most one output file
    driver_tasks_per_s: float = 1000  # Ray Data's scheduler on the head: an assumption, not measured here
    s3_write_bytes_per_s: float = 5e9  # aggregate into one bucket from many nodes (many prefixes)
    head_per_hour: float = 0.20
    node_start_s: float = 300  # a GPU node from the autoscaler's request to a warm actor


def measured(gpu_class: str, price: float) -> dict:
    engine = json.loads((RESULTS / "engine.json").read_text())
    offline = json.loads((RESULTS / "offline.json").read_text())
    rate, source = device_rate(gpu_class)
    return {"tokenize_tokens_per_s_per_core": engine["tokenizer_tokens_per_s_per_core"]["long"],
            "job_efficiency": offline["job_efficiency"]["auto"], "gpu_tokens_per_s": rate, "gpu_rate_source": source,
            "gpu_node_per_hour": price}


def device_rate(gpu_class: str) -> tuple[float, str]:
    """Tokens/s per GPU and where the figure comes from: gpu.json when its device is of this class."""
    rate, _, names = GPU_CLASSES[gpu_class]
    gpu_file = RESULTS / "gpu.json"
    if gpu_file.exists():
        gpu = json.loads(gpu_file.read_text())
        device, best = gpu["device"]["name"], gpu["best_torch"]["long"]
        if best and not gpu["quick"] and any(n in device for n in names):
            return best["tokens_per_s"], (f"measured on {device} (bench/results/gpu.json: torch {best['precision']}, "
                                          f"{best['device_batch_tokens']} tokens x {best['max_rows']} rows)")
    return rate, "assumed (no bench/gpu.py run on this class: bench/results/gpu.json)"


def model(cluster: Cluster, rates: dict, gpus: int) -> dict:
    """Tokens/s the job sustains on `gpus` GPU nodes, what limits it, the wall time and cost."""
    bytes_per_row = cluster.dimensions * 4 + 16
    limits = {
        "GPUs": gpus * rates["gpu_tokens_per_s"] * rates["job_efficiency"],
        "tokenising CPUs": gpus * (cluster.cpus_per_gpu_node - 1) * rates["tokenize_tokens_per_s_per_core"],
        "S3 writes": cluster.s3_write_bytes_per_s / bytes_per_row * cluster.tokens_per_passage,
        "driver": cluster.driver_tasks_per_s / 3 * cluster.rows_per_part * cluster.tokens_per_passage,
    }
    limit = min(limits, key=limits.get)
    tokens_per_s = limits[limit]
    seconds = cluster.passages * cluster.tokens_per_passage / tokens_per_s + cluster.node_start_s
    cost = seconds / 3600 * (gpus * rates["gpu_node_per_hour"] + cluster.head_per_hour)
    return {"gpus": gpus, "passages_per_s": round(tokens_per_s / cluster.tokens_per_passage), "limited_by": limit,
            "hours": round(seconds / 3600, 2), "cost_usd": round(cost, 2)}


# Two GPU classes: all-MiniLM-L6-v2 fp16 tokens/s and node $/hour (assumptions, not measurements), and the
# device names of each class. A bench/gpu.py run on a device of a class replaces that class's rate.
GPU_CLASSES = {"L4-class": (1.5e6, 1.00, ("L4", "A10")), "H100-class": (6e6, 4.00, ("H100", "H200", "H800"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scaling.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cluster = Cluster()
    counts = [1, 2, 4, 8, 16, 32, 64]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    report = {"cluster": asdict(cluster), "classes": {}}
    for name, (_, price, _) in GPU_CLASSES.items():
        rates = measured(name, price)
        rows = [model(cluster, rates, n) for n in counts]
        report["classes"][name] = {"rates": rates, "rows": rows}
        print(f"{name}: {rates['gpu_tokens_per_s']:,.0f} tokens/s per GPU, {rates['gpu_rate_source']}; "
              f"${price:.2f}/node-hour; job efficiency {rates['job_efficiency']:.2f}; "
              f"tokenising {rates['tokenize_tokens_per_s_per_core']:,.0f} tokens/s per core (measured)")
        print(f"{'GPUs':>5} {'passages/s':>11} {'hours':>7} {'cost $':>8}  limited by")
        for r in rows:
            print(f"{r['gpus']:>5} {r['passages_per_s']:>11,} {r['hours']:>7} {r['cost_usd']:>8}  {r['limited_by']}")
        line = left.loglog(counts, [r["passages_per_s"] for r in rows], "o-", label=name)[0]
        left.loglog(counts, [rows[0]["passages_per_s"] * n for n in counts], ":", color=line.get_color())
        for r in rows:
            if r["limited_by"] != "GPUs":
                left.annotate(r["limited_by"], (r["gpus"], r["passages_per_s"]), fontsize=7, textcoords="offset points",
                              xytext=(4, -10))
        right.semilogx(counts, [r["hours"] for r in rows], "o-", color=line.get_color(), label=f"{name} hours")
        right.semilogx(counts, [r["cost_usd"] / 10 for r in rows], "s--", color=line.get_color(), label=f"{name} cost / $10")
    left.set(xlabel="GPU nodes", ylabel="passages/s (dotted: linear)", title="Throughput, all-MiniLM-L6-v2, 128-token passages")
    left.legend(fontsize=8)
    right.set(xlabel="GPU nodes", ylabel="hours  |  cost in $10", title=f"{cluster.passages:,} passages: wall time and cost")
    right.legend(fontsize=8)
    fig.suptitle("Modelled from bench/results/*.json; GPU rates and prices are assumptions (see docs/scaling.md)", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
