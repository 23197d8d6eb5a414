"""Minimal sequences the random operator scenarios (tests/test_scenarios.py) and the fault sweep
(tests/test_fault_sweep.py) found breaking an invariant, kept as plain regression tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scenario_model import Deployment, burst, episode_ids, salvaged_ids

pytestmark = [pytest.mark.slow]


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    """A process deployment of the reference Engine running 2.3.1 with a few acknowledged turns."""
    deployment = Deployment(tmp_path / "d")
    assert deployment.run("switch", "2.3.1", "--yes", "--json").code == 0
    assert burst(deployment.url, "before", 3)
    yield deployment
    deployment.close()


def _status(dep: Deployment) -> dict:
    ran = dep.run("status", "--json")
    assert ran.code == 0, ran.brief()
    doc = ran.doc()
    assert isinstance(doc, dict)
    return doc


def test_switch_back_below_a_forward_only_migration_is_refused_and_production_keeps_serving(dep: Deployment) -> None:
    """Found by the scenarios: switch 2.3.1 -> switch 2.4.0 -> switch 2.3.1 exits 1 with nothing serving."""
    assert dep.run("switch", "2.4.0", "--yes", "--json").code == 0  # migrates the brain forward (head 4)
    acked = set(burst(dep.url, "on-2.4.0", 3))
    ran = dep.run("switch", "2.3.1", "--yes", "--json")  # 2.3.1 cannot read a head-4 brain
    state = _status(dep)
    assert ran.code == 3 and "nothing was stopped" in ran.err, ran.brief()
    assert state["running"]["version"] == "2.4.0" and state["health"]["ok"]
    assert acked <= episode_ids(dep.brain)


@pytest.mark.parametrize("build", ["2.4.0-crash", "2.4.0-health"])
def test_switch_to_a_build_that_never_becomes_healthy_is_refused_and_production_keeps_serving(
        dep: Deployment, build: str) -> None:
    """Found by the scenarios: switch 2.3.1 -> switch 2.4.0-crash exits 1 after draining 2.3.1; nothing serves."""
    ran = dep.run("switch", build, "--yes", "--json")
    state = _status(dep)
    assert ran.code == 3 and "nothing was stopped" in ran.err, ran.brief()
    assert state["running"]["version"] == "2.3.1" and state["health"]["ok"]


@pytest.mark.parametrize("point", ["after:restore", "after:postmortem"])
def test_an_abandoned_rollback_names_where_the_bad_windows_turns_went(dep: Deployment, point: str) -> None:
    """Found by the scenarios: killed after its restore, then abandoned, a rollback hides the bad window's turns."""
    # The killed run printed nothing and `--abandon` (as `status` offers it) names neither the quarantine
    # nor the salvage bundle; `status` and `history` do not either (the rollback is not in the history).
    assert dep.run("upgrade", "2.4.0", "--yes", "--json", "--watch", "0").code == 0
    bad_window = set(burst(dep.url, "bad-window", 4))
    assert bad_window
    assert dep.run("rollback", "--yes", "--json", fault=point).code == -9
    pending = _status(dep)["pending"]
    assert [p["kind"] for p in pending] == ["rollback"] and pending[0]["abandon"]
    abandoned = dep.run_printed(pending[0]["abandon"])
    assert abandoned.code == 0, abandoned.brief()
    told = abandoned.out + abandoned.err + dep.run("status").out + dep.run("history").out
    missing = bad_window - episode_ids(dep.brain)
    named = [q for q in dep.quarantines() if q.name in told]
    named += [s.parent for s in dep.salvage_folders() if s.parent.name in told]
    kept = set().union(*(episode_ids(b, copy=True) for q in named for b in q.glob("*.sqlite")),
                       *(salvaged_ids(s / "salvage") for s in named if (s / "salvage").is_dir()))
    assert missing <= kept, f"{len(missing - kept)} acknowledged turns only in a quarantine nobody names: {told}"


def test_a_snapshot_restore_over_an_interrupted_rollback_is_refused(dep: Deployment) -> None:
    """Found by the scenarios: with a rollback killed after its journal, `snapshot restore` still runs."""
    # Then two operations are pending and the rollback's `--resume`, as `status` prints it first,
    # refuses ("an interrupted restore ... is pending; finish it first").
    assert dep.run("upgrade", "2.4.0", "--yes", "--json", "--watch", "0").code == 0
    assert dep.run("stop", "--yes", "--json").code == 0
    made = dep.run("snapshot", "create", "--json")
    assert made.code == 0, made.brief()
    assert dep.run("rollback", "--yes", "--json", fault="before:drain").code == -9
    assert [p["kind"] for p in _status(dep)["pending"]] == ["rollback"]
    restore = dep.run("snapshot", "restore", made.doc()["id"], "--yes", "--json")
    assert restore.code == 3 and "rollback" in restore.err, restore.brief()
    pending = _status(dep)["pending"]
    assert [p["kind"] for p in pending] == ["rollback"]
    resumed = dep.run_printed(pending[0]["finish"])
    assert resumed.code == 0, resumed.brief()


@pytest.mark.parametrize("stopped", [False, True])
def test_a_rollback_to_the_version_it_would_leave_is_refused(dep: Deployment, stopped: bool) -> None:
    """Found by the soak: upgrade 2.4.1, stop, `rollback --to 2.4.1` rolled back "from 2.4.1 to 2.4.1": it froze
    2.4.1 as bad and started it on the brain all the same."""
    assert dep.run("upgrade", "2.4.1", "--yes", "--json", "--watch", "0").code == 0
    if stopped:
        assert dep.run("stop", "--yes", "--json").code == 0
    ran = dep.run("rollback", "--yes", "--json", "--to", "2.4.1")
    assert ran.code == 3 and "backout switch 2.4.1" in ran.err, ran.brief()
    state = _status(dep)
    assert "2.4.1" not in state["frozen"]
    assert state["running"]["version"] == "2.4.1" and state["running"]["running"] is (not stopped)
