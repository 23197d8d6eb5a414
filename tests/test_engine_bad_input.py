"""The reference Engine under bad input, against a real process on 127.0.0.1.

Every malformed request gets a 4xx in the error envelope `{"error": {"code", "message"}}` (never a
5xx, never a plain-text traceback) and leaves the brain as it was. Bad bytes that HTTP clients will
not send (a non-UTF-8 header) go over a raw socket.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import sqlite3
from typing import Any, Iterator

import httpx
import pytest

NOW = "2026-01-02T03:04:05.000+00:00"
MISSING = object()  # a field left out of a row
MAX_DEPTH = 32  # the Engine's limit on JSON nesting (engine.app.MAX_JSON_DEPTH)

GOOD_ROWS: dict[str, dict[str, Any]] = {
    "episodes": {"task_id": "bad-input", "summary": "[bad-input] refused rows", "created_at": NOW},
    "knowledge": {"subject": "Bad input", "content": "Bad input is refused", "type": "fact",
                  "confidence": 0.9, "source": "test:bad-input", "valid_from": NOW, "valid_until": None},
    "nodes": {"name": "Bad-Input Person", "kind": "person", "mentions": 1, "first_seen": NOW, "last_seen": NOW},
    "edges": {"src": "Bad-Input Person", "dst": "Bad-Input Person", "relation": "knows",
              "task_id": "bad-input", "created_at": NOW},
    "conversations": {"task_id": "bad-input", "message_id": "bad-input-user", "role": "user",
                      "content": "hello", "created_at": NOW},
    "learning_signals": {"task_id": "bad-input", "message_id": None, "rating": 3, "comment": None,
                         "created_at": NOW},
}


def _bundle(store: str | None = None, field: str | None = None, value: Any = None) -> dict[str, Any]:
    """A valid engine-memory/1 bundle with one row per store; with `store`, that row's `field` set to
    `value` (MISSING: left out)."""
    rows = copy.deepcopy(GOOD_ROWS)
    if store is not None and field is not None:
        if value is MISSING:
            del rows[store][field]
        else:
            rows[store][field] = value
    return {"format": "engine-memory/1", "episodes": [rows["episodes"]], "knowledge": [rows["knowledge"]],
            "social": {"nodes": [rows["nodes"]], "edges": [rows["edges"]]},
            "conversations": [rows["conversations"]], "learning_signals": [rows["learning_signals"]]}


@pytest.fixture(scope="module")
def engine(start_engine):  # type: ignore[no-untyped-def]
    return start_engine("2.3.1")


@pytest.fixture(autouse=True)
def no_unhandled_errors(engine) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """No request of a test may reach the Engine's last-resort handler or print a traceback."""
    before = len(engine.logs())
    yield
    new = engine.logs()[before:]
    assert "Traceback" not in new, new
    assert '"unhandled error"' not in new, new
    assert engine.running, new


def _memory(engine) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Everything the brain holds that an import could change (the export, less its timestamp)."""
    r = httpx.get(f"{engine.url}/memory/export", headers=engine.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    body.pop("exported_at")
    return dict(body)


def _refused(r: httpx.Response, status: int = 400, code: str | None = None) -> dict[str, str]:
    """Assert a 4xx answer in the error envelope; its `error` object."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert all(isinstance(v, str) and v for v in body["error"].values()), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


def _raw(engine, request: bytes) -> tuple[int, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    """Send raw bytes on a new connection (the request must say `Connection: close`);
    (status, headers with lower-case names, body)."""
    with socket.create_connection((engine.host, engine.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _nested(kind: str, depth: int) -> bytes:
    """A JSON value nested `depth` levels deep (a depth-1 value is `[]` or `{}`)."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


# -- deeply nested JSON (was: RecursionError, 500) -------------------------------------------------


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("path", ["/execute", "/feedback", "/memory/import", "/memory/knowledge/search"])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(engine, path: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    before = _memory(engine)
    r = httpx.post(f"{engine.url}{path}", headers={**engine.headers, "Content-Type": "application/json"},
                   content=_nested(kind, 100_000), timeout=30)
    error = _refused(r, 400, "INVALID_JSON")
    assert "nest" in error["message"]
    assert _memory(engine) == before


def test_nesting_is_refused_just_past_the_limit_and_accepted_up_to_it(engine) -> None:  # type: ignore[no-untyped-def]
    def body(depth: int) -> bytes:  # the object itself is level 1, "extra" holds the rest
        return b'{"task_id": "nest-limit", "message": "hello", "extra": ' + _nested("array", depth - 1) + b"}"

    h = {**engine.headers, "Content-Type": "application/json"}
    r = httpx.post(f"{engine.url}/execute", headers=h, content=body(MAX_DEPTH + 1))
    _refused(r, 400, "INVALID_JSON")
    # Brackets inside strings are text, not nesting.
    r = httpx.post(f"{engine.url}/execute", headers=h, timeout=10,
                   content=b'{"task_id": "nest-limit", "message": "' + b"[{" * 5000 + b'"}')
    assert r.status_code == 200, r.text
    r = httpx.post(f"{engine.url}/execute", headers=h, content=body(MAX_DEPTH), timeout=10)
    assert r.status_code == 200, r.text
    assert "event: thread_lifecycle" in r.text and '"completed"' in r.text


# -- replay: after_id out of range (was: OverflowError, 500) -------------------------------------


@pytest.mark.parametrize("after_id", ["9" * 25, str(2**63), "1" + "0" * 19, "-1", "1e3", "٣"])
def test_replay_after_id_out_of_range_is_a_400(engine, after_id: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{engine.url}/execute/replay", headers=engine.headers, params={"after_id": after_id})
    error = _refused(r, 400, "INVALID_REQUEST")
    assert "after_id" in error["message"]


def test_replay_takes_the_largest_event_id(engine) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{engine.url}/execute/replay", headers=engine.headers,
                  params={"after_id": str(2**63 - 1), "after": "-999999999999999"})
    assert (r.status_code, r.json()) == (200, {"events": []})
    _refused(httpx.get(f"{engine.url}/execute/replay", headers=engine.headers, params={"after": "9" * 16}),
             400, "INVALID_REQUEST")


# -- /memory/import: typed rows (was: 500 on dict/list/huge-int/null; strings stored as numbers) --

BAD_FIELDS = [
    ("knowledge", "subject", {"a": 1}),
    ("knowledge", "content", ["x"]),
    ("knowledge", "content", None),
    ("knowledge", "confidence", 10**30),
    ("knowledge", "confidence", "high"),
    ("knowledge", "confidence", "0.9"),
    ("knowledge", "confidence", None),
    ("knowledge", "confidence", True),
    ("knowledge", "confidence", 1.5),
    ("knowledge", "confidence", -0.1),
    ("knowledge", "type", None),
    ("knowledge", "valid_from", None),
    ("knowledge", "valid_until", 5),
    ("knowledge", "source", MISSING),
    ("learning_signals", "rating", "great"),
    ("learning_signals", "rating", "3"),
    ("learning_signals", "rating", 10**25),
    ("learning_signals", "rating", 3.5),
    ("learning_signals", "rating", 9),
    ("learning_signals", "rating", True),
    ("learning_signals", "rating", None),
    ("learning_signals", "task_id", {}),
    ("learning_signals", "comment", []),
    ("learning_signals", "created_at", MISSING),
    ("episodes", "task_id", None),
    ("episodes", "summary", {"text": "x"}),
    ("episodes", "created_at", 1767323045),
    ("conversations", "role", "robot"),
    ("conversations", "message_id", 10**25),
    ("conversations", "content", None),
    ("nodes", "mentions", 10**25),
    ("nodes", "mentions", -1),
    ("nodes", "mentions", "1"),
    ("nodes", "name", None),
    ("nodes", "kind", ["person"]),
    ("edges", "src", {"name": "x"}),
    ("edges", "relation", None),
]


@pytest.mark.parametrize(("store", "field", "value"), BAD_FIELDS,
                         ids=[f"{s}.{f}={'missing' if v is MISSING else repr(v)[:20]}" for s, f, v in BAD_FIELDS])
def test_import_refuses_a_badly_typed_row_and_stores_nothing(engine, store: str, field: str, value: Any) -> None:  # type: ignore[no-untyped-def]
    before = _memory(engine)
    r = httpx.post(f"{engine.url}/memory/import", headers=engine.headers, json=_bundle(store, field, value))
    error = _refused(r, 400, "INVALID_BUNDLE")
    assert field in error["message"]
    # The whole bundle is refused: not even the good rows of the other stores are added.
    assert _memory(engine) == before


def test_import_refuses_a_relation_to_an_unknown_person_and_stores_nothing(engine) -> None:  # type: ignore[no-untyped-def]
    before = _memory(engine)
    r = httpx.post(f"{engine.url}/memory/import", headers=engine.headers,
                   json=_bundle("edges", "dst", "Nobody Known"))
    error = _refused(r, 409, "UNKNOWN_PERSON")
    assert "social.edges[0].dst" in error["message"] and "Nobody Known" in error["message"]
    assert _memory(engine) == before


BAD_BUNDLES = [
    ("no format", {"episodes": []}),
    ("other format", {"format": "engine-memory/2"}),
    ("format not a string", {"format": ["engine-memory/1"]}),
    ("store not a list", {"format": "engine-memory/1", "knowledge": {"subject": "x"}}),
    ("store null", {"format": "engine-memory/1", "episodes": None}),
    ("row not an object", {"format": "engine-memory/1", "learning_signals": [3]}),
    ("social not an object", {"format": "engine-memory/1", "social": [[]]}),
    ("nodes not a list", {"format": "engine-memory/1", "social": {"nodes": "Ada"}}),
]


@pytest.mark.parametrize(("name", "bundle"), BAD_BUNDLES, ids=[n for n, _ in BAD_BUNDLES])
def test_import_refuses_a_malformed_bundle(engine, name: str, bundle: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    before = _memory(engine)
    r = httpx.post(f"{engine.url}/memory/import", headers=engine.headers, json=bundle)
    _refused(r, 400, "INVALID_BUNDLE")
    assert _memory(engine) == before


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_import_refuses_non_finite_numbers(engine, literal: bytes) -> None:  # type: ignore[no-untyped-def]
    before = _memory(engine)
    body = json.dumps(_bundle("knowledge", "confidence", 12345.5)).encode().replace(b"12345.5", literal)
    r = httpx.post(f"{engine.url}/memory/import", headers={**engine.headers, "Content-Type": "application/json"},
                   content=body)
    _refused(r, 400)
    assert _memory(engine) == before


def test_a_good_bundle_still_imports_with_its_types(engine) -> None:  # type: ignore[no-untyped-def]
    bundle = _bundle()
    bundle["version"], bundle["schema"], bundle["source"] = "2.3.1", 2, "backout salvage"  # extra keys: fine
    r = httpx.post(f"{engine.url}/memory/import", headers=engine.headers, json=bundle)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == {"episodes": 1, "knowledge": 1, "people": 1, "edges": 1, "conversations": 1,
                                 "learning_signals": 1}
    conn = sqlite3.connect(f"file:{engine.brain}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT typeof(rating) FROM learning_signals WHERE task_id = 'bad-input'").fetchall() \
            == [("integer",)]
        assert conn.execute("SELECT typeof(confidence) FROM knowledge_store WHERE subject = 'Bad input'").fetchall() \
            == [("real",)]
    finally:
        conn.close()
    again = httpx.post(f"{engine.url}/memory/import", headers=engine.headers, json=bundle)
    assert again.status_code == 200 and not any(again.json()["added"].values())


# -- strings that are not Unicode text (a lone surrogate) ------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/execute", b'{"task_id": "t\\ud800", "message": "hi"}'),
    ("/execute", b'{"task_id": "surrogate", "message": "hi \\udfff"}'),
    ("/feedback", b'{"task_id": "\\ud800", "rating": 1}'),
    ("/memory/knowledge/search", b'{"query": "\\ud800"}'),
    ("/memory/import", b'{"format": "engine-memory/1", "episodes": [{"task_id": "\\udbff", '
                       b'"summary": "x", "created_at": "' + NOW.encode() + b'"}]}'),
])
def test_a_lone_surrogate_is_a_400(engine, path: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
    before = _memory(engine)
    r = httpx.post(f"{engine.url}{path}", headers={**engine.headers, "Content-Type": "application/json"},
                   content=body)
    _refused(r, 400, "INVALID_JSON")
    assert _memory(engine) == before


def test_a_surrogate_pair_is_text(engine) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{engine.url}/memory/knowledge/search",
                   headers={**engine.headers, "Content-Type": "application/json"},
                   content=b'{"query": "\\ud83d\\ude00"}')
    assert r.status_code == 200, r.text


# -- headers: a non-UTF-8 X-Request-Id (was: plain-text 500 with a traceback, even on /health) ----


@pytest.mark.parametrize("path", ["/health", "/memory/export", "/metrics"])
def test_a_non_utf8_request_id_is_replaced_by_a_fresh_one(engine, path: str) -> None:  # type: ignore[no-untyped-def]
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Engine-Key: {engine.key}\r\n".encode()
               + b"X-Request-Id: \xff\xfe\xc3(\r\nConnection: close\r\n\r\n")
    status, headers, body = _raw(engine, request)
    assert status == 200, body
    assert re.fullmatch(r"req-[0-9a-f]{12}", headers["x-request-id"]), headers
    if path != "/metrics":
        assert headers["content-type"].startswith("application/json") and json.loads(body)
    logged = [json.loads(line) for line in engine.logs().splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == headers["x-request-id"] and line.get("path") == path for line in logged)


def test_a_bad_request_with_a_non_utf8_request_id_gets_the_envelope(engine) -> None:  # type: ignore[no-untyped-def]
    body = b"{not json"
    request = (f"POST /feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Engine-Key: {engine.key}\r\n".encode()
               + b"X-Request-Id: \x80\x81\r\nContent-Type: application/json\r\n"
               + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    status, headers, answer = _raw(engine, request)
    assert status == 400 and headers["content-type"].startswith("application/json"), answer
    assert json.loads(answer)["error"]["code"] == "INVALID_JSON"
    assert re.fullmatch(r"req-[0-9a-f]{12}", headers["x-request-id"])


@pytest.mark.parametrize(("sent", "echoed"), [
    (b"trace-42", "trace-42"),
    ("réq-é".encode(), "réq-é"),
    (b"x" * 100, "x" * 64),
])
def test_a_good_request_id_is_echoed(engine, sent: bytes, echoed: str) -> None:  # type: ignore[no-untyped-def]
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: " + sent + b"\r\nConnection: close\r\n\r\n"
    status, headers, _ = _raw(engine, request)
    assert status == 200
    # Header values travel as bytes; the raw reader decodes them as Latin-1.
    assert headers["x-request-id"].encode("latin-1").decode() == echoed


# -- methods -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/feedback", "POST"),
    ("DELETE", "/memory/export", "GET, HEAD"),
    ("POST", "/health", "GET, HEAD"),
])
def test_a_wrong_method_is_a_405_that_names_the_allowed_ones(engine, method: str, path: str, allowed: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.request(method, f"{engine.url}{path}", headers=engine.headers)
    _refused(r, 405, "METHOD_NOT_ALLOWED")
    assert sorted(m.strip() for m in r.headers["allow"].split(",")) == sorted(allowed.split(", "))
