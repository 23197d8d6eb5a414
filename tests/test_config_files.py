"""A service configured by a file: its database path and ports live in a YAML config, not on its command
line. backout renders the file from a template for every start and every trial boot, so the trial runs
on a copy of the database on ports of its own, and a rollback can still choose its layer by a trial."""

from __future__ import annotations

import socket
import sqlite3
import sys
from pathlib import Path

import httpx

from backout_cli import backout, backout_json

SERVICE = Path(__file__).parent / "services" / "yaml_service.py"
TEMPLATE = """\
# rendered by backout for each start
database: {brain}
listen: {host: 127.0.0.1, port: {port}}
admin_port: {port:admin}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _deploy(folder: Path) -> tuple[Path, int, int]:
    port, admin = _free_port(), _free_port()
    (folder / "service.yml.tmpl").write_text(TEMPLATE)
    config = folder / "backout.toml"
    config.write_text(f"""\
[deployments.app]
brain = "app.sqlite"
health_url = "http://127.0.0.1:{port}/health"
runtime = "process"
drain_timeout = "5s"
boot_timeout = "20s"

[deployments.app.process]
command = "{sys.executable} {SERVICE} --release {{version}} --config {{config}}/service.yml"
port = {port}
ports = {{ admin = {admin} }}
config_files = [{{ template = "service.yml.tmpl", name = "service.yml" }}]

[deployments.app.profile]
name = "generic"

[[deployments.app.profile.smoke]]
method = "POST"
path = "/items"
body = {{ name = "smoke" }}
expect_status = 201
tables = ["items"]
""")
    return config, port, admin


def test_the_real_start_and_each_trial_get_their_own_rendered_config(tmp_path: Path) -> None:
    config, port, admin = _deploy(tmp_path)
    cfg = ("--config", str(config))
    dry = backout("switch", "1", "--dry-run", "--json", *cfg)
    assert dry.returncode == 0, dry.stderr
    assert "render the config files of 1" in dry.stdout  # the plan shows the render step
    out = backout("switch", "1", "--yes", "--json", *cfg)
    assert out.returncode == 0, out.stderr
    rendered = tmp_path / ".backout" / "deployments" / "app" / "runtime" / "config" / "service.yml"
    text = rendered.read_text()
    assert f"database: {tmp_path / 'app.sqlite'}" in text and f"port: {port}}}" in text
    assert f"admin_port: {admin}" in text and "listen: {host: 127.0.0.1," in text  # other braces kept
    assert rendered.stat().st_mode & 0o777 == 0o600 and rendered.parent.stat().st_mode & 0o777 == 0o700
    assert httpx.get(f"http://127.0.0.1:{admin}/health").json()["database"] == str(tmp_path / "app.sqlite")
    for name in ("kept", "also kept"):
        assert httpx.post(f"http://127.0.0.1:{port}/items", json={"name": name}).status_code == 201
    backout_json("snapshot", "create", *cfg)

    # Switching to 2 proves it first: a trial boot on a copy, with a config rendered for it alone.
    up = backout("switch", "2", "--yes", "--json", *cfg)
    assert up.returncode == 0, up.stderr
    log = (tmp_path / ".backout" / "deployments" / "app" / "runtime" / "service.log").read_text()
    assert log.count(f"starting on {tmp_path / 'app.sqlite'}") == 2  # only the real starts used the live brain
    assert httpx.post(f"http://127.0.0.1:{port}/items", json={"name": "bad window"}).status_code == 201

    # Release 1 refuses the migrated database: the rollback's trial (on its own rendered config) shows it.
    plan = backout_json("rollback", "--dry-run", "--to", "1", *cfg)["plan"]
    assert plan["layer"] == "brain", plan["layer_reason"]
    assert "is at schema 2, this release knows 1" in plan["layer_reason"] or any(
        "schema 2" in line for line in plan["trial"]["log_tail"]), plan["trial"]
    done = backout("rollback", "--to", "1", "--yes", "--json", *cfg)
    assert done.returncode == 0, done.stderr
    names = [i["name"] for i in httpx.get(f"http://127.0.0.1:{port}/items").json()["items"]]
    assert names == ["kept", "also kept"]  # the brain went back; the bad window's row is in the salvage
    backout("stop", "--yes", *cfg)


def test_a_named_port_that_is_not_configured_is_a_clear_error(tmp_path: Path) -> None:
    config, _, _ = _deploy(tmp_path)
    config.write_text(config.read_text().replace("ports = { admin", "ports = { other"))
    out = backout("switch", "1", "--yes", "--config", str(config))
    assert out.returncode == 2, out.stderr
    assert "{port:admin} names no configured port (configured: other)" in out.stderr
    assert not (tmp_path / "app.sqlite").exists()  # nothing started


def test_trial_needs_brain_and_port_somewhere(tmp_path: Path) -> None:
    config, _, _ = _deploy(tmp_path)
    (tmp_path / "service.yml.tmpl").write_text(TEMPLATE.replace("{brain}", "/srv/app.sqlite"))
    conn = sqlite3.connect(tmp_path / "app.sqlite")
    conn.close()
    from backout.config import resolve_target
    from backout.runtime.trial import trial_possible

    why = trial_possible(resolve_target(config))
    assert why is not None and "config files take {brain} and {port}" in why


def test_the_trial_runs_the_migrate_step_on_its_copy(tmp_path: Path) -> None:
    """A release that needs a separate migrate step refuses an unmigrated database: the trial that proves it
    runs the migrate command on its own copy first, as the switch will on the real one."""
    config, port, _ = _deploy(tmp_path)
    text = config.read_text().replace("--config {config}/service.yml\"",
                                      "--config {config}/service.yml --no-migrate\"")
    text = text.replace("config_files = [", f"migrate = \"{sys.executable} {SERVICE} --release {{version}} "
                                             "--config {config}/service.yml --migrate-only\"\nconfig_files = [")
    config.write_text(text)
    cfg = ("--config", str(config))
    assert backout("switch", "1", "--yes", *cfg).returncode == 0
    up = backout("switch", "2", "--yes", "--json", *cfg)
    assert up.returncode == 0, up.stderr  # without the migrate step on the copy, the trial would refuse it
    log = (tmp_path / ".backout" / "deployments" / "app" / "runtime" / "service.log").read_text()
    assert log.count(f"migrated {tmp_path / 'app.sqlite'}") == 2  # the live brain: migrated by the switches only
    assert httpx.get(f"http://127.0.0.1:{port}/health").json()["release"] == "2"
    backout("stop", "--yes", *cfg)
