"""The Engine's HTTP API (Starlette): health, turns over SSE, memory, feedback, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import openapi
from engine.brain import BundleError
from engine.core import EngineCore
from engine.releases import POISONED_TASK_ID
from engine.validation import Invalid, decode_json, request_id as _request_id, validate

__all__ = ["create_app", "EngineError", "MAX_BODY"]

MAX_BODY = 1024 * 1024
_MS = re.compile(rf"-?[0-9]{{1,{openapi.MAX_MS_DIGITS}}}")
_EVENT_ID = re.compile(r"[0-9]{1,19}")
_ERRORS_SHARE = 3  # out of 10 turns fail on the errors-broken build


class EngineError(Exception):
    """An error answered with the `{"error": {"code", "message"}}` envelope."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    request.scope.setdefault("state", {})["error_code"] = exc.code
    return JSONResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status, headers=exc.headers
    )


def _core(request: Request) -> EngineCore:
    core: EngineCore = request.app.state.core
    return core


def _guard(request: Request) -> EngineCore:
    """Authenticate, then refuse unless the Engine can serve (migrations, draining)."""
    core = _core(request)
    if not core.settings.key_matches(request.headers.get("x-engine-key")):
        raise EngineError(401, "INVALID_KEY", "missing or wrong X-Engine-Key header")
    if core.phase == "error":
        raise EngineError(503, core.error_code or "UNAVAILABLE", core.error_message)
    if core.phase == "starting":
        raise EngineError(503, "STARTING", "the Engine is starting", {"Retry-After": "2"})
    if core.phase == "draining":
        raise EngineError(503, "DRAINING", "the Engine is draining for shutdown", {"Retry-After": "5"})
    return core


async def _json_body(request: Request) -> dict[str, Any]:
    """Read a JSON object body of at most 1 MiB."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise EngineError(413, "PAYLOAD_TOO_LARGE", f"request body over {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise EngineError(413, "PAYLOAD_TOO_LARGE", f"request body over {MAX_BODY} bytes")
    try:
        data = decode_json(bytes(body))
    except Invalid as exc:
        raise EngineError(400, "INVALID_JSON", str(exc)) from None
    if not isinstance(data, dict):
        raise EngineError(400, "INVALID_REQUEST", "request body must be a JSON object")
    return data


def _checked(data: dict[str, Any], schema: str, code: str = "INVALID_REQUEST") -> dict[str, Any]:
    """The body checked against its schema in the OpenAPI document (integers normalised)."""
    try:
        checked: dict[str, Any] = validate(openapi.body_schema(schema), data, components=openapi.SCHEMAS)
    except Invalid as exc:
        raise EngineError(400, code, str(exc)) from None
    return checked


async def health(request: Request) -> Response:
    """GET /health: no auth; 200 only when ready to serve /execute."""
    status, body = _core(request).health()
    return JSONResponse(body, status_code=status)


def _should_fail(core: EngineCore, task_id: str, message: str, request_id: str) -> EngineError | None:
    if task_id == POISONED_TASK_ID:
        return EngineError(500, "INTERNAL_ERROR", "turn failed: malformed tool state in this task")
    if core.llm_provider() == "error":
        return EngineError(502, "LLM_PROVIDER_ERROR", "the LLM provider is unreachable")
    if core.release.bug == "errors":
        digest = hashlib.sha256(f"{task_id}\0{message}\0{request_id}".encode()).digest()
        if digest[0] % 10 < _ERRORS_SHARE:
            return EngineError(500, "INTERNAL_ERROR", "turn failed: planner returned no steps")
    return None


async def execute(request: Request) -> Response:
    """POST /execute: run a turn, streaming its events as SSE."""
    core = _guard(request)
    data = _checked(await _json_body(request), "ExecuteRequest")
    message, task_id = data["message"], data["task_id"]
    request.scope["state"]["task_id"] = task_id
    request_id = request.scope["state"]["request_id"]
    failure = _should_fail(core, task_id, message, request_id)
    if failure:
        raise failure
    queue = core.start_turn(task_id, request_id, message)
    return StreamingResponse(_sse(core, queue), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(core: EngineCore, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    while True:
        event = await queue.get()
        if core.is_done(event):
            return
        name, data = event
        yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def replay(request: Request) -> Response:
    """GET /execute/replay?after=<ms>[&task_id=]: buffered channel events."""
    core = _guard(request)
    raw = request.query_params.get("after", "0")
    if not _MS.fullmatch(raw):
        raise EngineError(400, "INVALID_REQUEST", "query parameter 'after' must be a millisecond timestamp")
    after_id = request.query_params.get("after_id", "0")
    if not _EVENT_ID.fullmatch(after_id) or int(after_id) > openapi.MAX_EVENT_ID:
        raise EngineError(400, "INVALID_REQUEST",
                          f"query parameter 'after_id' must be an event id from 0 to {openapi.MAX_EVENT_ID}")
    task_id = request.query_params.get("task_id")
    if task_id:
        request.scope["state"]["task_id"] = task_id
    events = await core.db(lambda b: b.replay(int(raw), task_id, int(after_id)))
    return JSONResponse({"events": events})


async def feedback(request: Request) -> Response:
    """POST /feedback: store a learning signal."""
    core = _guard(request)
    data = _checked(await _json_body(request), "FeedbackRequest")
    task_id, rating = data["task_id"], data["rating"]
    request.scope["state"]["task_id"] = task_id
    message_id, comment = data.get("message_id"), data.get("comment")
    signal_id = await core.db(lambda b: b.add_feedback(task_id, message_id, rating, comment))
    return JSONResponse({"id": signal_id, "status": "recorded"}, status_code=201)


def _search(store: str) -> Any:
    async def endpoint(request: Request) -> Response:
        core = _guard(request)
        data = _checked(await _json_body(request), "SearchRequest")
        query = data.get("query") or ""
        limit = 20 if data.get("limit") is None else data["limit"]
        search = {"knowledge": lambda b: b.search_knowledge(query, limit),
                  "episodes": lambda b: b.search_episodes(query, limit),
                  "social": lambda b: b.search_social(query, limit)}[store]
        return JSONResponse({"results": await core.db(search)})

    endpoint.__name__ = f"search_{store}"
    return endpoint


async def memory_export(request: Request) -> Response:
    """GET /memory/export: the whole memory as a portable JSON bundle."""
    core = _guard(request)
    bundle = await core.db(lambda b: b.export())
    header = {"format": "engine-memory/1", "version": core.release.version, "schema": core.schema_head,
              "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return JSONResponse({**header, **bundle})


async def memory_import(request: Request) -> Response:
    """POST /memory/import: merge a bundle made by /memory/export."""
    core = _guard(request)
    data = await _json_body(request)
    if data.get("format") != openapi.BUNDLE_FORMAT:
        raise EngineError(400, "INVALID_BUNDLE", "not an engine-memory/1 bundle (made by GET /memory/export)")
    bundle = _checked(data, "MemoryBundle", "INVALID_BUNDLE")
    try:
        added = await core.db(lambda b: b.import_bundle(bundle))
    except BundleError as exc:  # well-formed, but not about this brain's people: a conflict, not a bad request
        raise EngineError(409, "UNKNOWN_PERSON", str(exc)) from None
    return JSONResponse({"status": "imported", "added": added})


async def openapi_document(request: Request) -> Response:
    """GET /openapi.json: the API as an OpenAPI 3.1 document (no key needed)."""
    return JSONResponse(openapi.document(_core(request).release.version))


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format; the key as X-Engine-Key or `Authorization: Bearer`."""
    core = _core(request)
    # Prometheus servers that cannot send custom headers (e.g. 2.42) send the key as a bearer token.
    if not (core.settings.key_matches(request.headers.get("x-engine-key"))
            or core.settings.key_matches(_bearer(request))):
        raise EngineError(401, "INVALID_KEY", "missing or wrong X-Engine-Key header (or Authorization: Bearer)")
    return Response(core.metrics.render(), media_type="text/plain; version=0.0.4")


def _bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class AccessLog:
    """ASGI middleware: request ids, one JSON log line and metrics per request (after the body)."""

    def __init__(self, app: ASGIApp, core: EngineCore) -> None:
        self.app, self.core = app, core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = _request_id(headers.get(b"x-request-id")) or f"req-{uuid.uuid4().hex[:12]}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_wrapper(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:  # answer in the envelope and log JSON, not a bare traceback
            status, state["error_code"] = 500, "INTERNAL_ERROR"
            self.core.log.error("unhandled error", request_id=request_id, error=repr(exc), code="INTERNAL_ERROR")
            if not started:
                body = json.dumps({"error": {"code": "INTERNAL_ERROR", "message": "internal error"}}).encode()
                await send_wrapper({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"application/json")]})
                await send_wrapper({"type": "http.response.body", "body": body})
        finally:
            self._record(scope, state, status, time.perf_counter() - start)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route_path = scope["path"] if scope["path"] in _ROUTE_PATHS else "other"
        code = state.get("error_code") or ("INTERNAL_ERROR" if status == 500 else None)
        fields: dict[str, Any] = {"request_id": state["request_id"], "task_id": state.get("task_id"),
                                  "method": scope["method"], "path": scope["path"], "status": status,
                                  "duration_ms": round(seconds * 1000, 2)}
        if code:
            fields["code"] = code
        level = "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"
        self.core.log.emit(level, "request", **fields)
        self.core.metrics.observe(scope["method"], route_path, status, seconds, code)


_ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/openapi.json", openapi_document, methods=["GET"]),
    Route("/execute", execute, methods=["POST"]),
    Route("/execute/replay", replay, methods=["GET"]),
    Route("/feedback", feedback, methods=["POST"]),
    Route("/memory/knowledge/search", _search("knowledge"), methods=["POST"]),
    Route("/memory/episodes/search", _search("episodes"), methods=["POST"]),
    Route("/memory/social/search", _search("social"), methods=["POST"]),
    Route("/memory/export", memory_export, methods=["GET"]),
    Route("/memory/import", memory_import, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]
_ROUTE_PATHS = {r.path for r in _ROUTES}


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    code = "METHOD_NOT_ALLOWED" if status == 405 else "NOT_FOUND"
    headers = dict(getattr(exc, "headers", None) or {})  # 405: Allow names the methods the path takes
    return _error_response(request, EngineError(status, code, f"{request.method} {request.url.path}: {code.lower()}",
                                                headers))


def create_app(core: EngineCore) -> Starlette:
    """The ASGI app of one Engine process."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        boot = asyncio.create_task(core.boot())
        flusher = asyncio.create_task(core.flusher())
        try:
            yield
        finally:
            flusher.cancel()
            boot.cancel()
            await core.close()

    app = Starlette(
        routes=_ROUTES,
        lifespan=lifespan,
        exception_handlers={EngineError: _error_response, 404: _not_found, 405: _not_found},
    )
    app.state.core = core
    app.add_middleware(AccessLog, core=core)
    return app
