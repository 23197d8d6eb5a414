"""The rollback verdict on the labelled scenarios in tests/scenarios/, and the statistics under it.

scipy is not installed in this venv: the statistics are checked against textbook values and
against exact computations done here independently (fractions, full permutation enumeration)."""

from __future__ import annotations

import itertools
from dataclasses import replace
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from backout.signals.decide import decide
from backout.signals.model import HealthSample, Observations, Policy, RequestSample
from backout.signals.scenario import ScenarioError, load_scenario, record_scenario, scenario_from_dict
from backout.signals.stats import binomial_greater, fisher_greater, mann_whitney_greater, percentile, windows

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.json"))
SIGNALS = ["health", "errors", "latency", "evals", "reports"]
# What the reason line says about each signal.
WORDS = {"health": "health", "errors": "error", "latency": "latency", "evals": "eval", "reports": "report"}


def test_the_suite_covers_the_runbook() -> None:
    names = {p.stem for p in SCENARIOS}
    required = {
        "health-db-error", "health-asset-directory", "health-llm-provider-only", "health-blip-recovered",
        "errors-sustained", "errors-one-window-then-recovered", "errors-poisoned-task-only",
        "errors-poisoned-plus-real-regression", "latency-sustained", "latency-blip",
        "latency-announced-in-changelog",
        "eval-regression", "eval-announced-change", "eval-already-failing-in-baseline", "customer-report",
        "sparse-data", "healthy-good-release", "mixed-latency-bad-errors-fine-sustained",
        "mixed-latency-bad-errors-fine-tie-hold", "errors-improving",
    }
    assert required <= names, sorted(required - names)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_gets_its_label(path: Path) -> None:
    scenario = load_scenario(path)
    verdict = decide(scenario.observations, scenario.policy)
    assert verdict.decision == scenario.label, verdict.to_dict()
    assert [row.signal for row in verdict.evidence] == SIGNALS
    assert verdict.reason and "\n" not in verdict.reason
    if scenario.label == "roll-back":
        assert scenario.triggers, "a roll-back scenario names its trigger"
        assert set(scenario.triggers) <= set(verdict.triggers), verdict.to_dict()
        assert all(WORDS[t] in verdict.reason for t in verdict.triggers), verdict.reason
        assert all(row.verdict == "trigger" for row in verdict.evidence if row.signal in verdict.triggers)
    else:
        assert verdict.triggers == []
        assert not any(row.verdict == "trigger" for row in verdict.evidence), verdict.to_dict()
        assert verdict.reason.startswith(scenario.label + ":")
    if scenario.label == "inconclusive":
        assert verdict.needs_seconds is not None and verdict.needs_seconds > 0
    for expected in scenario.not_counted:
        assert any(expected in note for note in verdict.not_counted), (expected, verdict.not_counted)
    json.dumps(verdict.to_dict())


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_recorded_scenario_gives_the_same_verdict(path: Path, tmp_path: Path) -> None:
    scenario = load_scenario(path)
    before = decide(scenario.observations, scenario.policy)
    out = record_scenario(scenario.observations, scenario.label, tmp_path / path.name, policy=scenario.policy,
                          triggers=scenario.triggers, description=scenario.description)
    again = load_scenario(out)
    assert again.label == scenario.label and again.triggers == scenario.triggers
    assert again.policy == scenario.policy
    assert decide(again.observations, again.policy).to_dict() == before.to_dict()


def test_recording_keeps_epoch_times_relative_to_the_switch(tmp_path: Path) -> None:
    scenario = load_scenario(next(p for p in SCENARIOS if p.stem == "errors-sustained"))
    obs = scenario.observations
    epoch = 1_760_000_000.0
    shifted = Observations(
        now=obs.now + epoch, switched_at=epoch,
        baseline_requests=[RequestSample(r.ts + epoch, r.status, r.duration_ms, r.task_id, r.path, r.code)
                           for r in obs.baseline_requests],
        requests=[RequestSample(r.ts + epoch, r.status, r.duration_ms, r.task_id, r.path, r.code)
                  for r in obs.requests],
        health=[HealthSample(h.ts + epoch, h.ok, h.status_code, h.failing, h.reason) for h in obs.health])
    path = record_scenario(shifted, "roll-back", tmp_path / "live.json", triggers=["errors"])
    data = json.loads(path.read_text())
    assert data["switched_at"] == epoch and data["now"] == pytest.approx(obs.now)  # the suite's switch is t=0
    assert data["current"]["requests"][0][0] < 1000  # relative
    loaded = load_scenario(path)
    assert loaded.observations.switched_at == epoch
    assert decide(loaded.observations).decision == "roll-back"
    # one request per line: diffable
    assert sum(1 for line in path.read_text().splitlines() if line.strip().startswith("[")) >= len(obs.requests)


def test_scenario_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label"):
        scenario_from_dict({"label": "maybe"})
    with pytest.raises(ValueError, match="unknown key.*tie_braker"):
        scenario_from_dict({"label": "hold", "policy": {"tie_braker": "hold"}})
    bad = tmp_path / "bad.json"
    bad.write_text('{"label": "hold", "current": {"requests": {"generate": {"seconds": 10, "rsp": 2}}}}')
    with pytest.raises(ScenarioError, match="bad.json.*rsp"):
        load_scenario(bad)


def test_generator_is_deterministic_and_exact() -> None:
    data = {"label": "hold", "current": {"requests": {"generate": {
        "rps": 2, "seed": 3, "phases": [{"seconds": 60, "error_rate": 0.25}, {"seconds": 60}]}}}}
    a, b = scenario_from_dict(data).observations, scenario_from_dict(data).observations
    assert a.requests == b.requests and len(a.requests) == 240 and a.now == 120
    assert sum(r.error for r in a.requests if r.ts < 60) == 30
    assert sum(r.error for r in a.requests if r.ts >= 60) == 0


# ---------------------------------------------------------------- a few rules, directly


def _obs(health: list[HealthSample], now: float) -> Observations:
    return Observations(now=now, switched_at=0.0, health=health)


def test_health_needs_both_count_and_duration() -> None:
    policy = Policy(health_failures=3, health_seconds=180)
    many_quick = [HealthSample(t, False, 503, ("database",)) for t in (10, 20, 30, 40, 50)]
    verdict = decide(_obs(many_quick, 50), policy)
    assert verdict.decision == "inconclusive" and verdict.needs_seconds == 140  # still failing: wait
    few_long = [HealthSample(0, False, 503, ("database",)), HealthSample(200, False, 503, ("database",))]
    assert "health" not in decide(_obs(few_long, 200), policy).triggers
    three_long = few_long[:1] + [HealthSample(100, False, 503, ("database",))] + few_long[1:]
    verdict = decide(_obs(three_long, 200), policy)
    assert verdict.triggers == ["health"]
    assert verdict.reason == "health: database in error for 3.3 min (3 failed probes)"


def test_provider_and_release_failing_together_count() -> None:
    probes = [HealthSample(t, False, 503, ("database", "llm_provider")) for t in range(0, 240, 30)]
    verdict = decide(_obs(probes, 210))
    assert verdict.triggers == ["health"] and "database, llm_provider in error" in verdict.reason


def test_no_answer_is_a_failure() -> None:
    probes = [HealthSample(t, False, None, (), "ConnectError") for t in range(0, 240, 30)]
    verdict = decide(_obs(probes, 210))
    assert verdict.triggers == ["health"] and "no answer" in verdict.reason


def test_tie_breaker_inconclusive_waits() -> None:
    scenario = load_scenario(next(p for p in SCENARIOS if p.stem == "mixed-latency-bad-errors-fine-sustained"))
    verdict = decide(scenario.observations, replace(scenario.policy, tie_breaker="inconclusive"))
    assert verdict.decision == "inconclusive" and verdict.needs_seconds == 60


# ---------------------------------------------------------------- statistics


def _binomial_exact(k: int, n: int, p: Fraction) -> Fraction:
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)), Fraction(0))


def _fisher_exact(a: int, n: int, b: int, m: int) -> Fraction:
    failed, total = a + b, n + m
    return sum((Fraction(math.comb(failed, x) * math.comb(total - failed, n - x), math.comb(total, n))
                for x in range(a, min(failed, n) + 1)), Fraction(0))


def test_binomial_textbook_and_exact() -> None:
    assert binomial_greater(8, 10, 0.5) == pytest.approx(56 / 1024, rel=1e-12)  # 45 + 10 + 1 of 2^10
    assert binomial_greater(0, 10, 0.3) == 1.0 and binomial_greater(11, 10, 0.3) == 0.0
    assert binomial_greater(1, 10, 0.0) == 0.0
    for k, n, p in [(3, 20, "1/10"), (12, 200, "1/50"), (40, 300, "1/250"), (1, 1000, "1/1000")]:
        exact = _binomial_exact(k, n, Fraction(p))
        assert binomial_greater(k, n, float(Fraction(p))) == pytest.approx(float(exact), rel=1e-9)


def test_fisher_textbook_and_exact() -> None:
    # Fisher's lady tasting tea: 3 of 4 cups right, one-sided p = 17/70.
    assert fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70, rel=1e-12)
    cases = [(5, 50, 1, 100), (12, 120, 4, 1000), (0, 30, 2, 300), (30, 40, 1, 40), (2, 300, 4, 1000)]
    for a, n, b, m in cases:
        assert fisher_greater(a, n, b, m) == pytest.approx(float(_fisher_exact(a, n, b, m)), rel=1e-9)
    assert fisher_greater(0, 100, 0, 100) == 1.0  # no errors anywhere: no evidence
    assert fisher_greater(86, 720, 4, 1000) < 1e-20
    with pytest.raises(ValueError):
        fisher_greater(5, 4, 0, 10)


def test_mann_whitney_textbook() -> None:
    # scipy docs: mannwhitneyu(males, females, method="asymptotic") gives two-sided p = 0.11134688653314041.
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    assert mann_whitney_greater(males, females) == pytest.approx(0.11134688653314041 / 2, rel=1e-9)
    assert mann_whitney_greater([5, 5, 5], [5, 5]) == 1.0  # all tied
    assert mann_whitney_greater([1, 2, 3], [10, 11, 12]) > 0.9
    with pytest.raises(ValueError):
        mann_whitney_greater([], [1.0])


def test_mann_whitney_with_ties_is_close_to_the_exact_permutation_test() -> None:
    x = [3, 5, 5, 7, 8, 8, 9, 12]
    y = [1, 2, 3, 3, 5, 6, 7, 8]
    pooled = sorted(x + y)
    midrank = {v: sum(i + 1 for i, w in enumerate(pooled) if w == v) / pooled.count(v) for v in pooled}
    ranks = [midrank[v] for v in x + y]
    observed = sum(midrank[v] for v in x)
    combos = list(itertools.combinations(range(len(ranks)), len(x)))
    exact = sum(1 for c in combos if sum(ranks[i] for i in c) >= observed - 1e-9) / len(combos)
    assert mann_whitney_greater(x, y) == pytest.approx(exact, abs=0.01)


def test_percentile_linear_like_numpy() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert percentile([15, 20, 35, 40, 50], 40) == pytest.approx(29.0)
    assert percentile([7.0], 95) == 7.0
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3
    with pytest.raises(ValueError):
        percentile([], 50)


def test_windows_split_by_time() -> None:
    samples = [HealthSample(float(t), True) for t in range(10)]
    split = windows(samples, 0.0, 3.0)
    assert [[s.ts for s in w] for w in split] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    split = windows(samples, 2.0, 4.0, end=14.0)
    assert [[s.ts for s in w] for w in split] == [[2, 3, 4, 5], [6, 7, 8, 9], []]
    assert windows([], 0.0, 60.0, end=0.0) == []


def _scenario_verdict(name: str):  # type: ignore[no-untyped-def]
    scenario = load_scenario(Path(__file__).parent / "scenarios" / f"{name}.json")
    return decide(scenario.observations, scenario.policy)


def _row(verdict, signal: str):  # type: ignore[no-untyped-def]
    return next(row for row in verdict.evidence if row.signal == signal)


def test_a_row_that_waits_says_why_not_too_little_data() -> None:
    # 20% of the newest window against 0.4%: plenty of data, one bad window of the two needed
    assert _row(_scenario_verdict("errors-just-started"), "errors").verdict == "not sustained yet (1 of 2 windows)"
    assert _row(_scenario_verdict("errors-improving"), "errors").verdict == "improving"
    assert _row(_scenario_verdict("sparse-data"), "errors").verdict == "too little data"


def test_a_trigger_on_falling_windows_says_improving_too_slowly() -> None:
    scenario = load_scenario(Path(__file__).parent / "scenarios" / "errors-sustained.json")
    obs = scenario.observations
    # the newest minute keeps two errors in three: 12% falls to 7.5%, far from halving the excess
    last = [r for r in obs.requests if r.ts > obs.now - 60 and r.error]
    eased = {id(r) for r in last[::3]}
    requests = [replace(r, status=200) if id(r) in eased else r for r in obs.requests]
    verdict = decide(replace(obs, requests=requests), scenario.policy)
    assert verdict.decision == "roll-back", verdict.reason
    assert "improving too slowly (12% → 7.5%)" in verdict.reason, verdict.reason
    steady = _scenario_verdict("errors-late-onset")
    assert steady.decision == "roll-back" and steady.reason.endswith("not improving")
    assert "→" not in _scenario_verdict("errors-sustained").reason  # 12% → 12% is not a fall
