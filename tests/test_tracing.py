"""Request ids and OpenTelemetry traces of the online app, over real Serve HTTP and a local OTLP/HTTP receiver."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from actors.errors import UserError
from serve_apps import tracing
from serve_apps.config import check_app_args
from serve_apps.openai_api import EmbeddingsAPI, build_app

MODEL = "all-MiniLM-L6-v2"
# A caller's W3C trace context: the app's spans continue its trace.
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Collector(http.server.ThreadingHTTPServer):
    """What an OpenTelemetry collector's OTLP/HTTP receiver takes: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.spans: list = []  # (resource attributes, span), as they arrive
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, found, timeout: float = 20.0):
        """`found(spans)` once it is truthy (the batch processor sends every few seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                result = found([span for _, span in self.spans])
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.1)


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in export.resource_spans:
                resource = attributes(resource_spans.resource)
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend((resource, span) for span in scope_spans.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


def attributes(item) -> dict:
    def value(v):
        kind = v.WhichOneof("value")
        return [value(x) for x in v.array_value.values] if kind == "array_value" else getattr(v, kind)

    return {kv.key: value(kv.value) for kv in item.attributes}


@pytest.fixture(scope="module")
def collector():
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def base_url(ray_cluster, unused_port, collector):
    """A traced app (its endpoint in the app's args) and an untraced one (BM25: no engine to start)."""
    from ray import serve

    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # The endpoint in the app's args, checked as build_app checks them; the batch waits long enough for
    # concurrent requests to join it, and the span processor sends every 0.1 s instead of every 5.
    traced = check_app_args({"models": [{"model": MODEL, "precision": "fp32", "batch_wait_timeout_s": 0.2}],
                             "otlp_endpoint": collector.url})
    quick = {"num_cpus": 0, "runtime_env": {"env_vars": {"OTEL_BSP_SCHEDULE_DELAY": "100"}}}
    serve.run(EmbeddingsAPI.options(ray_actor_options=quick).bind(traced.model_dump()), name="traced",
              route_prefix="/traced")
    serve.run(build_app({"models": [{"model": "bm25"}]}), name="plain", route_prefix="/plain")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/traced/v1", api_key="x", max_retries=0)


def request_span(collector: Collector, request_id: str):
    """The request's HTTP server span (FastAPI's), found by the id the response carried."""
    def found(spans):
        return next((s for s in spans if s.kind == s.SPAN_KIND_SERVER
                     and attributes(s).get("rayembed.request_id") == request_id), None)

    span = collector.wait_for(found)
    assert span is not None, f"no server span for {request_id}"
    return span


def below(collector: Collector, top, names: set[str]) -> dict:
    """The spans under `top` in its trace, by name, once all of `names` have arrived."""
    def found(spans):
        by_id = {s.span_id: s for s in spans if s.trace_id == top.trace_id}
        mine = {}
        for s in by_id.values():
            parent = by_id.get(s.parent_span_id)
            while parent is not None and parent.span_id != top.span_id:
                parent = by_id.get(parent.parent_span_id)
            if parent is not None:
                mine[s.name] = s
        return mine if names <= mine.keys() else None

    mine = collector.wait_for(found)
    assert mine, f"{names} did not all arrive"
    return mine


def batch_of(collector: Collector, queue_span):
    """The rayembed.batch span that links to a request's queue span."""
    def found(spans):
        return next((s for s in spans if s.name == "rayembed.batch"
                     and any(link.span_id == queue_span.span_id and link.trace_id == queue_span.trace_id
                             for link in s.links)), None)

    batch = collector.wait_for(found)
    assert batch is not None
    return batch


def test_a_request_is_one_trace_of_its_stages(client, collector):
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input=["one", "two", "three"],
        extra_headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    request_id = raw.headers["x-request-id"]
    response = raw.parse()
    assert request_id and response._request_id == request_id and len(response.data) == 3

    # FastAPI's HTTP server span continues the caller's trace; the app adds what the request asked.
    root = request_span(collector, request_id)
    assert (root.trace_id.hex(), root.parent_span_id.hex()) == (CALLER_TRACE, CALLER_SPAN)
    assert root.name.startswith("POST ") and root.name.endswith("/v1/embeddings")
    assert attributes(root).items() >= {"rayembed.request_id": request_id, "http.request.method": "POST",
                                        "http.response.status_code": 200, "rayembed.inputs": 3,
                                        "gen_ai.request.model": "sentence-transformers/all-MiniLM-L6-v2"}.items()
    stages = below(collector, root, {"rayembed.parse", "rayembed.tokenize", "rayembed.queue", "rayembed.encode"})
    ours = [s for s in stages.values() if s.name.startswith("rayembed.")]
    assert [s.name for s in sorted(ours, key=lambda s: s.start_time_unix_nano)] == [
        "rayembed.parse", "rayembed.tokenize", "rayembed.queue", "rayembed.encode"]
    queue = stages["rayembed.queue"]
    assert attributes(queue)["rayembed.request_id"] == request_id

    # The engine call is a trace of its own, linked to the request's wait; the engine run is its child.
    batch = batch_of(collector, queue)
    assert batch.trace_id != root.trace_id and not batch.parent_span_id
    assert request_id in attributes(batch)["rayembed.request_ids"]
    assert queue.end_time_unix_nano <= batch.start_time_unix_nano + 1_000_000
    engine = below(collector, batch, {"rayembed.engine"})["rayembed.engine"]
    assert engine.parent_span_id == batch.span_id
    assert attributes(engine)["rayembed.inputs"] >= 3
    assert batch.start_time_unix_nano <= engine.start_time_unix_nano
    assert engine.end_time_unix_nano <= batch.end_time_unix_nano
    resource = next(r for r, s in collector.spans if s.span_id == root.span_id)
    assert resource["service.name"] == "rayembed"


def test_concurrent_requests_share_one_batch_span(client, collector):
    def embed(i: int) -> str:
        return client.embeddings.with_raw_response.create(model=MODEL, input=f"sentence {i}").headers["x-request-id"]

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(embed, range(4)))
    assert len(set(ids)) == 4
    queues = [below(collector, request_span(collector, i), {"rayembed.queue"})["rayembed.queue"] for i in ids]
    batches = [batch_of(collector, q) for q in queues]
    # Each request's wait is taken by exactly one engine call, which names every request it took.
    for request_id, batch in zip(ids, batches, strict=True):
        assert request_id in attributes(batch)["rayembed.request_ids"]
        assert len(batch.links) == attributes(batch)["rayembed.requests"]
    assert max(len(b.links) for b in batches) >= 2, "no two concurrent requests joined one call"


def test_errors_carry_the_request_id(client, base_url, collector):
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input="")
    request_id = refused.value.request_id
    assert request_id and refused.value.body["message"].startswith("input[0] cannot be embedded")
    root = request_span(collector, request_id)
    assert attributes(root)["http.response.status_code"] == 400

    # Starlette's 404 in OpenAI's shape, untouched, with the id beside it.
    try:
        urllib.request.urlopen(f"{base_url}/traced/v1/nothing", timeout=30)
    except urllib.error.HTTPError as e:
        assert e.code == 404 and e.headers["x-request-id"]
        assert set(json.loads(e.read())["error"]) == {"message", "type", "param", "code"}
    else:
        pytest.fail("no 404")

    # A caller's own id is kept, in the response and in the trace.
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="mine",
                                                     extra_headers={"X-Request-Id": "caller-42"})
    assert raw.headers["x-request-id"] == "caller-42"
    assert attributes(request_span(collector, "caller-42"))["http.response.status_code"] == 200


def test_without_an_endpoint_ids_but_no_tracing(base_url, collector, monkeypatch):
    body = json.dumps({"model": "bm25", "input": "a cat"}).encode()
    request = urllib.request.Request(f"{base_url}/plain/v1/embeddings", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        request_id = response.headers["x-request-id"]
        assert response.status == 200 and request_id
    # Once the traced app's later spans are in, none came from the untraced one.
    client = OpenAI(base_url=f"{base_url}/traced/v1", api_key="x", max_retries=0)
    request_span(collector, client.embeddings.with_raw_response.create(model=MODEL, input="x").headers["x-request-id"])
    assert not [s for _, s in collector.spans if attributes(s).get("rayembed.request_id") == request_id]

    # Nothing configured: nothing set up, and the helpers hand back no-ops.
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup(None) is False
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    work = len
    assert tracing.in_thread("engine", work) is work and tracing.stage("parse") is tracing.stage("encode")
    assert tracing.queued(1) is None and tracing.batch((None, 1) for _ in range(2)) is tracing.stage("parse")


def test_the_endpoint_is_checked_at_deploy():
    with pytest.raises(UserError, match="otlp_endpoint"):
        check_app_args({"otlp_endpoint": "collector:4318"})
    assert tracing.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"
