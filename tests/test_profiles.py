"""Service profiles: detection from the database, overrides in backout.toml, and what each part of a
profile decides (health, counted requests, refusal signs, smoke requests, ledgers), against real
SQLite files and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backout.brain.schema import stamp
from backout.config import ConfigError, load_config, resolve_target
from backout.profiles import PROFILES, ProfileError, detect, resolve
from backout.profiles.model import HealthRule, SmokeRequest
from backout.runtime.smoke import run_smoke
from backout.signals.health import probe
from backout.signals.metrics import LogSource


def _db(path: Path, *sql: str) -> Path:
    conn = sqlite3.connect(path)
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return path


ENGINE_TABLES = ("CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT)",
                 "CREATE TABLE episodes (id INTEGER PRIMARY KEY)",
                 "CREATE TABLE knowledge_store (id INTEGER PRIMARY KEY)")


# -- detection and overrides -------------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "name"), [
    (ENGINE_TABLES, "engine"),
    (("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",), "alembic"),
    (("CREATE TABLE django_migrations (id INTEGER PRIMARY KEY, app TEXT, name TEXT, applied TEXT)",), "django"),
    (("CREATE TABLE items (id INTEGER PRIMARY KEY)",), "generic"),
])
def test_the_profile_is_detected_from_the_tables(tmp_path: Path, sql: tuple[str, ...], name: str) -> None:
    found = detect(_db(tmp_path / "db.sqlite", *sql))
    assert found.profile.name == name
    assert ("detected from the database" in found.how) == (name != "generic")


def test_no_database_yet_is_generic(tmp_path: Path) -> None:
    found = detect(tmp_path / "missing.sqlite")
    assert found.profile.name == "generic" and "no database yet" in found.how


def test_a_named_profile_wins_and_overrides_apply_field_by_field(tmp_path: Path) -> None:
    brain = _db(tmp_path / "db.sqlite", *ENGINE_TABLES)
    chosen = resolve("alembic", {"request_path": "/api/*", "health": {"status_required": True}}, brain)
    assert chosen.profile.name == "alembic" and "named in backout.toml" in chosen.how
    assert chosen.profile.request_path == "/api/*" and chosen.profile.health.status_required
    assert chosen.profile.health.status_field == "status"  # the rest of the nested table is kept
    assert chosen.profile.ledger.kind == "alembic_version"


def test_config_takes_a_name_or_a_table_and_refuses_mistakes(tmp_path: Path) -> None:
    brain = _db(tmp_path / "db.sqlite", "CREATE TABLE items (id INTEGER PRIMARY KEY)")
    path = tmp_path / "backout.toml"

    def config(profile: str) -> Path:
        path.write_text(f'[deployments.app]\nbrain = "{brain}"\n{profile}\n')
        return path

    assert resolve_target(config('profile = "django"')).profile.name == "django"
    table = ('[deployments.app.profile]\neffects_table = "outbox"\napi_key_header = "X-Api-Key"\n'
             'api_key_prefix = ""\n[[deployments.app.profile.smoke]]\npath = "/items"\nexpect_status = 200')
    target = resolve_target(config(table))
    assert target.profile.name == "generic" and target.profile.effects_table == "outbox"
    assert target.profile.smoke == [SmokeRequest(path="/items", expect_status=[200])]
    assert target.profile.api_headers("k") == {"X-Api-Key": "k"}
    for wrong, said in [('profile = "rails"', "unknown service profile 'rails'; known: engine, alembic"),
                        ('profile = { request_pth = "/x" }', "request_pth"),
                        ('profile = { refusal = { log_patterns = ["("] } }', "is not a regular expression"),
                        ('api_key_header = "X-Key"', "moved to the service profile"),
                        ('[deployments.app.rollback]\nsmoke = { path = "/x" }', "rollback.smoke` moved")]:
        with pytest.raises(ConfigError) as caught:
            load_config(config(wrong))
        assert said in str(caught.value), (wrong, str(caught.value))
    with pytest.raises(ProfileError, match="unknown service profile"):
        resolve("rails", {}, brain)


# -- what a profile decides ----------------------------------------------------------------------------

def test_which_requests_count() -> None:
    engine, generic = PROFILES["engine"], PROFILES["generic"]
    assert engine.counts("/execute") and not engine.counts("/execute/replay") and not engine.counts("/feedback")
    assert generic.counts("/items/3") and generic.counts("/") and not generic.counts("/health")
    assert not generic.counts("/metrics")
    prefix = generic.model_copy(update={"request_path": "/api/*"})
    assert prefix.counts("/api/items") and not prefix.counts("/items")


def test_log_source_with_a_generic_profile_counts_every_request_but_probes() -> None:
    lines = [json.dumps({"ts": "2026-01-02T03:04:0%dZ" % i, "status": s, "duration_ms": 5, "path": p})
             for i, (s, p) in enumerate([(200, "/items"), (500, "/items/2"), (200, "/health"), (201, "/orders")])]
    got = LogSource(lambda since: lines, counts=PROFILES["generic"].counts).samples(0, 2e9)
    assert [(s.status, s.path) for s in got] == [(200, "/items"), (500, "/items/2"), (201, "/orders")]


def test_refusal_signs() -> None:
    engine, alembic = PROFILES["engine"], PROFILES["alembic"]
    assert engine.refusal_code({"error": {"code": "MIGRATION_REQUIRED"}}) == "MIGRATION_REQUIRED"
    assert engine.refusal_code({"error": {"code": "DRAINING"}}) is None
    assert alembic.refusal_code({"error": {"code": "MIGRATION_REQUIRED"}}) is None
    line = "alembic.util.exc.CommandError: Can't locate revision identified by 'b7c1'"
    assert alembic.refusal_line(["booting", line]) == line
    assert PROFILES["generic"].refusal_line(["booting", line]) is None
    last = ["starting", "sqlite3.OperationalError: unable to open /srv/app/app.sqlite"]
    assert PROFILES["generic"].refusal_line(last, "app.sqlite", exited=True) == last[1]
    assert PROFILES["generic"].refusal_line(last, "app.sqlite", exited=False) is None


def test_ledger_tables_are_never_salvaged_back() -> None:
    assert set(PROFILES["generic"].ledger_tables()) == {"schema_migrations", "alembic_version", "django_migrations"}
    assert PROFILES["alembic"].ledger_tables() == ("schema_migrations", "alembic_version", "django_migrations")
    with pytest.raises(ProfileError, match="ledger.kind"):
        resolve("generic", {"ledger": {"kind": "flyway"}}, Path("/none"))


def test_django_head_is_the_newest_migration_of_each_app(tmp_path: Path) -> None:
    db = _db(tmp_path / "db.sqlite",
             "CREATE TABLE django_migrations (id INTEGER PRIMARY KEY, app TEXT, name TEXT, applied TEXT)",
             "INSERT INTO django_migrations (app, name) VALUES ('items', '0001_initial'), "
             "('items', '0002_note'), ('auth', '0001_initial')")
    found = stamp(db)
    assert (found.head, found.head_source) == ("auth.0001_initial,items.0002_note", "django_migrations")


# -- health and smoke requests against a real HTTP server ---------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    routes: dict[tuple[str, str], tuple[int, object]] = {}

    def _answer(self) -> None:
        status, body = self.routes.get((self.command, self.path), (404, {"error": "not found"}))
        if self.path == "/keyed" and self.headers.get("X-Api-Key") != "k":
            status, body = 401, {"error": "key"}
        data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_health_rules(server: str) -> None:
    _Handler.routes = {("GET", "/ok"): (200, {"status": "ok"}), ("GET", "/bad"): (200, {"status": "degraded"}),
                       ("GET", "/bare"): (200, "fine"), ("GET", "/up"): (200, {"state": "UP"}),
                       ("GET", "/503"): (503, {"status": "ok"})}
    assert probe(f"{server}/ok").ok and not probe(f"{server}/bad").ok and probe(f"{server}/bare").ok
    assert not probe(f"{server}/503").ok
    spring = HealthRule(status_field="state", ok_values=["UP"], status_required=True)
    assert probe(f"{server}/up", rule=spring).ok and not probe(f"{server}/bare", rule=spring).ok
    assert probe(f"{server}/bad", rule=HealthRule(status_field=None)).ok  # any 2xx


def test_smoke_requests(server: str) -> None:
    _Handler.routes = {("GET", "/items"): (200, {"items": [{"id": 1}]}), ("POST", "/items"): (201, {"id": 2}),
                       ("GET", "/broken"): (500, {"error": "no such column: items.note"}),
                       ("GET", "/keyed"): (200, {})}
    reads_and_writes = [SmokeRequest(path="/items", json_path="items.0.id"),
                        SmokeRequest(method="POST", path="/items", body={"name": "x"}, expect_status=[201])]
    passed = run_smoke(f"{server}/health", reads_and_writes, {})
    assert passed is not None and passed["ok"] and len(passed["requests"]) == 2
    missing = run_smoke(f"{server}/health", [SmokeRequest(path="/items", json_path="items.3.id")], {})
    assert missing is not None and not missing["ok"] and "has no 'items.3.id'" in missing["detail"]
    broken = run_smoke(f"{server}/health", [SmokeRequest(path="/broken"), *reads_and_writes], {})
    assert broken is not None and not broken["ok"] and len(broken["requests"]) == 1  # stops at the first
    assert "HTTP 500 (expected 200)" in broken["detail"] and "no such column" in broken["detail"]
    keyless = run_smoke(f"{server}/health", [SmokeRequest(path="/keyed")], {})
    assert keyless is not None and keyless["ok"] and keyless["skipped"] and "no api_key" in keyless["detail"]
    keyed = run_smoke(f"{server}/health", [SmokeRequest(path="/keyed")], {"X-Api-Key": "k"})
    assert keyed is not None and keyed["ok"] and not keyed.get("skipped")
    assert run_smoke(f"{server}/health", [], {}) is None


# -- access logs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    # gunicorn's default (combined): no duration, so it counts for errors but not for latency
    ('127.0.0.1 - - [04/Dec/2026:19:01:32 +0000] "POST /items HTTP/1.1" 500 145 "-" "Python-urllib/3.11"',
     (1796410892.0, 500, None, "/items")),
    # gunicorn with %(D)s (microseconds) after the user agent
    ('127.0.0.1 - - [04/Dec/2026:19:01:32 +0000] "GET /items?page=2 HTTP/1.1" 200 9 "-" "curl/8" 12500',
     (1796410892.0, 200, 12.5, "/items")),
    # nginx with $request_time (seconds), a zone other than UTC
    ('10.0.0.1 - bob [04/Dec/2026:20:01:32 +0100] "GET /a HTTP/2.0" 404 0 "-" "x" 0.250',
     (1796410892.0, 404, 250.0, "/a")),
    # common log format: the last number is the size, not a duration
    ('127.0.0.1 - - [04/Dec/2026:19:01:32 +0000] "DELETE /items/3 HTTP/1.1" 204 1234',
     (1796410892.0, 204, None, "/items/3")),
    # Django's runserver (no host, no zone: UTC)
    ('[04/Dec/2026 19:01:32] "GET /items HTTP/1.1" 200 12', (1796410892.0, 200, None, "/items")),
    # uvicorn behind `docker compose logs --timestamps`, and a duration with its unit
    ('2026-12-04T19:01:32.500Z INFO:     127.0.0.1:5000 - "GET /x HTTP/1.1" 503 Service Unavailable',
     (1796410892.5, 503, None, "/x")),
    # tornado apps: JupyterHub's access line (no zone: UTC), a redirect, tornado's own default format
    ("[I 2026-12-04 19:01:32.119 JupyterHub log:192] 201 POST /hub/api/users/ann (backout@127.0.0.1) 77.05ms",
     (1796410892.119, 201, 77.05, "/hub/api/users/ann")),
    ("[W 2026-12-04 19:01:32.500 JupyterHub log:192] 302 GET /hub/ -> /hub/home?x=1 (@127.0.0.1) 0.50ms",
     (1796410892.5, 302, 0.5, "/hub/")),
    ("[E 261204 19:01:32 web:2348] 500 GET /items?page=2 (127.0.0.1) 12.00ms",
     (1796410892.0, 500, 12.0, "/items")),
])
def test_access_log_lines(line: str, expected: tuple[float, int, float | None, str]) -> None:
    from backout.signals.metrics import parse_request_line

    sample = parse_request_line(line)
    assert sample is not None, line
    assert (sample.ts, sample.status, sample.duration_ms, sample.path) == expected


def test_lines_without_a_request_or_a_time_are_skipped() -> None:
    from backout.signals.metrics import parse_request_line

    assert parse_request_line('INFO:     127.0.0.1:5000 - "GET /x HTTP/1.1" 200 OK') is None  # uvicorn: no time
    assert parse_request_line("[2026-12-04 19:01:32 +0000] [7] [INFO] Booting worker with pid: 7") is None
    assert parse_request_line("Applying djitems.0002_note... OK") is None
    assert parse_request_line("[I 2026-12-04 19:01:32.119 JupyterHub app:3313] JupyterHub is now running") is None


def test_the_verdict_ignores_samples_without_a_duration_for_latency() -> None:
    from backout.signals.decide import LATENCY
    from backout.signals.model import RequestSample

    rows = [RequestSample(float(i), 200, None) for i in range(50)]
    assert LATENCY.select(rows) == []
