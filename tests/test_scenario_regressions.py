"""Minimal sequences the random operator scenarios (tests/test_scenarios.py) and the fault sweep
(tests/test_fault_sweep.py) found breaking an invariant, kept as plain regression tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scenario_model import Deployment, burst, episode_ids

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
