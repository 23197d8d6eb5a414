"""The Engine's operational contract, against a real process on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.releases import POISONED_TASK_ID

TABLES_PER_TURN = ["conversations", "trajectories", "observability_events", "episodes",
                   "knowledge_store", "social_graph_nodes", "social_graph_edges", "mcp_calls",
                   "channel_state_snapshots"]


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _count(brain: Path, table: str, where: str = "1", args: tuple[Any, ...] = ()) -> int:
    conn = sqlite3.connect(f"file:{brain}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def engine(start_engine):  # type: ignore[no-untyped-def]
    return start_engine("2.3.1")


def test_health_has_the_contract_shape(engine) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{engine.url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert isinstance(body["uptime_seconds"], float)
    assert body["subsystems"] == {"database": "ok", "llm_provider": "ok", "asset_directory": "ok"}
    assert (body["version"], body["schema"], body["in_flight"]) == ("2.3.1", 2, 0)


@pytest.mark.parametrize("headers", [{}, {"X-Engine-Key": "wrong"}])
def test_every_endpoint_but_health_needs_the_key(engine, headers) -> None:  # type: ignore[no-untyped-def]
    for method, path in [("GET", "/memory/export"), ("POST", "/execute"), ("GET", "/metrics"),
                         ("POST", "/memory/knowledge/search"), ("GET", "/execute/replay")]:
        r = httpx.request(method, f"{engine.url}{path}", headers=headers, json={})
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "INVALID_KEY"
        assert set(r.json()["error"]) == {"code", "message"}


def test_bad_requests_get_the_error_envelope(engine) -> None:  # type: ignore[no-untyped-def]
    h = engine.headers
    r = httpx.post(f"{engine.url}/execute", headers={**h, "Content-Type": "application/json"},
                   content=b"{not json")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_JSON")
    r = httpx.post(f"{engine.url}/execute", headers=h, json={"message": "hi"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_REQUEST")
    r = httpx.post(f"{engine.url}/memory/import", headers=h, content=b"x" * (1024 * 1024 + 1))
    assert (r.status_code, r.json()["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")
    r = httpx.get(f"{engine.url}/nowhere", headers=h)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND")


def test_a_turn_streams_to_completed_and_fills_every_table(engine) -> None:  # type: ignore[no-untyped-def]
    task = "contract-turn-1"
    r = httpx.post(f"{engine.url}/execute", headers=engine.headers, timeout=10, json={
        "task_id": task,
        "message": "The office wifi is Falcon-42. I met Priya and Omar. Please email Jordan the notes.",
    })
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert events[0] == ("thread_lifecycle", {"phase": "started", "task_id": task,
                                              "request_id": r.headers["x-request-id"]})
    assert events[-1][0] == "thread_lifecycle" and events[-1][1]["phase"] == "completed"
    assert ("tool_call", {"tool": "mcp.email", "input": {"target": "Jordan"}}) in events
    for table in TABLES_PER_TURN:
        assert _count(engine.brain, table) > 0, table
    assert _count(engine.brain, "mcp_calls", "task_id = ? AND action = 'email'", (task,)) == 1
    # Working memory is buffered and flushed about once a second.
    deadline = time.monotonic() + 5
    while _count(engine.brain, "working_memory_log", "task_id = ?", (task,)) == 0:
        assert time.monotonic() < deadline, "working memory never flushed"
        time.sleep(0.2)
    r = httpx.post(f"{engine.url}/feedback", headers=engine.headers,
                   json={"task_id": task, "rating": 5, "comment": "spot on"})
    assert r.status_code == 201
    assert _count(engine.brain, "learning_signals", "task_id = ?", (task,)) == 1


def test_memory_search_export_import_replay(engine) -> None:  # type: ignore[no-untyped-def]
    url, h = engine.url, engine.headers
    start_ms = int(time.time() * 1000) - 1
    httpx.post(f"{url}/execute", headers=h, timeout=10,
               json={"task_id": "contract-mem", "message": "The release train is Heron-7. Lunch with Wen."})
    facts = httpx.post(f"{url}/memory/knowledge/search", headers=h, json={"query": "Heron-7"}).json()
    assert [f["subject"] for f in facts["results"]] == ["The release train"]
    people = httpx.post(f"{url}/memory/social/search", headers=h, json={"query": "Wen"}).json()["results"]
    assert any(rel["task_id"] == "contract-mem" for rel in people[0]["relations"])
    episodes = httpx.post(f"{url}/memory/episodes/search", headers=h, json={"query": "Heron-7"}).json()
    assert episodes["results"][0]["task_id"] == "contract-mem"
    replay = httpx.get(f"{url}/execute/replay", headers=h,
                       params={"after": start_ms, "task_id": "contract-mem"}).json()["events"]
    assert replay[-1]["event"] == "thread_lifecycle" and replay[-1]["data"]["phase"] == "completed"
    bundle = httpx.get(f"{url}/memory/export", headers=h).json()
    assert bundle["format"] == "engine-memory/1" and bundle["schema"] == 2
    added = httpx.post(f"{url}/memory/import", headers=h, json=bundle).json()["added"]
    assert sum(added.values()) == 0  # everything is already there: import merges


def test_metrics_and_json_logs(engine) -> None:  # type: ignore[no-untyped-def]
    httpx.get(f"{engine.url}/health")
    text = httpx.get(f"{engine.url}/metrics", headers=engine.headers).text
    assert 'engine_requests_total{method="GET",path="/health",status="200"}' in text
    lines = [json.loads(line) for line in engine.log_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["message"] == "request"]
    assert requests
    for line in requests:
        assert {"ts", "level", "request_id", "task_id", "method", "path", "status", "duration_ms"} <= set(line)
    assert any(line.get("code") == "INVALID_KEY" for line in requests)


@pytest.mark.parametrize("release", ["2.3.1", "2.4.0"])
def test_the_poisoned_task_fails_on_every_version(start_engine, release) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine(release)
    r = httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": POISONED_TASK_ID, "message": "hi"})
    assert (r.status_code, r.json()["error"]["code"]) == (500, "INTERNAL_ERROR")
    r = httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": "fine", "message": "hi"})
    assert r.status_code == 200


def test_llm_provider_outage_shows_in_health(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outage = tmp_path / "llm-down"
    eng = start_engine("2.3.1", env={"ENGINE_LLM_OUTAGE_FILE": str(outage)})
    outage.touch()
    r = httpx.get(f"{eng.url}/health")
    assert r.status_code == 503 and r.json()["subsystems"]["llm_provider"] == "error"
    assert r.json()["subsystems"]["database"] == "ok"
    r = httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": "x", "message": "hi"})
    assert (r.status_code, r.json()["error"]["code"]) == (502, "LLM_PROVIDER_ERROR")
    outage.unlink()
    assert httpx.get(f"{eng.url}/health").status_code == 200


def test_a_brain_needs_the_encryption_key_it_was_written_with(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    brain = tmp_path / "brain.sqlite"
    eng = start_engine("2.3.1", brain=brain, env={"AD_ENCRYPTION_KEY": "first-key"})
    assert eng.stop() == 0
    eng = start_engine("2.3.1", brain=brain, env={"AD_ENCRYPTION_KEY": "other-key"}, wait=False)
    body = eng.wait_health(lambda r: r.json().get("status") not in ("starting",))
    assert body["status"] != "ok" and body["subsystems"]["asset_directory"] == "error"


def test_key_hash_instead_of_key(start_engine) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from engine_proc import DEFAULT_KEY

    digest = hashlib.sha256(DEFAULT_KEY.encode()).hexdigest()
    eng = start_engine("2.3.1", env={"ENGINE_API_KEY": None, "ENGINE_KEY_HASH": digest})
    assert httpx.get(f"{eng.url}/memory/export", headers=eng.headers).status_code == 200
    assert httpx.get(f"{eng.url}/memory/export", headers={"X-Engine-Key": digest}).status_code == 401
