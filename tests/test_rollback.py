"""`backout rollback` on the process runtime, with the real Engine on loopback.

The three rollbacks of the runbook (brain layer after a forward-only migration, image layer on an
unchanged schema, image layer across an additive migration), crash at every step + --resume, a
concurrent run, a target that never becomes healthy, and no snapshot at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from http_receiver import API_KEY, COMPONENT, PAGE, running_receiver
from rollback_setup import ENV, counts, init_process, notifications, prepare_bad_upgrade, rows_of, turns

STEPS = ["announce", "diagnostics", "drain", "restore", "start", "salvage", "verify", "freeze", "notify",
         "postmortem", "record"]


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = init_process(tmp_path)
    yield config
    backout("stop", "--yes", "--config", str(config), env=ENV)


def _cfg(config: Path) -> list[str]:
    return ["--config", str(config)]


def _rollback(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return backout("rollback", "--yes", "--json", *args, *_cfg(config), env={**ENV, **(env or {})}, timeout=240)


def _check_brain_rollback_end_state(config: Path, snap: dict, result: dict, written: int) -> None:
    brain = config.parent / "brain.sqlite"
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["running"]["version"] == "2.3.1" and status["health"]["ok"]
    before = {t: m["rows"] for t, m in snap["tables"].items()}
    now = counts(brain)
    assert all(now[t] >= n for t, n in before.items()), (before, now)  # every pre-upgrade row is there
    assert rows_of(brain, "SELECT max(CAST(id AS INTEGER)) FROM schema_migrations")[0][0] == 2
    incident = Path(result["incident_folder"])
    summary = json.loads((incident / "salvage" / "summary.json").read_text())
    salvaged = {t["table"]: t["added"] + t["changed"] for t in summary["tables"]}
    assert salvaged.get("knowledge_store", 0) >= written and salvaged.get("mcp_calls", 0) >= written, salvaged
    assert result["effects"]["table"] == "mcp_calls" and len(result["effects"]["rows"]) >= written
    assert (incident / "postmortem.md").exists() and (incident / "diagnostics.tar.gz").exists()
    assert not (config.parent / ".backout" / "deployments" / "engine" / "rollback.journal.json").exists()


def test_brain_rollback_after_forward_only_migration(config: Path) -> None:
    snap = prepare_bad_upgrade(config, "2.3.1", "2.4.0-errors")
    written = turns(config, "during", 10, strict=False)  # the bad window's writes
    assert written > 0
    plan = backout_json("rollback", "--dry-run", "--to", "2.3.1", *_cfg(config), env=ENV)["plan"]
    assert plan["to_version"] == "2.3.1" and plan["layer"] == "brain" and plan["snapshot"]["id"] == snap["id"]
    assert "MIGRATION_REQUIRED" in plan["trial"]["reason"] and not plan["trial"]["healthy"]
    assert plan["rows_since_snapshot"]["knowledge_store"] >= written
    assert [s["name"] for s in plan["steps"]] == STEPS
    assert backout_json("status", *_cfg(config), env=ENV)["running"]["version"] == "2.4.0-errors"  # dry run

    out = _rollback(config, "--to", "2.3.1", "--reason", "error rate 30% after the upgrade")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)["result"]
    assert result["layer"] == "brain" and result["outcome"] == "rolled-back"
    assert result["drain"]["clean"] and result["verify"]["ok"]
    assert all(c["action"] == "email" for c in result["effects"]["rows"]), result["effects"]
    assert set(result["timings"]) == set(STEPS)
    _check_brain_rollback_end_state(config, snap, result, written)
    sent = notifications(config)
    assert sent[0]["text"].startswith("Rolling back engine to v2.3.1 due to error rate 30%")
    assert sent[-1]["kind"] == "rollback-succeeded"
    out = backout("switch", "2.4.0-errors", "--yes", *_cfg(config), env=ENV)
    assert out.returncode == 3 and "frozen" in out.stderr and "unfreeze" in out.stderr
    assert backout_json("unfreeze", "2.4.0-errors", "--reason", "fixed in 2.4.0-errors+1", "--yes", *_cfg(config))


def test_image_rollback_when_the_schema_is_unchanged(config: Path) -> None:
    cfg = _cfg(config)
    assert backout_json("switch", "2.3.0", "--yes", *cfg, env=ENV)["healthy"]
    turns(config, "before")
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
    turns(config, "during")
    before = counts(config.parent / "brain.sqlite")
    out = _rollback(config, "--to", "2.3.0")  # 2.3.0 was only switched to by hand: never judged good
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)["result"]
    assert result["to_version"] == "2.3.0" and result["layer"] == "image"
    assert "unchanged" in result["layer_reason"] or "trial" in result["layer_reason"]
    after = counts(config.parent / "brain.sqlite")
    assert all(after[t] >= n for t, n in before.items())  # nothing lost: the brain was not touched
    assert result["salvage"] is None and "restore" not in result["timings"]


def test_image_rollback_across_an_additive_migration(config: Path) -> None:
    cfg = _cfg(config)
    assert backout_json("switch", "2.4.0", "--yes", *cfg, env=ENV)["healthy"]
    turns(config, "before")
    backout_json("snapshot", "create", *cfg, env=ENV)
    assert backout_json("switch", "2.4.1", "--yes", *cfg, env=ENV)["healthy"]  # migration 0005, additive
    turns(config, "during")
    before = counts(config.parent / "brain.sqlite")
    out = _rollback(config, "--to", "2.4.0")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)["result"]
    assert result["to_version"] == "2.4.0" and result["layer"] == "image", result["layer_reason"]
    assert "additive" in result["layer_reason"] and "trial boot" in result["layer_reason"]
    after = counts(config.parent / "brain.sqlite")
    assert all(after[t] >= n for t, n in before.items())  # working memory is flushed at the drain


@pytest.mark.parametrize("point", [f"before:{s}" for s in STEPS] + ["inside:drain", "after:restore", "inside:swap"])
def test_crash_at_every_step_then_resume(config: Path, point: str) -> None:
    snap = prepare_bad_upgrade(config, "2.3.1", "2.4.0-errors")
    written = turns(config, "during", 8, strict=False)
    out = _rollback(config, "--to", "2.3.1", env={"BACKOUT_FAULT_AT": point})
    assert out.returncode == -9, (out.returncode, out.stderr)
    again = _rollback(config, "--to", "2.3.1")
    assert again.returncode == 3 and "--resume" in again.stderr  # no second rollback over a pending one
    resumed = _rollback(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)["result"]
    assert result["layer"] == "brain" and result["outcome"] == "rolled-back"
    _check_brain_rollback_end_state(config, snap, result, written)


def test_a_second_rollback_while_one_runs_is_refused(config: Path) -> None:
    prepare_bad_upgrade(config, "2.3.1", "2.4.0-errors")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")} | ENV
    first = subprocess.Popen([sys.executable, "-m", "backout", "rollback", "--yes", "--json", "--to", "2.3.1",
                              *_cfg(config)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = config.parent / ".backout" / "deployments" / "engine" / "operation.lock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "rollback" not in (lock.read_text() if lock.exists() else ""):
        time.sleep(0.05)
    second = _rollback(config, "--to", "2.3.1")
    assert second.returncode == 3 and "another backout operation" in second.stderr
    assert first.wait(240) == 0, first.stderr.read() if first.stderr else ""


def test_a_target_that_never_becomes_healthy_stops_and_says_so(config: Path) -> None:
    cfg = _cfg(config)
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
    brain = config.parent / "brain.sqlite"
    started = time.monotonic()
    out = _rollback(config, "--to", "2.4.0-crash", "--mode", "image")
    assert out.returncode == 1 and time.monotonic() - started < 90
    result = json.loads(out.stdout)["result"]
    assert result["outcome"] == "failed" and any("resume" in s for s in result["next_steps"])
    assert brain.exists() and counts(brain)
    assert notifications(config)[-1]["kind"] == "rollback-failed"
    assert "failed" in (Path(result["incident_folder"]) / "postmortem.md").read_text().lower()
    assert backout_json("history", *cfg)[-1]["outcome"] == "failed"


def test_no_verified_snapshot_means_no_brain_rollback(config: Path) -> None:
    cfg = _cfg(config)
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
    assert backout_json("switch", "2.4.0", "--yes", *cfg, env=ENV)["healthy"]
    brain = config.parent / "brain.sqlite"
    before = counts(brain)
    out = backout("rollback", "--yes", "--to", "2.3.1", *cfg, env=ENV)
    assert out.returncode == 3 and "no rollback is possible" in out.stderr and ".recover" in out.stderr
    assert backout_json("status", *cfg, env=ENV)["running"]["version"] == "2.4.0"  # nothing was stopped
    assert counts(brain) == before


def test_nothing_to_roll_back_and_bad_input(config: Path) -> None:
    cfg = _cfg(config)
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
    out = backout("rollback", "--yes", *cfg, env=ENV)
    assert out.returncode == 3 and "--to" in out.stderr  # no restore point, no earlier version: refused
    out = backout("rollback", "--yes", "--to", "9.9.9", *cfg, env=ENV)
    assert out.returncode == 3 and "cannot roll back to 9.9.9" in out.stderr and "nothing was stopped" in out.stderr
    out = backout("rollback", "--yes", "--mode", "sideways", *cfg, env=ENV)
    assert out.returncode == 2
    out = backout("rollback", "--resume", "--yes", *cfg, env=ENV)
    assert out.returncode == 2 and "no interrupted rollback" in out.stderr


NOTIFY = """
[[deployments.{{name}}.notify.slack]]
name = "incident"
webhook = {{{{ env = "SLACK_WEBHOOK_URL" }}}}

[[deployments.{{name}}.notify.webhook]]
name = "pager"
url = {{{{ env = "PAGER_URL" }}}}
headers = {{{{ Authorization = {{{{ env = "PAGER_TOKEN" }}}} }}}}

[deployments.{{name}}.notify.statuspage]
api_base = "{base}"
page_id = "{page}"
component_id = "{component}"
api_key = {{{{ env = "STATUSPAGE_API_KEY" }}}}

[deployments.{{name}}.tracker]
kind = "github"
api_base = "{base}"
repo = "acme/engine"
token = {{{{ env = "GITHUB_TOKEN" }}}}
"""
SLACK_SECRET = "T0CANARY/B0CANARY/rollback-canary-51aa"


def test_rollback_tells_people_and_files_the_postmortem(tmp_path: Path) -> None:
    with running_receiver() as receiver:
        config = init_process(tmp_path, NOTIFY.format(base=receiver.url, page=PAGE, component=COMPONENT))
        env = {"SLACK_WEBHOOK_URL": f"{receiver.url}/services/{SLACK_SECRET}", "PAGER_URL": f"{receiver.url}/pager",
               "PAGER_TOKEN": "pager-canary-token-0c1d", "STATUSPAGE_API_KEY": API_KEY,
               "GITHUB_TOKEN": "ghp_canary_token_77aa"}
        try:
            prepare_bad_upgrade(config, "2.3.1", "2.4.0-errors")
            turns(config, "during", 12, strict=False)  # about 30% fail: customers notice
            out = _rollback(config, "--to", "2.3.1", env=env)
            assert out.returncode == 0, out.stderr
        finally:
            backout("stop", "--yes", "--config", str(config), env=ENV)
        result = json.loads(out.stdout)["result"]
        seen = [(r.method, r.path.split("/")[1]) for r in receiver.requests]
        slack = [r.body for r in receiver.requests if r.path.startswith("/services/")]
        assert slack[0]["text"].startswith("Rolling back engine to v2.3.1 due to ") and "All clear" in slack[-1]["text"]
        pager = [r for r in receiver.requests if r.path == "/pager"]
        assert pager[0].headers["authorization"] == "pager-canary-token-0c1d" and pager[0].body["kind"] == "rollback-started"
        assert ("POST", "pages") in seen and ("PATCH", "pages") in seen  # opened, then resolved
        assert receiver.components[COMPONENT] == "operational" and result["status_page"]["updated"]
        issue = [r for r in receiver.requests if r.path == "/repos/acme/engine/issues"][0]
        assert issue.headers["authorization"] == "Bearer ghp_canary_token_77aa" and "2.4.0-errors" in issue.body["title"]
        assert all(n["ok"] for n in result["notifications"]), result["notifications"]
    incident = Path(result["incident_folder"])
    for path in incident.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path  # evidence is private
    canaries = ("rollback-canary-51aa", "ghp_canary", API_KEY, "pager-canary-token")
    for path in [*(tmp_path / ".backout").rglob("*"), tmp_path / "notifications.jsonl"]:
        if path.is_file() and path.suffix not in (".sqlite", ".gz") and "-wal" not in path.name:
            text = path.read_text(errors="replace")
            assert not any(c in text for c in canaries), path  # no secret in journals, logs or evidence
    assert b"rollback-canary-51aa" not in subprocess.run(["tar", "-xzOf", str(incident / "diagnostics.tar.gz")],
                                                         capture_output=True, check=True).stdout
