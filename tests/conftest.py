"""Shared fixtures: real Engine processes on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from compose_setup import docker_env, project  # noqa: F401 (fixtures for the compose tests)
from engine_proc import EngineProcess

StartEngine = Callable[..., EngineProcess]


@pytest.fixture(scope="module")
def start_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartEngine]:
    """Start Engine processes; every one still running is drained (then killed) at module end."""
    started: list[EngineProcess] = []

    def start(release: str, brain: Path | None = None, env: dict[str, str] | None = None,
              wait: bool = True) -> EngineProcess:
        folder = tmp_path_factory.mktemp("engine")
        proc = EngineProcess(release, brain or folder / "brain.sqlite", log_path=folder / "engine.log",
                             env=env or {})
        started.append(proc)
        proc.start()
        if wait:
            proc.wait_healthy()
        return proc

    yield start
    for proc in started:
        proc.stop()
