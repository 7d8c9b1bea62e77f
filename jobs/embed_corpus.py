"""Embed a corpus with Ray Data: read + tokenise (CPU tasks) -> embed (device actors) -> write Parquet.

    python -m jobs.embed_corpus INPUT OUTPUT [--model NAME] ...     (also: rayembed embed ...)

Run it on the embedded local Ray (the default), on a cluster (`--address` / `RAY_ADDRESS`), or submit
it as a Ray job: `ray job submit --working-dir . -- python -m jobs.embed_corpus s3://... s3://...`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
import uuid
from dataclasses import replace

from actors.catalog import CATALOG, model_from_arg
from actors.errors import UserError
from actors.export import EXPORT_VERSION
from actors.quantize import NEEDS_RANGES, Ranges
from cluster.resources import CPU_STAGE_CPUS, PoolPlan
from jobs.config import JobConfig
from jobs.flags import add_job_arguments
from jobs.readers import columns_of
from jobs.sinks import OutputFolder
from jobs.sources import IMAGES, InputFile, list_inputs, plan_units
from jobs.stages import decode_images, needed_columns, read_and_tokenize, reader_columns, unit_rows, write_parts

log = logging.getLogger("rayembed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.embed_corpus",
        description="Embed a corpus with Ray Data and write ids + vectors as Parquet (errors to OUTPUT/_errors/).",
    )
    add_job_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> JobConfig:
    return JobConfig(
        input=args.input,
        output=args.output,
        model=CATALOG.resolve(model_from_arg(args.model)),
        id_column=args.id_column,
        text_column=args.text_column,
        query_column=args.query_column,
        image_column=args.image_column,
        keep=tuple(args.keep),
        columns=args.columns,
        precision=args.precision,
        backend=args.backend,
        input_type=args.input_type,
        prompt_name=args.prompt_name,
        prompt=args.prompt,
        min_actors=args.min_actors,
        max_actors=args.max_actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        device_batch_tokens=args.device_batch_tokens,
        resume=args.resume,
        address=args.address,
        s3_endpoint=args.s3_endpoint,
        rows_per_part=args.rows_per_part,
        read_bytes=args.read_bytes,
        embedding_type=args.embedding_type,
        calibration=args.calibration,
        truncate=args.truncate,
    )


def run(config: JobConfig) -> dict:
    """Run the job to the end and return its manifest."""
    import ray

    from actors.device_actor import StatsCollector
    from cluster.connect import connect
    from cluster.resources import current_plan

    started = time.perf_counter()
    if config.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = config.s3_endpoint  # before Ray starts: workers inherit it
    files = list_inputs(config.input, images=config.model.is_clip, exclude=config.output)
    if files[0].format == IMAGES:
        config = replace(config, id_column="id", image_column="image", keep=())
    _check_columns(files[0], config)  # a wrong --text-column stops the job here, before any work
    ranges = _ranges(config)  # and a calibration file that is not one

    where = connect(config.address)
    plan = current_plan(min_actors=config.min_actors, max_actors=config.max_actors,
                        gpus_per_actor=config.gpus_per_actor, cpus_per_actor=config.cpus_per_actor)
    config = config.settled(on_gpus=bool(plan.gpus_per_actor))
    model = _model_metadata(config, ranges)
    inputs = {f.key: f.identity for f in files}
    output = OutputFolder(config.output)
    with output.lease(uuid.uuid4().hex[:12]):
        done = output.start(model, config.resume, inputs)
        todo = [f for f in files if f.key not in done]
        units = [u for f in todo for u in plan_units(f, plan.max_actors, config.read_bytes)]
        engine = "in the read tasks (no device actors)" if config.model.task == "bm25" else \
            f"{plan.min_actors}-{plan.max_actors} actors x ({plan.gpus_per_actor:g} GPU, {plan.cpus_per_actor:g} CPU), " \
            f"{config.backend} {config.precision}"
        if config.embedding_type != "float":
            engine += f", {config.embedding_type} vectors" + (f" (ranges from {ranges.source})" if ranges else "")
        print(f"rayembed: {len(files)} input files ({len(done)} already done, {len(units)} read units) on {where}; "
              f"{config.model.name} {engine}", file=sys.stderr)

        stats_name = f"rayembed-stats-{uuid.uuid4().hex[:8]}"
        collector = ray.remote(num_cpus=0)(StatsCollector).options(name=stats_name).remote()
        written = _pipeline(config, units, plan, stats_name, model, inputs, ranges) if units else []
        actors = ray.get(collector.collect.remote(), timeout=60)
        ray.kill(collector)

        committed = output.commit(set(inputs), done)
        for key in committed["vanished"]:
            print(f"rayembed: removed the output of {key}: its input is no longer in {config.input}", file=sys.stderr)
        seconds = time.perf_counter() - started
        embedded, errors = output.count_rows()
        tokens = sum(a["tokens"] for a in actors.values())
        padded = sum(a["padded_tokens"] for a in actors.values())
        this_run = sum(w["embedded"] + w["errors"] for w in written)
        manifest = {
            "input": config.input,
            "output": config.output,
            "files": len(files),
            "files_skipped": len(done),
            "read_units": len(units),
            "model": model,
            "counts": {"rows_in": embedded + errors, "embedded": embedded, "errors": errors,
                       "truncated": sum(w["truncated"] for w in written)},
            "this_run": {"rows": this_run, "seconds": round(seconds, 2), "rows_per_s": round(this_run / seconds, 1),
                         "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                         # What the device ran, padding included: padded_tokens / tokens is the padding's cost.
                         "padded_tokens": padded},
            "inputs": {key: {**identity, "complete": key not in committed["incomplete"]} for key, identity in inputs.items()},
            "removed": committed["vanished"],
            "pool": {"min_actors": plan.min_actors, "max_actors": plan.max_actors,
                     "gpus_per_actor": plan.gpus_per_actor, "cpus_per_actor": plan.cpus_per_actor},
            "actors": list(actors.values()),
        }
        output.write_manifest(manifest)
    if committed["incomplete"]:
        print(f"rayembed: {len(committed['incomplete'])} inputs could not be read to the end (see {config.output}/_errors); "
              "--resume tries them again", file=sys.stderr)
    print(f"rayembed: {embedded + errors} rows, {embedded} embedded, {errors} errors; this run {this_run} rows in "
          f"{seconds:.1f} s: {manifest['this_run']['rows_per_s']} rows/s, {manifest['this_run']['tokens_per_s']:.0f} tokens/s "
          f"-> {config.output}", file=sys.stderr)
    return manifest


def _check_columns(file: InputFile, config: JobConfig) -> None:
    names = columns_of(file, reader_columns(config))
    missing = [c for c in needed_columns(config) if names is not None and c not in names]
    if missing:
        hint = " (its first line; a TSV without a header needs --columns, e.g. --columns id,text)" if file.format == "tsv" else ""
        raise UserError(f"{file.path} has no column {missing}; its columns are {names}{hint}")


def _ranges(config: JobConfig) -> Ranges | None:
    """The int8/uint8 ranges every actor quantises with, loaded (or computed from calibration texts on
    this process's CPU, before Ray starts) once, here, before any work."""
    if config.embedding_type not in NEEDS_RANGES:
        return None
    # An absolute path: the metadata says which file, wherever the job was started from.
    calibration = os.path.abspath(config.calibration) if config.calibration else None
    return Ranges.load(config.model, calibration, config.backend)


def _pipeline(config: JobConfig, units: list, plan: PoolPlan, stats_name: str, model: dict, inputs: dict,
              ranges: Ranges | None) -> list[dict]:
    import ray

    from actors.device_actor import EmbedActor

    ds = ray.data.from_items([unit_rows(u) for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(read_and_tokenize, batch_size=1, batch_format="pyarrow", num_cpus=CPU_STAGE_CPUS,
                        fn_kwargs={"config": config})
    # A unit's rows reach Ray Data as blocks of up to 128 MiB; parts of rows_per_part rows spread a
    # unit over the whole pool (streaming).
    ds = ds.repartition(target_num_rows_per_block=config.rows_per_part)
    # Its tasks ask for 1 CPU (repartition takes no resource arguments), which a CPU-only node never
    # has free beside an actor sized to the node: the job would wait forever. At the read's 0.25 CPU
    # it fits, and Ray Data fuses it into the read task (no extra task, no copy).
    ds._logical_plan.dag.ray_remote_args["num_cpus"] = CPU_STAGE_CPUS
    if config.image_column:  # decode and crop in CPU tasks, ahead of the device
        ds = ds.map_batches(decode_images, batch_size=None, batch_format="pyarrow", num_cpus=CPU_STAGE_CPUS,
                            fn_kwargs={"spec": config.model, "backend": config.backend, "precision": config.precision})
    if config.model.task == "bm25":  # computed in the read tasks: no device actors
        return ds.map_batches(write_parts, batch_size=None, batch_format="pyarrow", num_cpus=CPU_STAGE_CPUS,
                              fn_kwargs={"output": config.output, "model": model, "inputs": inputs}).take_all()
    ds = ds.map_batches(
        EmbedActor,
        batch_size=config.rows_per_part,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor,
        fn_constructor_kwargs={"spec": config.model, "backend": config.backend, "precision": config.precision,
                               "device_batch_tokens": config.device_batch_tokens, "stats_actor": stats_name,
                               "query": config.input_type == "query", "embedding_type": config.embedding_type,
                               "ranges": ranges},
    )
    ds = ds.map_batches(write_parts, batch_size=None, batch_format="pyarrow", num_cpus=CPU_STAGE_CPUS,
                        fn_kwargs={"output": config.output, "model": model, "inputs": inputs})
    return ds.take_all()


def _model_metadata(config: JobConfig, ranges: Ranges | None = None) -> dict:
    """What made the vectors: the model as resolved (its folder's files and the properties given),
    the prompt put before each text, the engine, and how texts were cut and vectors written (the
    embedding type, and for int8/uint8 where their ranges came from and a digest of them)."""
    spec = config.model
    written = {"embedding_type": config.embedding_type, "ranges": ranges.source if ranges else None,
               "ranges_sha256": hashlib.sha256(ranges.values.tobytes()).hexdigest()[:16] if ranges else None,
               "truncate": config.truncate}
    if spec.task == "bm25":
        from actors.bm25 import BM25

        bm25 = BM25()
        return {"name": spec.name, "task": spec.task, "k1": bm25.k1, "b": bm25.b, "avg_len": bm25.avg_len,
                "input_type": config.input_type, "export_version": EXPORT_VERSION, **written}
    prompt_name, prompt = config.prompt_used
    return {"name": spec.name, "task": spec.task, "dimensions": spec.dimensions, "precision": config.precision, "backend": config.backend,
            "normalize": spec.normalize, "pooling": spec.pooling, "dense_layers": len(spec.dense), "max_tokens": spec.max_tokens,
            "similarity": spec.similarity, "input_type": config.input_type, "prompt_name": prompt_name, "prompt": prompt,
            "model_location": spec.model_location, "export_version": EXPORT_VERSION, **written}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(config_from_args(args))
    except UserError as e:
        print(f"rayembed: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
