"""ONNX files for a model in each precision, made once and cached.

fp32 comes from the model's own ONNX file, or is exported from its torch weights (dynamic batch and
sequence axes). fp16 (for GPUs) and int8 (for CPUs) are derived from fp32 with onnxruntime's own
tools. Each cache entry is a self-contained folder (model.onnx + tokenizer.json; a CLIP model's also
image.onnx + preprocessor_config.json), so a worker that has the cache needs neither torch nor the
weights package.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Literal

from actors.cache import build_once
from actors.catalog import ModelSpec
from actors.model_files import IMAGE_ONNX_FILE, ONNX_FILE, locate, location_key, model_files

log = logging.getLogger("rayembed")

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

# Bump when the exported graphs change, so caches made by older code are not reused.
EXPORT_VERSION = 1
OPSET = 17


def model_folder(spec: ModelSpec, precision: Precision) -> Path:
    """The cached folder with `model.onnx` and `tokenizer.json` for this model and precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", spec.name)
    key = f"exports/{slug}-{location_key(spec.model_location)}/{precision}-e{EXPORT_VERSION}"
    return build_once(key, lambda tmp: _build(spec, precision, tmp))


def _build(spec: ModelSpec, precision: Precision, out: Path) -> None:
    graphs, others = model_files(spec)
    source = locate(spec) if precision == "fp32" else model_folder(spec, "fp32")
    for name in others:
        shutil.copyfile(source / name, out / name)
    if precision == "fp32":
        if all((source / g).is_file() for g in graphs):
            for g in graphs:
                shutil.copyfile(source / g, out / g)
        else:
            log.info("exporting %s to ONNX from its torch weights (first use only)", spec.name)
            (export_clip if spec.modality == "clip" else export_torch)(source, out)
        return
    log.info("making the %s variant of %s", precision, spec.name)
    for g in graphs:
        (to_fp16 if precision == "fp16" else to_int8)(source / g, out / g)


def export_torch(source: Path, out: Path) -> None:
    """Export a `transformers` encoder to ONNX: inputs as the tokenizer gives them, output the last hidden state."""
    import inspect

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inspect.signature(model.forward).parameters]

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    example = tuple(torch.ones((2, 8), dtype=torch.int64) if n != "token_type_ids" else torch.zeros((2, 8), dtype=torch.int64) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    # The TorchScript exporter: the dynamo one needs onnxscript and gives no benefit for encoders.
    # Its tracer warns about shape checks in transformers' mask code; the graph is checked against
    # sentence-transformers over many batch and sequence shapes in the tests.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHidden(),
            example,
            str(out / ONNX_FILE),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def export_clip(source: Path, out: Path) -> None:
    """Export a `transformers` CLIP model as two graphs: text (ids, mask -> projected vector) and image
    (pixel_values -> projected vector). Normalisation stays outside, as for text models."""
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(source, attn_implementation="eager").eval()

    def features(output) -> torch.Tensor:  # transformers 5 returns an output object, 4 a tensor
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so the exporter sees its weights as weights

    class Text(Tower):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    class Image(Tower):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return features(self.model.get_image_features(pixel_values=pixel_values))

    size = model.config.vision_config.image_size
    tokens = torch.ones((2, 8), dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Text(), (tokens, tokens), str(out / ONNX_FILE), input_names=["input_ids", "attention_mask"],
                          output_names=["embeds"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                                        "embeds": {0: "batch"}})
        torch.onnx.export(Image(), (torch.zeros((2, 3, size, size)),), str(out / IMAGE_ONNX_FILE), input_names=["pixel_values"],
                          output_names=["embeds"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixel_values": {0: "batch"}, "embeds": {0: "batch"}})


def to_fp16(source: Path, target: Path) -> None:
    """Half-precision weights and activations; inputs and outputs stay as they were, so callers don't change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def to_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation, per channel: per-tensor scales lose too much (min cosine ~0.90)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8)
