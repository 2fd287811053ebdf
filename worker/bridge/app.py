"""The bridge's HTTP side: `/healthz`, `/infer`, `/metrics`, the live page `/` with its event
stream `/events`, and Swagger UI at `/docs` (CONTRACT.md, "HTTP bridge").

`/infer` reads the body itself (bounded by BRIDGE_MAX_BODY_BYTES, before any parsing) and
validates it straight from the bytes with pydantic; the OpenAPI schema still shows the model.
It then waits for the worker's answer without blocking the event loop: BridgeMqtt.request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from worker import __version__, wire
from worker.bridge.metrics import BridgeMetrics, MetricsMiddleware
from worker.bridge.models import (
    ErrorBody,
    HealthBody,
    InvalidBody,
    describe_invalid,
    request_model,
    result_model,
)
from worker.bridge.mqtt import BridgeMqtt, BridgeUnavailable
from worker.bridge.server import BODY_TIMEOUT_S
from worker.settings import BridgeSettings

log = logging.getLogger("worker.bridge")

STARTUP_WAIT_S = 5.0
EVENT_INTERVAL_S = 1.0  # the page is at most this far behind the broker
RETRY_AFTER_S = "1"
# A worker's error code -> the HTTP status a client of /infer gets; anything else is a 502.
WORKER_ERROR_STATUS = {
    "overloaded": 503,
    "inference_failed": 502,
    "too_large": 413,
    "decode_error": 422,
    "invalid_shape": 422,
    "invalid_dtype": 422,
    "non_finite": 422,
}


# Module level: FastAPI resolves the dependency's annotations from this module's globals.
BEARER = HTTPBearer(auto_error=False, description="`Authorization: Bearer <BRIDGE_TOKEN>`.")


class HttpError(Exception):
    """Answered as `{"error": code, "detail": ...}` with `status`."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers
        self.extra = extra


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return JSONResponse({"error": exc.code, "detail": exc.detail, **exc.extra},
                        status_code=exc.status, headers=exc.headers)


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": InvalidBody if s == 422 else ErrorBody} for s in statuses}


def require_json(content_type: str | None) -> None:
    """415 unless the body says it is JSON.

    A web page can POST `text/plain` or a form to any address without a CORS preflight, so a
    bridge that took those would answer inferences for any page a LAN user opens. Requiring
    `application/json` (or `application/*+json`) makes the browser ask first, and we never say yes.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    if kind == "application" and (subtype == "json" or subtype.endswith("+json")):
        return
    shown = media or "none"
    raise HttpError(415, "unsupported_media_type", f"The body's Content-Type is {shown}; /infer "
                    "takes application/json.", {"Accept-Post": "application/json"})


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body within BODY_TIMEOUT_S, or 413 as soon as it is known to pass `limit`."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise HttpError(408, "body_timeout", f"The body did not arrive within {BODY_TIMEOUT_S:g} "
                        "s.", {"Connection": "close"}) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> HttpError:
    more = "more than " if at_least else ""
    return HttpError(413, "too_large", f"The body is {more}{size} bytes; the limit is {limit} "
                     "(BRIDGE_MAX_BODY_BYTES).")


def answer(payload: bytes, result: type[BaseModel]) -> Response:
    """A worker's reply as the HTTP answer: the result, or its error mapped to a status."""
    try:
        doc = wire.decode(payload)
    except Exception:  # msgpack and json raise several types for garbage
        raise HttpError(502, "bad_reply", "The worker's answer could not be decoded.") from None
    if not isinstance(doc, dict):
        raise HttpError(502, "bad_reply", "The worker's answer is not a map.")
    code = doc.get("error")
    if code is not None:
        status = WORKER_ERROR_STATUS.get(str(code), 502)
        detail = doc.get("detail")
        headers = {"Retry-After": RETRY_AFTER_S} if code == "overloaded" else None
        raise HttpError(status, str(code),
                        detail if isinstance(detail, str) else f"The worker answered {code}.",
                        headers)
    try:
        checked = result.model_validate(doc)
    except ValidationError as exc:
        detail, _ = describe_invalid(exc)
        raise HttpError(502, "bad_reply", f"The worker's result is not as expected: {detail}"
                        ) from None
    return Response(checked.model_dump_json(), media_type="application/json")


def create_app(settings: BridgeSettings, bridge: BridgeMqtt) -> FastAPI:
    """The bridge's ASGI app; its lifespan starts and stops `bridge`."""
    metrics: BridgeMetrics = bridge.metrics
    length, channels = settings.window_length, settings.channels
    body_model = request_model(length, channels)
    result = result_model(settings.latent_dim, settings.num_motifs)
    timeout_s = settings.bridge_timeout_ms / 1000
    limit = settings.bridge_max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bridge.start()
        if not await asyncio.to_thread(bridge.wait_ready, STARTUP_WAIT_S):
            log.warning("broker not reachable yet (%s); answering 503 until it is",
                        bridge.broker_error)
        log.info("bridge %s: HTTP on %s:%d, windows to %s", bridge.client_id,
                 settings.bridge_host, settings.bridge_port, "imu/bridge/window")
        try:
            yield
        finally:
            await asyncio.to_thread(bridge.stop)

    # Swagger UI's script and styles come with the package (fastapi-offline), not from a CDN: a
    # Pi with no internet shows /docs too. ReDoc is not offered.
    app = FastAPIOffline(
        redoc_url=None,
        title="hailo-bridge",
        version=__version__,
        description="HTTP sidecar of the edge inference service: `/infer` sends a window to "
        "a worker over MQTT and returns its answer; `/healthz` says whether any worker is "
        "online; `/` is a live page of the workers and sensors.",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(HttpError, _http_error)

    dependencies = []
    auth_statuses: tuple[int, ...] = ()
    token = settings.bridge_token.get_secret_value() if settings.bridge_token else ""
    if token:  # an empty BRIDGE_TOKEN= line in a .env means no token, not an empty one
        dependencies.append(Depends(_authorizer(token)))
        auth_statuses = (401,)

    @app.get("/healthz", response_model=HealthBody,
             responses={503: {"model": HealthBody, "description": "No worker can answer."}})
    async def healthz() -> Response:
        health = bridge.health()
        doc: dict[str, Any] = {"status": "ok" if health.ok else "unavailable"}
        if health.reason is not None:
            doc["reason"] = health.reason
        doc["workers"] = health.workers
        return JSONResponse(doc, status_code=200 if health.ok else 503,
                            headers={"Cache-Control": "no-store"})

    @app.post(
        "/infer",
        dependencies=dependencies,
        responses={
            200: {"model": result,
                  "description": "The worker's result."},
            **_error_responses(*auth_statuses, 408, 413, 415, 422, 502, 503, 504),
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": body_model.model_json_schema(),
            "example": {"x": [[0.0] * channels for _ in range(length)]},
        }}}},
    )
    async def infer(request: Request) -> Response:
        require_json(request.headers.get("content-type"))
        raw = await read_body(request, limit)
        try:
            rows = body_model.model_validate_json(raw).x
        except ValidationError as exc:
            detail, errors = describe_invalid(exc)
            raise HttpError(422, "invalid_body", f"{detail}. The body must be "
                            f'{{"x": [{length} rows of {channels} numbers]}}.',
                            errors=errors) from None
        window = wire.encode_window(np.array(rows, dtype=np.float32))
        started = asyncio.get_running_loop().time()
        try:
            payload = await bridge.request(window, timeout_s)
        except BridgeUnavailable as exc:
            raise HttpError(503, "unavailable", str(exc)) from None
        except asyncio.TimeoutError:
            metrics.timeouts.inc()
            raise HttpError(504, "timeout", f"No worker answered within "
                            f"{settings.bridge_timeout_ms} ms (BRIDGE_TIMEOUT_MS).") from None
        metrics.worker_seconds.observe(asyncio.get_running_loop().time() - started)
        try:
            return answer(payload, result)
        except HttpError as exc:
            known = exc.code in WORKER_ERROR_STATUS or exc.code == "bad_reply"
            metrics.worker_errors.labels(exc.code if known else "other").inc()
            raise

    page = resources.files("worker.bridge").joinpath("page.html").read_bytes()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def live_page() -> Response:
        # The page holds no data: what it shows comes from /events, behind the token if set.
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get(
        "/events",
        dependencies=dependencies,
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}},
                         "description": "Server-Sent Events: a `snapshot` of every worker and "
                         "sensor each second (what the live page at `/` shows)."},
                   **_error_responses(*auth_statuses)},
    )
    async def events(request: Request) -> Response:
        return StreamingResponse(_snapshots(request, bridge), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        metrics.pending.set(bridge.pending)
        metrics.connected.set(0 if bridge.broker_error else 1)
        metrics.workers_online.set(bridge.online_count())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _snapshots(request: Request, bridge: BridgeMqtt) -> AsyncIterator[str]:
    """One `snapshot` event a second until the client leaves or the server stops.

    A whole snapshot each time rather than changes: a page that (re)connects is complete at
    once, and 100 sensors are about 40 KB a second, less than the JSON of one /infer body.
    """
    stopping: Callable[[], bool] = getattr(request.app.state, "stopping", lambda: False)
    while not stopping() and not await request.is_disconnected():
        yield f"event: snapshot\ndata: {json.dumps(bridge.snapshot())}\n\n"
        await asyncio.sleep(EVENT_INTERVAL_S)


def _authorizer(token: str) -> Callable[..., Coroutine[Any, Any, None]]:
    expected = token.encode()

    async def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest even for an empty token, so a miss costs the same as a near miss.
        if not hmac.compare_digest(given, expected) or credentials is None:
            raise HttpError(401, "unauthorized", "This bridge needs `Authorization: Bearer "
                            "<token>` (BRIDGE_TOKEN) for /infer.",
                            {"WWW-Authenticate": "Bearer"})

    return authorize
