"""`backout rollback` and `backout upgrade` on the compose runtime: real Docker, real `engine:<version>` images.

The trial boot runs the target in a temporary compose project on a spare port (the port variable,
ENGINE_PORT here, is found in the compose file) against a copy of the brain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from compose_setup import COMPOSE_SETTINGS, init_compose
from rollback_setup import counts, notifications, prepare_bad_upgrade, turns

pytestmark = pytest.mark.docker



def _config(folder: Path, env: dict[str, str]) -> Path:
    config = init_compose(folder, env)
    text = config.read_text().replace("[deployments.engine]\n", '[deployments.engine]\napi_key = { env = "ENGINE_API_KEY" }\n', 1)
    config.write_text(text + COMPOSE_SETTINGS)
    return config


def _brain(config: Path) -> Path:
    return Path(config.read_text().split('brain = "', 1)[1].split('"', 1)[0])


def _rollback(config: Path, env: dict[str, str], to: str) -> dict:
    out = backout("rollback", "--yes", "--json", "--to", to, "--config", str(config), env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["result"]


def test_compose_brain_rollback_from_a_broken_build(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, _ = project
    config = _config(folder, docker_env)
    snap = prepare_bad_upgrade(config, "2.3.1", "2.4.0-errors", env=docker_env)
    written = turns(config, "during", 10, strict=False)
    result = _rollback(config, docker_env, "2.3.1")
    assert result["layer"] == "brain" and result["outcome"] == "rolled-back", result
    trial = json.loads((Path(result["incident_folder"]) / "incident.json").read_text())["trial"]
    assert "container in compose project" in trial["how"] and "MIGRATION_REQUIRED" in trial["reason"], trial
    now = counts(_brain(config))
    assert all(now[t] >= m["rows"] for t, m in snap["tables"].items())  # every pre-upgrade row
    summary = json.loads((Path(result["incident_folder"]) / "salvage" / "summary.json").read_text())
    salvaged = {t["table"]: t["added"] + t["changed"] for t in summary["tables"]}
    assert salvaged.get("knowledge_store", 0) >= written and len(result["effects"]["rows"]) >= written
    assert backout_json("status", "--config", str(config), env=docker_env)["running"]["version"] == "2.3.1"
    assert "ENGINE_VERSION=2.3.1" in (folder / ".env").read_text()
    assert notifications(config)[-1]["kind"] == "rollback-succeeded"


def test_compose_image_rollbacks(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, _ = project
    config = _config(folder, docker_env)
    cfg = ["--config", str(config)]
    for version in ("2.3.0", "2.3.1"):
        assert backout_json("switch", version, "--yes", *cfg, env=docker_env)["healthy"]
        turns(config, f"on-{version}")
    result = _rollback(config, docker_env, "2.3.0")  # switched to by hand: never judged good, so named
    assert (result["to_version"], result["layer"]) == ("2.3.0", "image") and result["salvage"] is None

    for version in ("2.4.0", "2.4.1"):
        assert backout_json("switch", version, "--yes", *cfg, env=docker_env)["healthy"]
        turns(config, f"on-{version}")
    before = counts(_brain(config))
    result = _rollback(config, docker_env, "2.4.0")
    assert (result["to_version"], result["layer"]) == ("2.4.0", "image"), result["layer_reason"]
    assert "trial boot" in result["layer_reason"] and "healthy" in result["layer_reason"]
    after = counts(_brain(config))
    assert all(after[t] >= n for t, n in before.items())  # the brain was not touched: nothing lost


def test_compose_upgrade_promoted_then_a_broken_build_rolled_back(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, _ = project
    config = _config(folder, docker_env)
    config.write_text(config.read_text() + '\n[deployments.engine.upgrade]\nwatch = "2s"\ncheck_every = "1s"\n')
    cfg = ["--config", str(config)]
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=docker_env)["healthy"]
    turns(config, "before")
    out = backout("upgrade", "2.4.0", "--yes", "--json", *cfg, env=docker_env, timeout=300)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and events[-1]["outcome"] == "promoted", out.stderr
    upgraded = next(e for e in events if e["event"] == "upgraded")
    assert upgraded["restore_point"]["image_digest"].startswith("sha256:")
    assert "container in compose project" in upgraded["trial"]["how"]  # pre-armed: 2.3.1 cannot read it

    out = backout("upgrade", "2.4.1", "--dry-run", *cfg, env=docker_env)
    assert out.returncode == 0 and "2.4.0 -> 2.4.1" in out.stderr + out.stdout
    # --force: the proof before the stop would refuse a build that is never healthy; past it, the failed
    # start is rolled back at once.
    out = backout("upgrade", "2.4.0-health", "--force", "--yes", "--json", *cfg, env=docker_env, timeout=300)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    failed = next(e for e in events if e["event"] == "upgrade-failed")
    assert out.returncode == 1 and failed["rollback"]["to_version"] == "2.4.0", failed
    assert failed["rollback"]["layer"] == "image"  # 2.4.0-health adds no migration over 2.4.0
    status = backout_json("status", *cfg, env=docker_env)
    assert status["running"]["version"] == "2.4.0" and status["health"]["ok"]
