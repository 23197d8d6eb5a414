"""The process runtime, init, switch, stop, status and history, with the real Engine on loopback."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from engine_proc import DEFAULT_KEY, free_port

BIN = Path(sys.executable).parent
ENV = {"ENGINE_API_KEY": DEFAULT_KEY}


def _init(folder: Path, port: int, extra: list[str] | None = None, command: str | None = None) -> Path:
    command = command or f"{BIN}/engine serve --release {{version}} --brain {{brain}} --port {{port}}"
    out = backout("init", "--runtime", "process", "--profile", "engine", "--command", command,
                  "--check", f"{BIN}/engine releases --changelog {{version}}", "--port", str(port),
                  "--brain", "brain.sqlite", "--health-url", f"http://127.0.0.1:{port}/health",
                  "--pass-env", "ENGINE_API_KEY", "--env", "ENGINE_TURN_MS=20", *(extra or []), cwd=folder)
    assert out.returncode == 0, out.stderr
    return folder / "backout.toml"


def _set(config: Path, key: str, value: str) -> None:
    text = config.read_text()
    config.write_text(text.replace(f'{key} = "30s"', f'{key} = {value}').replace(f'{key} = "60s"', f'{key} = {value}'))


@pytest.fixture
def deployment(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = _init(tmp_path, free_port())
    yield config
    backout("stop", "--yes", "--config", str(config), env=ENV)


def test_switch_paths_status_and_history(deployment: Path) -> None:
    cfg = ["--config", str(deployment)]
    for version in ["2.3.0", "2.3.1", "2.3.0", "2.4.0"]:
        result = backout_json("switch", version, "--yes", *cfg, env=ENV)
        assert result["healthy"], result
    assert result["schema_before"]["head"] == "2" and result["schema_after"]["head"] == "4"  # 2.4.0 migrated
    assert result["drain"]["clean"] and result["drain"]["exit_code"] == 0

    refused = backout("switch", "2.3.1", "--yes", *cfg, env=ENV)  # 2.3.1 cannot read the head-4 brain
    assert refused.returncode == 3 and "nothing was stopped" in refused.stderr, refused.stderr
    assert "MIGRATION_REQUIRED" in refused.stderr  # the trial boot's own log lines
    assert backout_json("status", *cfg, env=ENV)["running"]["version"] == "2.4.0"
    started = time.monotonic()
    out = backout("switch", "2.3.1", "--force", "--yes", *cfg, env=ENV)
    assert out.returncode == 1
    assert "MIGRATION_REQUIRED" in out.stdout and time.monotonic() - started < 15  # quickly, no hang
    assert "2.3.1" in out.stdout and "cannot read" in out.stdout  # the Engine's own log line explains

    assert "switched back: 2.4.0 serves again" in out.stdout  # a failed forced switch does not leave it down
    status = backout_json("status", *cfg, env=ENV)
    assert status["running"]["version"] == "2.4.0" and status["health"]["ok"]
    assert status["snapshots"]["stale"] and status["restore_point"] is None
    history = backout_json("history", *cfg)
    assert [(h["from_version"], h["to_version"], h["outcome"]) for h in history] == [
        (None, "2.3.0", "ok"), ("2.3.0", "2.3.1", "ok"), ("2.3.1", "2.3.0", "ok"), ("2.3.0", "2.4.0", "ok"),
        ("2.4.0", "2.3.1", "failed"), ("2.3.1", "2.4.0", "ok")]
    stopped = backout_json("stop", "--yes", *cfg, env=ENV)
    assert stopped["clean"]
    assert backout_json("history", *cfg)[-1]["kind"] == "stop"


def test_unknown_version_is_refused_before_anything_stops(deployment: Path) -> None:
    cfg = ["--config", str(deployment)]
    backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)
    out = backout("switch", "9.9.9", "--yes", *cfg, env=ENV)
    assert out.returncode == 3 and "not available" in out.stderr and "nothing was stopped" in out.stderr
    assert backout_json("status", *cfg, env=ENV)["health"]["ok"]  # 2.3.1 still serves


def test_dry_run_shows_commands_and_changes_nothing(deployment: Path) -> None:
    plan = backout_json("switch", "2.3.1", "--dry-run", *["--config", str(deployment)], env=ENV)
    start = plan["commands"][-1]["argv"]  # the service's command line, run under backout's supervisor
    assert plan["dry_run"] and start[start.index("--") + 2:start.index("--") + 5] == ["serve", "--release", "2.3.1"]
    assert "ENGINE_API_KEY" in plan["commands"][-1]["env"] and DEFAULT_KEY not in json.dumps(plan)
    assert backout_json("history", "--config", str(deployment)) == []


def test_crash_at_boot_is_reported_with_its_log_lines(deployment: Path) -> None:
    started = time.monotonic()
    result = json.loads(backout("switch", "2.4.0-crash", "--yes", "--json", "--config", str(deployment), env=ENV).stdout)
    assert not result["healthy"] and "exited with code 70" in result["health"]["reason"]
    assert any("BOOT_CRASH" in line for line in result["health"]["log_tail"])
    assert time.monotonic() - started < 20  # reported, not a boot timeout


def test_drain_ignoring_build_is_killed_at_the_deadline(deployment: Path) -> None:
    _set(deployment, "drain_timeout", '"2s"')
    cfg = ["--config", str(deployment)]
    assert backout_json("switch", "2.4.0-drain", "--yes", *cfg, env=ENV)["healthy"]
    out = backout("stop", "--yes", "--json", *cfg, env=ENV)
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["stopped"] and not result["clean"] and "SIGKILL" in result["detail"]
    assert 2 <= result["seconds"] < 8


def test_port_in_use_is_refused(deployment: Path, tmp_path: Path) -> None:
    port = int(deployment.read_text().split("port = ")[1].split()[0])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        out = backout("switch", "2.3.1", "--yes", "--json", "--config", str(deployment), env=ENV)
    # the README's exit codes: a port in use is 2 (usage), refused before anything starts
    assert out.returncode == 2 and out.stdout == "" and "already in use" in out.stderr, out.stderr
    assert "nothing was started" in out.stderr


def test_stop_leaves_no_orphans(tmp_path: Path) -> None:
    """A service that spawns a helper process: the whole group goes."""
    port = free_port()
    marker = tmp_path / "helper.pid"
    command = (f"sh -c 'sleep 600 & echo $! > {marker}; exec {BIN}/engine serve --release {{version}} "
               f"--brain {{brain}} --port {{port}}'")
    config = _init(tmp_path, port, command=command)
    assert backout_json("switch", "2.3.1", "--yes", "--config", str(config), env=ENV)["healthy"]
    helper = int(marker.read_text())
    assert backout_json("stop", "--yes", "--config", str(config), env=ENV)["stopped"]
    time.sleep(0.2)
    state = Path(f"/proc/{helper}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_missing_secret_and_malformed_config(tmp_path: Path) -> None:
    config = _init(tmp_path, free_port())
    out = backout("switch", "2.3.1", "--yes", "--json", "--config", str(config), env={})
    assert out.returncode == 2 and "ENGINE_API_KEY is not set" in out.stderr  # before anything starts
    config.write_text(config.read_text().replace('runtime = "process"', 'runtime = "kubernetes"'))
    out = backout("status", "--config", str(config))
    assert out.returncode == 2 and "deployments.engine.runtime" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_secret_never_written_to_config_or_history(deployment: Path) -> None:
    canary = "bko_canary_" + os.urandom(8).hex()
    env = {"ENGINE_API_KEY": canary}
    assert backout_json("switch", "2.3.1", "--yes", "--config", str(deployment), env=env)["healthy"]
    for path in deployment.parent.rglob("*"):
        if path.is_file() and path.suffix in (".toml", ".json", ".jsonl", ".log"):
            assert canary not in path.read_text(errors="replace"), path


def test_restore_asks_the_runtime_and_prune_keeps_the_restore_point(deployment: Path) -> None:
    from backout.history import RestorePoint, save_restore_point

    cfg = ["--config", str(deployment)]
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
    ids = [backout_json("snapshot", "create", *cfg, env=ENV)["id"] for _ in range(3)]
    out = backout("snapshot", "restore", ids[-1], "--yes", *cfg, env=ENV)
    assert out.returncode == 3 and "is running 2.3.1" in out.stderr and "backout stop" in out.stderr
    save_restore_point(deployment.parent / ".backout", RestorePoint("engine", "2.3.1", ids[0], {}, ""))
    plan = backout_json("snapshot", "prune", "--keep-last", "1", "--dry-run", *cfg)
    assert plan["keep"][ids[0]] == "restore point" and plan["delete"] == [ids[1]]


def test_migrate_step_runs_between_stop_and_start(tmp_path: Path) -> None:
    port = free_port()
    config = _init(tmp_path, port, extra=["--migrate", f"{BIN}/engine migrate --release {{version}} --brain {{brain}}"])
    cfg = ["--config", str(config)]
    env = {**ENV}
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=env)["healthy"]
    result = backout_json("switch", "2.4.0", "--yes", *cfg, env=env)
    assert result["healthy"] and result["migrated"] and result["schema_after"]["head"] == "4"
    log = next(tmp_path.rglob("service.log")).read_text()
    assert "--- backout: migrate for 2.4.0" in log and '"applied": [3, 4]' in log
    refused = backout("switch", "2.3.1", "--yes", "--json", *cfg, env=env)  # the proof: it cannot read the brain
    assert refused.returncode == 3 and "nothing was stopped" in refused.stderr
    out = backout("switch", "2.3.1", "--force", "--yes", "--json", *cfg, env=env)  # its migrate refuses the brain
    assert out.returncode == 1
    reason = json.loads(out.stdout)["health"]
    assert "migrate for 2.3.1 failed" in reason["reason"] and any("MIGRATION_REQUIRED" in line for line in reason["log_tail"])
    backout("stop", "--yes", *cfg, env=env)
