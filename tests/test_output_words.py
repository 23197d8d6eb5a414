"""What a person reads is words, not Python values: no None, True, False, raw epoch seconds, dicts or
exception class names in the text of `baseline`, `history`, `snapshot`, `status`, a rollback plan and
the postmortem (their --json output stays machine-readable). Every test runs the real CLI."""

from __future__ import annotations

import http.server
import json
import re
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import pytest

from backout_cli import backout, backout_json
from engine.client import EngineClient
from engine.releases import POISONED_TASK_ID
from engine_proc import DEFAULT_KEY, free_port
from rollback_setup import ENV, init_process, prepare_bad_upgrade, turns, url_of

PYTHON_WORDS = re.compile(r"\b(None|True|False)\b|\{'|ConnectError|ReadTimeout|Errno")
EPOCH = re.compile(r"\b1\d{9}\.\d+\b")  # seconds since 1970, as Python prints a float
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?\+00:00"


def _cfg(config: Path) -> list[str]:
    return ["--config", str(config)]


def _clean(text: str) -> None:
    """No Python literal, dict, exception class or raw epoch in text meant for a person."""
    assert not PYTHON_WORDS.search(text), text
    assert not EPOCH.search(text), text


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """A process deployment of the reference Engine running 2.3.1, with a few turns served."""
    config = init_process(tmp_path)
    assert backout_json("switch", "2.3.1", "--yes", *_cfg(config), env=ENV)["healthy"]
    turns(config, "before")
    yield config
    backout("stop", "--yes", *_cfg(config), env=ENV)


def test_baseline_capture_and_show_are_words(config: Path) -> None:
    out = backout("baseline", "capture", "--no-evals", "--yes", *_cfg(config), env=ENV)
    assert out.returncode == 0, out.stderr
    assert "health     healthy" in out.stdout and "evals      not run" in out.stdout, out.stdout
    _clean(out.stdout)

    shown = backout("baseline", "show", *_cfg(config), env=ENV)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("baseline of 2.3.1\n"), shown.stdout
    assert re.search(rf"  captured   {ISO_UTC} \(\d+s ago\)", shown.stdout), shown.stdout
    assert re.search(r"  requests   6, error rate 0\.0%, p95 latency [\d.]+ ms", shown.stdout), shown.stdout
    assert "evals      not run" in shown.stdout and re.search(rf"served by 2\.3\.1 from {ISO_UTC} to the capture",
                                                           shown.stdout), shown.stdout
    _clean(shown.stdout)

    data = backout_json("baseline", "show", *_cfg(config), env=ENV)  # --json stays as it was: numbers and null
    assert isinstance(data["captured_at"], float) and data["eval_cases"] is None and data["requests"] == 6


def test_history_says_schema_changes_in_words(config: Path) -> None:
    out = backout("history", *_cfg(config), env=ENV)
    assert out.returncode == 0, out.stderr
    assert "schema (none) -> 2" in out.stdout, out.stdout  # the first start: the brain had no migration yet
    _clean(out.stdout)
    assert backout_json("history", *_cfg(config))[-1]["schema_before"] is None


def test_snapshot_create_and_show_say_no_migration_and_pinned_yes_or_no(tmp_path: Path) -> None:
    brain = tmp_path / "plain.sqlite"
    with sqlite3.connect(brain) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('a')")
    conn.close()
    where = ["--brain", str(brain), "--into", str(tmp_path / "snaps")]
    ids = []
    for pin in ([], ["--pin"]):
        out = backout("snapshot", "create", *pin, *where)
        assert out.returncode == 0, out.stderr
        assert "schema no migration recorded" in out.stdout, out.stdout
        _clean(out.stdout)
        ids.append(out.stdout.split()[1].rstrip(":"))
    for snapshot_id, pinned in zip(ids, ("no", "yes")):
        shown = backout("snapshot", "show", snapshot_id, *where)
        assert shown.returncode == 0, shown.stderr
        assert f"\npinned      {pinned}\n" in shown.stdout, shown.stdout
        assert "\nschema      no migration recorded, fingerprint " in shown.stdout, shown.stdout
        _clean(shown.stdout)
    assert backout_json("snapshot", "show", ids[0], *where)["pinned"] is False


def test_status_without_the_key_shows_what_it_can_and_says_what_needed_it(config: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = backout("upgrade", "2.4.0", "--watch", "0", "--yes", *_cfg(config), env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr  # a restore point (2.3.1) whose availability needs the key to check
    monkeypatch.delenv("ENGINE_API_KEY", raising=False)

    status = backout("status", *_cfg(config))
    assert status.returncode == 0, status.stderr
    assert "health       healthy" in status.stdout and "running      2.4.0" in status.stdout, status.stdout
    assert "version not checked" in status.stdout, status.stdout
    assert ("not read     whether 2.3.1 can still start: ENGINE_API_KEY is not set in backout's environment"
            in status.stdout), status.stdout
    assert "Export it" in status.stdout and DEFAULT_KEY not in status.stdout + status.stderr
    _clean(status.stdout)

    data = backout_json("status", *_cfg(config))
    assert [(u["part"], u["needs"]) for u in data["unread"]] == [("whether 2.3.1 can still start", "ENGINE_API_KEY")]
    assert data["restore_point"]["version_available"] is None and data["health"]["ok"]


def test_status_says_in_words_that_nothing_listens(config: Path) -> None:
    port = url_of(config).rsplit(":", 1)[1]
    assert backout("stop", "--yes", *_cfg(config), env=ENV).returncode == 0
    out = backout("status", *_cfg(config), env=ENV)
    assert out.returncode == 0, out.stderr
    assert f"health       nothing listens on 127.0.0.1:{port} (connection refused)\n" in out.stdout, out.stdout
    _clean(out.stdout)


class _Plain(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_http() -> Iterator[int]:
    """A plain-HTTP server on loopback: an https:// URL at it fails the TLS handshake."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def _status_of_health_url(folder: Path, url: str) -> str:
    with sqlite3.connect(folder / "brain.sqlite") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    conn.close()
    (folder / "backout.toml").write_text(f'[deployments.svc]\nbrain = "brain.sqlite"\nhealth_url = "{url}"\n')
    out = backout("status", "--config", str(folder / "backout.toml"))
    assert out.returncode == 0, out.stderr
    _clean(out.stdout)
    return next(line for line in out.stdout.splitlines() if line.startswith("health "))


def test_status_says_why_a_health_url_does_not_answer(tmp_path: Path, plain_http: int, silent: int) -> None:
    port = free_port()
    assert _status_of_health_url(tmp_path, f"http://127.0.0.1:{port}/health") == \
        f"health       nothing listens on 127.0.0.1:{port} (connection refused)"
    assert _status_of_health_url(tmp_path, "http://backout-test.invalid/health").startswith(
        "health       the name backout-test.invalid does not resolve (DNS: ")
    assert _status_of_health_url(tmp_path, f"https://127.0.0.1:{plain_http}/health").startswith(
        f"health       the TLS handshake with 127.0.0.1:{plain_http} failed (")
    assert _status_of_health_url(tmp_path, f"http://127.0.0.1:{silent}/health") == \
        f"health       no answer from 127.0.0.1:{silent} within 5 s (it accepted the connection)"


@pytest.fixture
def bad_window(config: Path) -> Path:
    """2.3.0 served, then 2.3.1 (the same schema: an image-only rollback), where a turn failed with a 500."""
    backout("stop", "--yes", *_cfg(config), env=ENV)
    prepare_bad_upgrade(config, "2.3.0", "2.3.1")
    with EngineClient(url_of(config), DEFAULT_KEY) as client:
        assert client.execute(POISONED_TASK_ID, "Alice met Ben.").status == 500
    turns(config, "during", 3)
    return config


def test_rollback_plan_says_the_customer_impact_once(bad_window: Path) -> None:
    out = backout("rollback", "--dry-run", "--to", "2.3.0", *_cfg(bad_window), env=ENV, timeout=240)
    assert out.returncode == 0, out.stderr
    [line] = [line for line in out.stdout.splitlines() if line.startswith("  impact ")]
    assert re.fullmatch(r"  impact        (no )?customer impact: .+", line), line
    assert line.count("customer impact") == 1 and "customers affected" not in line, line


def test_postmortem_shows_failed_requests_at_iso_times(bad_window: Path) -> None:
    out = backout("rollback", "--to", "2.3.0", "--reason", "a task fails", "--yes", "--json", *_cfg(bad_window),
                  env=ENV, timeout=240)
    assert out.returncode == 0, out.stderr
    folder = Path(json.loads(out.stdout)["result"]["incident_folder"])
    text = (folder / "postmortem.md").read_text()
    rows = [line for line in text.splitlines() if line.endswith(f"| {POISONED_TASK_ID} |")]
    assert rows and all(re.match(rf"\| {ISO_UTC} \| 500 \| INTERNAL_ERROR \| /execute \|", r) for r in rows), rows
    assert "| health | ok | healthy |" in text, text  # the verification table: each check's words
    _clean(text.split("## Layer", 1)[0] + text.split("## Verification", 1)[1])
