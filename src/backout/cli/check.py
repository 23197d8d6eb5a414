"""`backout check` (the rollback verdict, with its evidence) and `backout baseline`."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from backout.cli.common import (ConfigOpt, DeploymentOpt, DryRunOpt, JsonOpt, YesOpt, confirm, emit_json, fail,
                                handle_errors, target_from)
from backout.cli.framework import Typer
from backout.config import ConfigError
from backout.errors import EXIT_ENVIRONMENT, EXIT_INCONCLUSIVE, EXIT_OK, EXIT_ROLL_BACK, EXIT_USAGE, BackoutError
from backout.flows.check import capture_baseline, check as compute, state_files
from backout.runtime.factory import runtime_for

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
        typer.echo(f"would record the running version's last {target.require_settings().verdict.baseline_window} of "
                   f"requests, a health probe{'' if no_evals else ' and an eval run'} as the baseline of "
                   f"{target.deployment} (replacing the stored one)")
        return
    if state_files(target).load_baseline() is not None:
        confirm(f"replace the stored baseline of {target.deployment}?", yes)
    with handle_errors():
        baseline = capture_baseline(target, runtime_for(target), not no_evals)
    summary = baseline.summary()
    if as_json:
        emit_json(summary)
    else:
        typer.echo(f"baseline of {summary['version']}: {summary['requests']} requests, error rate "
                   f"{summary['error_rate']}, p95 {summary['p95_ms']} ms, healthy {summary['healthy']}, "
                   f"eval cases {summary['eval_cases']} (failing: {summary['eval_failing']})")


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
    summary = baseline.summary()
    if as_json:
        emit_json(summary)
        return
    typer.echo(f"baseline of {summary['version']}: {summary['requests']} requests, error rate "
               f"{summary['error_rate']}, p95 {summary['p95_ms']} ms")
    for w in summary["windows"]:
        end = datetime.fromtimestamp(w["to"], timezone.utc).isoformat(timespec="seconds") if w["to"] else "capture"
        typer.echo(f"  served by {w['version']} from "
                   f"{datetime.fromtimestamp(w['from'], timezone.utc).isoformat(timespec='seconds')} to {end}")
