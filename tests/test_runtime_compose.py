"""The compose runtime against a real Docker engine and real `engine:<version>` images.

CI builds the images (scripts/docker/build-images.sh) and sets BACKOUT_REQUIRE_DOCKER=1, so a
missing Docker engine fails there instead of skipping."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from compose_setup import init_compose, make_project
from engine_proc import free_port

pytestmark = pytest.mark.docker


def test_compose_switch_paths_with_history_and_status(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, port = project
    config = init_compose(folder, docker_env)
    text = config.read_text()
    assert 'version_variable = "ENGINE_VERSION"' in text and f"http://127.0.0.1:{port}/health" in text
    brain = Path(text.split("brain = ")[1].split('"')[1])
    assert brain.name == "brain.sqlite" and "volumes" in str(brain)
    cfg = ["--config", str(config)]
    for version in ["2.3.0", "2.3.1", "2.3.0", "2.4.0"]:
        result = backout_json("switch", version, "--yes", *cfg, env=docker_env)
        assert result["healthy"], result
    assert result["drain"]["clean"] and result["drain"]["exit_code"] == 0
    assert result["schema_after"]["head"] == "4" and brain.exists()  # the brain is found on the host
    assert "ENGINE_VERSION=2.4.0" in (folder / ".env").read_text()
    assert "# versions are switched by backout" in (folder / ".env").read_text()

    refused = backout("switch", "2.3.1", "--yes", *cfg, env=docker_env)  # the trial boot: it refuses the brain
    assert refused.returncode == 3 and "nothing was stopped" in refused.stderr, refused.stderr
    assert backout_json("status", *cfg, env=docker_env)["running"]["version"] == "2.4.0"
    started = time.monotonic()
    out = backout("switch", "2.3.1", "--force", "--yes", "--json", *cfg, env=docker_env)
    forced = json.loads(out.stdout)
    assert out.returncode == 1 and "MIGRATION_REQUIRED" in forced["health"]["reason"]
    assert forced["switched_back"]["healthy"]  # a failed forced switch does not leave the service down
    assert time.monotonic() - started < 60
    status = backout_json("status", *cfg, env=docker_env)
    assert status["running"]["version"] == "2.4.0" and status["health"]["ok"]
    assert [h["to_version"] for h in backout_json("history", *cfg)] == ["2.3.0", "2.3.1", "2.3.0", "2.4.0", "2.3.1",
                                                                        "2.4.0"]
    snap = backout_json("snapshot", "create", *cfg, env=docker_env)  # snapshots work on the host
    assert snap["integrity_check"] == "ok" and snap["schema_stamp"]["head"] == "4"


def test_image_tag_edit_keeps_comments_and_missing_image_is_refused(tmp_path, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, _ = make_project(tmp_path, image="engine:2.3.0")
    try:
        config = init_compose(folder, docker_env, "--brain", str(tmp_path / "unused.sqlite"))
        cfg = ["--config", str(config)]
        assert backout_json("switch", "2.3.1", "--yes", *cfg, env=docker_env)["healthy"]
        compose = (folder / "compose.yml").read_text()
        assert "image: engine:2.3.1   # the version backout switches" in compose
        assert compose.startswith("# The Engine, as its operators deploy it.")
        out = backout("switch", "7.7.7", "--yes", *cfg, env=docker_env)
        assert out.returncode == 3 and "rebuild it" in out.stderr and "nothing was stopped" in out.stderr
        assert backout_json("status", *cfg, env=docker_env)["health"]["ok"]
    finally:
        subprocess.run(["docker", "compose", "-p", folder.name, "-f", str(folder / "compose.yml"), "down", "-v",
                        "--timeout", "5"], env={**os.environ, **docker_env}, capture_output=True)


def test_crash_drain_and_docker_down(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, _ = project
    config = init_compose(folder, docker_env)
    config.write_text(config.read_text().replace('drain_timeout = "10s"', 'drain_timeout = "3s"'))
    cfg = ["--config", str(config)]
    out = backout("switch", "2.4.0-crash", "--yes", "--json", *cfg, env=docker_env)
    assert out.stdout, out.stderr
    result = json.loads(out.stdout)
    assert out.returncode == 1 and "exited with code 70" in result["health"]["reason"]
    assert any("BOOT_CRASH" in line for line in result["health"]["log_tail"])
    assert backout_json("switch", "2.4.0-drain", "--yes", *cfg, env=docker_env)["healthy"]
    out = backout("stop", "--yes", "--json", *cfg, env=docker_env)
    assert out.stdout, out.stderr
    stopped = json.loads(out.stdout)
    assert out.returncode == 1 and not stopped["clean"] and stopped["exit_code"] == 137
    down = {**docker_env, "DOCKER_HOST": "unix:///run/nothing-here.sock"}
    out = backout("switch", "2.3.1", "--yes", *cfg, env=down)
    assert out.returncode == 4 and "Docker is not reachable" in out.stderr


def test_compose_file_without_the_service(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, _ = project
    out = backout("init", "--runtime", "compose", "--compose-file", "compose.yml", "--service", "web",
                  cwd=folder, env=docker_env)
    assert out.returncode == 2 and "no service 'web'" in out.stderr and "engine" in out.stderr


def test_image_pulled_from_the_registry_when_not_local(tmp_path, docker_env) -> None:  # type: ignore[no-untyped-def]
    import httpx

    try:
        httpx.get("http://127.0.0.1:5000/v2/", timeout=2)
    except httpx.HTTPError:
        if os.environ.get("BACKOUT_REQUIRE_DOCKER") == "1":
            pytest.fail("the local registry on 127.0.0.1:5000 is not running")
        pytest.skip("no local registry on 127.0.0.1:5000")
    env = {**os.environ, **docker_env}
    repo = f"pulltest-{os.getpid()}-{free_port()}"
    for argv in (["docker", "tag", "engine:2.3.1", f"127.0.0.1:5000/{repo}:2.3.1"],
                 ["docker", "push", f"127.0.0.1:5000/{repo}:2.3.1"],
                 ["docker", "rmi", f"127.0.0.1:5000/{repo}:2.3.1"]):
        assert subprocess.run(argv, env=env, capture_output=True).returncode == 0, argv
    folder, _ = make_project(tmp_path, image=f"{repo}:${{ENGINE_VERSION}}", version="2.3.1")
    try:
        config = init_compose(folder, docker_env)
        config.write_text(config.read_text().replace('service = "engine"', 'service = "engine"\nregistry = "127.0.0.1:5000"'))
        plan = backout_json("switch", "2.3.1", "--dry-run", "--config", str(config), env=docker_env)
        assert any(c["argv"][:2] == ["docker", "pull"] for c in plan["commands"])
        assert backout_json("switch", "2.3.1", "--yes", "--config", str(config), env=docker_env)["healthy"]
        assert subprocess.run(["docker", "image", "inspect", f"{repo}:2.3.1"], env=env, capture_output=True).returncode == 0
    finally:
        subprocess.run(["docker", "compose", "-p", folder.name, "-f", str(folder / "compose.yml"), "down", "-v",
                        "--timeout", "5"], env=env, capture_output=True)
        subprocess.run(["docker", "rmi", "-f", f"{repo}:2.3.1"], env=env, capture_output=True)


def test_compose_migrate_runs_in_a_one_off_container(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    folder, _ = project
    config = init_compose(folder, docker_env, "--migrate", "engine migrate --release {version} --brain /data/brain.sqlite")
    cfg = ["--config", str(config)]
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=docker_env)["healthy"]
    plan = backout_json("switch", "2.4.0", "--dry-run", *cfg, env=docker_env)
    assert any(c["argv"][6:9] == ["run", "--rm", "--no-deps"] for c in plan["commands"])
    result = backout_json("switch", "2.4.0", "--yes", *cfg, env=docker_env)
    assert result["healthy"] and result["migrated"] and result["schema_after"]["head"] == "4"
