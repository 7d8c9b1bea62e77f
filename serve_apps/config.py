"""The app's typed config: the `args` of serve_apps/config.yaml, checked once at deploy time.

Unknown keys are errors that name the key, so a typo in config.yaml fails `serve run` instead of
being served with a default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from actors.catalog import DEFAULT_MODEL
from actors.devices import Backend, Precision
from actors.errors import UserError


class ServedModel(BaseModel):
    """One model the app serves, and how its requests are queued into engine calls."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str | dict = DEFAULT_MODEL  # a catalogue name or custom model properties
    precision: Literal["auto", Precision] = "auto"
    # onnx or torch; auto: the engine's measured choice for the replica's device (actors/devices.py).
    backend: Literal["auto", Backend] = "auto"
    # Unpadded tokens, summed across requests, that one serve.batch joins into one engine call; a
    # request larger than that is a call of its own. The engine splits a call into device runs by its
    # own padded budget. `max_batch_tokens` is this key's name in configs written before the split.
    queue_batch_tokens: PositiveInt = Field(
        16384, validation_alias=AliasChoices("queue_batch_tokens", "max_batch_tokens")
    )
    max_batch_images: PositiveInt = 64  # CLIP models: images per engine call
    # int8/uint8 embedding types' ranges, in place of the catalogue's (actors/quantize.py): a .npy of
    # [2, dim] (min, max) per dimension, or a text file of representative texts, one per line.
    calibration: str | None = None
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    # Engine calls joined at once. 1 on CPU: measured on 2 cores, 2 split the waiting requests into
    # smaller calls (c=16: 90 req/s against 142). A GPU replica may gain from 2 (the next call is
    # joined and padded while one runs); bench/online.py on a GPU node decides.
    max_concurrent_batches: PositiveInt = 1


class AppConfig(BaseModel):
    """The `args` of the app in serve_apps/config.yaml."""

    model_config = ConfigDict(extra="forbid")

    models: list[ServedModel] = Field(default_factory=lambda: [ServedModel()], min_length=1)
    threads: PositiveInt | None = None  # engine threads per replica (default: the CPUs Ray gave it)
    # Threads that tokenise requests (concurrent requests' texts together), off the event loop. A
    # GPU replica gives them CPUs of their own (docs/serving.md: how many a GPU needs).
    tokenizer_threads: PositiveInt = 1
    max_inputs_per_request: PositiveInt = 2048
    max_request_bytes: PositiveInt = 8 * 1024 * 1024
    # Where a CLIP model may read images named by path: local folders or s3:// prefixes. Empty: only
    # images sent in the request (data: URLs). Never arbitrary files.
    image_roots: list[str] = Field(default_factory=list)
    # What one request's images may cost, summed over its images (each file is also held to the
    # engine's own per-image limits): pixels as their headers say, checked before any is decoded
    # (256M: about twenty 12-megapixel photos, or a thousand 500x500 ones), and bytes read, checked
    # from each file's size before it is read.
    max_image_pixels_per_request: PositiveInt = 256_000_000
    max_image_bytes_per_request: PositiveInt = 128 * 1024 * 1024
    # How long a request's image files may take to read, all together; past it the request is a 504
    # and the read is given up.
    image_read_timeout_s: PositiveFloat = 10.0
    # /docs and /openapi.json. Off by default: they answer anyone who reaches the app, API key or not,
    # and say what it runs.
    api_docs: bool = False
    # Where the replicas send OpenTelemetry traces (OTLP over HTTP, e.g. http://collector:4318), as
    # OTEL_EXPORTER_OTLP_ENDPOINT would say; unset, that variable in the replicas' environment decides,
    # and with neither nothing is traced (serve_apps/tracing.py).
    otlp_endpoint: str | None = Field(None, pattern=r"^https?://\S+$")


APP_IMPORT_PATH = "serve_apps.openai_api:build_app"


def check_app_args(args: dict | None) -> AppConfig:
    """The app's args, typed, with every model resolved and its files where they are said to be:
    what `build_app` and `rayembed serve` check before anything is deployed."""
    from pydantic import ValidationError

    from actors.catalog import CATALOG
    from actors.model_files import check_location

    try:
        config = AppConfig.model_validate(args or {})
    except ValidationError as e:
        raise UserError(f"the app's args: {_described(e)}") from None
    for served in config.models:
        spec = CATALOG.resolve(served.model)
        if spec.task != "bm25":  # BM25 has no files
            check_location(spec)
        if served.calibration is not None:
            from actors.quantize import check_calibration

            try:
                check_calibration(spec, served.calibration)
            except UserError as e:
                raise UserError(f"the app's args: model {spec.name!r}: {e}") from None
    return config


def check_serve_config(config: object, source: str) -> None:
    """A Serve config file, checked as Serve and the app will read it; a UserError naming the problem."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(config, dict):
        raise UserError(f"{source}: a Serve config is a YAML mapping with `applications:`")
    try:
        schema = ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        raise UserError(f"{source}: {_described(e)}") from None
    for app in schema.applications:
        if app.import_path == APP_IMPORT_PATH:
            try:
                check_app_args(app.args)
            except UserError as e:
                raise UserError(f"{source}: application {app.name!r}: {e}") from None


def _described(error) -> str:
    """pydantic's errors as one line each: where, and what is wrong."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors())
