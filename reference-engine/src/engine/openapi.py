"""The Engine's HTTP API as an OpenAPI 3.1 document, served at GET /openapi.json.

The request-body schemas here are the ones the Engine validates requests against (engine.validation),
so the document cannot drift from what the Engine accepts; tests check that every route of the app is
in the document and every operation of the document is a route.
"""

from __future__ import annotations

import copy
from typing import Any

from engine.validation import NON_BLANK

__all__ = ["BUNDLE_FORMAT", "SCHEMAS", "MAX_EVENT_ID", "MAX_MS_DIGITS", "MAX_MENTIONS", "document", "body_schema"]

MAX_EVENT_ID = 2**63 - 1  # SQLite's largest integer: channel event ids never exceed it
MAX_MS_DIGITS = 15  # `after` of /execute/replay: a millisecond timestamp of at most 15 digits
MAX_MENTIONS = 2**31 - 1
BUNDLE_FORMAT = "engine-memory/1"

_NON_BLANK = {"type": "string", "pattern": NON_BLANK,
              "description": "a string with a character other than ASCII whitespace"}
_TEXT = {"type": "string"}
_TIMESTAMP = {"type": "string", "minLength": 1, "maxLength": 64,
              "description": "when, as the brain stores it (ISO 8601 UTC, e.g. 2026-01-02T03:04:05.000+00:00)"}


def _obj(required: list[str], properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["type"] = [out["type"], "null"]
    return out


_ROW_NOTE = "Other fields are ignored (a bundle from a newer Engine may carry more)."

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(["error"], {"error": {**_obj(["code", "message"], {"code": _TEXT, "message": _TEXT}),
                                        "additionalProperties": False}},
                  "Every error answer: a machine-readable code and a sentence for people."),
    "ExecuteRequest": _obj(["task_id", "message"], {"task_id": _NON_BLANK, "message": _NON_BLANK},
                           "One agent turn. Other fields are ignored."),
    "FeedbackRequest": _obj(["task_id", "rating"], {
        "task_id": _NON_BLANK,
        "rating": {"type": "integer", "minimum": -1, "maximum": 5},
        "message_id": _nullable(_TEXT),
        "comment": _nullable(_TEXT),
    }, "A learning signal for a task. Other fields are ignored."),
    "SearchRequest": _obj([], {
        "query": {**_nullable(_TEXT), "description": "words that must all appear (empty or null: everything)"},
        "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 100, "description": "default 20"},
    }, "A memory search. Other fields are ignored."),
    "Episode": _obj(["task_id", "summary", "created_at"],
                    {"task_id": _NON_BLANK, "summary": _TEXT, "created_at": _TIMESTAMP}, _ROW_NOTE),
    "Knowledge": _obj(["subject", "content", "confidence", "source", "valid_from"], {
        "subject": _NON_BLANK,
        "content": _TEXT,
        "type": {**_NON_BLANK, "description": "default \"fact\""},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "source": _TEXT,
        "valid_from": _TIMESTAMP,
        "valid_until": _nullable(_TIMESTAMP),
    }, _ROW_NOTE),
    "Person": _obj(["name", "first_seen", "last_seen"], {
        "name": _NON_BLANK,
        "kind": {**_NON_BLANK, "description": "default \"person\""},
        "mentions": {"type": "integer", "minimum": 0, "maximum": MAX_MENTIONS, "description": "default 0"},
        "first_seen": _TIMESTAMP,
        "last_seen": _TIMESTAMP,
    }, _ROW_NOTE),
    "Relation": _obj(["src", "dst", "relation", "created_at"], {
        "src": {**_NON_BLANK, "description": "name of a person in the brain or earlier in the bundle"},
        "dst": {**_NON_BLANK, "description": "name of a person in the brain or earlier in the bundle"},
        "relation": _NON_BLANK,
        "task_id": _nullable(_TEXT),
        "created_at": _TIMESTAMP,
    }, _ROW_NOTE),
    "Message": _obj(["task_id", "message_id", "role", "content", "created_at"], {
        "task_id": _NON_BLANK,
        "message_id": _NON_BLANK,
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": _TEXT,
        "created_at": _TIMESTAMP,
    }, _ROW_NOTE),
    "LearningSignal": _obj(["task_id", "rating", "created_at"], {
        "task_id": _NON_BLANK,
        "message_id": _nullable(_TEXT),
        "rating": {"type": "integer", "minimum": -1, "maximum": 5},
        "comment": _nullable(_TEXT),
        "created_at": _TIMESTAMP,
    }, _ROW_NOTE),
}


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}


SCHEMAS["MemoryBundle"] = _obj(["format"], {
    "format": {"type": "string", "const": BUNDLE_FORMAT},
    "episodes": _list("Episode"),
    "knowledge": _list("Knowledge"),
    "social": _obj([], {"nodes": _list("Person"), "edges": _list("Relation")}),
    "conversations": _list("Message"),
    "learning_signals": _list("LearningSignal"),
}, "What GET /memory/export answers, and what backout's salvage writes to memory-import.json. Rows "
   "already in the brain are skipped; the whole bundle is refused if any row is malformed. Other "
   "top-level fields (version, schema, exported_at, source, snapshot_id) are ignored.")
SCHEMAS["MemoryExport"] = {**copy.deepcopy(SCHEMAS["MemoryBundle"]), "required": [
    "format", "version", "schema", "exported_at", "episodes", "knowledge", "social", "conversations",
    "learning_signals"]}
SCHEMAS["MemoryExport"]["properties"].update({
    "version": _TEXT, "schema": {"type": ["integer", "null"]}, "exported_at": _TEXT,
})
SCHEMAS["MemoryExport"]["description"] = "The whole memory of the brain."
SCHEMAS["ImportResult"] = _obj(["status", "added"], {
    "status": {"type": "string", "const": "imported"},
    "added": _obj(["episodes", "knowledge", "people", "edges", "conversations", "learning_signals"],
                  {k: {"type": "integer", "minimum": 0} for k in
                   ("episodes", "knowledge", "people", "edges", "conversations", "learning_signals")}),
})
SCHEMAS["Health"] = _obj(["status", "uptime_seconds", "subsystems", "version", "schema", "in_flight"], {
    "status": {"type": "string", "enum": ["ok", "degraded", "starting", "draining", "error"]},
    "uptime_seconds": {"type": "number"},
    "subsystems": _obj(["database", "llm_provider", "asset_directory"], {
        "database": {"type": "string", "enum": ["ok", "starting", "error"]},
        "llm_provider": {"type": "string", "enum": ["ok", "error"]},
        "asset_directory": {"type": "string", "enum": ["ok", "error", "unknown"]},
    }),
    "version": _TEXT,
    "schema": {"type": ["integer", "null"], "description": "migration head of the brain, once known"},
    "in_flight": {"type": "integer", "minimum": 0},
    "error": copy.deepcopy(SCHEMAS["Error"]["properties"]["error"]),
})
SCHEMAS["ReplayEvent"] = _obj(["id", "task_id", "ts", "event", "data"], {
    "id": {"type": "integer"}, "task_id": _TEXT, "ts": {"type": "integer"}, "event": _TEXT, "data": {},
})
SCHEMAS["SearchResults"] = _obj(["results"], {"results": {"type": "array", "items": {"type": "object"}}})
SCHEMAS["FeedbackRecorded"] = _obj(["id", "status"], {"id": {"type": "integer"},
                                                      "status": {"type": "string", "const": "recorded"}})


def body_schema(name: str) -> dict[str, Any]:
    """The component schema `name` (what engine.validation checks a request body against)."""
    return SCHEMAS[name]


# -- operations ---------------------------------------------------------------------------------

_REQUEST_ID = {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
               "description": "echoed in the X-Request-Id answer header and the log line of the request "
                              f"(its first 64 characters, when it is printable UTF-8 text; else a fresh id)"}
_ANSWER_HEADERS = {"X-Request-Id": {"description": "the request's id (given or made)", "schema": {"type": "string"}}}


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "headers": _ANSWER_HEADERS,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    answer = _json("Error", description)
    if retry_after:
        answer["headers"] = {**_ANSWER_HEADERS, "Retry-After": {"description": "seconds to wait",
                                                                 "schema": {"type": "string"}}}
    return answer


_UNAUTHORIZED = _error("INVALID_KEY: missing or wrong X-Engine-Key")
_UNAVAILABLE = _error("STARTING, DRAINING, or the brain's error (e.g. MIGRATION_REQUIRED)", retry_after=True)
_BAD_REQUEST = _error("INVALID_JSON (not UTF-8 JSON, nested deeper than 32 levels, NaN/Infinity, a lone "
                      "surrogate) or INVALID_REQUEST (a field of the wrong type or out of range)")
_TOO_LARGE = _error("PAYLOAD_TOO_LARGE: request body over 1 MiB")


def _operation(operation_id: str, summary: str, responses: dict[str, Any], *, body: str | None = None,
               parameters: list[dict[str, Any]] | None = None, public: bool = False,
               security: list[dict[str, list[str]]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary,
                          "parameters": [*(parameters or []), _REQUEST_ID]}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
        responses = {"400": _BAD_REQUEST, "413": _TOO_LARGE, **responses}
    if public:
        op["security"] = []
    else:
        responses = {"401": _UNAUTHORIZED, "503": _UNAVAILABLE, **responses}
        if security is not None:
            op["security"] = security
    op["responses"] = dict(sorted(responses.items()))
    return op


_TURN_EVENT = _obj(["event", "data"], {
    "event": {"type": "string", "enum": ["thread_lifecycle", "tool_call", "tool_result", "text_delta", "usage",
                                         "error"]},
    "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"type": "object"}},
}, "one event of a turn; `data` is a JSON object")


def _search(store: str, what: str) -> dict[str, Any]:
    return {"post": _operation(f"search_{store}", f"Search {what}", {
        "200": _json("SearchResults", "the newest matches first"),
    }, body="SearchRequest")}


_PATHS: dict[str, dict[str, Any]] = {
    "/health": {"get": _operation("health", "Readiness: 200 only when the Engine can serve turns", {
        "200": _json("Health", "ready"),
        "503": _json("Health", "starting, draining, degraded (a subsystem is not ok) or failed"),
    }, public=True)},
    "/openapi.json": {"get": _operation("openapi", "This document", {
        "200": {"description": "the OpenAPI document", "headers": _ANSWER_HEADERS,
                "content": {"application/json": {"schema": {"type": "object"}}}},
    }, public=True)},
    "/execute": {"post": _operation("execute", "Run one agent turn, streaming its events", {
        "200": {"description": "Server-sent events (the schema is that of one event); the last is "
                               "thread_lifecycle with phase completed (or errored)",
                "headers": _ANSWER_HEADERS, "content": {"text/event-stream": {"schema": _TURN_EVENT}}},
        "500": _error("INTERNAL_ERROR: the turn failed (the task task-poisoned fails on every version; the "
                      "errors-broken build fails some turns)"),
        "502": _error("LLM_PROVIDER_ERROR: the (simulated) LLM provider is down"),
    }, body="ExecuteRequest")},
    "/execute/replay": {"get": _operation("replay", "Buffered channel events of recent turns", {
        "200": {**_json("ReplayEvent", "events, oldest first"), "content": {"application/json": {"schema": _obj(
            ["events"], {"events": {"type": "array", "items": {"$ref": "#/components/schemas/ReplayEvent"}}})}}},
        "400": _error("INVALID_REQUEST: a query parameter out of range"),
    }, parameters=[
        {"name": "after", "in": "query", "required": False, "description": "only events after this time (ms since "
         "the epoch; default 0)", "schema": {"type": "integer", "minimum": -(10**MAX_MS_DIGITS - 1),
                                            "maximum": 10**MAX_MS_DIGITS - 1}},
        {"name": "after_id", "in": "query", "required": False, "description": "only events after this event id "
         "(default 0)", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID}},
        {"name": "task_id", "in": "query", "required": False, "description": "only events of this task",
         "schema": {"type": "string"}},
    ])},
    "/feedback": {"post": _operation("feedback", "Store a learning signal", {
        "201": _json("FeedbackRecorded", "recorded"),
    }, body="FeedbackRequest")},
    "/memory/knowledge/search": _search("knowledge", "knowledge (facts)"),
    "/memory/episodes/search": _search("episodes", "episodes"),
    "/memory/social/search": _search("social", "people and their relations"),
    "/memory/export": {"get": _operation("memory_export", "The whole memory as a portable bundle", {
        "200": _json("MemoryExport", "the bundle (POST it to /memory/import of another Engine)"),
    })},
    "/memory/import": {"post": _operation("memory_import", "Merge a memory bundle", {
        "200": _json("ImportResult", "rows added per store (rows already present are skipped)"),
        "400": _error("INVALID_JSON, INVALID_REQUEST, or INVALID_BUNDLE: not an engine-memory/1 bundle, or a "
                      "row with a missing field, a field of the wrong type or out of range (nothing of the "
                      "bundle is stored)"),
        "409": _error("UNKNOWN_PERSON: a relation names a person neither in the brain nor earlier in the "
                      "bundle (nothing of the bundle is stored)"),
    }, body="MemoryBundle")},
    "/metrics": {"get": _operation("metrics", "Prometheus metrics", {
        "200": {"description": "Prometheus text exposition format 0.0.4", "headers": _ANSWER_HEADERS,
                "content": {"text/plain": {"schema": {"type": "string"}}}},
        "401": _error("INVALID_KEY: missing or wrong X-Engine-Key (or Authorization: Bearer)"),
    }, security=[{"EngineKey": []}, {"MetricsBearer": []}])},
}


def document(version: str | None = None) -> dict[str, Any]:
    """The OpenAPI document (a fresh copy); `version` is the running release's."""
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "Reference Engine",
            "version": version or "unknown",
            "description": "The reference Engine's HTTP API: an AI-agent service whose whole state is one "
                           "SQLite file (the brain). Every error is {\"error\": {\"code\", \"message\"}}; "
                           "request bodies are JSON of at most 1 MiB and 32 nesting levels.",
        },
        "security": [{"EngineKey": []}],
        "paths": _PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "EngineKey": {"type": "apiKey", "in": "header", "name": "X-Engine-Key",
                              "description": "the key in ENGINE_API_KEY (or whose SHA-256 is ENGINE_KEY_HASH)"},
                "MetricsBearer": {"type": "http", "scheme": "bearer",
                                  "description": "the same key, for Prometheus servers that cannot send headers"},
            },
        },
    })
