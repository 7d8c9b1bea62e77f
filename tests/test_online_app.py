"""The online app over real Ray Serve HTTP, driven by the official openai client and by plain requests."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import post_json
from openai import AuthenticationError, NotFoundError, OpenAI

from actors.quantize import NEEDS_RANGES
from jobs.embed_corpus import main as embed_corpus
from serve_apps.openai_api import EmbeddingsAPI, build_app

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
LIMITS = {"max_inputs_per_request": 8, "max_request_bytes": 4096}


@pytest.fixture(scope="module")
def base_url(ray_cluster, unused_port):
    """The app from config.yaml's builder, on a real Serve HTTP proxy; a second, key-protected copy."""
    from ray import serve

    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from actors.catalog import CATALOG
    from actors.export import model_folder

    # A second model in the same app: a custom one, the default's ONNX export under another name,
    # whose properties say it takes Matryoshka dimensions and has e5-style prompts.
    copy = {"name": "minilm-copy", "dimensions": 384, "tokens": 256, "pooling": "mean", "normalize": True,
            "model_location": str(model_folder(CATALOG.resolve(MODEL), "fp32")), "matryoshka_dims": [64, 128, 384],
            "query_prefix": "query: ", "passage_prefix": "passage: "}
    serve.run(build_app({"models": [{"model": MODEL, "precision": "fp32"}, {"model": copy, "precision": "fp32"}], **LIMITS}),
              name="open", route_prefix="/open")
    args = {"models": [{"model": MODEL, "precision": "fp32"}], **LIMITS}
    secured = EmbeddingsAPI.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {"RAYEMBED_API_KEY": "s3cret"}}})
    serve.run(secured.bind(args), name="secured", route_prefix="/secured")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/open/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_float_and_base64_vectors(client, fp32_embedder, sts_test):
    texts = sts_test.first[:5]
    expected = fp32_embedder.embed(texts)
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == list(range(5))
    assert np.allclose(np.array([d.embedding for d in floats.data]), expected, atol=1e-6)
    # Without encoding_format the client asks for base64 itself and decodes it.
    default = client.embeddings.create(model=MODEL, input=texts)
    assert np.allclose(np.array([d.embedding for d in default.data]), expected, atol=1e-6)
    packed = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    vectors = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in packed.data])
    assert np.allclose(vectors, expected, atol=1e-6)
    assert floats.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == int(fp32_embedder.tokenize(texts).tokens.offsets[-1])


def test_requests_are_routed_by_model(client):
    a = client.embeddings.create(model="minilm-copy", input="routed")  # its default prompt is "passage: "
    b = client.embeddings.create(model="onnx/all-MiniLM-L6-v2", input="passage: routed")  # an alias routes too
    assert a.model == "minilm-copy" and b.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert np.allclose(a.data[0].embedding, b.data[0].embedding, atol=1e-6)


def test_one_input_and_dimensions(client, fp32_embedder):
    """`dimensions` works for a model that declares Matryoshka dimensions; for one that does not, a 400 names it."""
    from openai import BadRequestError

    one = client.embeddings.create(model="minilm-copy", input="a single string", dimensions=64)
    assert len(one.data) == 1 and len(one.data[0].embedding) == 64
    full = fp32_embedder.embed(["passage: a single string"])[0]
    assert np.allclose(one.data[0].embedding, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    with pytest.raises(BadRequestError, match="declares no Matryoshka dimensions"):
        client.embeddings.create(model=MODEL, input="a single string", dimensions=64)


def test_input_type_and_prompt_name_pick_the_prompt(client, fp32_embedder):
    """NIM's and Cohere's `input_type`, TEI's `prompt_name`, as extra body fields the openai client sends."""
    query = client.embeddings.create(model="minilm-copy", input=["what is ray"], extra_body={"input_type": "query"})
    named = client.embeddings.create(model="minilm-copy", input=["what is ray"], extra_body={"prompt_name": "query"})
    passage = client.embeddings.create(model="minilm-copy", input=["what is ray"])  # the model's default: passage
    expected = fp32_embedder.embed(["query: what is ray", "passage: what is ray"])
    assert np.allclose(query.data[0].embedding, expected[0], atol=1e-6)
    assert np.allclose(named.data[0].embedding, expected[0], atol=1e-6)
    assert np.allclose(passage.data[0].embedding, expected[1], atol=1e-6)
    # prompt tokens count, as sentence-transformers counts them
    assert query.usage.prompt_tokens == len(fp32_embedder.tokenize(["query: what is ray"]).tokens.ids)


def test_models_list_says_how_to_call_each(base_url):
    with urllib.request.urlopen(f"{base_url}/open/v1/models", timeout=30) as response:
        listed = {m["id"]: m for m in json.loads(response.read())["data"]}
    copy = listed["minilm-copy"]
    assert copy["dimensions"] == 384 and copy["max_tokens"] == 256 and copy["pooling"] == "mean"
    assert set(copy["prompt_names"]) >= {"query", "passage"} and copy["matryoshka_dims"] == [64, 128, 384]


def test_base64_is_little_endian_float32(base_url, fp32_embedder):
    status, body = post_json(f"{base_url}/open/v1/embeddings", {"model": MODEL, "input": "raw", "encoding_format": "base64"})
    assert status == 200
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, fp32_embedder.embed(["raw"])[0], atol=1e-6)


def test_served_vectors_equal_the_offline_jobs(client, ray_cluster, tmp_path, sts_test):
    texts = sts_test.second[:8]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    assert embed_corpus([str(corpus), str(tmp_path / "out"), "--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out").sort_by("id")
    offline = np.asarray(table["embedding"].combine_chunks().values).reshape(8, -1)
    online = np.array([d.embedding for d in client.embeddings.create(model=MODEL, input=texts).data])
    assert (offline * online).sum(axis=1).min() >= 0.9999


def test_truncation_is_reported_in_usage(base_url):
    for fields in ({}, {"truncate": None}):  # null, as for the other fields, is left out: END
        status, body = post_json(f"{base_url}/open/v1/embeddings", {"model": MODEL, "input": ["word " * 600], **fields})
        assert status == 200 and body["usage"]["truncated_inputs"] == 1 and body["usage"]["prompt_tokens"] == 256, fields


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": MODEL, "input": ""}, 400, "input[0] cannot be embedded: empty"),
        ({"model": MODEL, "input": ["ok", 7]}, 400, "input[1] is not a string"),
        ({"model": MODEL, "input": []}, 400, "non-empty list of strings"),
        ({"model": MODEL, "input": ["x"] * 9}, 400, "9 inputs in one request; the limit is 8"),
        ({"model": MODEL, "input": "x", "dimensions": 999}, 400, "'dimensions' must be an integer from 1 to 384"),
        ({"model": MODEL, "input": "x", "encoding_format": "int4"}, 400, "'encoding_format' must be one of 'float', 'base64', 'int8'"),
        ({"model": "minilm-copy", "input": "x", "encoding_format": "uint8"}, 400, "uint8 needs calibration ranges"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8", "embedding_type": "binary"}, 400,
         "embedding_type and encoding_format each name the embedding type"),
        ({"model": MODEL, "input": "x", "embedding_types": "binary"}, 400, "'embedding_types' must be a non-empty list"),
        # What the openai client sends for extra_body={"embedding_type": ...} without encoding_format: it would
        # read the base64 of int8 bytes as float32.
        ({"model": MODEL, "input": "x", "embedding_type": "int8", "encoding_format": "base64"}, 400,
         "send encoding_format 'int8'"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8", "normalize": False}, 400,
         "int8 and uint8 use sentence-transformers/all-MiniLM-L6-v2's calibration ranges"),
        ({"model": MODEL, "input": "x", "truncate": "end"}, 400, "'truncate' must be one of END, START, NONE"),
        ({"model": MODEL, "input": "x", "normalize": "no"}, 400, "'normalize' must be true or false"),
        ({"model": MODEL, "input": [[101, 7592, 102]]}, 400, "check_embedding_ctx_length=False"),
        ({"model": MODEL, "input": [7592, 2088]}, 400, "'input' is a list of token ids"),
        ({"model": MODEL, "input": "x" * 5000}, 413, "the limit is 4,096"),
        (b"{not json", 400, "not valid JSON"),
        ({"model": "gpt-embedding-9", "input": "x"}, 404, "served models: minilm-copy, sentence-transformers/all-MiniLM-L6-v2"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_to_fix(base_url, body, status, says):
    got, error = post_json(f"{base_url}/open/v1/embeddings", body)
    assert got == status
    assert says in error["error"]["message"]


def test_binary_takes_dimensions_where_int8_does_not(client):
    """A cut vector's bits are its signs, which need no ranges: 64 dimensions give 8 bytes, those of the cut vector."""
    from sentence_transformers.util.quantization import quantize_embeddings

    packed = client.embeddings.create(model="minilm-copy", input="x", dimensions=64, encoding_format="binary")
    cut = client.embeddings.create(model="minilm-copy", input="x", dimensions=64, encoding_format="float")
    assert len(packed.data[0].embedding) == 8
    expected = quantize_embeddings(np.array([cut.data[0].embedding], dtype=np.float32), "binary")
    assert np.array_equal(np.array([packed.data[0].embedding]), expected)


def test_unknown_model_through_the_client_is_a_404(client):
    with pytest.raises(NotFoundError, match="not served here"):
        client.embeddings.create(model="nope", input="x")


def test_api_key_when_set(base_url):
    secured = OpenAI(base_url=f"{base_url}/secured/v1", api_key="s3cret", max_retries=0)
    assert len(secured.embeddings.create(model=MODEL, input="let me in").data) == 1
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{base_url}/secured/v1", api_key="wrong", max_retries=0).embeddings.create(model=MODEL, input="x")
    status, error = post_json(f"{base_url}/secured/v1/embeddings", {"model": MODEL, "input": "x"})
    assert status == 401 and "Authorization: Bearer" in error["error"]["message"]


def test_models_and_health(base_url, client):
    assert [m.id for m in client.models.list().data] == ["minilm-copy", "sentence-transformers/all-MiniLM-L6-v2"]
    with urllib.request.urlopen(f"{base_url}/open/healthz", timeout=30) as response:
        assert response.status == 200


def test_config_file_validates_with_serves_schema():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve_apps.config import AppConfig

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_apps" / "config.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "serve_apps.openai_api:build_app"
    AppConfig.model_validate(app.args)


def test_a_config_typo_fails_the_build_naming_the_key():
    from actors.errors import UserError

    with pytest.raises(UserError, match="precison"):
        build_app({"models": [{"model": MODEL, "precison": "fp32"}]})
    # Configs written before the rename keep working: max_batch_tokens is queue_batch_tokens' old name.
    from serve_apps.config import AppConfig

    served = AppConfig.model_validate({"models": [{"model": MODEL, "max_batch_tokens": 64}]}).models[0]
    assert served.queue_batch_tokens == 64
    build_app({"models": [{"model": MODEL, "precision": "fp32", "max_batch_tokens": 64}]})


def _concurrently(url: str, body: dict, n: int) -> list[tuple[int, str | None]]:
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, None
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Retry-After")

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_overload_is_answered_with_503_and_retry_after_then_serves_again(base_url):
    from ray import serve
    from ray.serve.config import BackpressureConfig

    tight = EmbeddingsAPI.options(max_ongoing_requests=1, max_queued_requests=1, ray_actor_options={"num_cpus": 0},
                                  backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1))
    serve.run(tight.bind({"models": [{"model": MODEL, "precision": "fp32", "queue_batch_tokens": 64}]}), name="tight", route_prefix="/tight")
    url = f"{base_url}/tight/v1/embeddings"
    results = _concurrently(url, {"model": MODEL, "input": ["a longer text to keep the replica busy " * 20] * 16}, 24)
    codes = [code for code, _ in results]
    assert 200 in codes and 503 in codes, codes
    assert all(retry == "1" for code, retry in results if code == 503)
    assert post_json(url, {"model": MODEL, "input": "after the storm"})[0] == 200
    serve.delete("tight")


def test_a_killed_replica_is_replaced(base_url):
    import time

    import ray
    from ray import serve
    from ray.util.state import list_actors

    serve.run(EmbeddingsAPI.options(ray_actor_options={"num_cpus": 0}).bind({"models": [{"model": MODEL, "precision": "fp32"}]}),
              name="fragile", route_prefix="/fragile")
    url = f"{base_url}/fragile/v1/embeddings"
    assert post_json(url, {"model": MODEL, "input": "before"})[0] == 200
    replicas = [a for a in list_actors(filters=[("state", "=", "ALIVE")], timeout=10) if "fragile" in (a.name or "")]
    assert len(replicas) == 1
    ray.kill(ray.get_actor(replicas[0].name, namespace="serve"), no_restart=True)
    deadline, status = time.monotonic() + 120, 0
    while time.monotonic() < deadline:
        try:  # until the new replica is up, HAProxy may answer 503 with a page of its own, or close
            status = post_json(url, {"model": MODEL, "input": "after"})[0]
        except (OSError, http.client.HTTPException, ValueError):
            status = 0
        if status == 200:
            break
        time.sleep(1)
    assert status == 200
    serve.delete("fragile")


def test_clip_model_serves_images_and_text_in_one_space(base_url, random_clip, sample_images, tmp_path):
    from ray import serve

    from rayembed import Embedder

    served = tmp_path / "served-images"
    served.mkdir()
    (served / "plot.png").write_bytes(sample_images["plot.png"])
    outside = tmp_path / "private.png"
    outside.write_bytes(sample_images["plot.png"])
    args = {"models": [{"model": random_clip["spec"], "precision": "fp32"}], "image_roots": [str(served)]}
    serve.run(EmbeddingsAPI.options(ray_actor_options={"num_cpus": 0}).bind(args), name="clip", route_prefix="/clip")
    client = OpenAI(base_url=f"{base_url}/clip/v1", api_key="unused", max_retries=0)
    data_url = "data:image/jpeg;base64," + base64.b64encode(sample_images["shapes.jpg"]).decode()
    response = client.embeddings.create(model="random-clip", encoding_format="float",
                                        input=[data_url, "a red circle and a blue square", str(served / "plot.png")])
    got = np.array([d.embedding for d in response.data])
    engine = Embedder(random_clip["spec"], precision="fp32")
    expected = np.vstack([engine.embed_images([sample_images["shapes.jpg"]]), engine.embed(["a red circle and a blue square"]),
                          engine.embed_images([sample_images["plot.png"]])])
    assert (got * expected).sum(axis=1).min() >= 0.9999  # the offline engine's vectors, images and text alike
    assert response.usage.prompt_tokens > 0

    url = f"{base_url}/clip/v1/embeddings"
    item = {"type": "image_url", "image_url": {"url": data_url}}
    assert post_json(url, {"model": "random-clip", "input": [item]})[0] == 200
    status, body = post_json(url, {"model": "random-clip", "input": [{"type": "image_url", "image_url": {"url": str(outside)}}]})
    assert status == 403 and "image_roots" not in body["error"]["message"] and str(served) in body["error"]["message"]
    traversal = str(served / ".." / "private.png")
    assert post_json(url, {"model": "random-clip", "input": [{"type": "image_url", "image_url": {"url": traversal}}]})[0] == 403
    status, body = post_json(url, {"model": "random-clip", "input": ["data:image/png;base64," + base64.b64encode(b"junk").decode()]})
    assert status == 400 and "cannot decode" in body["error"]["message"]
    small = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    status, body = post_json(f"{base_url}/open/v1/embeddings", {"model": MODEL, "input": [small]})
    assert status == 400 and "CLIP" in body["error"]["message"]
    serve.delete("clip")


# --- The API the field expects: embedding types, truncation, normalisation, /tokenize, /info ---

CATALOGUE_RANGES = np.load(ROOT / "actors" / "ranges" / "all-MiniLM-L6-v2.npy")


def test_each_embedding_type_equals_sentence_transformers_quantize_embeddings(client, base_url, sts_test):
    from sentence_transformers.util.quantization import quantize_embeddings

    texts = sts_test.first[:6]
    floats = np.array([d.embedding for d in client.embeddings.create(model=MODEL, input=texts, encoding_format="float").data],
                      dtype=np.float32)
    for kind, width in (("int8", 384), ("uint8", 384), ("binary", 48), ("ubinary", 48)):
        expected = quantize_embeddings(floats, precision=kind, ranges=CATALOGUE_RANGES)
        # OpenAI's encoding_format, through the official client (it passes the name through).
        got = client.embeddings.create(model=MODEL, input=texts, encoding_format=kind)
        assert np.array_equal(np.array([d.embedding for d in got.data]), expected) and expected.shape[1] == width, kind
        # NIM's embedding_type, as JSON integers.
        status, body = post_json(f"{base_url}/open/v1/embeddings", {"model": MODEL, "input": texts, "embedding_type": kind})
        assert status == 200 and np.array_equal(np.array([d["embedding"] for d in body["data"]]), expected), kind
        # Cohere's embedding_types with base64: each type's bytes.
        status, body = post_json(f"{base_url}/open/v1/embeddings", {"model": MODEL, "input": texts, "embedding_types": [kind],
                                                               "encoding_format": "base64"})
        packed = np.array([np.frombuffer(base64.b64decode(d["embedding"][kind]), dtype=expected.dtype) for d in body["data"]])
        assert status == 200 and np.array_equal(packed, expected), kind
        # The int8 types say which ranges made them.
        assert body.get("calibration") == ("catalogue: all-MiniLM-L6-v2.npy" if kind in NEEDS_RANGES else None)
    # Cohere's embedding_types: several types at once, each embedding an object by type.
    both = client.embeddings.create(model=MODEL, input=texts, encoding_format="float",
                                    extra_body={"embedding_types": ["float", "ubinary"]})
    assert set(both.data[0].embedding) == {"float", "ubinary"}
    assert np.array_equal(np.array([d.embedding["ubinary"] for d in both.data]), quantize_embeddings(floats, "ubinary"))
    assert np.allclose(np.array([d.embedding["float"] for d in both.data]), floats, atol=0)


def test_truncate_none_refuses_exactly_the_over_long_inputs(base_url, fp32_embedder):
    texts = ["short", "word " * 300, "also short", "token " * 260]
    counts = [len(tokens) for tokens in fp32_embedder.tokenizer.tokens_of(texts)]
    status, error = post_json(f"{base_url}/open/v1/embeddings", {"model": MODEL, "input": texts, "truncate": "NONE"})
    message = error["error"]["message"]
    assert status == 400 and error["error"]["code"] == "input_too_long" and error["error"]["param"] == "input"
    assert f"input[1] has {counts[1]}, input[3] has {counts[3]:,} tokens" in message and "limit of 256" in message
    assert "input[0]" not in message and "input[2]" not in message and "truncate END or START" in message
    status, body = post_json(f"{base_url}/open/v1/embeddings", {"model": MODEL, "input": texts[::2], "truncate": "NONE"})
    assert status == 200 and len(body["data"]) == 2  # nothing over the limit: as END


def test_truncate_start_keeps_the_end_and_end_the_start(client, fp32_embedder):
    from actors.tokenize import Tokens

    text = "opening " * 80 + " ".join(f"w{i}" for i in range(300))
    whole = [t["id"] for t in fp32_embedder.tokenizer.tokens_of([text])[0]]
    kept = whole[:1] + whole[len(whole) - 255:]  # [CLS], then the last 254 tokens and [SEP]
    expected = fp32_embedder.embed_tokens(Tokens(np.array(kept, dtype=np.int32), np.array([0, 256]), np.array([True])))
    start = client.embeddings.create(model=MODEL, input=[text], extra_body={"truncate": "START"})
    end = client.embeddings.create(model=MODEL, input=[text], extra_body={"truncate": "END"})
    assert np.allclose(start.data[0].embedding, expected[0], atol=1e-6)
    assert np.allclose(end.data[0].embedding, fp32_embedder.embed([text])[0], atol=1e-6)
    assert start.usage.prompt_tokens == 256


def test_normalize_false_gives_the_models_vectors_before_its_normalize_module(client, reference_model, sts_test):
    from sentence_transformers import SentenceTransformer

    texts = sts_test.first[:4]
    unnormalised = SentenceTransformer(modules=[reference_model[0], reference_model[1]], device="cpu").encode(texts)
    raw = client.embeddings.create(model=MODEL, input=texts, extra_body={"normalize": False})
    unit = client.embeddings.create(model=MODEL, input=texts, extra_body={"normalize": True})
    assert np.allclose(np.array([d.embedding for d in raw.data]), unnormalised, rtol=1e-4, atol=1e-5)
    assert np.allclose(np.linalg.norm(np.array([d.embedding for d in unit.data]), axis=1), 1, atol=1e-6)
    # with dimensions: the first 64 values as they are, not re-normalised
    cut = client.embeddings.create(model="minilm-copy", input=texts[:1], dimensions=64, extra_body={"normalize": False})
    full = client.embeddings.create(model="minilm-copy", input=texts[:1], extra_body={"normalize": False})
    assert np.allclose(cut.data[0].embedding, full.data[0].embedding[:64], atol=1e-6)


def test_tokenize_gives_each_inputs_tokens_whole_as_tei(base_url, fp32_embedder):
    status, body = post_json(f"{base_url}/open/tokenize", {"model": MODEL, "inputs": ["Hello world", "word " * 300]})
    assert status == 200 and len(body) == 2
    assert body[0] == [{"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None},
                       {"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5},
                       {"id": 2088, "text": "world", "special": False, "start": 6, "stop": 11},
                       {"id": 102, "text": "[SEP]", "special": True, "start": None, "stop": None}]
    assert len(body[1]) == 302  # the whole text, over the model's 256: /info says the limit
    # A prompt's tokens come first, with no place in the text; without special tokens on request.
    status, body = post_json(f"{base_url}/open/tokenize", {"model": "minilm-copy", "inputs": "Hello", "prompt_name": "query",
                                                      "add_special_tokens": False})
    assert [t["text"] for t in body[0]] == ["query", ":", "Hello"] and body[0][2]["start"] == 0
    status, error = post_json(f"{base_url}/open/tokenize", {"inputs": "x"})  # two models served: which one?
    assert status == 404 and "served models" in error["error"]["message"]
    status, error = post_json(f"{base_url}/open/tokenize", b'{"model": "%s", "inputs": ["ok", "x\\ud800"]}' % MODEL.encode())
    assert status == 400 and "inputs[1] cannot be tokenised: undecodable" in error["error"]["message"]


def test_info_says_what_each_model_is_and_how_it_runs(base_url):
    with urllib.request.urlopen(f"{base_url}/open/info", timeout=30) as response:
        info = json.loads(response.read())
    models = {m["name"]: m for m in info["models"]}
    assert info["version"] and set(models) == {"sentence-transformers/all-MiniLM-L6-v2", "minilm-copy"}
    default = models["sentence-transformers/all-MiniLM-L6-v2"]
    assert {k: default[k] for k in ("dimensions", "max_tokens", "pooling", "normalize", "precision", "backend", "device")} \
        == {"dimensions": 384, "max_tokens": 256, "pooling": "mean", "normalize": True, "precision": "fp32",
            "backend": "onnx", "device": "cpu"}
    assert default["embedding_types"] == ["float", "int8", "uint8", "binary", "ubinary"]
    assert default["calibration"] == "catalogue: all-MiniLM-L6-v2.npy"
    copy = models["minilm-copy"]
    assert copy["prompts"] == {"query": "query: ", "passage": "passage: "} and copy["default_prompt_name"] == "passage"
    assert copy["embedding_types"] == ["float", "binary", "ubinary"] and copy["calibration"] is None
