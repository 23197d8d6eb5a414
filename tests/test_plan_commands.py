"""What `--dry-run` shows is exactly what runs (safety invariant 4), on both runtimes.

For every flow (switch, upgrade, rollback of the image and of the brain, snapshot restore, volume
restore) the commands of a dry-run are held against the commands the real run of the same operation
recorded: the switch's and the snapshot restore's result, the upgrade's result (from its journal's
timeline) and the rollback's incident timeline. They must be identical, command by command: argv,
environment names, files, kind. Real Engine processes on loopback, and real Docker for compose: the
compose project bind-mounts `data/` so the brain sits in a plain folder the local volume provider
can swap."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backout_cli import backout, backout_json
from compose_setup import COMPOSE_SETTINGS, compose_down, docker_env_vars, init_compose
from engine_proc import free_port
from rollback_setup import ENV, init_process, prepare_bad_upgrade, turns

BIN = Path(sys.executable).parent
Commands = dict[str, list[dict[str, Any]]]

COMPOSE = """\
services:
  engine:
    image: engine:${{ENGINE_VERSION}}
    network_mode: host
    environment:
      - ENGINE_API_KEY
      - ENGINE_PORT={port}
      - ENGINE_TURN_MS=20
    volumes:
      - ./data:/data
"""
VOLUME = """
[deployments.{name}.volume]
provider = "local"
path = "data"
use = "instead"
"""


@dataclass
class Deployment:
    """A deployment of the reference Engine: its config, the environment backout gets, its runtime."""

    config: Path
    env: dict[str, str]
    runtime: str

    def cli(self, *args: str, timeout: float = 300) -> Any:
        """`backout ARGS --json --config ...`, which must succeed; its JSON."""
        return backout_json(*args, "--config", str(self.config), env=self.env, timeout=timeout)

    def lines(self, *args: str) -> list[dict[str, Any]]:
        """`backout ARGS --json --config ...` printing JSON lines (upgrade), which must succeed."""
        out = backout(*args, "--json", "--config", str(self.config), env=self.env, timeout=300)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _process(folder: Path, volume: bool) -> Deployment:
    (folder / "data").mkdir(parents=True)
    config = init_process(folder, VOLUME if volume else "")
    text = config.read_text().replace('brain = "brain.sqlite"', 'brain = "data/brain.sqlite"')
    port_line = next(line for line in text.splitlines() if line.startswith("port = "))
    migrate = f'migrate = "{BIN}/engine migrate --release {{version}} --brain {{brain}}"'
    config.write_text(text.replace(port_line, f"{port_line}\n{migrate}", 1))
    return Deployment(config, dict(ENV), "process")


def _compose(folder: Path, env: dict[str, str], volume: bool) -> Deployment:
    (folder / "data").mkdir(parents=True)
    (folder / "compose.yml").write_text(COMPOSE.format(port=free_port()))
    (folder / ".env").write_text("ENGINE_VERSION=2.3.1\n")
    config = init_compose(folder, env, "--migrate", "engine migrate --release {version} --brain /data/brain.sqlite")
    text = config.read_text().replace("[deployments.engine]\n",
                                      '[deployments.engine]\napi_key = { env = "ENGINE_API_KEY" }\n', 1)
    config.write_text(text + COMPOSE_SETTINGS + (VOLUME.format(name="engine") if volume else ""))
    assert f'brain = "{folder / "data" / "brain.sqlite"}"' in config.read_text()
    return Deployment(config, env, "compose")


@pytest.fixture(params=["process", pytest.param("compose", marks=pytest.mark.docker)])
def runtime(request: pytest.FixtureRequest) -> str:
    """Each test runs on both runtimes."""
    if request.param == "compose":
        request.getfixturevalue("docker_env")  # skips (or fails in CI) without Docker and the images
    return str(request.param)


def _deploy(runtime: str, folder: Path, volume: bool = False) -> Iterator[Deployment]:
    deployment = _compose(folder, docker_env_vars(), volume) if runtime == "compose" else _process(folder, volume)
    try:
        yield deployment
    finally:
        backout("stop", "--yes", "--config", str(deployment.config), env=deployment.env)
        if runtime == "compose":
            compose_down(folder, deployment.env)
            shutil.rmtree(folder / "data", ignore_errors=True)  # written by root in the container


@pytest.fixture
def deployment(runtime: str, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment (no volume provider) running 2.3.1."""
    # The compose project is named after the folder: a name of its own keeps parallel workers apart.
    for deployed in _deploy(runtime, tmp_path / f"dep-{uuid.uuid4().hex[:8]}"):
        assert deployed.cli("switch", "2.3.1", "--yes")["healthy"]
        yield deployed


def _planned(plan: dict[str, Any]) -> Commands:
    return {step["name"]: step["commands"] for step in plan["steps"]}


def _timeline(entries: list[dict[str, Any]]) -> Commands:
    return {entry["step"]: entry["commands"] for entry in entries}


def _same(planned: Commands, performed: Commands) -> None:
    """Each step ran exactly the commands its plan showed, and every step that shows commands ran."""
    assert any(planned.values()), "the plan shows no commands at all"
    for step, commands in planned.items():
        if commands:
            assert step in performed, f"step {step} shows commands but did not run"
    for step, commands in performed.items():
        assert commands == planned[step], f"step {step}: planned {planned[step]}\nperformed {commands}"


def _argv(commands: list[dict[str, Any]]) -> list[list[str]]:
    return [c["argv"] for c in commands]


def test_switch(deployment: Deployment) -> None:
    plan = deployment.cli("switch", "2.4.0", "--dry-run")
    result = deployment.cli("switch", "2.4.0", "--yes")
    assert result["healthy"] and result["migrated"]
    assert result["commands"] == plan["commands"]
    kinds = [c["kind"] for c in plan["commands"]]
    if deployment.runtime == "process":
        assert kinds == ["signal", "exec", "spawn"]
    else:  # the version edit is planned too, and the migrate planned is the one that runs (-T)
        assert kinds == ["exec", "edit", "exec", "exec"]
        assert plan["commands"][1]["files"] == [str(deployment.config.parent / ".env")]
        assert "-T" in plan["commands"][2]["argv"] and "migrate" in plan["commands"][2]["argv"]


def test_upgrade(deployment: Deployment) -> None:
    plan = deployment.lines("upgrade", "2.4.0", "--dry-run")[0]["plan"]
    planned = _planned(plan)
    assert "<drain_timeout>" not in json.dumps(plan)  # values, not placeholders
    assert not any("stop" in argv or argv[:2] == ["kill", "-TERM"] for argv in _argv(planned["start"]))
    if deployment.runtime == "compose":  # the version edit is listed, and the migrate that runs (-T)
        assert [c["kind"] for c in planned["start"]] == ["edit", "exec", "exec"]
        assert "-T" in planned["start"][1]["argv"] and "stop" in planned["drain"][0]["argv"]
    assert planned["arm"][0]["kind"] == "trial"  # the pre-armed trial boot of 2.3.1

    events = deployment.lines("upgrade", "2.4.0", "--watch", "0", "--yes")
    upgraded = next(e for e in events if e["event"] == "upgraded")
    _same(planned, upgraded["commands"])
    assert planned["drain"][0]["timeout"] >= 10


def test_rollback_of_the_brain(deployment: Deployment) -> None:
    prepare_bad_upgrade(deployment.config, "2.3.1", "2.4.0-errors", env=deployment.env)
    turns(deployment.config, "during", 4, strict=False)
    plan = deployment.cli("rollback", "--dry-run", "--to", "2.3.1")["plan"]
    result = deployment.cli("rollback", "--yes", "--to", "2.3.1")["result"]
    assert plan["layer"] == result["layer"] == "brain" and result["outcome"] == "rolled-back"
    incident = json.loads((Path(result["incident_folder"]) / "incident.json").read_text())
    _same(_planned(plan), _timeline(incident["timeline"]))
    kinds = [c["kind"] for c in _planned(plan)["restore"]]
    assert kinds == ["copy", "checkpoint", "link", "remove", "rename"]  # hard links, and the checkpoint


def test_rollback_of_the_image(deployment: Deployment) -> None:
    for version in ("2.3.0", "2.3.1"):
        assert deployment.cli("switch", version, "--yes")["healthy"]
    plan = deployment.cli("rollback", "--dry-run", "--to", "2.3.0")["plan"]
    result = deployment.cli("rollback", "--yes", "--to", "2.3.0")["result"]
    assert plan["layer"] == result["layer"] == "image" and result["outcome"] == "rolled-back"
    incident = json.loads((Path(result["incident_folder"]) / "incident.json").read_text())
    _same(_planned(plan), _timeline(incident["timeline"]))


def test_snapshot_restore(deployment: Deployment) -> None:
    turns(deployment.config, "before", 2)
    deployment.cli("stop", "--yes")
    snap = deployment.cli("snapshot", "create")
    assert deployment.cli("switch", "2.3.1", "--yes")["healthy"]
    turns(deployment.config, "after", 2)
    deployment.cli("stop", "--yes")
    plan = deployment.cli("snapshot", "restore", snap["id"], "--dry-run")
    result = deployment.cli("snapshot", "restore", snap["id"], "--yes")
    assert result["commands"] == plan["commands"] and result["quarantine"]
    assert [c["kind"] for c in plan["commands"]] == ["copy", "checkpoint", "link", "remove", "rename"]
    assert plan["commands"][2]["argv"][0] == "ln"  # the displaced brain is hard-linked into quarantine


def test_volume_restore(runtime: str, tmp_path: Path) -> None:
    for deployment in _deploy(runtime, tmp_path / f"vol-{uuid.uuid4().hex[:8]}", volume=True):
        assert deployment.cli("switch", "2.3.1", "--yes")["healthy"]
        turns(deployment.config, "before", 2)
        deployment.cli("stop", "--yes")
        snap = deployment.cli("volume", "snapshot", "--version-running", "2.3.1", "--yes")
        assert deployment.cli("switch", "2.4.0", "--yes")["healthy"]  # a forward-only migration
        turns(deployment.config, "during", 2)
        plan = deployment.cli("rollback", "--dry-run", "--to", "2.3.1")["plan"]
        assert plan["volume"]["snapshot"] == snap["id"] and plan["volume"]["provider"] == "local"
        result = deployment.cli("rollback", "--yes", "--to", "2.3.1")["result"]
        assert result["layer"] == "brain" and result["outcome"] == "rolled-back", result
        incident = json.loads((Path(result["incident_folder"]) / "incident.json").read_text())
        _same(_planned(plan), _timeline(incident["timeline"]))
        restore = _argv(_planned(plan)["restore"])
        assert restore[0][:3] == ["cp", "-a", "--reflink=auto"] and "<runtime>" not in json.dumps(restore)
