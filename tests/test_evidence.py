"""What a rollback keeps: redaction, diagnostics bundle, postmortem, regression case, ticket.

Real files, real SQLite brains built by the reference Engine's migrations, and real HTTP servers
on 127.0.0.1 standing in for the GitHub issues API and a ticket webhook.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import tarfile
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from engine_proc import free_port

from backout.profiles.engine import TURN_PATH
from backout.config import Deployment, TrackerSettings
from backout.evidence import (
    REDACTED,
    DiagnosticsInput,
    Redactor,
    case_name,
    collect_diagnostics,
    file_ticket,
    migration_history,
    render_postmortem,
    secrets_of,
    write_postmortem,
    write_regression_case,
)
from backout.evidence.diagnostics import DIAGNOSTICS_FILES
from backout.evidence.regression import FORMAT, MAX_REQUESTS, PROBE_MESSAGE
from engine.brain import open_connection
from engine.releases import get_release
from engine.schema import migrate

CANARY = "canary-" + secrets.token_hex(12)  # a known secret: the deployment's API key
# Secrets backout never knew the value of: only the patterns can catch them.
UNKNOWN_SECRETS = ["bearertok-" + secrets.token_hex(6), "jsonkey-" + secrets.token_hex(6),
                   "querykey-" + secrets.token_hex(6), "SLACKPATH" + secrets.token_hex(6),
                   "passwd-" + secrets.token_hex(6)]
ALL_SECRETS = [CANARY, *UNKNOWN_SECRETS]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def engine_brain(tmp_path: Path) -> Path:
    """A brain migrated by the reference Engine 2.4.0 (ledger rows 1..4)."""
    path = tmp_path / "brain.sqlite"
    conn = open_connection(path)
    try:
        assert migrate(conn, get_release("2.4.0")).ok
    finally:
        conn.close()
    return path


def leaky_logs() -> list[str]:
    bearer, jsonkey, querykey, slack, passwd = UNKNOWN_SECRETS
    return [
        json.dumps({"level": "INFO", "message": "request", "headers": {"X-Engine-Key": CANARY}}),
        f"2026-11-27T01:15:03Z client sent Authorization: Bearer {bearer}",
        json.dumps({"level": "ERROR", "message": "config dump", "api_key": jsonkey,
                    "output_tokens": 17}),
        f"GET /memory/export?key={querykey}&after=0 500",
        f"notify: posting to https://hooks.slack.com/services/T000/B000/{slack}",
        f"db url postgres://engine:{passwd}@db:5432/x",
        f"engine: started with key {CANARY}",
    ]


def incident(**overrides: Any) -> dict[str, Any]:
    """The record of an errors-triggered brain rollback, with the canary sprinkled in."""
    record: dict[str, Any] = {
        "id": "20261127T011500Z-2.4.0-errors", "deployment": "engine",
        "from_version": "2.4.0-errors", "to_version": "2.3.1",
        "reason": "error rate 31% vs 0.5% baseline",
        "started_at": "2026-11-27T01:15:00+00:00", "finished_at": "2026-11-27T01:16:42+00:00",
        "outcome": "rolled-back", "layer": "brain",
        "layer_reason": "2.3.1 refuses the 2.4.0 brain (MIGRATION_REQUIRED) in the trial boot",
        "trial": {"healthy": False, "reason": "health 503 MIGRATION_REQUIRED",
                  "log_tail": ['{"level": "ERROR", "message": "brain is newer than this release"}',
                               f"trial env ENGINE_API_KEY={CANARY}"]},
        "snapshot": {"id": "20261127T005900Z-2.3.1", "created_at": "2026-11-27T00:59:00+00:00",
                     "age_seconds": 960, "version": "2.3.1"},
        "bad_window": {"from": "2026-11-27T01:00:05+00:00", "to": "2026-11-27T01:15:00+00:00"},
        "verdict": {"decision": "roll-back", "trigger": "errors",
                    "reason": f"errors 31% vs 0.5% (key {CANARY} in a log line)",
                    "evidence": [{"signal": "errors", "baseline": "0.5%", "now": "31%",
                                  "test": "p=1e-9", "verdict": "trigger"},
                                 {"signal": "latency", "baseline": "p95 80 ms",
                                  "now": "p95 85 ms", "test": "ratio 1.06", "verdict": "ok"}]},
        "rows_since_snapshot": {"episodes": 40, "knowledge_store": 12},
        "salvage": {"folder": "/var/lib/backout/incidents/x/salvage", "total": 52,
                    "tables": {"episodes": 40, "knowledge_store": 12}},
        "effects": {"table": "mcp_calls", "rows": [
            {"id": 7, "task_id": "t-17", "tool": "mcp.email", "action": "send", "target": "Jordan",
             "status": "ok", "created_at": "2026-11-27T01:03:00+00:00"},
            {"id": 8, "task_id": "t-21", "tool": "mcp.delete", "action": "delete",
             "target": "draft|q3", "status": "ok", "created_at": "2026-11-27T01:09:00+00:00"},
        ]},
        "failed_requests": [
            {"ts": "2026-11-27T01:10:00+00:00", "status": 500, "task_id": "t-17",
             "path": "/execute", "code": "INTERNAL_ERROR"},
            {"ts": "2026-11-27T01:10:02+00:00", "status": 500, "task_id": "t-21",
             "path": "/execute", "code": "INTERNAL_ERROR"},
            {"ts": "2026-11-27T01:10:03+00:00", "status": 500, "task_id": "t-17",
             "path": "/execute", "code": "INTERNAL_ERROR"},
            {"ts": "2026-11-27T01:10:04+00:00", "status": 401, "task_id": "t-99",
             "path": "/execute", "code": "INVALID_KEY"},
        ],
        "failed_eval_cases": [],
        "timeline": [
            {"step": "verdict", "title": "Verdict: roll back", "started_at": "2026-11-27T01:15:00Z",
             "finished_at": "2026-11-27T01:15:01Z", "seconds": 1.0, "outcome": "done",
             "detail": "errors 31%"},
            {"step": "restore", "title": "Restore the brain", "started_at": "2026-11-27T01:15:30Z",
             "finished_at": "2026-11-27T01:16:00Z", "seconds": 30.2, "outcome": "done",
             "detail": "quarantined the 2.4.0 brain first"},
        ],
        "verify": {"health": {"ok": True, "status": 200}, "errors": {"ok": True, "rate": 0.004},
                   "evals": {"ok": False, "failed": ["auth_required"]}},
        "notifications": [{"channel": "slack", "ok": True, "detail": "delivered (HTTP 200)"},
                          {"channel": "webhook", "ok": False,
                           "detail": "HTTP 500 after 3 attempts"}],
        "status_page": {"updated": True, "why": "customers saw 31% errors"},
        "quarantine": "/var/lib/backout/quarantine/engine/20261127T011500Z",
        "next_steps": ["Ask Jordan whether the email of 01:03 was correct."],
    }
    record.update(overrides)
    return record


def incident_case_file() -> str:
    return f"{case_name(incident())}.json"


def diagnostics_input(logs: list[str] | None = None) -> DiagnosticsInput:
    return DiagnosticsInput(
        incident_id="20261127T011500Z-2.4.0-errors", deployment="engine",
        logs=leaky_logs() if logs is None else logs,
        health=[{"ts": 1.0, "status": 503, "body": {"status": "error", "detail": f"key={CANARY}"}},
                {"ts": 2.0, "status": 200, "body": {"status": "ok"}}],
        verdict=incident()["verdict"],
        baseline={"error_rate": 0.005, "p95_ms": 80, "scrape": {"token": CANARY}},
        schema_restore_point={"head": "2", "fingerprint": "abc"},
        schema_now={"head": "4", "fingerprint": "def"},
        schema_diff={"changes": [{"kind": "drop_column", "table": "episodes"}]},
        migrations=[{"id": 1, "name": "core"}],
        versions={"from": "2.4.0-errors", "to": "2.3.1"},
        extra={"env": {"ENGINE_API_KEY": CANARY, "PLAIN": "value"}, "password": 123456789},
    )


def every_text(folder: Path) -> dict[str, str]:
    """Every file under `folder` (tar.gz members included) as text, by name."""
    texts: dict[str, str] = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        texts[f"{path.name}:{member.name}"] = extracted.read().decode()
        elif path.is_file():
            texts[str(path.relative_to(folder))] = path.read_text(encoding="utf-8")
    return texts


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kept", [
    ("Authorization: Bearer abc.def-123", "Authorization: Bearer [REDACTED]"),
    ('{"api_key": "zzz", "output_tokens": 5}', '{"api_key": "[REDACTED]", "output_tokens": 5}'),
    ("GET /x?key=abc123&y=2", "GET /x?key=[REDACTED]&y=2"),
    ("ENGINE_API_KEY=foo rest", "ENGINE_API_KEY=[REDACTED] rest"),
    ("X-Engine-Key: kkk", "X-Engine-Key: [REDACTED]"),
    ("--token abcdef --key-file /run/key", "--token [REDACTED] --key-file /run/key"),
    ('password="two words"', 'password="[REDACTED]"'),
    ("https://hooks.slack.com/services/T0/B0/XYZ", "https://hooks.slack.com/services/[REDACTED]"),
    ("https://user:pw@host/path", "https://user:[REDACTED]@host/path"),
    ("monkey: banana, keyboard=1, max_tokens=5", "monkey: banana, keyboard=1, max_tokens=5"),
])
def test_redactor_patterns(text: str, kept: str) -> None:
    assert Redactor().text(text) == kept


def test_redactor_known_values_and_their_encodings() -> None:
    secret = 'pa"ss/word+1'
    r = Redactor([secret, "short", ""])
    assert r.text(f"x {secret} y") == f"x {REDACTED} y"
    assert secret not in r.text(json.dumps({"v": secret}))
    assert "pa%22ss%2Fword%2B1" not in r.text("u?v=pa%22ss%2Fword%2B1")
    assert r.text("a short word") == "a short word"  # under 6 characters: not redacted


def test_redactor_obj_is_a_deep_redacted_copy() -> None:
    original = {"n": [CANARY, {"token": 1234567}], "api_key": None, "ok": True,
                "tuple": (CANARY,), f"k-{CANARY}": 1}
    out = Redactor([CANARY]).obj(original)
    assert out == {"n": [REDACTED, {"token": REDACTED}], "api_key": None, "ok": True,
                   "tuple": [REDACTED], f"k-{REDACTED}": 1}
    assert original["n"][0] == CANARY  # the input is untouched


def test_secrets_of_walks_every_secret_source(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    files = {name: tmp_path / name for name in ("slack", "env_file", "status")}
    for name, path in files.items():
        path.write_text(f"  {name}-secret-value\n")
    monkeypatch.setenv("T_API_KEY", "api-key-value")
    monkeypatch.setenv("T_PASSED", "passed-value")
    monkeypatch.setenv("T_HOOK_URL", "https://hooks.example/abc")
    monkeypatch.setenv("T_PAGER", "pager-token-value")
    monkeypatch.setenv("T_GH", "gh-token-value")
    monkeypatch.delenv("T_MISSING", raising=False)
    dep = Deployment.model_validate({
        "brain": str(tmp_path / "brain.sqlite"), "runtime": "process",
        "api_key": {"env": "T_API_KEY"},
        "process": {"command": "engine serve", "pass_env": ["T_PASSED", "T_MISSING"],
                    "env_files": {"AD_KEY": str(files["env_file"]),
                                  "GONE": str(tmp_path / "missing")},
                    "env": {"PLAIN": "plain-value", "DB_PASSWORD": "in-plain-env"}},
        "notify": {"slack": [{"webhook": {"file": str(files["slack"])}}],
                   "webhook": [{"url": {"env": "T_HOOK_URL"},
                                "headers": {"Authorization": {"env": "T_PAGER"}}}],
                   "statuspage": {"page_id": "p", "api_key": {"file": str(files["status"])}}},
        "tracker": {"kind": "github", "repo": "acme/engine", "token": {"env": "T_GH"}},
    })
    found = secrets_of(dep)
    assert set(found) == {"api-key-value", "passed-value", "https://hooks.example/abc",
                          "pager-token-value", "gh-token-value", "slack-secret-value",
                          "env_file-secret-value", "status-secret-value", "in-plain-env"}
    assert len(found) == len(set(found))


# -- diagnostics -------------------------------------------------------------------------------


def test_diagnostics_bundle_is_redacted_private_and_complete(tmp_path: Path) -> None:
    folder = tmp_path / "incidents" / "x"
    archive = collect_diagnostics(folder, diagnostics_input(), Redactor([CANARY]))
    diag = folder / "diagnostics"
    assert archive == folder / "diagnostics.tar.gz"
    expected = {"README.txt", *DIAGNOSTICS_FILES}
    assert {p.name for p in diag.iterdir()} == expected
    assert mode(folder) == mode(diag) == 0o700
    assert all(mode(p) == 0o600 for p in [archive, *diag.iterdir()])
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {f"diagnostics/{n}" for n in expected}
        assert all(m.mode == 0o600 and m.uname == "" for m in members.values())
        log = tar.extractfile(members["diagnostics/service.log"])
        assert log is not None and log.read() == (diag / "service.log").read_bytes()
    for name in DIAGNOSTICS_FILES:
        if name.endswith(".json"):
            json.loads((diag / name).read_text())  # still valid JSON after redaction
    texts = every_text(folder)
    for name, text in texts.items():
        for secret in ALL_SECRETS:
            assert secret not in text, f"{secret} leaked into {name}"
    log = (diag / "service.log").read_text().splitlines()
    assert len(log) == len(leaky_logs()) and REDACTED in log[1] and '"output_tokens": 17' in log[2]
    schema = json.loads((diag / "schema.json").read_text())
    assert schema["now"] == {"head": "4", "fingerprint": "def"}
    readme = (diag / "README.txt").read_text()
    assert all(name in readme for name in DIAGNOSTICS_FILES) and "20261127T011500Z" in readme


def test_diagnostics_rerun_replaces_both(tmp_path: Path) -> None:
    folder = tmp_path / "incident"
    collect_diagnostics(folder, diagnostics_input(["first run"]), Redactor())
    collect_diagnostics(folder, diagnostics_input(["second run", "more"]), Redactor())
    assert (folder / "diagnostics" / "service.log").read_text() == "second run\nmore\n"
    with tarfile.open(folder / "diagnostics.tar.gz") as tar:
        log = tar.extractfile("diagnostics/service.log")
        assert log is not None and log.read() == b"second run\nmore\n"
    assert sorted(p.name for p in folder.iterdir()) == ["diagnostics", "diagnostics.tar.gz"]
    assert not [p for p in (folder / "diagnostics").iterdir() if p.name.startswith(".")]


def test_diagnostics_of_an_empty_input(tmp_path: Path) -> None:
    archive = collect_diagnostics(tmp_path / "i", DiagnosticsInput("i", "engine"), Redactor())
    assert json.loads((tmp_path / "i" / "diagnostics" / "verdict.json").read_text()) is None
    assert (tmp_path / "i" / "diagnostics" / "service.log").read_text() == ""
    assert tarfile.is_tarfile(archive)


def test_migration_history_of_an_engine_brain(engine_brain: Path) -> None:
    before = engine_brain.stat().st_mtime_ns
    rows = migration_history(engine_brain)
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["name"] == "mcp_calls" and rows[0]["engine_version"] == "2.4.0"
    assert engine_brain.stat().st_mtime_ns == before


def test_migration_history_of_other_ledgers(tmp_path: Path) -> None:
    alembic, plain = tmp_path / "alembic.sqlite", tmp_path / "plain.sqlite"
    with closing(sqlite3.connect(alembic)) as conn, conn:
        conn.execute("CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    with closing(sqlite3.connect(plain)) as conn:
        conn.execute("PRAGMA user_version = 7")
    assert migration_history(alembic) == [{"version_num": "ae1027a6acf"}]
    assert migration_history(plain) == [{"user_version": 7}]


def test_migration_history_tolerates_unreadable_brains(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not an SQLite database at all" * 100)
    assert migration_history(junk) == []
    assert migration_history(tmp_path / "missing.sqlite") == []
    assert not (tmp_path / "missing.sqlite").exists()  # never created by looking
    assert migration_history(tmp_path) == []


# -- postmortem --------------------------------------------------------------------------------


SECTIONS = ["# Postmortem: engine rolled back from 2.4.0-errors to 2.3.1", "## Summary",
            "## Timeline", "## Symptom and evidence", "## Layer: brain", "## Data",
            "## External effects", "## Verification", "## Notifications and status page",
            "## What to do next"]


def test_postmortem_has_every_section(tmp_path: Path) -> None:
    path = write_postmortem(tmp_path / "inc", incident(), Redactor([CANARY]))
    text = path.read_text()
    assert path == tmp_path / "inc" / "postmortem.md" and mode(path) == 0o600
    assert mode(tmp_path / "inc") == 0o700
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert ("On 2026-11-27 at 01:15 UTC, 2.4.0-errors was rolled back to 2.3.1 on engine "
            "because of: error rate 31% vs 0.5% baseline.") in text
    assert "The brain was restored from snapshot 20261127T005900Z-2.3.1, 16 min 0 s old." in text
    assert "It took 1 min 42 s" in text
    assert "| 2 | Restore the brain | 01:15:30 UTC | 01:16:00 UTC | 30.2 | done |" in text
    assert "| errors | 0.5% | 31% | p=1e-9 | trigger |" in text
    assert "healthy **no** (health 503 MIGRATION_REQUIRED)" in text
    assert "brain is newer than this release" in text
    assert "3 request(s) failed" not in text and "4 request(s) failed" in text
    assert "| evals | FAILED |" in text and "| slack | yes | delivered (HTTP 200) |" in text
    assert "Status page: updated (customers saw 31% errors)." in text
    for secret in ALL_SECRETS:
        assert secret not in text


def test_postmortem_renders_the_effects_table_and_salvage_tables() -> None:
    text = render_postmortem(incident(), Redactor())
    assert "Rows of `mcp_calls` written during the bad window" in text and "check each." in text
    assert "| id | task_id | tool | action | target | status | created_at |" in text
    assert "| 7 | t-17 | mcp.email | send | Jordan | ok | 2026-11-27T01:03:00+00:00 |" in text
    assert ("| 8 | t-21 | mcp.delete | delete | draft\\|q3 | ok | 2026-11-27T01:09:00+00:00 |"
            in text)  # a pipe in a cell is escaped
    assert "Salvaged: 52 row(s), kept in `/var/lib/backout/incidents/x/salvage`." in text
    assert "| episodes | 40 |" in text and "| knowledge_store | 12 |" in text
    assert "quarantine: `/var/lib/backout/quarantine/engine/20261127T011500Z`" in text


def test_postmortem_next_steps() -> None:
    text = render_postmortem(incident(), Redactor())
    steps = text[text.index("## What to do next"):]
    assert "- [ ] Ask Jordan whether the email of 01:03 was correct." in steps
    assert "Fix 2.4.0-errors" in steps
    assert "`backout salvage replay 20261127T011500Z-2.4.0-errors`" in steps
    assert '`backout unfreeze 2.4.0-errors --reason "..."`' in steps
    assert "`regression/regression_20261127t011500z_2_4_0_errors.json`" in steps


def test_postmortem_of_image_rollback_without_effects() -> None:
    text = render_postmortem(incident(layer="image", salvage=None, snapshot=None,
                                      effects={"table": "mcp_calls", "rows": []},
                                      trial=None, outcome="rolled-back"), Redactor())
    assert "Only the image was swapped back; the brain was kept as it was." in text
    assert "Nothing was recorded in `mcp_calls` during the bad window." in text
    generic = render_postmortem(incident(effects={"table": None, "rows": []}), Redactor())
    assert "names no effects table" in generic
    assert "Nothing needed salvaging" in text and "salvage replay" not in text
    kept = render_postmortem(incident(layer="image", salvage=None), Redactor())
    assert ("snapshot `20261127T005900Z-2.3.1` of version 2.3.1 (16 min 0 s old) was not needed"
            in kept)


def test_postmortem_tolerates_a_bare_record() -> None:
    text = render_postmortem({"id": None, "outcome": "failed", "verdict": None, "timeline": None},
                             Redactor())
    for section in SECTIONS[1:]:
        assert section.split(":")[0] in text
    assert "At a time that was not recorded, a rollback from unknown to unknown was started" in text
    assert "No timeline was recorded." in text


# -- regression case ---------------------------------------------------------------------------


def read_case(path: Path | None) -> dict[str, Any]:
    assert path is not None and path.is_file() and path.stat().st_size > 0
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    return dict(json.loads(path.read_text()))


def test_regression_case_for_an_errors_trigger(tmp_path: Path) -> None:
    path = write_regression_case(tmp_path, incident(), turn_path=TURN_PATH)
    case = read_case(path)
    assert path == tmp_path / "regression" / "regression_20261127t011500z_2_4_0_errors.json"
    assert case["format"] == FORMAT and case["name"] == case_name(incident()) == path.stem
    assert (case["kind"], case["trigger"], case["version"], case["good_version"]) == \
        ("turn", "errors", "2.4.0-errors", "2.3.1")
    assert case["expect"] == {"status": 200, "lifecycle": "completed"}
    assert len(case["requests"]) == MAX_REQUESTS
    assert {r["task_id"] for r in case["requests"]} == {"t-17", "t-21"}  # the 401 is the client's
    assert all(r["message"] == PROBE_MESSAGE for r in case["requests"])
    assert case["cases"] == []


def test_postmortem_lists_failed_eval_cases() -> None:
    text = render_postmortem(incident(failed_eval_cases=["fact_simple_statement", "health_ok"]),
                             Redactor())
    assert "Eval cases that failed: `fact_simple_statement`, `health_ok`.\n\n## Layer" in text
    assert "\n\n\n" not in text


def test_regression_case_for_an_evals_trigger(tmp_path: Path) -> None:
    record = incident(failed_requests=[], failed_eval_cases=["fact_simple_statement",
                                                             "fact_two_in_one_message"],
                      verdict={"decision": "roll-back", "triggers": ["evals"], "reason": "evals"})
    case = read_case(write_regression_case(tmp_path, record, turn_path=TURN_PATH))
    assert (case["kind"], case["trigger"]) == ("health", "evals")
    assert case["cases"] == ["fact_simple_statement", "fact_two_in_one_message"]
    assert case["requests"] == [] and case["expect"] == {"status": 200, "health": "ok"}


def test_regression_case_for_a_crash_at_boot(tmp_path: Path) -> None:
    record = incident(id="20261127T020000Z-2.4.0-crash", from_version="2.4.0-crash",
                      failed_requests=[], failed_eval_cases=[],
                      verdict={"decision": "roll-back", "trigger": "health", "reason": "exit 1"})
    case = read_case(write_regression_case(tmp_path, record, turn_path=TURN_PATH))
    assert (case["name"], case["kind"], case["trigger"]) == \
        ("regression_20261127t020000z_2_4_0_crash", "health", "health")
    assert case["requests"] == [] and case["cases"] == []


def test_regression_case_is_redacted(tmp_path: Path) -> None:
    record = incident(reason=f"errors; log said X-Engine-Key: {CANARY} and token=pattern-only-1")
    text = json.dumps(read_case(write_regression_case(tmp_path, record, Redactor([CANARY]))))
    assert CANARY not in text and "pattern-only-1" not in text and REDACTED in text


def test_no_regression_case_without_a_bad_version(tmp_path: Path) -> None:
    assert write_regression_case(tmp_path, {"id": "x", "from_version": None}) is None
    assert write_regression_case(tmp_path, {}) is None
    assert not (tmp_path / "regression").exists()


# -- tracker -----------------------------------------------------------------------------------


class Recorder:
    """A real HTTP server on 127.0.0.1 answering scripted (status, JSON body) pairs in order."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "json": json.loads(body)})
                status, answer = recorder.answers.pop(0) if recorder.answers else (500, {})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Any]:
    started: list[Recorder] = []

    def start(*answers: tuple[int, Any]) -> Recorder:
        started.append(Recorder(list(answers)))
        return started[-1]

    yield start
    for r in started:
        r.close()


TOKEN = "ghp_" + secrets.token_hex(16)


def github(api_base: str, monkeypatch: pytest.MonkeyPatch) -> TrackerSettings:
    monkeypatch.setenv("T_GITHUB_TOKEN", TOKEN)
    return TrackerSettings(kind="github", api_base=api_base, repo="acme/engine",
                           token={"env": "T_GITHUB_TOKEN"})  # type: ignore[arg-type]


def webhook(url: str, monkeypatch: pytest.MonkeyPatch) -> TrackerSettings:
    monkeypatch.setenv("T_TICKET_URL", url)
    return TrackerSettings(kind="webhook", url={"env": "T_TICKET_URL"})  # type: ignore[arg-type]


def test_ticket_on_github(recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = recorder((201, {"number": 42, "html_url": "https://github.com/acme/engine/issues/42"}))
    result = file_ticket(github(server.url + "/", monkeypatch), "Rollback of 2.4.0", "# body")
    assert result.ok and result.url == "https://github.com/acme/engine/issues/42"
    assert "filed (HTTP 201, 1 attempt)" in result.detail
    [req] = server.requests
    assert req["path"] == "/repos/acme/engine/issues"
    assert req["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert req["headers"]["Accept"] == "application/vnd.github+json"
    assert req["json"] == {"title": "Rollback of 2.4.0", "body": "# body",
                           "labels": ["incident", "rollback"]}


def test_ticket_on_a_webhook(recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = recorder((200, {"url": "https://tickets.example/T-9"}))
    result = file_ticket(webhook(server.url + "/hooks/secret-path-123", monkeypatch), "t", "b")
    assert result.ok and result.url == "https://tickets.example/T-9"
    [req] = server.requests
    assert req["path"] == "/hooks/secret-path-123"
    assert req["json"] == {"title": "t", "body": "b", "labels": ["incident", "rollback"],
                           "source": "backout"}
    assert "secret-path-123" not in result.detail and server.url not in result.detail


def test_ticket_refused_with_401_is_not_retried(recorder: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server = recorder((401, {"message": f"Bad credentials for {TOKEN}"}))
    result = file_ticket(github(server.url, monkeypatch), "t", "b", retries=2)
    assert not result.ok and result.url is None and len(server.requests) == 1
    assert "HTTP 401" in result.detail and "check the token" in result.detail
    assert TOKEN not in result.detail and server.url not in result.detail


def test_ticket_retries_a_500(recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = recorder((500, {"message": "oops"}), (201, {"html_url": "https://github.com/i/1"}))
    result = file_ticket(github(server.url, monkeypatch), "t", "b", retries=2)
    assert result.ok and result.url == "https://github.com/i/1" and len(server.requests) == 2
    assert "2 attempts" in result.detail


def test_ticket_gives_up_after_the_retries(recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = recorder((500, {}), (502, {}), (503, {}))
    url = server.url + "/hooks/very-secret-path"
    result = file_ticket(webhook(url, monkeypatch), "t", "b", retries=2)
    assert not result.ok and len(server.requests) == 3
    assert "HTTP 503" in result.detail and "3 attempts" in result.detail
    assert "very-secret-path" not in result.detail


def test_ticket_to_an_unreachable_tracker(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = file_ticket(github(url, monkeypatch), "t", "b", timeout=2, retries=1)
    assert not result.ok and result.url is None
    assert "cannot reach" in result.detail and "2 attempts" in result.detail
    assert TOKEN not in result.detail and url not in result.detail
    hook = f"http://127.0.0.1:{free_port()}/hooks/abcdef123"
    result = file_ticket(webhook(hook, monkeypatch), "t", "b", timeout=2, retries=0)
    assert not result.ok and "abcdef123" not in result.detail


def test_ticket_without_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = github("http://127.0.0.1:1", monkeypatch)
    monkeypatch.delenv("T_GITHUB_TOKEN")
    result = file_ticket(settings, "t", "b")
    assert not result.ok and "T_GITHUB_TOKEN is not set" in result.detail


def test_evidence_files_hold_no_canary(tmp_path: Path, engine_brain: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a redactor built from the deployment settings keeps the canary out of it all."""
    monkeypatch.setenv("T_ENGINE_KEY", CANARY)
    dep = Deployment.model_validate({"brain": str(engine_brain),
                                     "api_key": {"env": "T_ENGINE_KEY"}})
    redactor = Redactor(secrets_of(dep))
    folder = tmp_path / "incidents" / "20261127T011500Z-2.4.0-errors"
    data = diagnostics_input()
    data.migrations = migration_history(engine_brain)
    collect_diagnostics(folder, data, redactor)
    write_postmortem(folder, incident(), redactor)
    write_regression_case(folder, incident(), redactor)
    texts = every_text(folder)
    expected = {"postmortem.md", "diagnostics/service.log", "regression/" + incident_case_file(),
                "diagnostics.tar.gz:diagnostics/extra.json"}
    assert expected <= set(texts)
    assert not [(name, s) for name, text in texts.items() for s in ALL_SECRETS if s in text]
    assert all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in [folder, *folder.rglob("*")])
    assert os.listdir(folder) and CANARY not in "".join(os.listdir(folder))
