"""Trial boots a killed backout left behind are stopped and removed before the next one."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from backout.config import resolve_target
from backout.history import deployment_state
from backout.runtime.trial import clean_stale_trials
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
