"""The rollback verdict: one judge per signal (health, errors, latency, evals, reports), then the
runbook's rules to combine them.

Roll back when any signal triggers:
- health: non-ok for at least `health_failures` consecutive probes lasting at least
  `health_seconds`. A probe where `llm_provider` is the only failing subsystem points at the
  provider, not the release: it is reported and not counted.
- errors / latency: significantly (Fisher exact / Mann–Whitney, `alpha`) and practically
  (`error_ratio` and `error_floor`; `latency_ratio` on p95) worse than the baseline, sustained
  and not improving (below).
- evals: a case that passed in the baseline run fails now.
- reports: any customer report.

Sustained and not improving. Time since the switch is cut into windows of `window_seconds`,
aligned so the newest ends now (the partial stretch right after the switch is left out). A window
is *bad* when its own level exceeds the practical thresholds against the baseline and it holds at
least min_requests / sustained_windows samples (windows are widened, in whole multiples of
`window_seconds`, when traffic is too thin to fill them). A metric triggers when the newest
`sustained_windows` windows are all bad, their samples together are significantly worse than
the baseline, and the newest is not clearly improving: its excess over the baseline has not
halved since the window before, or that drop is not significant. So:
- bad windows, then a good newest one: recovered (one bad window is "one outlier window"): hold;
- bad newest window(s), fewer than `sustained_windows`: inconclusive, wait for the next window(s);
- bad and clearly improving (e.g. 30% → 15% → 6%): inconclusive for one more window; once a
  window is back under the thresholds it is "recovered", if not the next check decides again.

Not counted: metrics and eval cases announced in the changelog; errors concentrated (at least
`local_share`) in one task (or, for requests without task ids, one path + error code that
already failed before the upgrade) when, without that task or shape in the baseline and now
alike, the errors do not trigger.

Mixed evidence: when only latency triggers while errors are fine with enough data, and nothing
else triggers, `tie_breaker` decides (default "roll-back", the runbook's).

Latency is measured on successful requests only (failures are the error signal's business)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

from backout.signals.model import (
    EvalRun, EvidenceRow, HealthSample, Observations, Policy, RequestSample, Verdict,
)
from backout.signals.stats import fisher_greater, mann_whitney_greater, percentile, windows

__all__ = [
    "SignalResult", "decide", "judge_errors", "judge_evals", "judge_health", "judge_latency", "judge_reports",
]

State = Literal["trigger", "ok", "not counted", "too little data", "no data"]
PROVIDER = "llm_provider"


@dataclass(frozen=True)
class SignalResult:
    """What one signal says: its evidence row, how it counts, and its part of the reason line."""

    row: EvidenceRow
    state: State
    headline: str
    not_counted: tuple[str, ...] = ()  # evidence held back, with why
    needs_seconds: float | None = None  # too little data: how long until there is enough
    fine: bool = False  # enough data, and it says the release is fine (for the tie-breaker)


# ---------------------------------------------------------------- formatting for people


def _pct(rate: float) -> str:
    value = rate * 100
    return "0%" if value == 0 else f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _p(p: float) -> str:
    if p >= 0.001:
        return f"{p:.2g}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _dur(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes >= 10 or minutes == int(minutes) else f"{minutes:.1f} min"


def _ratio(now: float, base: float) -> str:
    if base <= 0:
        return "×∞" if now > 0 else "×1"
    r = now / base
    return f"×{r:.0f}" if r >= 10 else f"×{r:.2g}"


# ---------------------------------------------------------------- health


def _provider_only(probe: HealthSample) -> bool:
    return not probe.ok and set(probe.failing) == {PROVIDER}


def _runs(probes: Sequence[HealthSample], failing: Callable[[HealthSample], bool]) -> list[list[HealthSample]]:
    """Maximal stretches of consecutive probes for which `failing` holds."""
    runs: list[list[HealthSample]] = []
    current: list[HealthSample] = []
    for probe in probes:
        if failing(probe):
            current.append(probe)
        elif current:
            runs.append(current)
            current = []
    return runs + [current] if current else runs


def _span(run: Sequence[HealthSample]) -> float:
    return run[-1].ts - run[0].ts


def _what_failed(run: Sequence[HealthSample]) -> str:
    subsystems = sorted({name for probe in run for name in probe.failing})
    if subsystems:
        return ", ".join(subsystems) + " in error"
    last = run[-1]
    return "unhealthy (no answer)" if last.status_code is None else f"unhealthy (HTTP {last.status_code})"


def _probe_interval(probes: Sequence[HealthSample], default: float) -> float:
    gaps = sorted(b.ts - a.ts for a, b in zip(probes, probes[1:]) if b.ts > a.ts)
    return gaps[len(gaps) // 2] if gaps else default


def judge_health(obs: Observations, policy: Policy) -> SignalResult:
    """Health probes since the switch: a long enough run of failures triggers, llm_provider alone does not."""
    probes = sorted(obs.health, key=lambda p: p.ts)
    test = f"≥{policy.health_failures} failed probes over ≥{_dur(policy.health_seconds)}"
    if not probes:
        return SignalResult(EvidenceRow("health", "—", "no probes", test, "not counted: no probes"),
                            "no data", "health: no probes")
    notes = _provider_notes(probes)
    release_runs = _runs(probes, lambda p: not p.ok and not _provider_only(p))
    long_runs = [r for r in release_runs
                 if len(r) >= policy.health_failures and _span(r) >= policy.health_seconds]
    ongoing = bool(release_runs) and release_runs[-1][-1] is probes[-1]
    if long_runs:
        run = max(long_runs, key=_span)
        now = f"{_what_failed(run)} {_dur(_span(run))}, {len(run)} probes"
        line = f"health: {_what_failed(run)} for {_dur(_span(run))} ({len(run)} failed probes)"
        line += "" if run is release_runs[-1] and ongoing else ", since recovered"
        return SignalResult(EvidenceRow("health", "—", now, test, "trigger"), "trigger", line, notes)
    if ongoing:
        return _health_pending(release_runs[-1], probes, policy, test, notes)
    if release_runs:
        failed = sum(len(r) for r in release_runs)
        line = f"health: {failed} failed probe(s), each stretch fixed within {_dur(policy.health_seconds)}"
        row = EvidenceRow("health", "—", f"{failed} of {len(probes)} failed, recovered", test, "ok")
        return SignalResult(row, "ok", line, notes + (line,), fine=True)
    if notes:
        row = EvidenceRow("health", "—", f"{PROVIDER} in error", test,
                          "not counted: llm_provider alone points at the provider, not the release")
        return SignalResult(row, "not counted", notes[0], notes, fine=True)
    said = f"{len(probes)} probe{'' if len(probes) == 1 else 's'} ok"
    row = EvidenceRow("health", "—", said, test, "ok")
    return SignalResult(row, "ok", f"health: {said}", fine=True)


def _provider_notes(probes: Sequence[HealthSample]) -> tuple[str, ...]:
    runs = _runs(probes, _provider_only)
    if not runs:
        return ()
    run = max(runs, key=len)
    return (f"health: {PROVIDER} alone in error for {_dur(_span(run))} ({len(run)} probes): "
            f"points at the provider, not the release",)


def _health_pending(run: list[HealthSample], probes: Sequence[HealthSample], policy: Policy, test: str,
                    notes: tuple[str, ...]) -> SignalResult:
    interval = _probe_interval(probes, policy.window_seconds)
    needs = max(policy.health_seconds - _span(run), (policy.health_failures - len(run)) * interval, 1.0)
    line = (f"health: {_what_failed(run)} for {_dur(_span(run))} ({len(run)} failed probes), "
            f"rollback if not fixed within {_dur(policy.health_seconds)}")
    row = EvidenceRow("health", "—", f"{_what_failed(run)} {_dur(_span(run))}, {len(run)} probes", test,
                      "too little data")
    return SignalResult(row, "too little data", line, notes, needs_seconds=math.ceil(needs))


# ---------------------------------------------------------------- errors and latency


@dataclass(frozen=True)
class _Metric:
    """How one request metric is measured, compared and shown."""

    name: str  # the signal: "errors" or "latency"
    label: str  # in the reason line: "error rate", "latency p95"
    select: Callable[[Sequence[RequestSample]], list[RequestSample]]
    level: Callable[[Sequence[RequestSample]], float]
    worse_p: Callable[[Sequence[RequestSample], Sequence[RequestSample]], float]  # p that 1st is worse than 2nd
    practical: Callable[[float, float, Policy], bool]  # (now, baseline): worse enough to matter
    show: Callable[[float], str]
    test: str


def _error_rate(samples: Sequence[RequestSample]) -> float:
    return sum(r.error for r in samples) / len(samples) if samples else 0.0


def _fisher(a: Sequence[RequestSample], b: Sequence[RequestSample]) -> float:
    return fisher_greater(sum(r.error for r in a), len(a), sum(r.error for r in b), len(b))


def _p95(samples: Sequence[RequestSample]) -> float:
    return percentile([r.duration_ms for r in samples if r.duration_ms is not None], 95) if samples else 0.0


def _rank_test(a: Sequence[RequestSample], b: Sequence[RequestSample]) -> float:
    return mann_whitney_greater([r.duration_ms for r in a if r.duration_ms is not None],
                                [r.duration_ms for r in b if r.duration_ms is not None])


ERRORS = _Metric(
    "errors", "error rate", list, _error_rate, _fisher,
    lambda now, base, p: now >= p.error_ratio * base and now >= base + p.error_floor, _pct, "Fisher")
LATENCY = _Metric(
    "latency", "latency p95", lambda rs: [r for r in rs if not r.error and r.duration_ms is not None], _p95, _rank_test,
    lambda now, base, p: now >= p.latency_ratio * base and now > base, _ms, "Mann-Whitney")

Kind = Literal["trigger", "ok", "improving", "pending", "recovered", "no baseline", "too few"]


@dataclass
class _Assessment:
    """A metric compared with its baseline, overall and window by window."""

    kind: Kind
    base_n: int
    now_n: int
    base_level: float = 0.0
    now_level: float = 0.0
    p: float = 1.0
    levels: list[float | None] = field(default_factory=list)  # per window; None: too few samples
    width: float = 0.0
    bad_windows: int = 0  # the trailing bad run (trigger, pending) or all bad ones (recovered)
    recent_level: float = 0.0  # over the trailing bad run
    needs: float | None = None


def _switched_at(obs: Observations) -> float:
    if obs.switched_at is not None:
        return obs.switched_at
    times = [r.ts for r in obs.requests] + [h.ts for h in obs.health]
    return min(times, default=obs.now)


def _rate(samples: Sequence[RequestSample], seconds: float) -> float:
    return len(samples) / seconds if seconds > 0 else 0.0


def _time_until(missing: int, rate: float, fallback: float) -> float:
    return float(math.ceil(missing / rate)) if rate > 0 else fallback


def _window_width(policy: Policy, per_window: int, rate: float) -> float:
    """window_seconds, widened by whole multiples when traffic is too thin to fill a window."""
    if rate <= 0 or per_window / rate <= policy.window_seconds:
        return policy.window_seconds
    return policy.window_seconds * math.ceil(per_window / rate / policy.window_seconds)


def _assess(metric: _Metric, base_all: Sequence[RequestSample], now_all: Sequence[RequestSample],
            obs: Observations, policy: Policy) -> _Assessment:
    """Compare a metric with its baseline: too little data, ok, or what the windows say."""
    base, now = metric.select(base_all), metric.select(now_all)
    elapsed = max(0.0, obs.now - _switched_at(obs))
    if len(base) < policy.min_requests:
        return _Assessment("no baseline", len(base), len(now))
    if len(now) < policy.min_requests:
        rate = _rate(now, elapsed) or _rate(base, max(r.ts for r in base) - min(r.ts for r in base))
        needs = _time_until(policy.min_requests - len(now), rate, policy.window_seconds)
        return _Assessment("too few", len(base), len(now), needs=needs)
    a = _Assessment("ok", len(base), len(now), metric.level(base), metric.level(now), metric.worse_p(now, base))
    per_window = math.ceil(policy.min_requests / policy.sustained_windows)
    a.width = _window_width(policy, per_window, _rate(now, elapsed))
    count = int(elapsed // a.width)
    slices = windows(now, obs.now - count * a.width, a.width, end=obs.now) if count else []
    a.levels = [metric.level(w) if len(w) >= per_window else None for w in slices]
    _judge_windows(metric, a, slices, base, policy, elapsed)
    return a


def _judge_windows(metric: _Metric, a: _Assessment, slices: list[list[RequestSample]],
                   base: Sequence[RequestSample], policy: Policy, elapsed: float) -> None:
    """Set a.kind from the windows: sustained, improving, pending, recovered or ok."""
    bad = [lvl is not None and metric.practical(lvl, a.base_level, policy) for lvl in a.levels]
    trailing = next((i for i, b in enumerate(reversed(bad)) if not b), len(bad))
    needed = policy.sustained_windows
    overall_bad = a.p < policy.alpha and metric.practical(a.now_level, a.base_level, policy)
    if trailing:
        run = [r for w in slices[-trailing:] for r in w]
        a.bad_windows, a.recent_level = trailing, metric.level(run)
    if trailing >= needed:
        recent = [r for w in slices[-needed:] for r in w]
        if metric.worse_p(recent, base) >= policy.alpha:
            a.kind, a.needs = "pending", a.width
        elif trailing >= 2 and _improving(metric, slices[-2], slices[-1], a.base_level, policy):
            a.kind, a.needs = "improving", a.width
        else:
            a.kind = "trigger"
    elif trailing:
        a.kind, a.needs = "pending", (needed - trailing) * a.width
    elif any(bad) and a.levels[-1] is not None:
        a.kind, a.bad_windows = "recovered", sum(bad)
    elif (overall_bad or any(bad)) and (not a.levels or a.levels[-1] is None):
        a.kind = "pending"
        a.needs = max(a.width, needed * a.width - elapsed) if len(a.levels) < needed else a.width
    elif overall_bad:
        a.kind = "recovered"  # worse only right after the switch, fine in every full window since


def _improving(metric: _Metric, previous: Sequence[RequestSample], last: Sequence[RequestSample],
               base_level: float, policy: Policy) -> bool:
    """The newest window's excess over the baseline has at least halved, significantly."""
    excess_last = metric.level(last) - base_level
    excess_previous = metric.level(previous) - base_level
    return excess_last <= excess_previous / 2 and metric.worse_p(previous, last) < policy.alpha


def _metric_line(metric: _Metric, a: _Assessment, policy: Policy) -> str:
    """This metric's part of the reason line."""
    base = metric.show(a.base_level)
    if a.kind == "no baseline":
        return f"{metric.label}: baseline has {a.base_n} requests (need {policy.min_requests})"
    if a.kind == "too few":
        return f"{metric.label}: {a.now_n} requests since the switch (need {policy.min_requests})"
    if a.kind == "trigger":
        ratio = f" ({_ratio(a.recent_level, a.base_level)})" if metric is LATENCY else ""
        return (f"{metric.label} {metric.show(a.recent_level)} vs {base} baseline{ratio} "
                f"for {_dur(a.bad_windows * a.width)}, {_trend(metric, a)}")
    if a.kind == "improving":
        prev, last = (metric.show(v) if v is not None else "?" for v in a.levels[-2:])
        return f"{metric.label} {last} vs {base} baseline, improving ({prev} → {last})"
    if a.kind == "pending":
        level = a.recent_level if a.bad_windows else a.now_level
        status = ("not yet significant" if a.bad_windows >= policy.sustained_windows
                  else f"not yet sustained ({a.bad_windows} of {policy.sustained_windows} windows)")
        return f"{metric.label} {metric.show(level)} vs {base} baseline for {_dur(a.bad_windows * a.width)}, {status}"
    if a.kind == "recovered":
        last = a.levels[-1] if a.levels and a.levels[-1] is not None else a.now_level
        return f"{metric.label} back to {metric.show(last)} vs {base} baseline: {_recovered_note(a)}"
    return f"{metric.label} {metric.show(a.now_level)} vs {base} baseline over {a.now_n} requests"


def _trend(metric: _Metric, a: _Assessment) -> str:
    """How the last two windows of a trigger moved: falling, yet not halving the excess, is "improving too slowly"."""
    prev, last = (a.levels[-2:] if len(a.levels) >= 2 else [None, None])
    if prev is not None and last is not None and last < prev and metric.show(last) != metric.show(prev):
        return f"improving too slowly ({metric.show(prev)} → {metric.show(last)})"
    return "not improving"


def _row_verdict(a: _Assessment, state: State, policy: Policy) -> str:
    """The evidence row's word for a metric still being watched: why it has not triggered (yet)."""
    if a.kind == "pending" and not a.bad_windows:
        return "not sustained yet (no full window yet)"
    if a.kind == "pending":
        return "not yet significant" if a.bad_windows >= policy.sustained_windows else \
            f"not sustained yet ({a.bad_windows} of {policy.sustained_windows} windows)"
    if a.kind == "improving":
        return "improving"
    if a.kind == "no baseline":
        return "no baseline yet"
    return state


def _recovered_note(a: _Assessment) -> str:
    if a.bad_windows == 1:
        return "one outlier window, recovered"
    if a.bad_windows:
        return f"{a.bad_windows} bad windows, recovered"
    return "worse only right after the switch, recovered"


def _metric_row(metric: _Metric, a: _Assessment, verdict: str) -> EvidenceRow:
    if a.kind in ("no baseline", "too few"):
        return EvidenceRow(metric.name, f"n={a.base_n}", f"n={a.now_n}", metric.test, verdict)
    if metric is ERRORS:
        base, now = f"{_pct(a.base_level)} of {a.base_n}", f"{_pct(a.now_level)} of {a.now_n}"
        test = f"Fisher p={_p(a.p)}, {_ratio(a.now_level, a.base_level)}"
    else:
        base, now = f"p95 {_ms(a.base_level)} (n={a.base_n})", f"p95 {_ms(a.now_level)} (n={a.now_n})"
        test = f"Mann-Whitney p={_p(a.p)}, p95 {_ratio(a.now_level, a.base_level)}"
    if a.levels:
        shown = ", ".join("–" if v is None else metric.show(v) for v in a.levels[-4:])
        test += f"; windows of {_dur(a.width)}: {shown}"
    return EvidenceRow(metric.name, base, now, test, verdict)


_KIND_STATE: dict[Kind, State] = {
    "trigger": "trigger", "ok": "ok", "recovered": "not counted", "improving": "too little data",
    "pending": "too little data", "no baseline": "too little data", "too few": "too little data",
}


def _metric_result(metric: _Metric, a: _Assessment, policy: Policy, obs: Observations,
                   local: str | None = None) -> SignalResult:
    """Turn an assessment into the signal's result, applying the changelog and the local exemption."""
    line = _metric_line(metric, a, policy)
    state = _KIND_STATE[a.kind]
    notes: tuple[str, ...] = ()
    if metric.name in obs.expected.metrics:
        notes = () if a.kind == "ok" else (f"{metric.name}: announced in the changelog ({line})",)
        why = "not counted: announced in the changelog"
        return SignalResult(_metric_row(metric, a, why), "not counted", f"{line}: announced in the changelog",
                            notes)
    notes = (local,) if local else ()
    if a.kind == "recovered":
        notes += (f"{metric.name}: {_recovered_note(a)}",)
    if local and state == "ok":
        state = "not counted"
    verdict = f"not counted: {local or _recovered_note(a)}" if state == "not counted" else _row_verdict(a, state, policy)
    fine = state in ("ok", "not counted")
    return SignalResult(_metric_row(metric, a, verdict), state, f"{local}; {line}" if local else line, notes,
                        a.needs if state == "too little data" else None, fine)


@dataclass(frozen=True)
class _Source:
    """Where most of the current errors come from: one task, or one request shape (path + code)."""

    kind: Literal["task", "shape"]
    key: tuple[str | None, ...]
    share: float

    def matches(self, r: RequestSample) -> bool:
        """This request belongs to the source."""
        if self.kind == "task":
            return r.task_id == self.key[0]
        return r.task_id is None and (r.path, r.code) == self.key

    def describe(self) -> str:
        """E.g. 'errors concentrated in task t-42 (95%)'."""
        what = f"task {self.key[0]}" if self.kind == "task" else f"request shape {self.key[0]} {self.key[1]}"
        return f"errors concentrated in {what} ({self.share:.0%})"


def _local_source(obs: Observations, policy: Policy) -> _Source | None:
    """The one task (or pre-existing request shape) that at least local_share of current errors come from."""
    errors = [r for r in obs.requests if r.error]
    tasks = Counter(r.task_id for r in errors if r.task_id is not None)
    for task, count in tasks.most_common(1):
        if count / len(errors) >= policy.local_share:
            return _Source("task", (task,), count / len(errors))
    # Without task ids a path + code is all there is; a shape new since the upgrade is what a regression
    # looks like, so only one that already failed before counts as "one bad request".
    shapes = Counter((r.path, r.code) for r in errors if r.task_id is None and r.code)
    before = {(r.path, r.code) for r in obs.baseline_requests if r.error}
    for shape, count in shapes.most_common(1):
        if count / len(errors) >= policy.local_share and shape in before:
            return _Source("shape", shape, count / len(errors))
    return None


def judge_errors(obs: Observations, policy: Policy) -> SignalResult:
    """Error rate since the switch against the baseline; errors of one bad task are local."""
    a = _assess(ERRORS, obs.baseline_requests, obs.requests, obs, policy)
    source = _local_source(obs, policy) if a.kind in ("trigger", "pending", "improving") else None
    if source is None:
        return _metric_result(ERRORS, a, policy, obs)
    keep = [r for r in obs.baseline_requests if not source.matches(r)]
    without = _assess(ERRORS, keep, [r for r in obs.requests if not source.matches(r)], obs, policy)
    if without.kind == "trigger":  # a real regression beside the bad task: show it without the task
        result = _metric_result(ERRORS, without, policy, obs)
        note = f"{source.describe()}, left out: the rest still triggers"
        return replace(result, not_counted=result.not_counted + (note,))
    return _metric_result(ERRORS, without, policy, obs, local=source.describe())


def judge_latency(obs: Observations, policy: Policy) -> SignalResult:
    """Latency of successful requests since the switch against the baseline."""
    return _metric_result(LATENCY, _assess(LATENCY, obs.baseline_requests, obs.requests, obs, policy),
                          policy, obs)


# ---------------------------------------------------------------- evals and reports


def judge_evals(obs: Observations, policy: Policy) -> SignalResult:
    """Case by case: a case that passed in the baseline run and fails now triggers."""
    test = "case by case vs baseline"
    if obs.evals is None:
        return SignalResult(EvidenceRow("evals", _eval_summary(obs.baseline_evals), "no eval run", test,
                                        "not counted: no eval run"), "no data", "evals: none run")
    now_summary, failing = _eval_summary(obs.evals), obs.evals.failed
    if obs.baseline_evals is None:
        notes = (f"evals: failing with no baseline run to compare: {', '.join(failing)}",) if failing else ()
        row = EvidenceRow("evals", "no baseline run", now_summary, test, "not counted: no baseline eval run")
        return SignalResult(row, "no data", "evals: no baseline run", notes)
    before = obs.baseline_evals.cases
    regressed = [c for c in failing if before.get(c) is True and c not in obs.expected.eval_cases]
    announced = [c for c in failing if before.get(c) is True and c in obs.expected.eval_cases]
    already = [c for c in failing if before.get(c) is False]
    new = [c for c in failing if c not in before]
    notes = tuple(f"evals: {', '.join(cases)} {why}" for cases, why in (
        (announced, "announced in the changelog"), (already, "already failing before the upgrade"),
        (new, "new, no baseline result")) if cases)
    base_summary = _eval_summary(obs.baseline_evals)
    if regressed:
        line = f"evals: {len(regressed)} case(s) passed before and fail now: {', '.join(regressed)}"
        row = EvidenceRow("evals", base_summary, now_summary, f"{test}; regressed: {', '.join(regressed)}",
                          "trigger")
        return SignalResult(row, "trigger", line, notes)
    if notes:
        row = EvidenceRow("evals", base_summary, now_summary, test,
                          f"not counted: {_first_reason(announced, already)}")
        return SignalResult(row, "not counted", "; ".join(notes), notes, fine=True)
    return SignalResult(EvidenceRow("evals", base_summary, now_summary, test, "ok"), "ok",
                        f"evals: {now_summary}", fine=True)


def _first_reason(announced: list[str], already: list[str]) -> str:
    if announced:
        return "announced in the changelog"
    return "already failing before the upgrade" if already else "new cases, no baseline result"


def _eval_summary(run: EvalRun | None) -> str:
    if run is None:
        return "—"
    return f"{sum(1 for ok in run.cases.values() if ok)}/{len(run.cases)} pass"


def judge_reports(obs: Observations, policy: Policy) -> SignalResult:
    """Customer reports count as confirmed breakage: any one triggers."""
    reports = obs.customer_reports
    test = "any report is confirmed breakage"
    if not reports:
        row = EvidenceRow("reports", "—", "none", test, "ok")
        return SignalResult(row, "ok", "no customer reports", fine=True)
    first = reports[0] if len(reports[0]) <= 60 else reports[0][:57] + "..."
    line = f"customer reports: {len(reports)} (\"{first}\")"
    row = EvidenceRow("reports", "—", f"{len(reports)} report(s)", test, "trigger")
    return SignalResult(row, "trigger", line)


# ---------------------------------------------------------------- the verdict

JUDGES: dict[str, Callable[[Observations, Policy], SignalResult]] = {
    "health": judge_health, "errors": judge_errors, "latency": judge_latency,
    "evals": judge_evals, "reports": judge_reports,
}
_OTHER_METRIC = {"errors": "latency", "latency": "errors"}


def decide(obs: Observations, policy: Policy = Policy()) -> Verdict:
    """roll-back, hold or inconclusive, with one evidence row per signal."""
    results = {name: judge(obs, policy) for name, judge in JUDGES.items()}
    evidence = [r.row for r in results.values()]
    not_counted = [note for r in results.values() for note in r.not_counted]
    triggers = [name for name, r in results.items() if r.state == "trigger"]
    # Mixed: only latency is worse while errors are fine with enough data (a slower but working
    # release); an error regression is never "mixed", it is a trigger on its own.
    if triggers == ["latency"] and results["errors"].fine:
        return _tie_break(results, "latency", policy, evidence, not_counted)
    if triggers:
        return Verdict("roll-back", "; ".join(results[t].headline for t in triggers), evidence, triggers,
                       not_counted)
    waiting = [r for r in results.values() if r.state == "too little data"]
    if waiting:
        known = [r.needs_seconds for r in waiting if r.needs_seconds is not None]
        needs = max(known) if known else None
        later = f"; check again in {_dur(needs)}" if needs else "; waiting will not help: record a baseline"
        reason = "inconclusive: " + "; ".join(r.headline for r in waiting) + later
        return Verdict("inconclusive", reason, evidence, [], not_counted, needs)
    return Verdict("hold", _hold_reason(results), evidence, [], not_counted)


def _hold_reason(results: dict[str, SignalResult]) -> str:
    parts = [results["errors"].headline, results["latency"].headline]
    parts += [r.headline for name, r in results.items()
              if name not in _OTHER_METRIC and r.state == "not counted"]
    return "hold: " + "; ".join(parts)


def _tie_break(results: dict[str, SignalResult], trigger: str, policy: Policy, evidence: list[EvidenceRow],
               not_counted: list[str]) -> Verdict:
    """One metric sustained-bad, the other fine with enough data: the policy's tie-breaker decides."""
    other = results[_OTHER_METRIC[trigger]].row
    fine = f"{other.signal} fine: {other.now} vs {other.baseline}"
    line = results[trigger].headline
    if policy.tie_breaker == "roll-back":
        return Verdict("roll-back", f"{line} ({other.signal} fine: tie-breaker roll-back)", evidence, [trigger],
                       not_counted)
    why = f"mixed evidence ({fine}), tie-breaker {policy.tie_breaker}"
    evidence = [replace(row, verdict=f"not counted: {why}") if row.signal == trigger else row
                for row in evidence]
    needs = policy.window_seconds if policy.tie_breaker == "inconclusive" else None
    return Verdict(policy.tie_breaker, f"{policy.tie_breaker}: {line}, but {other.signal} fine: tie-breaker "
                   f"{policy.tie_breaker}", evidence, [], not_counted + [f"{trigger}: {why}"], needs)
