"""Trial boots a killed backout left behind are stopped and removed before the next one."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from backout.config import resolve_target
from backout.history import deployment_state
from backout.runtime.trial import TrialResult, cached_trial, clean_stale_trials, remember_trial
from rollback_setup import init_process


def test_a_stale_trial_is_stopped_and_removed(tmp_path: Path) -> None:
    target = resolve_target(init_process(tmp_path))
    folder = deployment_state(target.state_dir, target.deployment) / "trial-deadbeef"
    (folder / "runtime").mkdir(parents=True)
    (folder / "brain.sqlite").write_bytes(b"copy")
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (folder / "runtime" / "service.pid.json").write_text(json.dumps({"pid": orphan.pid, "pgid": orphan.pid}))
    assert clean_stale_trials(target) == ["trial-deadbeef"]
    deadline = time.monotonic() + 5
    while orphan.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orphan.returncode is not None and not folder.exists()


def _deployment(folder: Path, profile: str, command: str = "serve --release {version} --db {brain} --port {port}"
                ) -> Path:
    config = folder / "backout.toml"
    config.write_text(f"""\
[deployments.app]
brain = "app.sqlite"
health_url = "http://127.0.0.1:8000/health"
runtime = "process"

[deployments.app.process]
command = "{command}"
port = 8000
{profile}""")
    return config


def test_a_remembered_trial_is_not_reused_once_the_profile_asks_for_other_smoke_requests(tmp_path: Path) -> None:
    """A trial that passed with read-only smoke requests says nothing about writes: after the operator adds a
    writing smoke request (as a rollback's layer reason advises), the rollback must run the trial again rather
    than take the remembered pass as proof that the writes work."""
    reads = '[deployments.app.profile]\nname = "django"\n[[deployments.app.profile.smoke]]\npath = "/items"\n' \
            'tables = ["items"]\n'
    config = _deployment(tmp_path, reads)
    target = resolve_target(config)
    passed = TrialResult(True, "healthy and 1 smoke request(s) passed", 1.0, "process on port 1",
                         smoke={"ok": True, "detail": "1 request(s) as expected", "requests": []})
    remember_trial(target, "2.0", "head:abc", passed)
    assert cached_trial(resolve_target(config), "2.0", "head:abc") is not None  # same settings: reused

    config.write_text(config.read_text() + '[[deployments.app.profile.smoke]]\nmethod = "POST"\npath = "/items"\n'
                      'body = { name = "trial" }\nexpect_status = [201]\ntables = ["items"]\n')
    assert cached_trial(resolve_target(config), "2.0", "head:abc") is None

    _deployment(tmp_path, reads.replace("/items", "/other"))
    assert cached_trial(resolve_target(config), "2.0", "head:abc") is None  # another read is another trial
    _deployment(tmp_path, reads, command="serve --release {version} --db {brain} --port {port} --strict")
    assert cached_trial(resolve_target(config), "2.0", "head:abc") is None  # and so is another command
