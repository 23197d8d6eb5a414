"""`backout upgrade` to each broken 2.4.x build under `engine traffic`: detected in the watch window
and rolled back automatically with the right layer (all 2.4.x builds apply a forward-only
migration, so 2.3.1 cannot read their brain: the brain goes back too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from rollback_setup import ENV, live_deployment, rows_of, traffic, url_of

pytestmark = [pytest.mark.slow, pytest.mark.rehearsal]


def _upgrade_under_traffic(folder: Path, build: str, watch: str = "90s",
                           *extra: str) -> tuple[Path, int, list[dict]]:
    config = live_deployment(folder, watch)
    cfg = ["--config", str(config)]
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
    traffic(url_of(config), 12).join()  # the baseline the upgrade records
    load = traffic(url_of(config), 60)
    out = backout("upgrade", build, "--yes", "--json", *extra, *cfg, env=ENV, timeout=400)
    load.join(90)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert events, out.stderr
    return config, out.returncode, events


# The errors build also fails eval cases, and evals are known right after the start: either is right.
# The health and crash builds never become healthy: the proof before the stop refuses them (a trial boot);
# forced past it, the upgrade rolls back before watching.
@pytest.mark.parametrize("build, triggers", [
    ("2.4.0-errors", {"errors", "evals"}), ("2.4.0-latency", {"latency"}), ("2.4.0-eval", {"evals"}),
    ("2.4.0-health", None), ("2.4.0-crash", None),
])
def test_broken_build_is_rolled_back_with_the_right_layer(tmp_path: Path, build: str, triggers: set[str] | None) -> None:
    config, code, events = _upgrade_under_traffic(tmp_path, build, "90s", *(["--force"] if triggers is None else []))
    cfg = ["--config", str(config)]
    try:
        assert code == 1, events[-1]
        if triggers is None:
            failed = next(e for e in events if e["event"] == "upgrade-failed")
            assert "did not become healthy" in failed["why"]
            rollback = failed["rollback"]
        else:
            decided = next(e for e in events if e["event"] == "rollback")
            assert set(decided["verdict"]["triggers"]) & triggers, decided["verdict"]
            rollback = next(e for e in events if e["event"] == "result")["rollback"]
        assert rollback["outcome"] == "rolled-back" and rollback["to_version"] == "2.3.1"
        quarantine = next((config.parent / ".backout" / "quarantine").iterdir()) / "brain.sqlite"
        head = rows_of(quarantine, "SELECT max(CAST(id AS INTEGER)) FROM schema_migrations")[0][0]
        assert rollback["layer"] == "brain" and head == 4, rollback["layer_reason"]  # forward-only: brain too
        incident = Path(rollback["incident_folder"])
        assert (incident / "diagnostics.tar.gz").exists() and (incident / "postmortem.md").exists()
        status = backout_json("status", *cfg, env=ENV)
        assert status["running"]["version"] == "2.3.1" and status["health"]["ok"] and build in status["frozen"]
    finally:
        backout("stop", "--yes", *cfg, env=ENV)


def test_good_upgrade_under_traffic_is_promoted(tmp_path: Path) -> None:
    config, code, events = _upgrade_under_traffic(tmp_path, "2.4.0", watch="40s")
    try:
        assert code == 0 and events[-1]["outcome"] == "promoted", events[-3:]
        checks = [e for e in events if e["event"] == "check"]
        assert checks and all(e["verdict"]["decision"] != "roll-back" for e in checks)
    finally:
        backout("stop", "--yes", "--config", str(config), env=ENV)
