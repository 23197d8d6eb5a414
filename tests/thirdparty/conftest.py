"""Fixtures of the third-party acceptance suite (`-m thirdparty`): the cached virtual environments.

Each env is built once per machine under $BACKOUT_THIRDPARTY_CACHE (default
~/.cache/backout-thirdparty) and reused; the builders lock per env, so pytest-xdist workers share
them. A build that fails is an error of the test that needed it, with pip's last lines: a machine
that cannot build them cannot run this suite, and it must say so rather than skip.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # envs.py and apps/ beside this file

import envs  # noqa: E402
from apps import try_apps  # noqa: E402


@pytest.fixture(scope="session")
def service_venv() -> Callable[[str, str], Path]:
    """`service_venv(service, version)`: the venv of a real PyPI service (envs.SERVICES), built once."""
    built: dict[tuple[str, str], Path] = {}

    def get(service: str, version: str) -> Path:
        if (service, version) not in built:
            built[(service, version)] = envs.ensure_venv(service, version)  # BuildError carries pip's output
        return built[(service, version)]

    return get


@pytest.fixture(scope="session")
def apps_python() -> Path:
    """The interpreter of the venv that runs both test apps (tests/thirdparty/apps/requirements.txt)."""
    return try_apps.ensure_venv(quiet=True)
