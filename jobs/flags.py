"""Command-line flags, defined once for `rayembed encode`, `rayembed embed` and `python -m jobs.embed_corpus`.

Light imports only: `rayembed --help` must not load the engine (onnxruntime, tokenizers, pillow).
"""

from __future__ import annotations

import argparse

from actors.catalog import DEFAULT_MODEL, INPUT_TYPES
from actors.devices import BACKENDS, PRECISIONS
from actors.quantize import EMBEDDING_TYPES
from actors.spec import TRUNCATES
from jobs.config import ROWS_PER_PART
from jobs.sources import UNIT_BYTES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which model, in which precision, for which side of a retrieval pair."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name or alias (default {DEFAULT_MODEL}; see 'rayembed models'), a model's folder (a path, "
        ".tar.gz/.zip or s3:// prefix: a sentence-transformers folder says what the model is), or a custom "
        "model's properties as JSON or a .json file",
    )
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                        help="onnx (ONNX Runtime) or torch; auto: the fastest measured for the device (README, The engine)")
    parser.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                        help="auto: fp16 on a GPU, bf16 on CPUs with AMX/avx512_bf16, else fp32; int8 (onnx) is opt-in")
    prompts = parser.add_mutually_exclusive_group()
    # --kind is the name this flag had first; kept so existing scripts still run.
    prompts.add_argument("--input-type", "--kind", dest="input_type", choices=INPUT_TYPES,
                         help="query, or passage/document: the model's prompt for that side of a retrieval pair "
                         "(e5's 'query: ' / 'passage: '; none where the model has none). Default: the model's "
                         "default prompt, else none")
    prompts.add_argument("--prompt-name", help="a prompt the model defines, by name (see 'rayembed models')")
    prompts.add_argument("--prompt", help="text to put before every input, instead of the model's prompts")


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The offline job's flags."""
    parser.add_argument("input", metavar="INPUT", help="a corpus file, folder or glob: Parquet, JSON lines, CSV or TSV (optionally .gz), local or s3://")
    parser.add_argument("output", metavar="OUTPUT", help="folder for the Parquet output, local or s3://")
    add_model_arguments(parser)
    parser.add_argument("--id-column", default="id", help="the column with row ids (default id)")
    parser.add_argument("--text-column", default="text", help="the column with the text to embed (default text)")
    parser.add_argument("--query-column", default="query", help="with a reranker: the column of queries; each row's "
                        "(query, text) pair gets a score (default query)")
    parser.add_argument("--image-column", help="with a CLIP model: the column of image bytes or image paths/URIs to embed "
                        "instead of text (an INPUT folder of image files needs none)")
    parser.add_argument("--keep", nargs="+", default=[], metavar="COL", help="columns to copy through to the output")
    parser.add_argument("--columns", type=lambda v: tuple(v.split(",")), metavar="A,B,...",
                        help="a TSV without a header: its columns in order (MS MARCO's collection.tsv: id,text)")
    parser.add_argument("--min-actors", type=int, help="fewest device actors (default 1)")
    parser.add_argument("--max-actors", type=int, help="most device actors (default: one per GPU, or per node's CPUs)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs per actor, e.g. 1 or 0.5 (default 1 if the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-actor", type=float, help="CPUs per actor; also its engine threads (default 1 with GPUs, else a node's CPUs)")
    # --batch-tokens is the flag's first name, kept as an alias.
    parser.add_argument("--device-batch-tokens", "--batch-tokens", dest="device_batch_tokens", type=int,
                        help="padded tokens per device run (default 2048 on CPU, 65536 on GPU)")
    parser.add_argument("--embedding-type", choices=EMBEDDING_TYPES, default="float",
                        help="how vectors are written (dense models; as sentence-transformers' quantize_embeddings): "
                        "float (default), int8/uint8 (a byte per dimension, from calibration ranges), binary/ubinary "
                        "(packed sign bits, 1/32 of float's bytes)")
    parser.add_argument("--calibration", metavar="PATH", help="int8/uint8 ranges instead of the model's catalogue "
                        "entry's: a .npy of [2, dim] (min, max) per dimension, or a text file of representative texts, "
                        "one per line (at least 100)")
    parser.add_argument("--truncate", type=str.upper, choices=TRUNCATES, default="END",
                        help="a text over the model's max tokens: END cuts its end (default), START its start (keeps "
                        "the end of the text), NONE sends the row to OUTPUT/_errors with its token count")
    parser.add_argument("--rows-per-part", type=int, default=ROWS_PER_PART, help=f"rows per device actor call, and at most per output file (default {ROWS_PER_PART})")
    parser.add_argument("--read-bytes", type=int, default=UNIT_BYTES, help=f"bytes of a large input per read task "
                        f"(default {UNIT_BYTES // 2**20} MiB): a large file is read by many tasks at once")
    parser.add_argument("--resume", action="store_true", help="keep the output of inputs already done by this model "
                        "(and unchanged since); redo the rest")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL for a non-AWS server (else AWS_ENDPOINT_URL)")
