"""Restore-point retention: every guarded upgrade pins its restore point; `snapshot prune` unpins those older than
the restore points of the last `keep_restore_points` promoted upgrades (then prunes by the usual rules), says so
in --dry-run, and never unpins the current restore point, one an interrupted rollback names, one of an upgrade
still in its watch window, or one a person pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from rollback_setup import ENV, SHORT_WATCH as WATCH, init_process, upgrade_then_ctrl_c


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = init_process(tmp_path, WATCH)
    text = config.read_text()
    assert "keep_last = 10 " in text
    assert "keep_restore_points = 3 " in text  # what init writes
    config.write_text(text.replace("keep_last = 10 ", "keep_last = 1 ").replace("keep_restore_points = 3 ",
                                                                                "keep_restore_points = 1 "))
    assert backout_json("switch", "2.3.0", "--yes", "--config", str(config), env=ENV)["healthy"]
    yield config
    backout("stop", "--yes", "--config", str(config), env=ENV)


def _cfg(config: Path) -> list[str]:
    return ["--config", str(config)]


def _upgrade(config: Path, version: str) -> str:
    """A guarded upgrade, watched to its promotion; its restore point's snapshot."""
    out = backout("upgrade", version, "--yes", "--json", *_cfg(config), env=ENV, timeout=300)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and events[-2]["event"] == "promoted", out.stderr[-2000:]
    return str(next(e for e in events if e["event"] == "upgraded")["snapshot_final"]["id"])


def _pinned(config: Path, snapshot_id: str) -> bool:
    return bool(backout_json("snapshot", "show", snapshot_id, *_cfg(config))["pinned"])


def test_prune_unpins_restore_points_older_than_the_last_promoted_upgrades(config: Path) -> None:
    cfg = _cfg(config)
    old = _upgrade(config, "2.3.1")  # restore point: 2.3.0
    current = _upgrade(config, "2.4.0")  # restore point: 2.3.1
    assert _pinned(config, old) and _pinned(config, current)
    online = [s["id"] for s in backout_json("snapshot", "list", *cfg)["snapshots"] if "(online)" in s["label"]]
    assert len(online) == 2  # each upgrade's early snapshot, never pinned

    # --dry-run: which restore point it would unpin and why, then what the usual rules do; nothing changes.
    out = backout("snapshot", "prune", "--dry-run", *cfg)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    unpin = [line for line in lines if line.startswith("unpin ")]
    assert len(unpin) == 1 and unpin[0].startswith(f"unpin   {old}  (restore point of the upgrade 2.3.0 -> 2.3.1 at ")
    assert unpin[0].endswith(": older than the restore points of the last 1 promoted upgrades "
                             "(keep_restore_points = 1))")
    assert f"keep    {current}  (restore point)" in lines
    assert f"delete  {old}" in lines and lines[-1] == "nothing unpinned or deleted (dry run)"
    plan = backout_json("snapshot", "prune", "--dry-run", *cfg)
    assert list(plan["unpin"]) == [old] and plan["dry_run"]
    assert sorted(plan["delete"]) == sorted([old, *online])
    assert _pinned(config, old)  # a dry run

    # More restore points kept: none to unpin, and each kept one says why.
    plan = backout_json("snapshot", "prune", "--dry-run", "--keep-restore-points", "2", *cfg)
    assert plan["unpin"] == {} and old not in plan["delete"]
    assert plan["keep"][old].startswith("restore point of the upgrade 2.3.0 -> 2.3.1 at ")
    assert plan["keep"][old].endswith(", one of the last 2 promoted")

    # A rollback interrupted before its first step names the old restore point: never unpinned while it does.
    out = backout("rollback", "--to", "2.3.0", "--snapshot", old[:20], "--yes", "--json", *cfg,
                  env={**ENV, "BACKOUT_FAULT_AT": "before:announce"}, timeout=240)
    assert out.returncode == -9, out.stderr
    plan = backout_json("snapshot", "prune", "--dry-run", *cfg)
    assert plan["unpin"] == {} and plan["keep"][old] == "needed by the interrupted rollback"
    assert backout("rollback", "--abandon", "--yes", *cfg, env=ENV).returncode == 0

    # The prune itself: unpins the old restore point (kept here, among the last 10), says so.
    out = backout("snapshot", "prune", "--keep-last", "10", "--yes", *cfg)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "unpinned 1 old restore point(s); deleted 0 snapshot(s) and 0 leftover file(s)"
    assert not _pinned(config, old) and _pinned(config, current)

    # Pinned by a person: retention leaves it pinned, and prune keeps it.
    assert backout("snapshot", "pin", old[:20], *cfg).returncode == 0
    plan = backout_json("snapshot", "prune", "--dry-run", *cfg)
    assert plan["unpin"] == {} and plan["keep"][old].endswith(", pinned with `backout snapshot pin`")
    out = backout("snapshot", "prune", "--yes", "--json", *cfg)
    assert out.returncode == 0, out.stderr
    listed = [s["id"] for s in backout_json("snapshot", "list", *cfg)["snapshots"]]
    assert listed == [current, old]  # keep_last = 1: the online snapshots went

    # An upgrade stopped in its watch window is not promoted: its restore point and the last promoted one stay.
    seen, _ = upgrade_then_ctrl_c(config, "2.4.1")
    watching = next(json.loads(line) for line in seen if '"event": "upgraded"' in line)["snapshot_final"]["id"]
    plan = backout_json("snapshot", "prune", "--dry-run", *cfg)
    assert plan["unpin"] == {}
    assert plan["keep"][watching] == "needed by the upgrade's watch window"
    assert plan["keep"][current].startswith("restore point of the upgrade 2.3.1 -> 2.4.0 at ")
    assert plan["keep"][current].endswith(", one of the last 1 promoted")


@pytest.mark.parametrize("value, said", [
    ("0", "deployments.engine.snapshots.keep_restore_points: must be at least 1 (it is 0)"),
    ('"three"', "deployments.engine.snapshots.keep_restore_points: 'three' is not a whole number"),
])
def test_keep_restore_points_is_checked_like_every_setting(tmp_path: Path, value: str, said: str) -> None:
    config = tmp_path / "backout.toml"
    config.write_text(f'[deployments.engine]\nbrain = "brain.sqlite"\n\n[deployments.engine.snapshots]\n'
                      f"keep_restore_points = {value}\n")
    out = backout("snapshot", "prune", "--dry-run", "--config", str(config))
    assert out.returncode == 2 and f"backout.toml:5: {said}" in out.stderr, out.stderr
