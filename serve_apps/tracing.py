"""OpenTelemetry spans of a request's stages, sent over OTLP/HTTP where an endpoint is configured.

The endpoint is the app's `otlp_endpoint` arg or the replica's standard OTEL_EXPORTER_OTLP_ENDPOINT /
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (headers, timeout, sampler, service name: the other OTEL_* variables,
read by the OTel SDK itself). Where none is, `setup` sets up nothing and every helper here hands back
the function or a shared no-op context it was given: no provider, no exporter, no span objects.

A request is one trace, under the HTTP server span FastAPI itself makes once a provider is set (it
continues the caller's W3C `traceparent` and records method, route, status and exceptions); this module
adds the request's id and, for /v1/embeddings and /v1/rerank, its model, inputs and stages:

    POST /v1/embeddings        FastAPI's, + rayembed.request_id (Serve's), gen_ai.request.model, rayembed.inputs
      fastapi.endpoint         FastAPI's: the route's function
        rayembed.parse         the body read and parsed
        rayembed.tokenize      waiting for and running the tokenizer threads
        rayembed.queue         waiting in the model's queue until the engine call it joined starts
        rayembed.encode        the response body written

An engine call that joins several requests belongs to none of them alone, so it is a trace of its own
linked to each request's queue span, as OpenTelemetry does a fan-in (a batch span with one link per
message it takes):

    rayembed.batch             the joined call; its requests' ids; a link to each request's rayembed.queue
      rayembed.engine          the call on the engine thread (one more per request rerun alone after a failure)

A request larger than a batch is an engine call of its own: its rayembed.engine is in the request's trace.
If Serve's own tracing (`tracing_config` in the Serve config) has set up the replica's provider first,
these spans go through it as well, and an endpoint configured here is added to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, trace

REQUEST_ID_HEADER = b"x-request-id"  # Serve's proxy, or the replica's direct ingress, sets and returns it

_OFF = nullcontext()
_tracer: trace.Tracer | None = None


@dataclass(frozen=True)
class RequestSpan:
    """A span of one request, and the request's id: its HTTP server span, or its wait in a queue."""

    span: trace.Span
    request_id: str


_request: ContextVar[RequestSpan | None] = ContextVar("rayembed_request_span", default=None)


def setup(endpoint: str | None) -> bool:
    """Export this replica's spans to `endpoint` (the OTLP/HTTP base URL, as OTEL_EXPORTER_OTLP_ENDPOINT),
    else to the one the environment names; True if spans are made. Nothing configured: nothing set up."""
    global _tracer
    if _tracer is not None:
        return True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    if endpoint or any(os.environ.get(f"OTEL_EXPORTER_OTLP_{kind}ENDPOINT") for kind in ("TRACES_", "")):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise ImportError("an OTLP endpoint is configured, but opentelemetry-exporter-otlp-proto-http is not "
                              "installed in the replica's environment") from e
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if not isinstance(provider, TracerProvider):  # else Serve's tracing set one: add to it
            provider = TracerProvider(resource=_resource())
            trace.set_tracer_provider(provider)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    elif not isinstance(provider, TracerProvider):
        return False
    _tracer = provider.get_tracer("rayembed")
    return True


def traces_url(endpoint: str | None) -> str | None:
    """The traces URL of an OTLP/HTTP base URL, as the SDK derives it from OTEL_EXPORTER_OTLP_ENDPOINT."""
    if endpoint is None or endpoint.rstrip("/").endswith("/v1/traces"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


def _resource():
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, if set
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "rayembed"}))
    return resource


class RequestIds:
    """ASGI middleware: Serve's request id on the request's HTTP server span, which FastAPI makes (its own
    OpenTelemetry support: the caller's traceparent, method, route, status, exceptions), and that span
    kept for `describe` and `queued`, whose spans sit below FastAPI's endpoint span."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        span = trace.get_current_span() if _tracer is not None and scope["type"] == "http" else None
        if span is None or not span.is_recording():
            return await self.app(scope, receive, send)
        request_id = next((value.decode("latin-1") for key, value in scope["headers"] if key == REQUEST_ID_HEADER), "")
        span.set_attribute("rayembed.request_id", request_id)
        token = _request.set(RequestSpan(span, request_id))
        try:
            await self.app(scope, receive, send)
        finally:
            _request.reset(token)


def stage(name: str):
    """`with stage("parse"):` a rayembed.<name> span, child of the current one."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(f"rayembed.{name}")


def describe(model: str, inputs: int) -> None:
    """What the request asked of which model, on its HTTP server span."""
    request = _request.get() if _tracer is not None else None
    if request is not None:
        request.span.set_attributes({"gen_ai.request.model": model, "rayembed.inputs": inputs})


def queued(inputs: int) -> RequestSpan | None:
    """The start of a request's wait for an engine call, which `batch` ends."""
    if _tracer is None:
        return None
    request = _request.get()
    request_id = request.request_id if request is not None else ""
    attributes = {"rayembed.inputs": inputs, "rayembed.request_id": request_id}
    span = _tracer.start_span("rayembed.queue", attributes=attributes)
    return RequestSpan(span, request_id)


def left(waiting: RequestSpan | None) -> None:
    """A request's queue span ended, if its batch did not end it (the request was cancelled first)."""
    if waiting is not None and waiting.span.is_recording():  # a span records until it ends
        waiting.span.end()


def batch(requests: Iterable[tuple[RequestSpan | None, int]]):
    """`with batch(...)`: one joined engine call's rayembed.batch span, the root of its own trace, linked
    to each request's queue span, which it ends. `requests`: each request's queue span and inputs count,
    read only when tracing is on (given as a generator, an untraced batch computes none of it)."""
    if _tracer is None:
        return _OFF
    requests = list(requests)
    inputs = sum(n for _, n in requests)
    waiting = [w for w, _ in requests if w is not None]
    for w in waiting:
        w.span.end()
    links = [trace.Link(w.span.get_span_context(), {"rayembed.request_id": w.request_id}) for w in waiting]
    attributes = {"rayembed.requests": len(waiting), "rayembed.inputs": inputs,
                  "rayembed.request_ids": [w.request_id for w in waiting]}
    # An explicit empty parent: serve.batch's task keeps the context of the request that started it.
    return _tracer.start_as_current_span("rayembed.batch", context=context.Context(), links=links,
                                         attributes=attributes)


def in_thread(name: str, work: Callable, **attributes: Any) -> Callable:
    """`work` for an executor, run in a rayembed.<name> span that is a child of the current span here
    (an executor's thread does not inherit the caller's context)."""
    if _tracer is None:
        return work
    parent = context.get_current()
    tracer = _tracer
    span_attributes = {f"rayembed.{key}": value for key, value in attributes.items()}

    def traced(*args):
        with tracer.start_as_current_span(f"rayembed.{name}", context=parent, attributes=span_attributes):
            return work(*args)

    return traced
