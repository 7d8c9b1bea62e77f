"""The head of a text model: token vectors -> pooling -> Dense layers -> L2 normalisation, as the
model's sentence-transformers modules say. One torch module, exported into the ONNX graph
(actors/export.py) and run on the device by the torch backend, so both give the same vectors.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from actors.errors import UserError
from actors.pooling import pool, unit
from actors.spec import DenseLayer, ModelSpec


class Head(torch.nn.Module):
    def __init__(self, spec: ModelSpec, folder: Path) -> None:
        super().__init__()
        self.pooling, self.normalize = spec.pooling, spec.normalize
        self.dense = torch.nn.ModuleList(Dense(layer, folder / layer.path) for layer in spec.dense)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors, their norms before normalisation): pooling.unit."""
        vectors = pool(self.pooling, hidden, attention_mask)
        for layer in self.dense:
            vectors = layer(vectors)
        return unit(vectors, self.normalize)


class Dense(torch.nn.Module):
    """sentence-transformers' Dense: activation(linear(x)), plus x (or its projection) when residual.
    Attribute names are its own, so its saved weights load as they are."""

    def __init__(self, layer: DenseLayer, folder: Path) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        self.activation_function = _activation(layer.activation)
        self.use_residual = layer.residual
        if layer.residual and layer.in_features != layer.out_features:
            self.residual = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        self.load_state_dict(_weights(folder))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation_function(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


def _activation(dotted: str) -> torch.nn.Module:
    """A torch.nn module from its dotted class name (`torch.nn.modules.activation.Tanh`); nothing outside torch."""
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module.startswith("torch") else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise UserError(f"Dense activation_function {dotted!r} is not a torch.nn module")
    return cls()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(folder / "model.safetensors")
    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


class Splade(torch.nn.Module):
    """SPLADE on the device: MLM logits -> log(1 + relu) -> max over the real tokens, and only the
    non-zero entries back: (row, term, weight) triples in row, then term order (a graph's NonZero).
    A row of 30522 floats would cost 120 KB to copy back; its ~100-300 non-zero terms ~2 KB."""

    def forward(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weights = torch.log1p(torch.relu(logits.float())) * attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = torch.amax(weights, dim=1)
        where = torch.nonzero(pooled)
        rows, terms = where[:, 0], where[:, 1]
        return rows, terms, pooled[rows, terms]


class PairTypes(torch.nn.Module):
    """Segment ids of (query, document) pairs from the ids alone: 1 after the first separator, as a
    BERT tokenizer gives `[CLS] query [SEP] document [SEP]`, so no third input crosses to the device."""

    def __init__(self, separator: int) -> None:
        super().__init__()
        self.separator = separator

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seen = (input_ids == self.separator).to(torch.int64)
        return ((torch.cumsum(seen, dim=1) - seen) > 0).to(torch.int64)


class TaskModel(torch.nn.Module):
    """The model for a task other than dense embedding, ending as the engine wants it: `sparse` gives
    Splade's triples, `rerank` one score per pair (the activation applied)."""

    def __init__(self, spec: ModelSpec, source: Path, attn: str = "eager", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

        self.task, self.sigmoid = spec.task, spec.score_activation == "sigmoid"
        cls = AutoModelForMaskedLM if spec.task == "sparse" else AutoModelForSequenceClassification
        self.model = cls.from_pretrained(source, attn_implementation=attn, dtype=dtype, trust_remote_code=spec.trust_remote_code)
        self.splade = Splade() if spec.task == "sparse" else None
        types = getattr(self.model.config, "type_vocab_size", 1)
        self.types = PairTypes(separator_id(source)) if spec.task == "rerank" and types > 1 else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        extra = {"token_type_ids": self.types(input_ids)} if self.types is not None else {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        if self.splade is not None:
            return self.splade(logits, attention_mask)
        scores = logits[:, 0].float()
        return torch.sigmoid(scores) if self.sigmoid else scores


def separator_id(folder: Path) -> int:
    """The id of the token that ends the first text of a pair ([SEP], </s>), from the folder's tokenizer."""
    from actors.tokenize import load_tokenizer

    tokenizer = load_tokenizer(folder)
    for token in ("[SEP]", "</s>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found
    raise UserError(f"{folder}: the tokenizer has no [SEP] or </s> to tell a pair's two texts apart")
