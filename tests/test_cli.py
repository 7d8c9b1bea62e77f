"""The rayembed command, as a user runs it."""

import json
import subprocess
import sys

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
    done = rayembed("encode", "--dimensions", "8", "-", stdin="first line\n\nthird line\n")
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
