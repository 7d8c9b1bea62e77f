"""Model files from archives and from S3 (a local S3 server, the same code path as a real bucket)."""

import io
import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from actors.export import model_folder
from actors.storage import UnsafeArchiveError, extract_archive, s3_filesystem
from rayembed import CATALOG, Embedder


def _tar(path, entries: dict[str, bytes], link: tuple[str, str] | None = None):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type = tarfile.SYMTYPE
            info.linkname = link[1]
            tf.addfile(info)
    return path


@pytest.mark.parametrize("name", ["../escaped.txt", "a/../../escaped.txt", "/tmp/rayembed-absolute.txt"])
def test_tar_entry_leaving_the_folder_is_refused(tmp_path, name):
    archive = _tar(tmp_path / "evil.tar.gz", {"ok.txt": b"fine", name: b"pwned"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out" / "ok.txt").exists(), "nothing is extracted from an archive that has a bad entry"


def test_tar_link_is_refused(tmp_path):
    archive = _tar(tmp_path / "link.tar.gz", {}, link=("tokenizer.json", "/etc/passwd"))
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract_archive(archive, tmp_path / "out")


@pytest.mark.parametrize("name", ["../escaped.txt", "/abs/escaped.txt", "..\\..\\x/../../escaped.txt"])
def test_zip_entry_leaving_the_folder_is_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(name, "pwned")
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_safe_archive_extracts(tmp_path):
    archive = _tar(tmp_path / "good.tar.gz", {"model/tokenizer.json": b"{}", "model/sub/x.bin": b"1"})
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "model" / "sub" / "x.bin").read_bytes() == b"1"


@pytest.fixture(scope="module")
def exported():
    return model_folder(CATALOG.resolve("all-MiniLM-L6-v2"), "fp32")


def _properties(location: str, name: str) -> dict:
    return {"name": name, "dimensions": 384, "tokens": 256, "pooling": "mean", "normalize": True, "model_location": location}


def test_model_from_a_local_archive(tmp_path, exported, fp32_embedder):
    archive = shutil.make_archive(str(tmp_path / "minilm"), "gztar", root_dir=exported.parent, base_dir=exported.name)
    model = Embedder(_properties(archive, "from-archive"), precision="fp32", device="cpu")
    assert np.allclose(model.embed(["from a tarball"]), fp32_embedder.embed(["from a tarball"]), atol=1e-6)


def test_model_from_an_s3_prefix(bucket, exported, fp32_embedder):
    fs = s3_filesystem()
    for name in ("model.onnx", "tokenizer.json"):
        fs.put_file(str(exported / name), f"{bucket[5:]}/models/minilm/{name}")
    model = Embedder(_properties(f"{bucket}/models/minilm", "from-s3"), precision="int8", device="cpu")
    local = Embedder(_properties(str(exported), "from-local"), precision="int8", device="cpu")
    assert np.allclose(model.embed(["from a bucket"]), local.embed(["from a bucket"]), atol=1e-6)


def test_model_from_an_s3_zip(tmp_path, bucket, exported, fp32_embedder):
    archive = shutil.make_archive(str(tmp_path / "minilm"), "zip", root_dir=exported)
    s3_filesystem().put_file(archive, f"{bucket[5:]}/minilm.zip")
    model = Embedder(_properties(f"{bucket}/minilm.zip", "from-s3-zip"), precision="fp32", device="cpu")
    assert np.allclose(model.embed(["zipped"]), fp32_embedder.embed(["zipped"]), atol=1e-6)


def test_missing_s3_location_is_named(bucket):
    with pytest.raises(FileNotFoundError, match=f"nothing found under {bucket}/nope"):
        Embedder(_properties(f"{bucket}/nope", "missing-s3"), precision="fp32")


def test_workers_share_exports_through_a_remote_cache(bucket, tmp_path, monkeypatch):
    """The first node exports and pushes; a node with an empty local cache fetches instead of exporting."""
    monkeypatch.setenv("RAYEMBED_CACHE_URI", f"{bucket}/cache")
    monkeypatch.setenv("RAYEMBED_CACHE", str(tmp_path / "node-a"))
    first = Embedder("all-MiniLM-L6-v2", precision="int8", device="cpu").embed(["shared"])
    assert s3_filesystem().exists(f"{bucket[5:]}/cache/exports")

    monkeypatch.setenv("RAYEMBED_CACHE", str(tmp_path / "node-b"))
    import actors.export

    def no_export(*args):
        raise AssertionError("node b exported instead of fetching")

    monkeypatch.setattr(actors.export, "to_int8", no_export)
    monkeypatch.setattr(actors.export, "export_encoder", no_export)
    second = Embedder("all-MiniLM-L6-v2", precision="int8", device="cpu").embed(["shared"])
    assert np.array_equal(first, second)
