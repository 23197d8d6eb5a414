"""A small httpx client for the Engine API, shared by `engine eval` (sync) and `engine traffic` (async)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

__all__ = [
    "ApiResponse",
    "AsyncEngineClient",
    "EngineAPIError",
    "EngineClient",
    "SSEParser",
    "TurnResult",
    "KEY_HEADER",
    "CONNECTION_ERROR",
    "TIMEOUT",
]

KEY_HEADER = "X-Engine-Key"
CONNECTION_ERROR = "CONNECTION_ERROR"  # error code of a turn that never got an HTTP answer
TIMEOUT = "TIMEOUT"  # error code of a turn whose request or stream timed out
STORES = ("knowledge", "episodes", "social")

Event = tuple[str, Any]


class EngineAPIError(Exception):
    """A non-2xx answer from the Engine, with its `{"error": {"code", "message"}}` envelope."""

    def __init__(self, method: str, path: str, status: int, code: str | None, message: str) -> None:
        super().__init__(" ".join(p for p in (f"{method} {path}: HTTP {status}", code, message) if p))
        self.status, self.code, self.message = status, code, message


@dataclass
class ApiResponse:
    """Status, parsed JSON body (or None) and raw text of one plain request."""

    status: int
    body: Any
    text: str = ""

    @property
    def error_code(self) -> str | None:
        """The `error.code` of an error envelope, if the body is one."""
        return _envelope(self.body)[0]


@dataclass
class TurnResult:
    """The outcome of one POST /execute: HTTP status, the SSE events and whether it completed."""

    status: int
    events: list[Event] = field(default_factory=list)
    completed: bool = False
    error_code: str | None = None
    error_message: str = ""
    latency_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the turn answered 200 and its stream ended with phase `completed`."""
        return self.status == 200 and self.completed

    @property
    def text(self) -> str:
        """The assistant's reply: all text_delta chunks joined."""
        return "".join(str(d.get("text", "")) for n, d in self.events
                       if n == "text_delta" and isinstance(d, dict))

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Data of the tool_call events, in order."""
        return [d for n, d in self.events if n == "tool_call" and isinstance(d, dict)]

    @property
    def request_id(self) -> str | None:
        """The request id the Engine reported in thread_lifecycle events."""
        for name, data in self.events:
            if name == "thread_lifecycle" and isinstance(data, dict) and data.get("request_id"):
                return str(data["request_id"])
        return None

    def names(self) -> list[str]:
        """Event names in stream order."""
        return [name for name, _ in self.events]

    def describe(self) -> str:
        """One line for failure messages."""
        if self.ok:
            return f"HTTP {self.status}, completed, {len(self.events)} events"
        return (f"HTTP {self.status} {self.error_code or 'NOT_COMPLETED'}"
                + (f": {self.error_message}" if self.error_message else "")
                + f" (events: {', '.join(self.names()) or 'none'})")


class SSEParser:
    """Incremental parser of `event: NAME` / `data: JSON` blocks separated by blank lines."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._name = ""
        self._data: list[str] = []

    def feed(self, line: str) -> None:
        """Consume one line of the stream (without its line ending)."""
        line = line.rstrip("\r")
        if not line:
            self._dispatch()
        elif line.startswith(":"):
            return
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                self._name = value
            elif key == "data":
                self._data.append(value)

    def close(self) -> list[Event]:
        """Dispatch a trailing block without blank line and return every event."""
        self._dispatch()
        return self.events

    def _dispatch(self) -> None:
        if self._name or self._data:
            raw = "\n".join(self._data)
            try:
                data: Any = json.loads(raw) if raw else {}
            except ValueError:
                data = raw
            self.events.append((self._name or "message", data))
        self._name, self._data = "", []


def _envelope(body: Any) -> tuple[str | None, str]:
    """(code, message) of an error envelope, or (None, "")."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return (str(err["code"]) if err.get("code") else None), str(err.get("message", ""))
    return None, ""


def _parse_json(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


def _headers(key: str | None) -> dict[str, str]:
    return {KEY_HEADER: key} if key else {}


def _execute_body(task_id: str, message: str) -> dict[str, str]:
    return {"message": message, "task_id": task_id}


def _turn_from_stream(status: int, events: list[Event], started: float) -> TurnResult:
    """Build the result of a 200 stream: completed, or the error event it ended with."""
    result = TurnResult(status=status, events=events, latency_ms=_ms_since(started))
    for name, data in events:
        if name == "thread_lifecycle" and isinstance(data, dict) and data.get("phase") == "completed":
            result.completed = True
        elif name == "error":
            info = data if isinstance(data, dict) else {}
            result.error_code = str(info.get("error") or info.get("code") or "STREAM_ERROR")
            result.error_message = str(info.get("message", ""))
    if not result.completed and result.error_code is None:
        result.error_code, result.error_message = "INCOMPLETE_STREAM", "stream ended before phase completed"
    return result


def _turn_from_error(status: int, content: bytes, started: float) -> TurnResult:
    """Build the result of a non-200 answer from its error envelope."""
    code, message = _envelope(_parse_json(content))
    return TurnResult(status=status, error_code=code or f"HTTP_{status}",
                      error_message=message or content[:200].decode(errors="replace"),
                      latency_ms=_ms_since(started))


def _turn_from_exception(exc: Exception, started: float, status: int = 0,
                         events: list[Event] | None = None) -> TurnResult:
    """Build the result of a turn cut by a transport error (status 0 when nothing was answered)."""
    code = TIMEOUT if isinstance(exc, httpx.TimeoutException) else CONNECTION_ERROR
    return TurnResult(status=status, events=events or [], error_code=code,
                      error_message=f"{type(exc).__name__}: {exc}", latency_ms=_ms_since(started))


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _api_response(resp: httpx.Response) -> ApiResponse:
    return ApiResponse(status=resp.status_code, body=_parse_json(resp.content), text=resp.text)


def _checked(method: str, path: str, resp: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; raise EngineAPIError otherwise."""
    body = _parse_json(resp.content)
    if not 200 <= resp.status_code < 300:
        code, message = _envelope(body)
        raise EngineAPIError(method, path, resp.status_code, code, message or resp.text[:200])
    return body


def _search_path(store: str) -> str:
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; one of {', '.join(STORES)}")
    return f"/memory/{store}/search"


def _feedback_body(task_id: str, rating: int, message_id: str | None, comment: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"task_id": task_id, "rating": rating}
    if message_id is not None:
        body["message_id"] = message_id
    if comment is not None:
        body["comment"] = comment
    return body


class EngineClient:
    """Blocking client of one Engine; use as a context manager or call close()."""

    def __init__(self, url: str, key: str, timeout: float = 10.0) -> None:
        self.url, self.key = url.rstrip("/"), key
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def request(self, method: str, path: str, json_body: Any = None, auth: bool = True,
                headers: Mapping[str, str] | None = None,
                params: Mapping[str, Any] | None = None) -> ApiResponse:
        """Send one raw request (auth=False omits the key); never raises on an error status."""
        hdrs = {**(_headers(self.key) if auth else {}), **(headers or {})}
        resp = self.http.request(method, path, json=json_body, headers=hdrs, params=params)
        return _api_response(resp)

    def health(self) -> ApiResponse:
        """GET /health (no key): 200 when ready, 503 with the failing subsystem otherwise."""
        return _api_response(self.http.get("/health"))

    def execute(self, task_id: str, message: str) -> TurnResult:
        """POST /execute and read the whole SSE stream; transport errors give status 0."""
        started, status, parser = time.perf_counter(), 0, SSEParser()
        try:
            with self.http.stream("POST", "/execute", json=_execute_body(task_id, message),
                                  headers=_headers(self.key)) as resp:
                status = resp.status_code
                if status != 200:
                    return _turn_from_error(status, resp.read(), started)
                for line in resp.iter_lines():
                    parser.feed(line)
        except httpx.TransportError as exc:
            return _turn_from_exception(exc, started, status, parser.close())
        return _turn_from_stream(status, parser.close(), started)

    def search(self, store: str, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """POST /memory/<store>/search; the `results` list."""
        path = _search_path(store)
        body = _checked("POST", path, self.http.post(path, json={"query": query, "limit": limit},
                                                     headers=_headers(self.key)))
        return list(body["results"])

    def feedback(self, task_id: str, rating: int, message_id: str | None = None,
                 comment: str | None = None) -> int:
        """POST /feedback; the id of the stored learning signal."""
        resp = self.http.post("/feedback", json=_feedback_body(task_id, rating, message_id, comment),
                              headers=_headers(self.key))
        return int(_checked("POST", "/feedback", resp)["id"])

    def export(self) -> dict[str, Any]:
        """GET /memory/export: the whole memory bundle."""
        body = _checked("GET", "/memory/export", self.http.get("/memory/export", headers=_headers(self.key)))
        return dict(body)

    def import_bundle(self, bundle: Mapping[str, Any]) -> dict[str, int]:
        """POST /memory/import; rows added per store."""
        resp = self.http.post("/memory/import", json=dict(bundle), headers=_headers(self.key))
        return dict(_checked("POST", "/memory/import", resp)["added"])

    def replay(self, after_ms: int = 0, task_id: str | None = None) -> list[dict[str, Any]]:
        """GET /execute/replay: buffered channel events after `after_ms` (optionally of one task)."""
        params: dict[str, Any] = {"after": after_ms}
        if task_id:
            params["task_id"] = task_id
        resp = self.http.get("/execute/replay", params=params, headers=_headers(self.key))
        return list(_checked("GET", "/execute/replay", resp)["events"])


class AsyncEngineClient:
    """Asyncio client of one Engine (the calls traffic needs); use with `async with`."""

    def __init__(self, url: str, key: str, timeout: float = 30.0, max_connections: int = 100) -> None:
        self.url, self.key = url.rstrip("/"), key
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits)

    async def __aenter__(self) -> "AsyncEngineClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def health(self) -> ApiResponse:
        """GET /health (no key)."""
        return _api_response(await self.http.get("/health"))

    async def execute(self, task_id: str, message: str) -> TurnResult:
        """POST /execute and read the whole SSE stream; transport errors give status 0."""
        started, status, parser = time.perf_counter(), 0, SSEParser()
        try:
            async with self.http.stream("POST", "/execute", json=_execute_body(task_id, message),
                                        headers=_headers(self.key)) as resp:
                status = resp.status_code
                if status != 200:
                    return _turn_from_error(status, await resp.aread(), started)
                async for line in resp.aiter_lines():
                    parser.feed(line)
        except httpx.TransportError as exc:
            return _turn_from_exception(exc, started, status, parser.close())
        return _turn_from_stream(status, parser.close(), started)

    async def feedback(self, task_id: str, rating: int, message_id: str | None = None,
                       comment: str | None = None) -> int:
        """POST /feedback; the id of the stored learning signal."""
        resp = await self.http.post("/feedback", json=_feedback_body(task_id, rating, message_id, comment),
                                    headers=_headers(self.key))
        return int(_checked("POST", "/feedback", resp)["id"])

