"""A compose deployment of the reference Engine for tests: Docker environment, project, config.

CI builds the images (scripts/docker/build-images.sh) and sets BACKOUT_REQUIRE_DOCKER=1, so a
missing Docker engine fails there instead of skipping."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout_cli import backout
from engine_proc import DEFAULT_KEY, free_port

__all__ = ["COMPOSE", "COMPOSE_SETTINGS", "compose_down", "docker_env", "init_compose", "make_project"]

ENV_FILE = Path("/run/backout-docker.env")
NEEDED = ["2.3.0", "2.3.1", "2.4.0", "2.4.1", "2.4.0-errors", "2.4.0-crash", "2.4.0-drain"]


# The rollback and notify settings the compose tests add to an `init`ed deployment named engine.
COMPOSE_SETTINGS = """
[deployments.engine.rollback]
verify_window = "1s"

[deployments.engine.notify]
file = "notifications.jsonl"
"""

def docker_env_vars() -> dict[str, str]:
    env = {"ENGINE_API_KEY": DEFAULT_KEY}
    host = os.environ.get("DOCKER_HOST")
    if not host and ENV_FILE.exists():
        host = ENV_FILE.read_text().split("DOCKER_HOST=", 1)[1].split()[0]
    if host:
        env["DOCKER_HOST"] = host
    return env


@pytest.fixture(scope="module")
def docker_env() -> dict[str, str]:
    """The environment a compose test passes to backout; skips (or fails in CI) without Docker."""
    env = {**os.environ, **docker_env_vars()}
    ok = subprocess.run(["docker", "image", "inspect", *(f"engine:{v}" for v in NEEDED)], env=env,
                        capture_output=True).returncode == 0 if _which("docker") else False
    if not ok:
        if os.environ.get("BACKOUT_REQUIRE_DOCKER") == "1":
            pytest.fail("Docker or the engine images are missing (run scripts/docker/setup.sh and build-images.sh)")
        pytest.skip("no Docker engine with engine:<version> images here")
    return docker_env_vars()


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


COMPOSE = """\
# The Engine, as its operators deploy it.
services:
  engine:
    image: {image}   # the version backout switches
    network_mode: host
    stop_grace_period: 30s
    environment:
      - ENGINE_API_KEY
      - ENGINE_PORT={port}
      - ENGINE_TURN_MS=20
    volumes:
      - brain:/data
volumes:
  brain: {{}}
"""


def make_project(tmp_path: Path, image: str = "engine:${ENGINE_VERSION}", version: str = "2.3.0") -> tuple[Path, int]:
    port = free_port()
    folder = tmp_path / f"proj{port}"
    folder.mkdir()
    (folder / "compose.yml").write_text(COMPOSE.format(image=image, port=port))
    (folder / ".env").write_text(f"# versions are switched by backout\nENGINE_VERSION={version}\n")
    return folder, port


def init_compose(folder: Path, env: dict[str, str], *extra: str) -> Path:
    out = backout("init", "--runtime", "compose", "--profile", "engine", "--compose-file", "compose.yml", "--service", "engine",
                  "--pass-env", "ENGINE_API_KEY", *extra, cwd=folder, env=env)
    assert out.returncode == 0, out.stderr
    text = (folder / "backout.toml").read_text().replace('drain_timeout = "30s"', 'drain_timeout = "10s"')
    (folder / "backout.toml").write_text(text)
    return folder / "backout.toml"




def compose_down(folder: Path, env: dict[str, str]) -> None:
    """Remove a test project's containers and volumes."""
    subprocess.run(["docker", "compose", "-p", folder.name, "-f", str(folder / "compose.yml"), "down", "-v",
                    "--timeout", "5"], env={**os.environ, **env}, capture_output=True)


@pytest.fixture
def project(tmp_path: Path, docker_env: dict[str, str]) -> Iterator[tuple[Path, int]]:
    """A compose project folder (and its port), taken down afterwards."""
    folder, port = make_project(tmp_path)
    yield folder, port
    compose_down(folder, docker_env)
