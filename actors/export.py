"""ONNX files for a model in each precision, made once and cached.

fp32 comes from the model's own ONNX file, or is exported from its torch weights (dynamic batch and
sequence axes). fp16 (for GPUs) and int8 (for CPUs) are derived from fp32 with onnxruntime's own
tools. Each cache entry is a self-contained folder (model.onnx + tokenizer.json; a CLIP model's also
image.onnx + preprocessor_config.json, a ColBERT model's its settings: model_files), so a worker that
has the cache needs neither torch nor the weights package.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Literal, get_args

from actors.cache import build_once
from actors.errors import UserError
from actors.model_files import IMAGE_ONNX_FILE, ONNX_FILE, TOKENIZER_FILE, locate, location_identity, model_files
from actors.spec import ModelSpec

log = logging.getLogger("rayembed")

# The precisions of an ONNX export (bf16 is the torch backend's: ONNX Runtime has no bf16 GEMM on CPU).
OnnxPrecision = Literal["fp32", "fp16", "int8"]
ONNX_PRECISIONS: tuple[str, ...] = get_args(OnnxPrecision)

# Bump when the exported graphs change, so caches made by older code are not reused.
# 2: graphs end in pooling and L2 normalisation; int32 token inputs; no token_type_ids input.
# 3: the head follows the model's sentence-transformers modules (Dense layers, max and weighted-mean
#    pooling), pooling finds real tokens from the mask (left padding), tokenizer.json as transformers reads it.
# 4: dense graphs give each vector's norm before normalisation too (`norms`: pooling.unit).
EXPORT_VERSION = 4
# A dense graph's outputs: the vectors, and their norms before normalisation.
DENSE_OUTPUTS = ["embeddings", "norms"]
OPSET = 17


def model_folder(spec: ModelSpec, precision: OnnxPrecision) -> Path:
    """The cached folder with `model.onnx` and `tokenizer.json` for this model and precision."""
    if precision not in ONNX_PRECISIONS:
        raise UserError(f"ONNX exports are {', '.join(ONNX_PRECISIONS)}, not {precision!r}")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", spec.name)
    # Pooling, Dense layers and normalisation are inside the graph, so they are part of what the entry is.
    head = f"{spec.pooling}{f'-dense{len(spec.dense)}' if spec.dense else ''}{'-norm' if spec.normalize else ''}"
    if spec.task != "embed":  # the task's graph (SPLADE's triples, a reranker's score, ColBERT's token vectors) replaces the head
        head = spec.task + ("-sigmoid" if spec.task == "rerank" and spec.score_activation == "sigmoid" else "")
    # What is at the location now (its files' sizes and versions), not its name: a model retrained in
    # place is exported afresh.
    identity = location_identity(spec.model_location, spec.name, spec.pip_package)
    key = f"exports/{slug}-{identity}/{precision}-{head}-e{EXPORT_VERSION}"
    return build_once(key, lambda tmp: _build(spec, precision, tmp))


def _build(spec: ModelSpec, precision: OnnxPrecision, out: Path) -> None:
    graphs, others = model_files(spec)
    source = locate(spec) if precision == "fp32" else model_folder(spec, "fp32")
    for name in others:
        shutil.copyfile(source / name, out / name)
    if precision == "fp32":
        from actors.tokenize import load_tokenizer

        # As transformers reads it (tokenizer_config.json's settings applied), so that a worker with
        # this entry alone tokenises as sentence-transformers does.
        load_tokenizer(source, spec.trust_remote_code).save(str(out / TOKENIZER_FILE))
        if all((source / g).is_file() for g in graphs) and spec.task == "embed":
            for g in graphs:
                finish_graph(source / g, out / g, spec)
        else:
            log.info("exporting %s to ONNX from its torch weights (first use only)", spec.name)
            export = export_clip if spec.is_clip else export_encoder if spec.task == "embed" else export_task
            export(source, out, spec)
        return
    log.info("making the %s variant of %s", precision, spec.name)
    for g in graphs:
        (to_fp16 if precision == "fp16" else to_int8)(source / g, out / g)


def _export(module, example: tuple, path: Path, input_names: list[str], dynamic: dict) -> None:
    """A dense graph (DENSE_OUTPUTS) of `module` at `path`."""
    import torch

    # The TorchScript exporter: the dynamo one needs onnxscript and gives no benefit for encoders.
    # Its tracer warns about shape checks in transformers' mask code; the graphs are checked against
    # sentence-transformers over many batch and sequence shapes in the tests.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), input_names=input_names, output_names=DENSE_OUTPUTS,
                          dynamic_axes={**dynamic, **{o: {0: "batch"} for o in DENSE_OUTPUTS}}, opset_version=OPSET,
                          dynamo=False)


TOKEN_AXES = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask")}


def export_encoder(source: Path, out: Path, spec: ModelSpec) -> None:
    """Export a `transformers` encoder to ONNX: int32 ids and mask in, the head's [rows, dim] and norms out."""
    import torch
    from transformers import AutoModel

    from actors.heads import Head

    model = AutoModel.from_pretrained(source, attn_implementation="eager", trust_remote_code=spec.trust_remote_code).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so the exporter sees its weights as weights
            self.head = Head(spec, source)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # No token_type_ids: single texts are all segment 0, which the model's own buffer gives.
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.head(hidden, attention_mask)

    example = (torch.ones((2, 8), dtype=torch.int32), torch.ones((2, 8), dtype=torch.int32))
    _export(Pooled().eval(), example, out / ONNX_FILE, ["input_ids", "attention_mask"], TOKEN_AXES)


def export_task(source: Path, out: Path, spec: ModelSpec) -> None:
    """Export a SPLADE model (ids, mask -> rows, terms, weights of the non-zero entries) or a reranker
    (ids, mask -> scores) from its torch weights (actors/heads.py TaskModel), or a ColBERT model (ids,
    mask, keep -> token vectors: actors/colbert.py export_colbert)."""
    import torch

    from actors.heads import TaskModel

    if spec.task == "late_interaction":
        from actors.colbert import ColbertSettings, export_colbert

        export_colbert(source, out, ColbertSettings.from_folder(source))
        return
    outputs = {"sparse": ["rows", "terms", "weights"], "rerank": ["scores"]}.get(spec.task)
    if outputs is None:
        raise UserError(f"model {spec.name!r}: task {spec.task} has no ONNX export")
    example = (torch.ones((2, 8), dtype=torch.int32), torch.ones((2, 8), dtype=torch.int32))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TaskModel(spec, source).eval(), example, str(out / ONNX_FILE), input_names=["input_ids", "attention_mask"],
                          output_names=outputs, dynamic_axes={**TOKEN_AXES, **{o: {0: "rows"} for o in outputs}},
                          opset_version=OPSET, dynamo=False)


def export_clip(source: Path, out: Path, spec: ModelSpec) -> None:
    """Export a `transformers` CLIP model as two graphs: text (ids, mask -> vector) and image
    (pixel_values -> vector), each projected and normalised in the graph, with its norm."""
    import torch
    from transformers import CLIPModel

    from actors.pooling import clip_features, unit

    model = CLIPModel.from_pretrained(source, attn_implementation="eager").eval()

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def finish(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return unit(vectors, spec.normalize)

    class Text(Tower):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.finish(clip_features(self.model.get_text_features(input_ids=input_ids.long(), attention_mask=attention_mask)))

    class Image(Tower):
        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.finish(clip_features(self.model.get_image_features(pixel_values=pixel_values)))

    size = model.config.vision_config.image_size
    tokens = torch.ones((2, 8), dtype=torch.int32)
    _export(Text(), (tokens, tokens), out / ONNX_FILE, ["input_ids", "attention_mask"], TOKEN_AXES)
    _export(Image(), (torch.zeros((2, 3, size, size)),), out / IMAGE_ONNX_FILE, ["pixel_values"], {"pixel_values": {0: "batch"}})


def finish_graph(source: Path, target: Path, spec: ModelSpec) -> None:
    """A model's own ONNX file made to end as rayembed's exports do: a graph that gives token vectors
    [rows, seq, hidden] gets the head appended (pooling, Dense layers, normalisation), one that gives
    vectors the normalisation. The appended nodes are exported from the same torch modules the torch
    backend runs, then grafted on."""
    import onnx
    import torch

    from actors.heads import Head
    from actors.pooling import unit

    model = onnx.load(str(source))
    graph = model.graph
    output = graph.output[0]
    pooled = len(output.type.tensor_type.shape.dim) == 3
    if pooled and "attention_mask" not in {i.name for i in graph.input}:
        raise UserError(f"model {spec.name!r}: its ONNX file gives token vectors but takes no attention_mask to pool them with")

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = Head(spec, source.parent) if pooled else None

        def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.head is not None:
                return self.head(hidden, attention_mask)
            return unit(hidden.float(), spec.normalize)

    tail_path = target.with_suffix(".tail.onnx")
    # The hidden width only matters to Dense layers: pooling and normalisation take any.
    width = spec.dense[0].in_features if spec.dense else 4
    example = (torch.ones((2, 8, width) if pooled else (2, width)), torch.ones((2, 8), dtype=torch.int64))
    _export(Tail().eval(), example, tail_path, ["hidden", "attention_mask"],
            {"hidden": {0: "batch", 1: "sequence"} if pooled else {0: "batch"}, "attention_mask": {0: "batch", 1: "sequence"}})
    tail = onnx.load(str(tail_path))
    tail_path.unlink()
    # Graft: the tail's "hidden" is the model's output, its "attention_mask" the model's input of
    # that name; every other name in the tail is prefixed so that none collides with the model's.
    rename = {"hidden": output.name, "attention_mask": "attention_mask"}

    def name(n: str) -> str:
        return rename.get(n, f"rayembed_tail/{n}") if n else n

    for node in tail.graph.node:
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
        node.name = name(node.name)
    for init in tail.graph.initializer:
        init.name = name(init.name)
    graph.node.extend(tail.graph.node)
    graph.initializer.extend(tail.graph.initializer)
    del graph.output[:]
    for result in tail.graph.output:  # DENSE_OUTPUTS
        result.name = name(result.name)
        graph.output.append(result)
    onnx.save(model, str(target))


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
