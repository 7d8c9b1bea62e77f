"""Memory of the job's read tasks: peak RSS per task while reading a generated multi-GB input.

    python bench/reads.py [--gigabytes 2] [--quick] [--out bench/results/reads.json]

Each read task runs in a fresh Ray worker (`max_calls=1`), so its peak RSS (`ru_maxrss`) is its own.
Contenders, on the same JSON-lines file of ~1 KB rows:
  (a) the baseline: the whole file read into memory and parsed in one task (what rayembed did before
      the streaming readers), on a file of a quarter of the size, to spare the machine;
  (b) rayembed's read units (jobs/sources.py plan_units + jobs/readers.py read_unit), each unit a task,
      on the full file and on the quarter one.
Prints peak RSS per task beside the file size and the throughput of each, with the CPU it ran on. The
claim under test: (b)'s peak per task stays flat as the file grows (bounded by the unit's buffer),
where (a)'s grows with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from measure import cpu_info, describe_cpu, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(path: Path, size: int) -> int:
    """A JSON-lines file of about `size` bytes of ~1 KB English-like rows; returns its row count."""
    rng = random.Random(0)
    words = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()
    rows, written = 0, 0
    with open(path, "w") as fh:
        while written < size:
            lines = []
            for _ in range(1000):
                text = " ".join(rng.choices(words, k=180))
                lines.append(json.dumps({"id": f"doc-{rows}", "text": text}))
                rows += 1
            block = "\n".join(lines) + "\n"
            fh.write(block)
            written += len(block)
    return rows


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def read_whole(path: str) -> dict:
    """(a): the file's bytes, then one parse of them."""
    import io

    import pyarrow.json as pajson

    from actors.storage import read_bytes

    start, before = time.perf_counter(), _rss_mb()
    rows = pajson.read_json(io.BytesIO(read_bytes(path))).num_rows
    return {"rows": rows, "seconds": time.perf_counter() - start, "start_mb": before,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def read_streamed(unit) -> dict:
    """(b): one unit through rayembed's reader, chunk by chunk, as a read task does."""
    from jobs.readers import read_unit

    start, before = time.perf_counter(), _rss_mb()
    rows = sum(chunk.table.num_rows for chunk in read_unit(unit, {"id": "id", "text": "text", "names": None}, ["id", "text"]))
    return {"rows": rows, "seconds": time.perf_counter() - start, "start_mb": before,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(path: Path, streamed: bool, actors: int) -> dict:
    import ray

    from jobs.sources import list_inputs, plan_units

    [file] = list_inputs(str(path))
    task = ray.remote(num_cpus=1, max_calls=1)(read_streamed if streamed else read_whole)
    units = plan_units(file, actors) if streamed else [file.path]
    start = time.perf_counter()
    results = ray.get([task.remote(u) for u in units])
    seconds = time.perf_counter() - start
    peaks = [r["peak_mb"] for r in results]
    return {"contender": "rayembed read units (b)" if streamed else "whole file, one task (a)",
            "file_mb": round(file.size / 2**20), "tasks": len(units), "rows": sum(r["rows"] for r in results),
            "peak_rss_mb_max": round(max(peaks)), "peak_rss_mb_median": round(sorted(peaks)[len(peaks) // 2]),
            "worker_start_mb": round(min(r["start_mb"] for r in results)),
            "mb_per_s": round(file.size / 2**20 / seconds, 1), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="a 48 MB file: shows it runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reads.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    big = int((0.048 if args.quick else args.gigabytes) * 2**30)
    info = cpu_info()
    print(describe_cpu(info), flush=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("RAYEMBED_BENCH_TMP")) as tmp:
        full, quarter = Path(tmp) / "full.jsonl", Path(tmp) / "quarter.jsonl"
        print(f"generating {big / 2**30:.2f} GiB and {big / 4 / 2**30:.2f} GiB JSON-lines files...", flush=True)
        generate(quarter, big // 4)
        generate(full, big)
        for path, streamed in ((quarter, False), (quarter, True), (full, True)):
            rows.append(run(path, streamed, actors=os.cpu_count()))
            print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    print(f"\n{'contender':28} {'file MB':>8} {'tasks':>6} {'peak RSS/task MB (max, median)':>31} {'MB/s':>7}")
    for r in rows:
        print(f"{r['contender']:28} {r['file_mb']:>8} {r['tasks']:>6} {r['peak_rss_mb_max']:>20} {r['peak_rss_mb_median']:>10}"
              f" {r['mb_per_s']:>7}")
    baseline, small, large = rows
    print(f"\npeak RSS per task, (a) / (b) on the same {baseline['file_mb']} MB file: "
          f"{baseline['peak_rss_mb_max'] / small['peak_rss_mb_max']:.1f}x; (b) on a file {large['file_mb'] / small['file_mb']:.0f}x "
          f"larger: {large['peak_rss_mb_max'] / small['peak_rss_mb_max']:.2f}x the peak")
    write_json(args.out, {"cpu": info, "rows": rows, "bound": "a unit's buffer (jobs/readers.py BUFFER_BYTES) plus one "
                          "over-long line at most (MAX_LINE_BYTES); units of at most --read-bytes"})


if __name__ == "__main__":
    main()
