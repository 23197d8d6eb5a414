"""`backout upgrade` on the process runtime: pre-flight refusals, the restore point, promotion,
no accepted turn lost under traffic, and a failure before health rolled back at once."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from engine.client import EngineClient
from engine_proc import DEFAULT_KEY
from rollback_setup import ENV, SHORT_WATCH as WATCH, init_process, rows_of, turns, upgrade_then_ctrl_c, url_of


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = init_process(tmp_path, WATCH)
    assert backout_json("switch", "2.3.1", "--yes", "--config", str(config), env=ENV)["healthy"]
    yield config
    backout("stop", "--yes", "--config", str(config), env=ENV)


def _cfg(config: Path) -> list[str]:
    return ["--config", str(config)]


def _upgrade(config: Path, *args: str) -> tuple[int, list[dict]]:
    out = backout("upgrade", *args, "--yes", "--json", *_cfg(config), env=ENV, timeout=300)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert events, out.stderr
    return out.returncode, events


class Recorder:
    """Turns sent one after another for the whole upgrade; what each one got."""

    def __init__(self, config: Path) -> None:
        self.url, self.results, self.stop = url_of(config), [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with EngineClient(self.url, DEFAULT_KEY, timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                task = f"rec-{n}"
                result = client.execute(task, f"Alice met Ben. Item {n} is packed.")
                self.results.append((task, result.status, result.ok, time.time()))
                time.sleep(0.02)

    def __enter__(self) -> "Recorder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def test_good_upgrade_is_promoted_with_a_restore_point_and_loses_no_turn(config: Path) -> None:
    turns(config, "before")
    with Recorder(config) as rec:
        time.sleep(1)
        code, events = _upgrade(config, "2.4.0")
        time.sleep(0.5)
    assert code == 0, events[-1]
    upgraded = next(e for e in events if e["event"] == "upgraded")
    assert [e["event"] for e in events][-2:] == ["promoted", "result"]
    final = upgraded["snapshot_final"]["id"]
    point = backout_json("status", *_cfg(config), env=ENV)["restore_point"]
    assert point["version"] == "2.3.1" and point["snapshot_id"] == final and point["ready"]
    assert backout_json("snapshot", "show", final, *_cfg(config))["pinned"]
    history = backout_json("history", *_cfg(config))
    assert [(h["kind"], h["to_version"]) for h in history][-2:] == [("upgrade", "2.4.0"), ("promote", "2.4.0")]
    assert not list(config.parent.glob(".brain.sqlite.restore-*"))  # the staged copy goes once promoted

    accepted = {task for task, _, ok, _ in rec.results if ok}
    refused = [(task, status) for task, status, ok, _ in rec.results if not ok]
    assert accepted and all(status in (503, 0) for _, status in refused), refused  # refused, never failed
    brain = config.parent / "brain.sqlite"
    stored = {row[0] for row in rows_of(brain, "SELECT task_id FROM episodes")}
    assert accepted <= stored, accepted - stored  # no turn accepted before the stop is lost
    snapshot = config.parent / ".backout" / "snapshots" / "engine" / f"{final}.sqlite"
    in_final = {row[0] for row in rows_of(snapshot, "SELECT task_id FROM episodes")}
    drained = datetime.fromisoformat(next(e for e in events if e.get("step") == "drain")["finished_at"]).timestamp()
    before_stop = {task for task, _, ok, at in rec.results if ok and at < drained}
    assert before_stop and before_stop <= in_final  # the restore point holds every turn accepted before the stop


def test_preflight_refusals_stop_nothing(config: Path) -> None:
    cfg = _cfg(config)
    assert backout_json("freeze", "2.4.0", "--reason", "known bad", "--yes", *cfg)
    for version, words in (("2.4.0", "frozen"), ("9.9.9", "not available"), ("2.3.1", "already runs")):
        out = backout("upgrade", version, "--yes", *cfg, env=ENV)
        assert out.returncode == 3 and words in out.stderr and "nothing was stopped" in out.stderr, out.stderr
    assert backout_json("status", *cfg, env=ENV)["health"]["ok"]
    plan = backout("upgrade", "2.4.1", "--dry-run", "--json", *cfg, env=ENV)
    assert plan.returncode == 0 and json.loads(plan.stdout.splitlines()[0])["plan"]["steps"][1]["name"] == \
        "snapshot-online"
    assert backout_json("status", *cfg, env=ENV)["running"]["version"] == "2.3.1"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_no_room_for_the_restore_point_is_refused_before_the_stop(config: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        text = config.read_text().replace("[deployments.engine.snapshots]",
                                          f'[deployments.engine.snapshots]\ndir = "{small}"')
        config.write_text(text)
        turns(config, "fill")
        out = backout("upgrade", "2.4.0", "--yes", *_cfg(config), env=ENV)
        assert out.returncode == 4 and "not enough space" in out.stderr and "nothing was stopped" in out.stderr
        assert backout_json("status", *_cfg(config), env=ENV)["running"]["version"] == "2.3.1"
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_version_that_crashes_at_boot_is_rolled_back_at_once(config: Path) -> None:
    turns(config, "before")
    refused = backout("upgrade", "2.4.0-crash", "--yes", *_cfg(config), env=ENV, timeout=300)
    assert refused.returncode == 3 and "nothing was stopped" in refused.stderr  # it dies at boot on a copy
    code, events = _upgrade(config, "2.4.0-crash", "--force")  # past the proof, a failed start rolls back at once
    assert code == 1
    failed = next(e for e in events if e["event"] == "upgrade-failed")
    assert failed["outcome"] == "rolled-back" and "did not become healthy" in failed["why"]
    assert failed["rollback"]["to_version"] == "2.3.1"
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["running"]["version"] == "2.3.1" and status["health"]["ok"]
    assert "2.4.0-crash" in status["frozen"]


@pytest.mark.parametrize("point", ["inside:drain", "before:snapshot-final", "before:start", "after:start",
                                   "before:arm"])
def test_crash_during_the_upgrade_then_resume(config: Path, point: str) -> None:
    turns(config, "before")
    out = backout("upgrade", "2.4.0", "--yes", "--json", *_cfg(config), env={**ENV, "BACKOUT_FAULT_AT": point},
                  timeout=300)
    assert out.returncode == -9
    out = backout("upgrade", "2.4.0", "--yes", *_cfg(config), env=ENV)
    assert out.returncode == 3 and "--resume" in out.stderr  # no second upgrade over a pending one
    code, events = _upgrade(config, "2.4.0", "--resume")
    assert code == 0 and events[-1]["outcome"] == "promoted", events[-2:]
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["running"]["version"] == "2.4.0" and status["restore_point"]["version"] == "2.3.1"
    assert status["restore_point"]["ready"]


def test_crash_during_the_upgrades_own_rollback_then_resume(config: Path) -> None:
    turns(config, "before")
    out = backout("upgrade", "2.4.0-crash", "--force", "--yes", "--json", *_cfg(config),
                  env={**ENV, "BACKOUT_FAULT_AT": "before:restore"}, timeout=300)
    assert out.returncode == -9
    code, events = _upgrade(config, "2.4.0-crash", "--resume")
    failed = next(e for e in events if e["event"] == "upgrade-failed")
    assert code == 1 and failed["outcome"] == "rolled-back" and failed["rollback"]["from_version"] == "2.4.0-crash"
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["running"]["version"] == "2.3.1" and status["health"]["ok"]
    assert status["frozen"] == ["2.4.0-crash"] and not [p for p in status["pending"] if p["kind"] == "rollback"]  # not 2.3.1: M1


def test_a_stale_rollback_is_not_resumed_blindly(config: Path) -> None:
    cfg = _cfg(config)
    assert backout_json("switch", "2.3.0", "--yes", *cfg, env=ENV)["healthy"]
    out = backout("rollback", "--yes", "--to", "2.3.1", *cfg, env={**ENV, "BACKOUT_FAULT_AT": "before:drain"})
    assert out.returncode == -9
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]  # someone fixed it by hand
    out = backout("rollback", "--resume", "--yes", *cfg, env=ENV)
    assert out.returncode == 3 and "--abandon" in out.stderr
    out = backout("rollback", "--abandon", "--yes", *cfg, env=ENV)
    assert out.returncode == 0 and "set aside" in out.stdout
    assert not [p for p in backout_json("status", *cfg, env=ENV)["pending"] if p["kind"] == "rollback"]


def test_ctrl_c_stops_watching_and_backout_watch_resumes(config: Path) -> None:
    _, stderr = upgrade_then_ctrl_c(config, "2.4.0")
    assert "backout watch" in stderr
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["running"]["version"] == "2.4.0" and status["health"]["ok"]  # nothing was touched
    plan = backout_json("watch", "--dry-run", "--json", *_cfg(config), env=ENV)["plan"]
    assert plan["watching"].startswith("2.4.0") and "2.3.1" in plan["roll-back"]
    out = backout("watch", "--json", *_cfg(config), env=ENV)
    assert out.returncode == 2 and "--yes" in out.stderr  # it may roll back: not without asking
    out = backout("watch", "--json", "--yes", *_cfg(config), env=ENV, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1])["outcome"] == "promoted"
    out = backout("watch", *_cfg(config), env=ENV)
    assert out.returncode == 2 and "no upgrade" in out.stderr
