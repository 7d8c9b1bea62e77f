"""The rayembed command, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def rayembed(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayembed", *args], input=stdin, capture_output=True, text=True, timeout=600)


def test_encode_prints_one_vector_per_text(fp32_embedder):
    done = rayembed("encode", "--precision", "fp32", "Ray runs the job.", "Vectors come out.")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1]
    vectors = np.array([line["embedding"] for line in lines], dtype=np.float32)
    assert (vectors * fp32_embedder.embed(["Ray runs the job.", "Vectors come out."])).sum(axis=1).min() >= 0.9999


def test_encode_reads_stdin_and_reports_bad_rows():
    # `dimensions` needs a model that declares Matryoshka sizes: here the user's properties say so.
    said = json.dumps({"name": "all-MiniLM-L6-v2", "matryoshka_dims": [8]})
    done = rayembed("encode", "--model", said, "--dimensions", "8", "-", stdin="first line\n\nthird line\n")
    assert done.returncode == 1
    assert [len(json.loads(line)["embedding"]) for line in done.stdout.splitlines()] == [8, 8]
    assert "row 1 not embedded: empty" in done.stderr


def test_unknown_model_is_a_clear_error():
    done = rayembed("encode", "--model", "no-such-model", "text")
    assert done.returncode == 2
    assert "unknown model 'no-such-model'; known models:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [[], ["encode"], ["embed"], ["serve"], ["models"], ["export"]])
def test_every_command_has_help(command):
    done = rayembed(*command, "--help")
    assert done.returncode == 0 and "usage: rayembed" in done.stdout


def test_the_job_module_has_help():
    done = subprocess.run([sys.executable, "-m", "jobs.embed_corpus", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--gpus-per-actor" in done.stdout and "--resume" in done.stdout


def test_embed_runs_the_readme_job_on_an_embedded_ray(tmp_path):
    """The README's main command: its own embedded Ray sized to this machine (2 CPUs in CI), where the
    embedding actor takes all but the CPU stages' share, so every stage must fit beside it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "rayembed", "embed", "examples/stsb-corpus", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["counts"] == {"rows_in": 5385, "embedded": 5385, "errors": 0, "truncated": 0}


def test_help_does_not_load_the_engine():
    """`rayembed --help` answers without importing onnxruntime, tokenizers or pillow."""
    probe = ("import sys, runpy; sys.argv = ['rayembed', 'embed', '--help']\n"
             "try:\n    runpy.run_module('rayembed', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'PIL', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_first_flag_names_still_work():
    """--kind and --batch-tokens were renamed --input-type and --device-batch-tokens; the old names stay."""
    from jobs.embed_corpus import build_parser

    args = build_parser().parse_args(["in", "out", "--kind", "query", "--batch-tokens", "512"])
    assert args.input_type == "query" and args.device_batch_tokens == 512


def test_a_bug_is_not_dressed_as_a_user_error(monkeypatch, capsys):
    """Only UserError becomes 'rayembed: error' with exit code 2; any other exception keeps its traceback."""
    from rayembed import cli

    def broken(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(cli, "_models", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["models"])
