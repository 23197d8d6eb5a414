"""backout installs and runs without the reference Engine: a fresh virtual environment gets backout
by `pip install` (its third-party dependencies are borrowed from the test environment, not the
`engine` package), and `--help`, `switch`, `snapshot`, `upgrade` and `rollback` run against a
service that is not the Engine (tests/services/yaml_service.py). The default drill, which needs the
Engine, says how to get it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from test_config_files import _deploy

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bare_backout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `backout` script of a venv where backout is pip-installed and `engine` is not importable."""
    venv = tmp_path_factory.mktemp("no-engine") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # A plain path entry: the test env's packages, but none of its .pth files (its editable installs of
    # backout and the reference Engine) are processed from there.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import engine"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'engine'" in probe.stderr, "engine is importable"
    return venv / "bin" / "backout"


def _run(exe: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ENGINE_API_KEY")}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_backout_without_the_engine_upgrades_and_rolls_back_another_service(bare_backout: Path,
                                                                             tmp_path: Path) -> None:
    assert _run(bare_backout, "--help", cwd=tmp_path).returncode == 0
    config, port, _ = _deploy(tmp_path)
    cfg = ("--config", str(config))
    out = _run(bare_backout, "switch", "1", "--yes", *cfg, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("before-1", "before-2"):
        assert httpx.post(f"http://127.0.0.1:{port}/items", json={"name": name}).status_code == 201
    snap = _run(bare_backout, "snapshot", "create", "--json", *cfg, cwd=tmp_path)
    assert snap.returncode == 0, snap.stderr
    assert json.loads(snap.stdout)["id"]
    up = _run(bare_backout, "upgrade", "2", "--yes", "--watch", "0", *cfg, cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert httpx.post(f"http://127.0.0.1:{port}/items", json={"name": "after"}).status_code == 201
    back = _run(bare_backout, "rollback", "--yes", "--json", *cfg, cwd=tmp_path)
    assert back.returncode == 0, back.stdout + back.stderr
    result = json.loads(back.stdout)["result"]
    assert result["layer"] == "brain" and result["outcome"] == "rolled-back"  # 1 refuses a schema-2 database
    names = {row[0] for row in sqlite3.connect(tmp_path / "app.sqlite").execute("SELECT name FROM items")}
    assert {"before-1", "before-2"} <= names
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    _run(bare_backout, "stop", "--yes", *cfg, cwd=tmp_path)


def test_the_default_drill_says_how_to_get_the_engine(bare_backout: Path, tmp_path: Path) -> None:
    out = _run(bare_backout, "drill", cwd=tmp_path)
    assert out.returncode == 4, out.stdout + out.stderr
    assert "reference Engine is not installed" in out.stderr and "pip install" in out.stderr
