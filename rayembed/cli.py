"""The `rayembed` command."""

from __future__ import annotations

import argparse
import importlib.resources
import json
import logging
import sys

from actors.catalog import CATALOG, DEFAULT_MODEL, model_from_arg
from actors.errors import UserError
from actors.export import ONNX_PRECISIONS
from jobs.flags import add_job_arguments, add_model_arguments

# Installed with the package (package data), so `rayembed serve` works outside a checkout too.
SERVE_CONFIG = str(importlib.resources.files("serve_apps") / "config.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except UserError as e:
        # A person's mistake (unknown model, bad flag value, missing file): say what to fix, no traceback.
        print(f"rayembed: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayembed",
        description="Embedding compute on Ray: embed texts with real models, offline at corpus scale or online.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does (device, provider, exports)")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    encode = commands.add_parser(
        "encode",
        help="embed a few texts in this process and print their vectors as JSON lines",
        description="Embed texts given as arguments (or one per line on stdin with '-') and print one JSON "
        "object per text: its index, text and embedding.",
    )
    encode.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed; '-' reads one text per line from stdin")
    add_model_arguments(encode)
    encode.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    encode.add_argument("--dimensions", type=int, help="keep the first N dimensions and re-normalise: for models trained "
                        "for it (Matryoshka; 'rayembed models' lists their sizes)")
    encode.set_defaults(run=_encode)

    embed = commands.add_parser(
        "embed",
        help="embed a corpus with Ray (the offline job) and write Parquet",
        description="Embed a corpus with Ray Data on device actors: read (local or s3://), tokenise on CPU, "
        "embed, and write ids + vectors as Parquet to OUTPUT (bad rows to OUTPUT/_errors/, _manifest.json last). "
        "Runs on an embedded local Ray unless --address or RAY_ADDRESS names a cluster.",
    )
    add_job_arguments(embed)
    embed.set_defaults(run=_embed)

    serve_cmd = commands.add_parser(
        "serve",
        help="serve the OpenAI-compatible embeddings API with Ray Serve",
        description="Run the online app from a Ray Serve config file (the same file KubeRay's RayService uses), "
        "as `serve run` would, on an embedded local Ray unless --address or RAY_ADDRESS names a cluster. The config "
        "is checked before Ray starts (exit 2 naming the problem); an app that fails to deploy ends the command "
        "(exit 1); SIGINT, SIGTERM or SIGHUP stops Serve, HAProxy and the embedded Ray.",
    )
    serve_cmd.add_argument("--config", default=SERVE_CONFIG, help="Serve config file (default serve_apps/config.yaml)")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; anywhere else, "
                           "set RAYEMBED_API_KEY, or the command warns that the API is open)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve_cmd.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    serve_cmd.set_defaults(run=_serve)

    models = commands.add_parser(
        "models", help="list the model catalogue",
        description="List the catalogue's models and their properties, and which run here as they are; the others "
        "need their files given as model_location (a folder, .tar.gz/.zip or s3://).")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_models)

    export = commands.add_parser(
        "export",
        help="build a model's ONNX files into the cache ahead of time",
        description="Export a model to ONNX in the given precisions and print the cache folders "
        "(RAYEMBED_CACHE, default ~/.cache/rayembed; RAYEMBED_CACHE_URI=s3://... shares them).",
    )
    export.add_argument("--model", default=DEFAULT_MODEL, help="model name or alias, or custom properties (as for encode)")
    export.add_argument("--precision", nargs="+", choices=ONNX_PRECISIONS, default=list(ONNX_PRECISIONS),
                        help="ONNX precisions to build (default: all)")
    export.set_defaults(run=_export)
    return parser


def _encode(args: argparse.Namespace) -> int:
    from actors.embedder import Embedder

    texts = [line.rstrip("\n") for line in sys.stdin] if args.texts == ["-"] else args.texts
    embedder = Embedder(model_from_arg(args.model), backend=args.backend, precision=args.precision, device=args.device)
    result = embedder.embed_rows(texts, input_type=args.input_type, dimensions=args.dimensions, prompt_name=args.prompt_name,
                                 prompt=args.prompt)
    for index, vector in zip(result.rows.tolist(), result.vectors):
        print(json.dumps({"index": index, "text": texts[index], "embedding": [round(float(x), 7) for x in vector]}))
    for error in result.errors:
        print(f"rayembed: row {error.index} not embedded: {error.reason}", file=sys.stderr)
    return 1 if result.errors else 0


def _embed(args: argparse.Namespace) -> int:
    from jobs.embed_corpus import config_from_args, run

    run(config_from_args(args))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import yaml

    from cluster.serving import exposure_warning, run_serve
    from serve_apps.config import check_serve_config

    try:
        with open(args.config) as fh:
            config = yaml.safe_load(fh)
    except OSError as e:
        raise UserError(f"cannot read the Serve config {args.config}: {e.strerror}") from None
    # Before Ray starts, so a config that cannot deploy is one message and exit code 2.
    check_serve_config(config, args.config)
    config["http_options"] = {**config.get("http_options", {}), "host": args.host, "port": args.port}
    warning = exposure_warning(args.host)
    if warning:  # before Ray starts: the first thing the command says, not lost among Ray's start-up lines
        print(warning, file=sys.stderr, flush=True)
    return run_serve(config, address=args.address, log=lambda line: print(line, file=sys.stderr, flush=True))


def _models(args: argparse.Namespace) -> int:
    from actors.model_files import ready_here

    specs = CATALOG.list()
    if args.json:
        print(json.dumps([vars(s) | {"aliases": list(s.aliases), "prompts": dict(s.prompts), "dense": [vars(d) for d in s.dense],
                                     "ready": ready_here(s)} for s in specs], indent=2))
        return 0
    header = ("name", "type", "dim", "tokens", "pooling", "prompts", "matryoshka", "params", "licence", "here", "aliases")
    rows = [(s.name, s.architecture, str(s.dimensions), str(s.max_tokens), s.pooling + ("" if s.normalize else ", raw"),
             ", ".join(n for n, text in s.prompts if text) or "-", ",".join(map(str, s.matryoshka_dims)) or "-",
             f"{s.parameters_m}M" if s.parameters_m else "-", s.licence,
             "ready" if ready_here(s) else "give model_location", ", ".join(s.aliases)) for s in specs]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _export(args: argparse.Namespace) -> int:
    from actors.export import model_folder

    spec = CATALOG.resolve(model_from_arg(args.model))
    for precision in args.precision:
        print(f"{precision}\t{model_folder(spec, precision)}")
    return 0
