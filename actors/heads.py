"""The head of a text model: token vectors -> pooling -> Dense layers -> L2 normalisation, as the
model's sentence-transformers modules say. One torch module, exported into the ONNX graph
(actors/export.py) and run on the device by the torch backend, so both give the same vectors.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from actors.errors import UserError
from actors.pooling import l2_normalize, pool
from actors.spec import DenseLayer, ModelSpec


class Head(torch.nn.Module):
    def __init__(self, spec: ModelSpec, folder: Path) -> None:
        super().__init__()
        self.pooling, self.normalize = spec.pooling, spec.normalize
        self.dense = torch.nn.ModuleList(Dense(layer, folder / layer.path) for layer in spec.dense)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vectors = pool(self.pooling, hidden, attention_mask)
        for layer in self.dense:
            vectors = layer(vectors)
        return l2_normalize(vectors) if self.normalize else vectors


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
