"""`backout drill`: a timed rehearsal of upgrade → failure → detection → rollback → verification."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from backout.cli.common import (ConfigOpt, DryRunOpt, JsonOpt, YesOpt, confirm, emit_json, fail, handle_errors,
                                target_from)
from backout.config import find_config
from backout.errors import EXIT_FAILED, EXIT_USAGE
from backout.flows.drill_setup import BREAKS, Rehearsal, Staging, configured_staging, rehearsal, self_contained_staging

__all__ = ["drill"]

_DEFAULT_BREAK = "errors"  # 2.4.0-errors: caught by the verdict, and its forward-only migration needs the brain back


def drill(
    break_mode: str = typer.Option(_DEFAULT_BREAK, "--break", metavar="KIND", help="The broken build: errors, latency, health, eval, "
                                   "crash or drain (default errors: its forward-only migration forces a brain rollback)."),
    broken: Optional[str] = typer.Option(None, "--broken", metavar="VERSION", help="A configured deployment's own broken build to upgrade "
                                         "to (default: its [drill] broken_version; the Engine's build for --break "
                                         "otherwise)."),
    staging_name: Optional[str] = typer.Option(None, "--staging", metavar="NAME",
                                               help="The staging deployment in backout.toml."),
    production_ok: bool = typer.Option(False, "--i-know-this-is-production",
                                       help="Drill a deployment not marked `staging = true`."),
    watch: Optional[int] = typer.Option(None, "--watch", min=5, max=900, metavar="SECONDS",
                                        help="Seconds the upgrade watches (default 45; 10 for --break drain, which "
                                             "the verdict cannot see: the drill then rolls back by hand)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the self-contained drill's folder afterwards."),
    history: bool = typer.Option(False, "--history", help="List past drills instead of running one."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Rehearse a rollback, timed: staging on the production version under traffic, an upgrade to a
    broken build, detection, the rollback, and checks that nothing was lost.

    Without a config (or --staging) it builds a self-contained staging deployment of the reference
    Engine in a temporary folder and removes it afterwards. On a configured deployment of any other
    service it upgrades to the build named by [drill] broken_version (or --broken) and sends the
    [drill] requests meanwhile (none configured: detection relies on health and evals). Reports (JSON
    and a self-contained HTML page) are kept in .backout/drills/. Exit 0 green, 1 red.

    \b
    Examples:
      backout drill --break latency
      backout drill --config backout.toml --staging staging --yes"""
    if broken is None and break_mode not in BREAKS:
        fail(f"--break must be one of {', '.join(BREAKS)}, not {break_mode!r}", EXIT_USAGE)
    configured = staging_name is not None or find_config(config) is not None
    if history:
        _history(config if configured else None, staging_name, as_json)
        return
    with handle_errors():
        if dry_run:
            _dry_run(configured, config, staging_name, break_mode, broken, as_json)
            return
        staging = configured_staging(config, staging_name, production_ok) if configured else self_contained_staging()
        plan = rehearsal(staging.target, break_mode, broken)
    if configured:
        confirm(f"drill on {staging.target.deployment}: upgrade it to {plan.broken} and roll back?", yes)
    mode = break_mode if plan.expected is not None else "custom"
    result = _run(staging, mode, plan, watch or (10 if mode == "drain" else 45), keep, as_json)
    if not result["passed"]:
        raise typer.Exit(EXIT_FAILED)


def _run(staging: Staging, mode: str, plan: Rehearsal, watch: int, keep: bool, as_json: bool) -> dict[str, Any]:
    from backout.flows.drill_run import run_drill
    from backout.report import duration_text, render_terminal

    live = not as_json and sys.stderr.isatty()

    def show(phase: dict[str, Any]) -> None:  # one status line on a terminal; the phases are listed at the end
        if live:
            typer.echo(f"\r\x1b[K  … {phase['name']} done ({duration_text(phase['seconds'])})", nl=False, err=True)

    if not as_json:
        where = "a self-contained staging deployment" if staging.temporary else staging.target.deployment
        traffic = {"engine": "the Engine's turns throughout", "requests": "its [drill] requests throughout",
                   "none": "no traffic (none configured: detection relies on health and evals)"}[plan.traffic]
        typer.echo(f"drill: {where}, {plan.production} -> {plan.broken} (break: {mode}), {traffic}", err=True)
    try:
        with handle_errors():
            result = run_drill(staging, mode, plan, show, watch, keep)
    finally:
        if live:
            typer.echo("\r\x1b[K", nl=False, err=True)
    if as_json:
        emit_json(result)
        return result
    colour = sys.stdout.isatty()
    for line in render_terminal(result):
        verdict = line.startswith(("PASS  GREEN", "GREEN", "FAIL  RED", "RED"))
        typer.echo(typer.style(line, fg="green" if result["passed"] else "red", bold=True) if verdict and colour
                   else line)
    typer.echo(f"report: {result['report']['html']}\n        {result['report']['json']}")
    return result


def _dry_run(configured: bool, config: Optional[Path], name: Optional[str], mode: str, broken: Optional[str],
             as_json: bool) -> None:
    if configured:
        target = target_from(config, name, None)
        where, rehearsed = target.deployment, rehearsal(target, mode, broken)
    else:
        where = "a self-contained staging deployment"
        rehearsed = Rehearsal("2.3.1", BREAKS[mode][0], BREAKS[mode][1], "brain", "engine")
    phases = ["bring-up", "seed", "baseline", "pre-flight", "snapshot", "upgrade", "detect", "decide", "drain",
              "restore", "start", "salvage", "verify", "notify", "checks"]
    plan: dict[str, Any] = {"dry_run": True, "staging": where, "break": mode if rehearsed.expected else "custom",
                            "production_version": rehearsed.production, "broken_version": rehearsed.broken,
                            "traffic": rehearsed.traffic, "expect_layer": rehearsed.layer, "phases": phases}
    if as_json:
        emit_json(plan)
        return
    under = {"engine": "under the Engine's turns", "requests": "under its [drill] requests",
             "none": "with no traffic (detection by health and evals)"}[rehearsed.traffic]
    typer.echo(f"would drill {where}: {rehearsed.production} -> {rehearsed.broken} {under}, detect, roll back, check; "
               f"phases: {', '.join(phases)}")


def _history(config: Optional[Path], name: Optional[str], as_json: bool) -> None:
    from backout.flows.drill_run import drills_folder
    from backout.report import history_rows, load_history

    if config is not None or name is not None:
        target = target_from(config, name, None)
        folder = drills_folder(Staging(target, target.config_path or Path("backout.toml"), {}))
    else:
        folder = Path(".backout").absolute() / "drills"
    rows = history_rows(load_history(folder))
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo(f"no drills yet in {folder}; run `backout drill`")
        return
    typer.echo(f"{'WHEN':<22} {'BREAK':<8} {'RESULT':<6} {'RECOVERY':>9} {'LAYER':<6} REPORT")
    for r in rows:
        recovery = f"{r['recovery_s']:.1f}s" if r.get("recovery_s") is not None else "-"
        typer.echo(f"{str(r['when'])[:22]:<22} {r['break']:<8} {'green' if r['passed'] else 'RED':<6} "
                   f"{recovery:>9} {str(r.get('layer') or '-'):<6} {r.get('report') or ''}")

