"""Requests built to break the online app, over real Serve HTTP: each gets one vector per input in order,
or a 4xx in OpenAI's error shape that names what to fix, and none stalls the replica or its neighbours.

One app serves them all (a deploy costs ~30 s here): all-MiniLM-L6-v2, the same export declared with
more tokens than its graph has positions (a real way to make the engine fail on one request's text),
and a random-weight CLIP with an image root that holds a FIFO and large files.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import post_json
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MODEL = "all-MiniLM-L6-v2"
OVERLONG = "minilm-overlong"  # declares 1,024 tokens; its graph has 512 positions
CLIP = "random-clip"
# A replica drains for 30 s before it stops (direct ingress), and serve.shutdown gives up waiting after 30 s,
# leaving a dying controller that the next module's Serve would join: here it drains for 1 s.
QUICK_DRAIN = {"env_vars": {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}}


def png(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


@pytest.fixture(scope="module")
def app(ray_cluster, unused_port, random_clip, tmp_path_factory):
    from ray import serve

    from actors.catalog import CATALOG
    from actors.export import model_folder
    from serve_apps.openai_api import EmbeddingsAPI

    images = tmp_path_factory.mktemp("image-root")
    (images / "red.png").write_bytes(png(96, 64))
    os.mkfifo(images / "stuck.png")  # nothing ever writes to it
    for i in range(3):  # valid PNGs padded to 48 MiB (sparse: no disk), each under the 50 MiB per-file limit
        with open(images / f"padded-{i}.png", "wb") as fh:
            fh.write(png(64, 64))
            fh.truncate(48 * 1024 * 1024)
    overlong = {"name": OVERLONG, "dimensions": 384, "tokens": 1024, "pooling": "mean", "normalize": True,
                "model_location": str(model_folder(CATALOG.resolve(MODEL), "fp32"))}
    args = {"models": [{"model": MODEL, "precision": "fp32"},
                       # A long wait, so that requests sent together join one engine call.
                       {"model": overlong, "precision": "fp32", "batch_wait_timeout_s": 0.5},
                       {"model": random_clip["spec"], "precision": "fp32"}],
            "image_roots": [str(images)]}
    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deployment = EmbeddingsAPI.options(
        num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0, "runtime_env": QUICK_DRAIN},
        logging_config={"enable_access_log": False})
    serve.run(deployment.bind(args), name="adversarial", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {"port": port, "url": url, "embeddings": f"{url}/v1/embeddings", "images": images}
    serve.shutdown()


@pytest.fixture(scope="module")
def clip_engine(random_clip):
    from rayembed import Embedder

    return Embedder(random_clip["spec"], precision="fp32")


def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def image_item(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def openai_error(body: dict) -> dict:
    """The body's error, checked to be OpenAI's shape: {"error": {message, type, param, code}}."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
    return error


def vectors(body: dict) -> np.ndarray:
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def raw_response(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    """Status and JSON body of the response on a raw socket, waiting at most `timeout` seconds."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, json.loads(rest[:length])


# -- never silently wrong ----------------------------------------------------------------------------------------------

def test_a_lone_surrogate_is_a_400_naming_its_input_never_two_vectors(app):
    # Valid JSON (RFC 8259 allows the escape); Python's json writes it as \ud800.
    body = json.dumps({"model": MODEL, "input": ["a", "\ud800", "c"]}).encode()
    assert b"\\ud800" in body
    status, answer = post_json(app["embeddings"], body)
    assert status == 400, answer
    assert openai_error(answer)["message"].startswith("input[1] cannot be embedded")


def test_clip_mixed_text_and_images_are_answered_in_order(app, clip_engine):
    red, blue = png(96, 64), png(40, 120, (20, 120, 220))
    inputs = [data_url(red), "a red square", image_item(str(app["images"] / "red.png")), image_item(data_url(blue)),
              "a tall blue bar"]
    status, answer = post_json(app["embeddings"], {"model": CLIP, "input": inputs})
    assert status == 200, answer
    expected = np.vstack([clip_engine.embed_images([red]), clip_engine.embed(["a red square"]),
                          clip_engine.embed_images([red, blue]), clip_engine.embed(["a tall blue bar"])])
    assert (vectors(answer) * expected).sum(axis=1).min() >= 0.9999


def test_clip_mixed_input_with_a_lone_surrogate_names_it(app):
    body = json.dumps({"model": CLIP, "input": [data_url(png(32, 32)), "\ud800", "c"]}).encode()
    status, answer = post_json(app["embeddings"], body)
    assert status == 400 and openai_error(answer)["message"].startswith("input[1] cannot be embedded"), answer


def test_the_first_bad_input_is_named_whether_image_or_text(app):
    junk = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    status, answer = post_json(app["embeddings"], {"model": CLIP, "input": ["fine", junk, "", "fine"]})
    assert status == 400 and openai_error(answer)["message"].startswith("input[1] cannot be embedded"), answer


def test_dimensions_true_is_refused(app):
    status, answer = post_json(app["embeddings"], {"model": MODEL, "input": "x", "dimensions": True})
    assert status == 400 and openai_error(answer)["param"] == "dimensions"


# -- the body limit holds while reading --------------------------------------------------------------------------------

def test_a_content_length_over_the_limit_is_a_413_before_the_body_comes(app):
    with socket.create_connection(("127.0.0.1", app["port"]), timeout=10) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 9437184\r\n\r\n" + b'{"input": "' + b"x" * 1000)  # and never the rest
        status, answer = raw_response(sock, timeout=10)
    assert status == 413 and "the limit is 8,388,608" in openai_error(answer)["message"]


def test_a_chunked_body_over_the_limit_is_a_413_without_reading_it_all(app):
    with socket.create_connection(("127.0.0.1", app["port"]), timeout=10) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent = threading.Event()

        def send() -> None:  # 9 MiB in 64 KiB chunks, and never the last (empty) chunk
            chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
            try:
                for _ in range(144):
                    sock.sendall(chunk)
            except OSError:  # the server answered and closed: it stopped reading
                return
            sent.set()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        status, answer = raw_response(sock, timeout=15)
    assert status == 413 and "the limit is 8,388,608" in openai_error(answer)["message"]


def test_deeply_nested_json_is_a_4xx_in_openai_shape(app):
    for depth in (100_000, 1_000):  # past any parser's depth limit, and within it
        body = b'{"model": "' + MODEL.encode() + b'", "input": ' + b"[" * depth + b"]" * depth + b"}"
        status, answer = post_json(app["embeddings"], body)
        assert 400 <= status < 500, (depth, answer)
        openai_error(answer)


def test_unknown_routes_and_methods_are_answered_in_openai_shape(app):
    status, body = get(f"{app['url']}/v1/nothing-here")
    assert status == 404 and openai_error(json.loads(body))
    status, body = get(f"{app['url']}/v1/embeddings")
    assert status == 405 and openai_error(json.loads(body))


# -- nothing stalls ----------------------------------------------------------------------------------------------------

def test_an_engine_error_fails_only_its_own_request_in_a_joined_batch(app, fp32_embedder):
    # 700 words: within the 1,024 tokens the model declares, past the 512 positions its graph has.
    too_long = {"model": OVERLONG, "input": "word " * 700}
    short = [{"model": OVERLONG, "input": [f"short text number {i}", "another"]} for i in range(3)]
    for _ in range(2):  # twice: the replica serves on after the failure
        with ThreadPoolExecutor(4) as pool:  # sent together, so the 0.5 s batch wait joins them
            answers = list(pool.map(lambda body: post_json(app["embeddings"], body), [too_long, *short]))
        status, failed = answers[0]
        assert status == 500 and openai_error(failed)["type"] == "server_error", failed
        for body, (status, answer) in zip(short, answers[1:]):
            assert status == 200, answer
            assert np.allclose(vectors(answer), fp32_embedder.embed(body["input"]), atol=1e-5)


def test_healthz_answers_quickly_while_an_8_mb_request_is_processed(app):
    texts = [f"{i} " + "lorem ipsum dolor " * 55_000 for i in range(8)]  # 8 x ~990,000 characters
    body = json.dumps({"model": MODEL, "input": texts}).encode()
    assert 7_500_000 < len(body) < 8 * 1024 * 1024
    done: list = []
    big = threading.Thread(target=lambda: done.append(post_json(app["embeddings"], body, timeout=300)))
    started = time.monotonic()
    big.start()
    latencies = []
    while big.is_alive() and time.monotonic() - started < 120:
        t = time.monotonic()
        status, _ = get(f"{app['url']}/healthz", timeout=30)
        latencies.append(time.monotonic() - t)
        assert status == 200
        time.sleep(0.05)
    big.join()
    assert done and done[0][0] == 200 and len(done[0][1]["data"]) == 8
    assert len(latencies) >= 5, f"the request took only {time.monotonic() - started:.1f} s"
    assert max(latencies) < 0.5, f"/healthz took up to {max(latencies):.2f} s ({len(latencies)} polls)"


def test_a_fifo_under_an_image_root_is_a_4xx_in_bounded_time(app):
    fifo = app["images"] / "stuck.png"
    started = time.monotonic()
    try:
        status, answer = post_json(app["embeddings"], {"model": CLIP, "input": [image_item(str(fifo))]}, timeout=15)
    except (TimeoutError, urllib.error.URLError):  # the old code's: no answer
        status, answer = 0, {}
    finally:  # a reader blocked on the FIFO (the old code's) is let go
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert 400 <= status < 500, f"{status} after {time.monotonic() - started:.1f} s"
    assert "input[0]" in openai_error(answer)["message"]
    # ...and the image threads are free: a real image is embedded after it.
    assert post_json(app["embeddings"], {"model": CLIP, "input": [data_url(png(32, 32))]}, timeout=15)[0] == 200


def test_a_requests_images_have_a_pixel_budget(app):
    # 49 M pixels each, under the per-image limit; six of them pass the 256 M per request at the sixth.
    big = data_url(png(7000, 7000))
    started = time.monotonic()
    status, answer = post_json(app["embeddings"], {"model": CLIP, "input": ["text", *[big] * 6]}, timeout=120)
    assert status == 413, answer
    assert openai_error(answer)["message"].startswith("input[6]") and "pixels" in answer["error"]["message"]
    assert time.monotonic() - started < 10, "refused before decoding"


def test_a_requests_images_have_a_budget_of_bytes_read(app):
    # Three valid 48 MiB files: the third passes the 128 MiB per request and is never read.
    items = [image_item(str(app["images"] / f"padded-{i}.png")) for i in range(3)]
    status, answer = post_json(app["embeddings"], {"model": CLIP, "input": items}, timeout=120)
    assert status == 413, answer
    assert openai_error(answer)["message"].startswith("input[2]") and "bytes" in answer["error"]["message"]


# -- exposure ----------------------------------------------------------------------------------------------------------

def test_docs_and_the_openapi_schema_are_off_by_default(app):
    for path in ("/docs", "/redoc", "/openapi.json"):
        status, body = get(f"{app['url']}{path}")
        assert status == 404, (path, body[:200])
        openai_error(json.loads(body))


def test_serving_beyond_loopback_without_a_key_says_so_at_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYEMBED_API_KEY")}
    log = tmp_path / "serve.log"
    port = socket.create_server(("127.0.0.1", 0)).getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "rayembed", "serve", "--host", "0.0.0.0", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, cwd=ROOT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            text = log.read_text()
            if "RAYEMBED_API_KEY" in text or "rayembed: serving" in text:
                break
            time.sleep(0.5)
        text = log.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    warning = [line for line in text.splitlines() if "RAYEMBED_API_KEY" in line]
    assert warning and "0.0.0.0" in warning[0] and "WARNING" in warning[0], text[-2000:]
    assert "rayembed: serving" not in text.split(warning[0])[0], "said at start, before serving"


@pytest.mark.parametrize(("host", "key", "warned"), [
    ("0.0.0.0", None, True), ("::", None, True), ("10.1.2.3", None, True), ("my-host", None, True),
    ("0.0.0.0", "k", False), ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False)])
def test_the_exposure_warning_is_for_open_servers_beyond_loopback(monkeypatch, capsys, host, key, warned):
    import cluster.serving
    from rayembed.cli import main

    monkeypatch.setattr(cluster.serving, "run_serve", lambda config, address=None, log=print: 0)
    if key:
        monkeypatch.setenv("RAYEMBED_API_KEY", key)
    else:
        monkeypatch.delenv("RAYEMBED_API_KEY", raising=False)
    assert main(["serve", "--host", host]) == 0
    assert ("RAYEMBED_API_KEY" in capsys.readouterr().err) is warned
