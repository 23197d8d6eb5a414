"""Check: gather what is known now (against the stored baseline) and compute the verdict."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backout.config import Deployment, Target
from backout.errors import EXIT_REFUSED, EXIT_USAGE, BackoutError
from backout.history import STARTS, Change, History, deployment_state
from backout.runtime.base import Runtime
from backout.signals.baseline import Baseline, StateFiles
from backout.signals.decide import decide
from backout.signals.evals import run_evals
from backout.signals.model import EvalRun, ExpectedChanges, HealthSample, Observations, Policy, RequestSample, Verdict

if TYPE_CHECKING:
    from backout.ledger import ServedWindow

__all__ = ["base_url", "capture_baseline", "check", "expected_changes", "observe", "policy_of", "request_samples"]


def state_files(target: Target) -> StateFiles:
    """The verdict's files of this deployment."""
    return StateFiles(deployment_state(target.state_dir, target.deployment) / "signals")


def base_url(target: Target) -> str:
    """The service's base URL, from its health URL."""
    url = target.health_url or ""
    return url[: -len("/health")] if url.endswith("/health") else url.rsplit("/", 1)[0]


def policy_of(settings: Deployment) -> Policy:
    """The verdict thresholds from the config."""
    v = settings.verdict
    return Policy(health_failures=v.health_failures, health_seconds=v.health_duration.total_seconds(),
                  window_seconds=v.window.total_seconds(), min_requests=v.min_requests, alpha=v.alpha,
                  error_ratio=v.error_ratio, error_floor=v.error_floor, latency_ratio=v.latency_ratio,
                  sustained_windows=v.sustained_windows, local_share=v.local_share, tie_breaker=v.tie_breaker)


def request_samples(target: Target, runtime: Runtime, since: float, until: float) -> list[RequestSample]:
    """Requests between two times, from the configured source (the service's logs by default); which
    requests count, the metric names and the queries are the service profile's."""
    from backout.signals import metrics

    v = target.require_settings().verdict
    profile = target.profile
    if v.source == "prometheus":
        q = profile.prometheus
        if not v.prometheus_url or not (q.total and q.errors and q.latency):
            raise BackoutError("verdict.source = 'prometheus' needs verdict.prometheus_url and the queries "
                               "profile.prometheus.total, .errors and .latency (the engine profile has them)",
                               EXIT_USAGE)
        return metrics.PrometheusSource(v.prometheus_url, q.errors, q.latency, q.total,
                                        path=profile.request_path or "").samples(since, until)
    if v.source == "scrape":
        url = v.scrape_url or base_url(target) + "/metrics"
        headers = profile.api_headers(os.environ.get(v.scrape_key_env, "")) if v.scrape_key_env else {}
        return metrics.ScrapeSource(url, headers, path=profile.request_path,
                                    requests_metric=profile.prometheus.requests_metric,
                                    duration_metric=profile.prometheus.duration_metric,
                                    state_file=state_files(target).folder / "scrape.json").samples(since, until)
    return metrics.LogSource(lambda start: runtime.logs(since=start), counts=profile.counts).samples(since, until)


def expected_changes(settings: Deployment, version: str | None) -> ExpectedChanges:
    """What `version` announces: from the config, and from its changelog when a command gives one."""
    out = ExpectedChanges()
    if version is None:
        return out
    declared = settings.expected_changes.get(version)
    if declared:
        out.metrics |= set(declared.metrics)
        out.eval_cases |= set(declared.eval_cases)
    if settings.changelog_command:
        argv = [t.format(version=version) for t in shlex.split(settings.changelog_command)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            entry: dict[str, Any] = json.loads(proc.stdout) if proc.returncode == 0 else {}
        except (OSError, subprocess.TimeoutExpired, ValueError):
            entry = {}
        announced = entry.get("expected_changes", {})
        out.metrics |= set(announced.get("metrics", []))
        out.eval_cases |= set(announced.get("eval_cases", []))
    return out


def _probe(target: Target) -> HealthSample | None:
    if not target.health_url:
        return None
    p = target.probe(timeout=10)
    return HealthSample(time.time(), p.ok, p.status_code, tuple(p.failing), p.reason())


def capture_baseline(target: Target, runtime: Runtime, with_evals: bool = True) -> Baseline:
    """Record the running version's requests, health and evals as the baseline to compare against.

    Only a version not judged bad and not in an open watch window gives a baseline, and only the
    stretches of the baseline window during which that very version served count: requests served
    by an earlier (perhaps broken) build in the same log never enter it."""
    settings = target.require_settings()
    now = time.time()
    since = now - settings.verdict.baseline_window.total_seconds()
    current = runtime.current()
    if not current.running or current.version is None:
        raise BackoutError("nothing is running: a baseline is taken from the good version while it serves",
                           EXIT_USAGE)
    _refuse_unjudged(target, current.version)
    windows = _baseline_windows(target, current.version, current.since, since, now)
    evals = run_evals(settings.evals, base_url(target), current.version) if with_evals and settings.evals else None
    requests = [r for w in windows for r in request_samples(target, runtime, w.start, w.end or now)]
    baseline = Baseline(current.version, now, requests, _probe(target), evals,
                        windows=[w.to_dict() for w in windows])
    state_files(target).save_baseline(baseline)
    return baseline


def _refuse_unjudged(target: Target, version: str) -> None:
    """A baseline never comes from a version judged bad or still in its watch window."""
    from backout.flows.paths import watch_state
    from backout.ledger import Ledger

    judged = Ledger(target).standing(version)
    if judged.standing == "bad":
        raise BackoutError(f"{version} is judged bad ({judged.why}): a baseline comes only from a good version",
                           EXIT_REFUSED)
    if watch_state(target).exists():
        raise BackoutError(f"{version} is in its watch window and not yet promoted: a baseline comes only from a "
                           "good version (wait for the promotion, or roll back)", EXIT_REFUSED)


def _baseline_windows(target: Target, version: str, started: str | None, since: float,
                      now: float) -> list["ServedWindow"]:
    """The stretches of [since, now] during which `version` served (from the history, else since its start)."""
    from backout.ledger import Ledger, ServedWindow

    served = [w for w in Ledger(target).served_windows(now) if w.version == version and (w.end or now) > since]
    clipped = [ServedWindow(version, max(w.start, since), w.end) for w in served]
    if clipped:
        return clipped[-5:]
    start = since
    if started:
        try:
            start = max(since, datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return [ServedWindow(version, start, None)]


def _switched_at(target: Target, runtime: Runtime) -> float | None:
    started = runtime.current().since
    if started:
        try:
            return datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    for entry in reversed(History(target.state_dir).entries(target.deployment)):
        if entry.get("to_version") and entry.get("kind") in STARTS:
            return datetime.fromisoformat(entry["at"]).timestamp()
    return None


def observe(target: Target, runtime: Runtime, with_evals: bool = True, report: str | None = None,
            evals: EvalRun | None = None) -> Observations:
    """Everything known now: baseline, requests and health since the switch, evals (run now, or an
    earlier run of this version passed in), reports."""
    settings = target.require_settings()
    files = state_files(target)
    baseline = files.load_baseline()
    if baseline is None:
        raise BackoutError("no baseline recorded: run `backout baseline capture` while the good version serves "
                           "before switching", EXIT_USAGE)
    now = time.time()
    version = runtime.current().version
    switched = _switched_at(target, runtime) or baseline.captured_at
    sample = _probe(target)
    if sample is not None:
        files.add_health(sample)
    if report:
        files.add_report(report, version)
    if evals is None and with_evals and settings.evals:
        evals = run_evals(settings.evals, base_url(target), version)
    return Observations(
        now=now, switched_at=switched, baseline_requests=baseline.requests,
        requests=request_samples(target, runtime, switched, now), health=files.health_since(switched),
        baseline_evals=baseline.evals, evals=evals, customer_reports=files.reports_since(switched),
        expected=expected_changes(settings, version), version=version, baseline_version=baseline.version)


def check(target: Target, runtime: Runtime, with_evals: bool = True, report: str | None = None,
          evals: EvalRun | None = None) -> Verdict:
    """The verdict now (kept as the deployment's latest verdict)."""
    obs = observe(target, runtime, with_evals, report, evals)
    verdict = decide(obs, policy_of(target.require_settings()))
    failed = obs.evals.failed if obs.evals else []
    state_files(target).save_verdict({**verdict.to_dict(), "failed_eval_cases": failed}, obs.version)
    _judge_hold(target, verdict, obs.version)
    return verdict


def _judge_hold(target: Target, verdict: Verdict, version: str | None) -> None:
    """A hold verdict outside a watch window makes the running version good in the ledger (once)."""
    from backout.flows.paths import watch_state
    from backout.ledger import Ledger

    if verdict.decision != "hold" or version is None or watch_state(target).exists():
        return
    if Ledger(target).standing(version).standing != "unknown":
        return  # good already, or bad: a later hold does not clear a rollback or a freeze
    History(target.state_dir).append(Change(deployment=target.deployment, kind="verdict", from_version=None,
                                            to_version=version, outcome="hold", detail=verdict.reason))
