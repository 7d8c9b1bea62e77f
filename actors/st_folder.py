"""What a model's own folder says about it, read as sentence-transformers reads it.

`modules.json` lists the pipeline (Transformer -> Pooling -> Dense... -> Normalize);
`1_Pooling/config.json` the pooling, each Dense folder's `config.json` its projection;
`sentence_bert_config.json` the token limit and lower-casing; `config_sentence_transformers.json`
the prompts and similarity; `config.json` (transformers) the hidden size and positions;
`tokenizer_config.json` the padding side and, when sentence_bert_config.json has none (as
sentence-transformers 5+ saves), the token limit. Only these small JSON files are read: on `s3://`
one object each, never the weights.

Two files that disagree, or a file that modules.json names and the folder lacks, is a UserError
naming the file and the field. A folder with no modules.json is a plain transformers (or ONNX) folder:
what it cannot say (the pooling, at least) must come from the properties given beside it, unless
it is a ColBERT folder (colbert-ir/colbertv2.0's layout), which says what it is in `artifact.metadata`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from actors import storage
from actors.errors import NotFound, UserError
from actors.model_files import METADATA_FILE, WEIGHT_FILES, local_folder
from actors.spec import POOLINGS, DenseLayer, pooling_name

# sentence-transformers' legacy pooling keys (before `pooling_mode`), each naming one mode.
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# Dense's activation when its config names none: sentence-transformers' default.
_DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"
# Models whose position ids start after the padding index (padding_idx + 1), so that
# max_position_embeddings counts two more positions than a text may use (514 for 512 tokens).
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert", "mpnet")
# tokenizer_config.json's model_max_length when the tokenizer sets no limit (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 10**12


@dataclass(frozen=True)
class FolderModel:
    """ModelSpec fields as the folder gives them, and whether it is a sentence-transformers folder."""

    properties: dict[str, Any] = field(default_factory=dict)
    sentence_transformers: bool = False
    # config.json names Python code (auto_map) that transformers would have to run to load the model.
    custom_code: bool = False
    has_onnx: bool = False
    # config.json's vocab_size: a SPLADE model's dimensions.
    vocab_size: int | None = None


def read_folder(location: str, name: str) -> FolderModel:
    """What the folder at `location` says about the model called `name` (for messages)."""
    files = _Files(location, name)
    config = files.json("config.json") or {}
    tokenizer_config = files.json("tokenizer_config.json") or {}
    props: dict[str, Any] = {}
    hidden = next((config[k] for k in ("hidden_size", "d_model", "dim") if isinstance(config.get(k), int)), None)
    if hidden:
        props["dimensions"] = hidden
    if tokenizer_config.get("padding_side") in ("left", "right"):
        props["padding_side"] = tokenizer_config["padding_side"]
    positions = _usable_positions(config)
    vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
    modules = files.json("modules.json")
    found = {"custom_code": "auto_map" in config, "has_onnx": files.exists("model.onnx"), "vocab_size": vocab}
    if modules is None and files.exists(METADATA_FILE):
        props.update(_colbert(files))
        return FolderModel(props, False, **found)
    if modules is None:
        limit = _tokenizer_limit(tokenizer_config, positions)
        if limit:
            props["max_tokens"] = limit
        return FolderModel(props, False, **found)
    sbert = files.json("sentence_bert_config.json") or {}
    kind = (files.json("config_sentence_transformers.json") or {}).get("model_type")
    if kind == "SparseEncoder":
        props.update(_splade(files, modules, vocab))
    elif kind == "CrossEncoder":
        props.update(_cross_encoder(files, config))
    else:
        props.update(_pipeline(files, modules, hidden))
    props["max_tokens"] = _max_tokens(files, sbert, tokenizer_config, positions)
    if "do_lower_case" in sbert:
        props["lowercase"] = bool(sbert["do_lower_case"])
    props.update(_prompts(files))
    return FolderModel(props, True, **found)


def _splade(files: _Files, modules: object, vocab: int | None) -> dict[str, Any]:
    """A sentence-transformers SparseEncoder: an MLM transformer, then SpladePooling (max of log(1 + relu))."""
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules] if isinstance(modules, list) else []
    if kinds != ["MLMTransformer", "SpladePooling"] and kinds != ["Transformer", "SpladePooling"]:
        raise UserError(f"{files.where('modules.json')}: type lists {kinds}; rayembed runs a SparseEncoder as an MLM "
                        "transformer, then SpladePooling")
    path = f"{modules[1].get('path', '')}/config.json"
    pooling = files.json(path, required=True)
    if (pooling.get("pooling_strategy", "max"), pooling.get("activation_function", "relu")) != ("max", "relu"):
        raise UserError(f"{files.where(path)}: pooling_strategy {pooling.get('pooling_strategy')!r} with activation "
                        f"{pooling.get('activation_function')!r}; rayembed runs SPLADE's max of log(1 + relu)")
    if not vocab:
        raise UserError(f"{files.where('config.json')}: a SPLADE model's vocab_size is its dimensions, and none is given")
    return {"task": "sparse", "dimensions": vocab, "normalize": False}


def _cross_encoder(files: _Files, config: dict) -> dict[str, Any]:
    """A sentence-transformers CrossEncoder: a sequence classifier with one label, and the activation of its score."""
    if config.get("num_labels", len(config.get("id2label") or {0: ""})) != 1:
        raise UserError(f"{files.where('config.json')}: a reranker gives one score, so one label; this one has "
                        f"{len(config.get('id2label') or {})}")
    activation = (files.json("config_sentence_transformers.json") or {}).get("activation_fn") or "torch.nn.modules.activation.Sigmoid"
    known = {"Sigmoid": "sigmoid", "Identity": "identity"}
    if activation.rsplit(".", 1)[-1] not in known:
        raise UserError(f"{files.where('config_sentence_transformers.json')}: activation_fn {activation!r}; rayembed "
                        "scores with Sigmoid or Identity")
    return {"task": "rerank", "dimensions": 1, "normalize": False, "score_activation": known[activation.rsplit(".", 1)[-1]]}


def _colbert(files: _Files) -> dict[str, Any]:
    """A ColBERT folder: its vectors' width and token limits from artifact.metadata (actors/colbert.py)."""
    # Here, not above: reading a folder must not load the tokenizer and pyarrow (`rayembed --help` reads none).
    from actors.colbert import metadata_settings, tokens_needed

    meta = files.json(METADATA_FILE)
    settings = metadata_settings(meta) if isinstance(meta, dict) else {}
    try:
        dim, needed = int(settings["dim"]), tokens_needed(int(settings["query_maxlen"]), int(settings["doc_maxlen"]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{files.where(METADATA_FILE)}: dim, query_maxlen and doc_maxlen must be integers") from None
    # The tokenizer keeps exactly what the longer side's rows can hold: more would be cut away after.
    return {"task": "late_interaction", "dimensions": dim, "max_tokens": needed, "normalize": True}


def _pipeline(files: _Files, modules: object, hidden: int | None) -> dict[str, Any]:
    """pooling, dense, normalize and dimensions from modules.json and each module's config."""
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise UserError(f"{files.where('modules.json')}: expected a list of modules, each with a type and a path")
    kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"]:
        raise UserError(f"{files.where('modules.json')}: type lists {kinds}; rayembed runs a Transformer, then Pooling, "
                        "then optional Dense layers and Normalize")
    if modules[0].get("path", ""):
        raise UserError(f"{files.where('modules.json')}: the Transformer's path is {modules[0]['path']!r}; rayembed reads "
                        "the transformer from the folder itself: move that folder's files up")
    rest = kinds[2:]
    dense_count = len(rest) - (rest[-1:] == ["Normalize"])
    if any(k != "Dense" for k in rest[:dense_count]):
        raise UserError(f"{files.where('modules.json')}: type lists {kinds}; after Pooling rayembed runs only Dense "
                        "layers, then an optional Normalize last")
    pool_path = modules[1].get("path", "")
    pooling, width = _pooling(files, f"{pool_path}/config.json", hidden)
    dense = []
    for module in modules[2 : 2 + dense_count]:
        layer = _dense(files, module.get("path", ""), width)
        dense.append(layer)
        width = layer.out_features
    return {"pooling": pooling, "dense": tuple(dense), "normalize": rest[-1:] == ["Normalize"], "dimensions": width}


def _pooling(files: _Files, path: str, hidden: int | None) -> tuple[str, int]:
    config = files.json(path, required=True)
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [m for key, m in _LEGACY_POOLING.items() if config.get(key)]
        mode = modes if len(modes) > 1 else (modes[0] if modes else "mean")  # sentence-transformers' default: mean
    if isinstance(mode, list):
        mode = mode[0] if len(mode) == 1 else mode
    pooling = pooling_name(mode) if isinstance(mode, str) else ""
    if pooling not in POOLINGS or pooling == "none":
        raise UserError(f"{files.where(path)}: pooling_mode is {mode!r}; rayembed pools with one of cls, mean, max, "
                        "lasttoken, weightedmean")
    if config.get("include_prompt", True) is False:
        raise UserError(f"{files.where(path)}: include_prompt is false (the prompt's tokens left out of the pooling, "
                        "as INSTRUCTOR does); rayembed pools over every token")
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if width is None:
        width = hidden
    if not isinstance(width, int) or (hidden is not None and width != hidden):
        raise UserError(f"{files.where(path)}: embedding_dimension is {width!r} but {files.where('config.json')} "
                        f"hidden_size is {hidden}")
    return pooling, width


def _dense(files: _Files, folder: str, width: int) -> DenseLayer:
    path = f"{folder}/config.json"
    config = files.json(path, required=True)
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise UserError(f"{files.where(path)}: {key} is {config[key]!r}; rayembed projects the pooled sentence_embedding only")
    try:
        layer = DenseLayer(path=folder, in_features=int(config["in_features"]), out_features=int(config["out_features"]),
                           bias=bool(config.get("bias", True)),
                           activation=config.get("activation_function") or _DEFAULT_ACTIVATION,
                           residual=bool(config.get("use_residual", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{files.where(path)}: in_features and out_features must be integers ({e!r})") from None
    if layer.in_features != width:
        raise UserError(f"{files.where(path)}: in_features is {layer.in_features} but the module before it gives {width}-d vectors")
    if not layer.activation.startswith("torch."):
        # sentence-transformers loads other code only with trust_remote_code; rayembed builds torch.nn ones only.
        raise UserError(f"{files.where(path)}: activation_function {layer.activation!r} is not a torch.nn module")
    if not any(files.exists(f"{folder}/{w}") for w in WEIGHT_FILES):
        raise NotFound(f"{files.where(folder)}: the Dense layer's folder has no {' or '.join(WEIGHT_FILES)}")
    return layer


def _max_tokens(files: _Files, sbert: dict, tokenizer_config: dict, positions: int | None) -> int:
    """sentence-transformers' token limit: sentence_bert_config.json's max_seq_length when given (it
    is then the limit as is), else the tokenizer's model_max_length capped by the model's positions."""
    given = sbert.get("max_seq_length")
    if given is None:
        limit = _tokenizer_limit(tokenizer_config, positions)
        if not limit:
            raise UserError(f"{files.location} gives no token limit: sentence_bert_config.json has no max_seq_length, "
                            "tokenizer_config.json no model_max_length, config.json no max_position_embeddings")
        return limit
    if not isinstance(given, int) or given <= 0:
        raise UserError(f"{files.where('sentence_bert_config.json')}: max_seq_length must be a positive integer, got {given!r}")
    if positions is not None and given > positions:
        raise UserError(f"{files.where('sentence_bert_config.json')}: max_seq_length is {given} but "
                        f"{files.where('config.json')} max_position_embeddings leaves {positions} positions for a text")
    return given


def _tokenizer_limit(tokenizer_config: dict, positions: int | None) -> int | None:
    limit = tokenizer_config.get("model_max_length")
    if not isinstance(limit, int) or limit >= _NO_LIMIT:
        return positions
    return min(limit, positions) if positions else limit


def _usable_positions(config: dict) -> int | None:
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        return None
    if config.get("model_type") in _POSITIONS_AFTER_PADDING:
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions


def _prompts(files: _Files) -> dict[str, Any]:
    """prompts, default_prompt_name and similarity from config_sentence_transformers.json."""
    path = "config_sentence_transformers.json"
    config = files.json(path) or {}
    out: dict[str, Any] = {}
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise UserError(f"{files.where(path)}: prompts must map names to texts, got {prompts!r}")
    if prompts:
        out["prompts"] = tuple(prompts.items())
    default = config.get("default_prompt_name")
    if default is not None:
        if default not in prompts:
            raise UserError(f"{files.where(path)}: default_prompt_name is {default!r}, which is not one "
                            f"of its prompts ({', '.join(prompts) or 'none'})")
        out["default_prompt_name"] = default
    if config.get("similarity_fn_name"):
        out["similarity"] = config["similarity_fn_name"]
    return out


class _Files:
    """The folder's small files, from a local folder, an archive (extracted once) or an s3:// prefix."""

    def __init__(self, location: str, name: str) -> None:
        self.location = location.rstrip("/")
        # An s3:// folder is read file by file: its config files are a few KB, its weights may be GBs.
        self.remote = storage.is_s3(location) and not storage.is_archive(location)
        self.root = self.location if self.remote else str(local_folder(location, name))
        if self.remote and not storage.exists(self.location):
            raise NotFound(f"model {name!r}: nothing found under {location}")

    def where(self, path: str) -> str:
        return str(PurePosixPath(self.location) / path.strip("/")) if path.strip("/") else self.location

    def exists(self, path: str) -> bool:
        return storage.exists(f"{self.root}/{path.strip('/')}")

    def json(self, path: str, required: bool = False) -> Any:
        uri = f"{self.root}/{path.strip('/')}"
        if not storage.exists(uri):
            if required:
                raise NotFound(f"{self.where(path)} is missing: modules.json names a module there")
            return None
        try:
            return json.loads(storage.read_bytes(uri))
        except ValueError as e:
            raise UserError(f"{self.where(path)} is not valid JSON ({e})") from None
