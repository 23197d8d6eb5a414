"""The version ledger read from real history files: what each kind of line judges, and the rollback
target it gives (the CLI tests in test_invariants_ops.py run the same rules through real upgrades)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backout.config import Target
from backout.freeze import freeze_version
from backout.history import Change, History, RestorePoint, save_restore_point
from backout.ledger import Ledger, NoRollback, Running


def _target(tmp_path: Path) -> Target:
    return Target(deployment="engine", brain=tmp_path / "brain.sqlite", snapshot_dir=tmp_path / "snaps",
                  state_dir=tmp_path / ".backout")


def _line(target: Target, kind: str, frm: str | None, to: str | None, outcome: str = "ok", **more: object) -> None:
    History(target.state_dir).append(Change(deployment=target.deployment, kind=kind, from_version=frm,
                                            to_version=to, outcome=outcome, **more))  # type: ignore[arg-type]


def test_each_kind_of_line_judges_what_it_should(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "manual", None, "2.3.0")
    _line(t, "manual", "2.3.0", "2.3.1")
    _line(t, "upgrade", "2.3.1", "2.4.0")
    _line(t, "promote", "2.3.1", "2.4.0")
    _line(t, "upgrade", "2.4.0", "2.4.1", outcome="failed", detail="disk full at the online snapshot")
    _line(t, "upgrade", "2.4.0", "2.4.0-crash", outcome="failed", health={"healthy": False}, detail="crashed")
    _line(t, "rollback", "2.4.0-errors", "2.4.0", reason="error rate 30%")
    _line(t, "verdict", None, "2.3.0", outcome="hold")
    _line(t, "promote", "2.4.0", "2.4.2", reason="last verdict: inconclusive")  # not enough evidence: no vouching
    ledger = Ledger(t)
    assert ledger.standing("2.4.2").standing == "unknown"
    standing = {v: ledger.standing(v).standing for v in ("2.3.0", "2.3.1", "2.4.0", "2.4.1", "2.4.0-crash",
                                                         "2.4.0-errors", "9.9.9")}
    assert standing == {"2.3.0": "good", "2.3.1": "good", "2.4.0": "good", "2.4.1": "unknown",  # refused before the stop
                        "2.4.0-crash": "bad", "2.4.0-errors": "bad", "9.9.9": "unknown"}


def test_unfreeze_clears_a_rollback_and_freezing_wins_over_good(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "upgrade", "2.3.1", "2.4.0")
    _line(t, "rollback", "2.4.0", "2.3.1")
    assert Ledger(t).standing("2.4.0").standing == "bad"
    _line(t, "unfreeze", "2.4.0", None, reason="fixed")
    assert Ledger(t).standing("2.4.0").standing == "unknown"
    freeze_version(t, "2.3.1", "found a bug", source="manual")
    judged = Ledger(t).standing("2.3.1")
    assert judged.standing == "bad" and "found a bug" in judged.why


def test_an_upgrade_vouches_for_the_version_it_left_only_when_that_was_healthy(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "upgrade", "2.3.1", "2.4.0", forced=True, from_healthy=False)
    _line(t, "upgrade", "2.3.0", "2.4.0", forced=True, from_healthy=True)  # forced past the target's proof only
    assert Ledger(t).standing("2.3.1").standing == "unknown" and Ledger(t).standing("2.3.0").standing == "good"


def test_rollback_target_is_the_newest_good_version_before_the_running_one(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "upgrade", "2.3.1", "2.4.0")
    _line(t, "promote", "2.3.1", "2.4.0")
    _line(t, "manual", "2.4.0", "2.4.1")
    save_restore_point(t.state_dir, RestorePoint("engine", "2.3.1", "snap-1", {}, ""))
    chosen = Ledger(t).rollback_target(Running("2.4.1", True))
    assert chosen.version == "2.4.0" and "judged good" in chosen.source and chosen.snapshot_id is None
    chosen = Ledger(t).rollback_target(Running("2.4.0", True))  # as if 2.4.1 had not happened
    assert chosen.version == "2.3.1" and chosen.snapshot_id == "snap-1"


def test_no_rollback_onto_a_bad_version_nor_from_the_restore_point(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "upgrade", "2.3.1", "2.4.0-errors")
    save_restore_point(t.state_dir, RestorePoint("engine", "2.3.1", "snap-1", {}, ""))
    _line(t, "rollback", "2.4.0-errors", "2.3.1")
    with pytest.raises(NoRollback, match="2.3.1 is the restore point and is running; nothing to roll back"):
        Ledger(t).rollback_target(Running("2.3.1", True))
    with pytest.raises(NoRollback, match="judged bad"):
        Ledger(t).rollback_target(Running("2.3.1", True), asked="2.4.0-errors")
    _line(t, "manual", "2.3.1", "2.3.0")  # by hand: 2.3.1 is still the newest good version before it
    assert Ledger(t).rollback_target(Running("2.3.0", True)).version == "2.3.1"


def test_only_unknown_versions_before_means_naming_one(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "manual", None, "2.3.1")
    _line(t, "manual", "2.3.1", "2.4.0")
    with pytest.raises(NoRollback, match="2.3.1 ran before it but was never promoted .*--to 2.3.1"):
        Ledger(t).rollback_target(Running("2.4.0", True))


def test_an_upgrade_undone_by_a_rollback_reads_rolled_back(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "upgrade", "2.3.1", "2.4.0")
    _line(t, "promote", "2.3.1", "2.4.0")
    _line(t, "upgrade", "2.4.0", "2.4.0-errors")
    _line(t, "rollback", "2.4.0-errors", "2.4.0")
    outcomes = [(e["kind"], e["to_version"], e["outcome"]) for e in Ledger(t).annotated()]
    assert outcomes == [("upgrade", "2.4.0", "ok"), ("promote", "2.4.0", "ok"),
                        ("upgrade", "2.4.0-errors", "rolled-back"), ("rollback", "2.4.0", "ok")]


def test_served_windows_end_where_the_next_change_began(tmp_path: Path) -> None:
    t = _target(tmp_path)
    _line(t, "manual", None, "2.4.0-errors", at="2026-01-01T00:00:10+00:00")
    _line(t, "manual", "2.4.0-errors", "2.4.0", at="2026-01-01T00:01:10+00:00", duration_s=5.0)
    windows = Ledger(t).served_windows(now=0)
    assert [(w.version, w.end - w.start if w.end else None) for w in windows] == [("2.4.0-errors", 55.0),
                                                                                 ("2.4.0", None)]
