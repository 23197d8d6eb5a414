"""The drill on a service that is not the reference Engine: a configured staging deployment of a small
service (tests/services/yaml_service.py, its database path in a YAML config) whose release 2-errors
migrates the database forward and fails half of its requests. The drill sends the deployment's own
[drill] requests, and runs with the `engine` package made unimportable (every backout child too)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from backout_cli import backout
from test_config_files import SERVICE, TEMPLATE, _free_port

STAGING = """\
[deployments.app]
brain = "app.sqlite"
health_url = "http://127.0.0.1:{port}/health"
runtime = "process"
staging = true
drain_timeout = "5s"
boot_timeout = "20s"

[deployments.app.process]
command = "{python} {service} --release {{version}} --config {{config}}/service.yml"
port = {port}
ports = {{ admin = {admin} }}
config_files = [{{ template = "service.yml.tmpl", name = "service.yml" }}]

[deployments.app.profile]
name = "generic"

[deployments.app.verdict]
window = "4s"
min_requests = 15
sustained_windows = 2
health_failures = 2
health_duration = "3s"
baseline_window = "30s"

[deployments.app.upgrade]
check_every = "2s"

[deployments.app.rollback]
verify_window = "3s"

[deployments.app.drill]
production_version = "1"
broken_version = "2-errors"
expect_layer = "brain"
rto = "2m"
traffic_rate = 8
requests = [
  {{ method = "POST", path = "/items", body = {{ name = "drill-{{n}}" }}, expect_status = 201 }},
  {{ method = "GET", path = "/items" }},
]
"""


def _staging(folder: Path) -> Path:
    (folder / "service.yml.tmpl").write_text(TEMPLATE)
    config = folder / "backout.toml"
    config.write_text(STAGING.format(port=_free_port(), admin=_free_port(), python=sys.executable, service=SERVICE))
    return config


def _without_engine(folder: Path) -> dict[str, str]:
    """An environment in which `import engine` fails, as where backout is installed without it."""
    blocker = folder / "no-engine" / "engine"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the reference Engine is not installed here')\n")
    path = os.pathsep.join(p for p in (str(blocker.parent), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def test_drill_dry_run_names_the_deployments_own_builds(tmp_path: Path) -> None:
    config = _staging(tmp_path)
    out = backout("drill", "--dry-run", "--json", "--config", str(config), env=_without_engine(tmp_path))
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert (plan["production_version"], plan["broken_version"], plan["traffic"]) == ("1", "2-errors", "requests")


def test_drill_of_another_service_needs_its_broken_build_named(tmp_path: Path) -> None:
    config = _staging(tmp_path)
    config.write_text(config.read_text().replace('broken_version = "2-errors"\n', ""))
    out = backout("drill", "--yes", "--config", str(config), env=_without_engine(tmp_path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Name it as broken_version in [deployments.app.drill]" in out.stderr
    assert not (tmp_path / "app.sqlite").exists()  # nothing started


@pytest.mark.slow
@pytest.mark.rehearsal
def test_drill_on_a_service_that_is_not_the_engine(tmp_path: Path) -> None:
    config = _staging(tmp_path)
    out = backout("drill", "--yes", "--json", "--watch", "40", "--config", str(config),
                  env=_without_engine(tmp_path), timeout=600)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        pytest.fail(f"no report (exit {out.returncode}): {out.stderr[-3000:]}")
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"], json.dumps(report["checks"], indent=1) + str(report.get("failure"))
    assert report["profile"] == "generic" and report["traffic_kind"] == "requests"
    assert (report["production_version"], report["broken_version"], report["layer"]) == ("1", "2-errors", "brain")
    assert "every accepted turn in the brain" not in checks  # the Engine's episodes check is the Engine's alone
    assert report["traffic"]["errors"] > 0  # the broken build's failures were seen ...
    bad_window = sum(t["bad_window"] for t in report["tables"])
    assert bad_window > 0 and "under new keys" in checks["bad-window rows replayable"]["detail"]
    assert checks["a trigger"]["detail"] != "none"  # ... and called for the rollback
    conn = sqlite3.connect(tmp_path / "app.sqlite")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # release 1's schema again
        drill_rows = conn.execute("SELECT count(*) FROM items WHERE name LIKE 'drill-%'").fetchone()[0]
    finally:
        conn.close()
    seed = next(p for p in report["phases"] if p["name"] == "seed")
    # the seed's accepted POSTs (half its requests), and the bad window's, replayed
    assert drill_rows >= int(seed["detail"].split("/")[0]) // 2 + bad_window
    assert out.returncode == 0
    backout("stop", "--yes", "--config", str(config))
