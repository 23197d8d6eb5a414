"""`backout check` (the rollback verdict, with its evidence) and `backout baseline`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Optional

import typer

from backout.cli.common import (ConfigOpt, DeploymentOpt, DryRunOpt, JsonOpt, YesOpt, confirm, emit_json, fail,
                                handle_errors, human_age, target_from, time_and_age, utc_time)
from backout.cli.framework import Typer
from backout.config import ConfigError
from backout.errors import EXIT_ENVIRONMENT, EXIT_INCONCLUSIVE, EXIT_OK, EXIT_ROLL_BACK, EXIT_USAGE, BackoutError
from backout.flows.check import capture_baseline, check as compute, state_files
from backout.runtime.factory import runtime_for
from backout.signals.baseline import Baseline

__all__ = ["check", "baseline_app", "EXIT_HOLD", "EXIT_ROLL_BACK", "EXIT_INCONCLUSIVE"]

EXIT_HOLD = EXIT_OK
_EXIT = {"hold": EXIT_HOLD, "roll-back": EXIT_ROLL_BACK, "inconclusive": EXIT_INCONCLUSIVE}


def check(
    customer_report: Optional[str] = typer.Option(None, "--customer-report", metavar="TEXT",
                                                  help="Record a customer report first (counts as confirmed breakage)."),
    no_evals: bool = typer.Option(False, "--no-evals", help="Skip running the regression evals this time."),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Compute the rollback verdict now against the stored baseline, with the evidence.

    Exit codes: 0 hold, 5 roll-back, 6 inconclusive (not enough data yet); 2 usage or config error,
    4 the service or its logs could not be read.

    \b
    Examples:
      backout check
      backout check --customer-report "replies in the wrong language since 14:05" --json"""
    target = target_from(config, deployment, None)
    try:
        verdict = compute(target, runtime_for(target), not no_evals, customer_report)
    except BackoutError as exc:
        fail(str(exc), exc.exit_code)
    except (ConfigError, sqlite3.Error) as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    if as_json:
        emit_json(verdict.to_dict())
    else:
        typer.echo(f"{'SIGNAL':<9} {'BASELINE':<26} {'NOW':<26} {'TEST':<34} VERDICT")
        for row in verdict.evidence:
            typer.echo(f"{row.signal:<9} {row.baseline[:26]:<26} {row.now[:26]:<26} {row.test[:34]:<34} {row.verdict}")
        typer.echo(f"\nverdict: {verdict.decision.upper()} — {verdict.reason}")
        if verdict.needs_seconds:
            typer.echo(f"needs about {verdict.needs_seconds:.0f}s more traffic")
    raise typer.Exit(_EXIT[verdict.decision])


baseline_app = Typer(help="The good version's requests, health and evals, to compare against.\n\n"
                     "\b\nExamples:\n  backout baseline capture --yes\n  backout baseline show --json",
                     no_args_is_help=True)


@baseline_app.command("capture")
def capture(
    no_evals: bool = typer.Option(False, "--no-evals", help="Do not run the regression evals."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Record the running version's recent requests, health and eval results as the baseline.

    Run it while the good version serves; `backout upgrade` captures one by itself.

    \b
    Examples:
      backout baseline capture --dry-run
      backout baseline capture --no-evals --yes"""
    target = target_from(config, deployment, None)
    if dry_run:
        window = target.require_settings().verdict.baseline_window.total_seconds()
        typer.echo(f"would record the running version's last {human_age(window)} of "
                   f"requests, a health probe{'' if no_evals else ' and an eval run'} as the baseline of "
                   f"{target.deployment} (replacing the stored one)")
        return
    if state_files(target).load_baseline() is not None:
        confirm(f"replace the stored baseline of {target.deployment}?", yes)
    with handle_errors():
        baseline = capture_baseline(target, runtime_for(target), not no_evals)
    if as_json:
        emit_json(baseline.summary())
    else:
        typer.echo("\n".join(_baseline_lines(baseline)))


@baseline_app.command("show")
def show(as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt,
         deployment: Optional[str] = DeploymentOpt) -> None:
    """Show the stored baseline.

    \b
    Examples:
      backout baseline show
      backout baseline show --deployment engine --json"""
    target = target_from(config, deployment, None)
    baseline = state_files(target).load_baseline()
    if baseline is None:
        fail("no baseline recorded: run `backout baseline capture` while the good version serves", EXIT_USAGE)
    if as_json:
        emit_json(baseline.summary())
        return
    typer.echo("\n".join(_baseline_lines(baseline)))
    for w in baseline.windows:
        typer.echo(f"  served by {w['version']} from {utc_time(w['from'])} to {utc_time(w['to'], 'the capture')}")


def _baseline_lines(baseline: Baseline) -> list[str]:
    """The baseline for a person: when, the requests, health and evals (what was not measured says so)."""
    s = baseline.summary()
    return [f"baseline of {s['version'] or 'a version not recorded'}",
            f"  captured   {time_and_age(s['captured_at'])}",
            f"  requests   {_requests_text(s)}",
            f"  health     {_health_text(baseline)}",
            f"  evals      {_evals_text(s)}"]


def _requests_text(s: dict[str, Any]) -> str:
    if not s["requests"]:
        return "none recorded (error rate and p95 latency not measured)"
    p95 = f"{s['p95_ms']:.1f} ms" if s["p95_ms"] is not None else "not measured"
    return f"{s['requests']}, error rate {s['error_rate']:.1%}, p95 latency {p95}"


def _health_text(baseline: Baseline) -> str:
    probe = baseline.health
    if probe is None:
        return "not probed"
    return "healthy" if probe.ok else f"failing ({probe.reason or f'HTTP {probe.status_code}'})"


def _evals_text(s: dict[str, Any]) -> str:
    if s["eval_cases"] is None:
        return "not run"
    failing = s["eval_failing"]
    return f"{s['eval_cases']} cases, {len(failing)} failing" + (f": {', '.join(failing)}" if failing else "")
