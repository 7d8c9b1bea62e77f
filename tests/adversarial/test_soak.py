"""A bounded soak: 60 s of 64 clients sending a seeded mix of good and bad requests to one replica.

Every request is answered: no 5xx, no dropped connection; every bad one a 4xx in OpenAI's error shape
that says what is wrong; every good one the engine's own vectors, in order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter

import numpy as np
import pytest

MODEL = "all-MiniLM-L6-v2"
SECONDS, CLIENTS, SEED = 60, 64, 14
MAX_INPUTS, MAX_BYTES = 16, 64 * 1024
# A replica drains for 30 s before it stops (direct ingress), and serve.shutdown gives up waiting after 30 s,
# leaving a dying controller that the next module's Serve would join: here it drains for 1 s.
QUICK_DRAIN = {"env_vars": {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}}
JSON = {"Content-Type": "application/json"}
BAD_KINDS = ("surrogate", "raw-surrogate", "number", "null", "empty", "blank", "too-many", "dimensions-true",
             "dimensions", "encoding", "model", "not-json", "bad-utf8", "nested", "too-big", "image", "input-type",
             "route", "object-body")


@pytest.fixture(scope="module")
def url(ray_cluster, unused_port):
    from ray import serve

    from serve_apps.openai_api import EmbeddingsAPI

    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # The docs turned on too: this one deploy also shows that the config's switch works (they are off by default).
    args = {"models": [{"model": MODEL, "precision": "fp32"}], "max_inputs_per_request": MAX_INPUTS,
            "max_request_bytes": MAX_BYTES, "api_docs": True}
    # One replica (no autoscaling), sized as config.yaml sizes it for 64 clients, and as quiet.
    deployment = EmbeddingsAPI.options(
        num_replicas=1, max_ongoing_requests=128, ray_actor_options={"num_cpus": 0, "runtime_env": QUICK_DRAIN},
        logging_config={"enable_access_log": False})
    serve.run(deployment.bind(args), name="soak", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def good_request(rng: np.random.Generator, pool: list[str]) -> tuple[bytes, list[int], str]:
    rows = rng.integers(0, len(pool), int(rng.integers(1, 9))).tolist()
    fmt = str(rng.choice(["float", "base64", "default"]))
    one = len(rows) == 1 and rng.random() < 0.5  # as a plain string
    body: dict = {"model": MODEL, "input": pool[rows[0]] if one else [pool[r] for r in rows]}
    if fmt != "default":
        body["encoding_format"] = fmt
    return json.dumps(body).encode(), rows, fmt


def bad_request(rng: np.random.Generator, pool: list[str]) -> tuple[str, str, bytes, int, str]:
    """(kind, path, body, the status it must get, what its message must say)."""
    texts = [pool[r] for r in rng.integers(0, len(pool), int(rng.integers(2, 6)))]
    k = int(rng.integers(0, len(texts)))

    def with_item(item) -> bytes:
        return json.dumps({"model": MODEL, "input": texts[:k] + [item] + texts[k + 1:]}).encode()

    kind = str(rng.choice(BAD_KINDS))
    path, status, says = "/v1/embeddings", 400, f"input[{k}]"
    if kind == "surrogate":
        body = with_item("x\ud800y")
    elif kind == "raw-surrogate":  # CESU-8 bytes of a lone surrogate, inside the JSON string
        body = with_item("@@").replace(b"@@", b"\xed\xa0\x80")
    elif kind == "number":
        body = with_item(7)
    elif kind == "null":
        body = with_item(None)
    elif kind == "empty":
        body = with_item("")
    elif kind == "blank":
        body = with_item("  \n\t ")
    elif kind == "too-many":
        body, says = json.dumps({"model": MODEL, "input": texts * MAX_INPUTS}).encode(), f"the limit is {MAX_INPUTS}"
    elif kind == "dimensions-true":
        body, says = json.dumps({"model": MODEL, "input": texts, "dimensions": True}).encode(), "'dimensions'"
    elif kind == "dimensions":
        body, says = json.dumps({"model": MODEL, "input": texts, "dimensions": 64}).encode(), "Matryoshka"
    elif kind == "encoding":
        body, says = json.dumps({"model": MODEL, "input": texts, "encoding_format": "int4"}).encode(), "encoding_format"
    elif kind == "model":
        body, status, says = json.dumps({"model": "gpt-x", "input": texts}).encode(), 404, "not served here"
    elif kind == "not-json":
        body, says = json.dumps({"model": MODEL, "input": texts}).encode()[:-3], "not valid JSON"
    elif kind == "bad-utf8":
        body, says = with_item("@@").replace(b"@@", b"\xff\xfe"), "not valid JSON"
    elif kind == "nested":
        depth = int(rng.integers(2_000, 20_000))  # past orjson's limit (1,024) and Python's recursion limit
        body, says = b'{"model": "%s", "input": %s%s}' % (MODEL.encode(), b"[" * depth, b"]" * depth), "nested"
    elif kind == "too-big":
        body = json.dumps({"model": MODEL, "input": ["x" * (MAX_BYTES + 10)]}).encode()
        status, says = 413, "the limit is"
    elif kind == "image":
        body = with_item({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
    elif kind == "input-type":
        body, says = json.dumps({"model": MODEL, "input": texts, "input_type": 5}).encode(), "input_type"
    elif kind == "route":
        path, status, says = "/v1/embedding", 404, ""
        body = json.dumps({"model": MODEL, "input": texts}).encode()
    else:
        body, says = json.dumps([MODEL, texts]).encode(), "JSON object"
    return kind, path, body, status, says


def embeddings(answer: dict, fmt: str) -> np.ndarray:
    assert [d["index"] for d in answer["data"]] == list(range(len(answer["data"])))
    if fmt == "base64":
        return np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in answer["data"]])
    return np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)


def test_the_docs_are_served_when_the_config_turns_them_on(url):
    import urllib.request

    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as response:
        assert "/v1/embeddings" in json.loads(response.read())["paths"]
    with urllib.request.urlopen(f"{url}/docs", timeout=30) as response:
        assert b"/openapi.json" in response.read()


def test_a_minute_of_64_clients_with_bad_requests_among_good(url, fp32_embedder, sts_test):
    import aiohttp

    pool = list(dict.fromkeys(sts_test.first + sts_test.second))[:512]
    expected = fp32_embedder.embed(pool)
    statuses: Counter = Counter()
    kinds: Counter = Counter()
    problems: list[str] = []
    good_rows = 0

    async def client(k: int, session: aiohttp.ClientSession, stop: float) -> None:
        nonlocal good_rows
        rng = np.random.default_rng([SEED, k])
        while time.monotonic() < stop:
            good = rng.random() < 0.6
            if good:
                body, rows, fmt = good_request(rng, pool)
                path, status_wanted, says, kind = "/v1/embeddings", 200, "", "good"
            else:
                kind, path, body, status_wanted, says = bad_request(rng, pool)
            kinds[kind] += 1
            try:
                async with session.post(url + path, data=body, headers=JSON) as response:
                    status, raw = response.status, await response.read()
            except aiohttp.ClientError as e:
                problems.append(f"{kind}: no answer ({type(e).__name__}: {e})")
                continue
            statuses[status] += 1
            try:
                answer = json.loads(raw)
            except ValueError:
                problems.append(f"{kind}: {status} with a body that is not JSON: {raw[:120]!r}")
                continue
            if status != status_wanted:
                problems.append(f"{kind}: {status}, wanted {status_wanted}: {raw[:300]!r}")
            elif good:
                got = embeddings(answer, fmt)
                cosines = (got * expected[rows]).sum(axis=1)
                if got.shape != (len(rows), 384) or cosines.min() < 0.9999:
                    problems.append(f"good: vectors differ from the engine's (min cos {cosines.min():.6f})")
                good_rows += len(rows)
            elif not (set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
                      and says in answer["error"]["message"]):
                problems.append(f"{kind}: {status} but not OpenAI's shape saying {says!r}: {raw[:300]!r}")

    async def load() -> float:
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            started = time.monotonic()
            await asyncio.gather(*(client(k, session, started + SECONDS) for k in range(CLIENTS)))
            return time.monotonic() - started

    wall = asyncio.run(load())
    total = sum(statuses.values())
    print(f"\nsoak: {total} requests in {wall:.1f} s ({total / wall:.0f}/s), {good_rows} good inputs checked; "
          f"statuses {dict(sorted(statuses.items()))}; kinds {dict(sorted(kinds.items()))}")
    assert not problems, f"{len(problems)} of {sum(kinds.values())} requests went wrong, first: {problems[:5]}"
    assert not [s for s in statuses if s >= 500]
    # Many good requests, and every kind of bad one.
    assert kinds["good"] > 1000 and len(kinds) == len(BAD_KINDS) + 1, kinds
    assert SECONDS <= wall < SECONDS + 30
