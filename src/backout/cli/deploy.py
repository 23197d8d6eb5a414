"""`backout switch` and `backout stop`: the plain building blocks, with drain and history."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from backout.cli.common import ConfigOpt, DeploymentOpt, DryRunOpt, JsonOpt, YesOpt, confirm, emit_json, handle_errors, target_from
from backout.cli.common import version_arg
from backout.errors import EXIT_FAILED
from backout.flows.switch import plan_switch, stop_service, switch_version
from backout.runtime.factory import runtime_for

__all__ = ["switch", "stop"]


def switch(
    version: str = typer.Argument(..., callback=version_arg, metavar="VERSION",
                                help="Version to run (image tag, or the value for the command template)."),
    reason: str = typer.Option("", "--reason", metavar="TEXT", help="Why; kept in the history."),
    force: bool = typer.Option(False, "--force", help="Switch even to a version judged bad, or one that could not "
                               "be proven to start (recorded in the history)."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Drain and stop what runs, run `migrate` if configured, start VERSION, wait until healthy.

    Before anything stops, VERSION is proven to start (the runtime's availability check, or a trial
    boot on a copy of the brain); a version judged bad is refused. No snapshot and no watch window:
    take one first (`backout snapshot create`) when VERSION migrates the brain.

    \b
    Examples:
      backout switch 2.3.1 --dry-run
      backout switch 2.3.1 --reason "back to the release before the hotfix" --yes"""
    target = target_from(config, deployment, None)
    with handle_errors():
        runtime = runtime_for(target)
        current = runtime.current()
        plan = plan_switch(target, runtime, version, force)
    commands = plan.commands
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, "from": current.version if current.running else None, "to": version,
                       "proof": plan.proof.to_dict(), "commands": [c.to_dict() for c in commands]})
            return
        typer.echo(f"switch {target.deployment}: {current.version if current.running else 'nothing running'} -> {version}")
        typer.echo(f"proof: {plan.proof.how}" + "".join(f"\nFORCED: {f}" for f in plan.proof.forced))
        for i, c in enumerate(commands, 1):
            typer.echo(f"{i}. {c.purpose}\n   $ {c.shell()}" + (f"\n   env: {', '.join(c.env_names)}" if c.env_names else ""))
        typer.echo("note: no snapshot is taken; take one first with `backout snapshot create`")
        return
    confirm(f"switch {target.deployment} to {version} (no snapshot, no watch)?", yes)
    with handle_errors():
        result = switch_version(target, runtime, version, kind="manual", reason=reason, force=force)
    if as_json:
        emit_json(result.to_dict())
    else:
        if result.drain and result.drain.stopped:
            typer.echo(f"stopped {result.from_version}: {'clean drain' if result.drain.clean else 'FORCED'} "
                       f"in {result.drain.seconds:.1f}s ({result.drain.detail})")
        health = result.health
        if result.healthy and health:
            typer.echo(f"{version} is healthy after {health.seconds:.1f}s (no snapshot was taken)")
        else:
            typer.echo(f"{version} is NOT healthy: {health.reason if health else 'unknown'}")
            for line in (health.log_tail if health else [])[-10:]:
                typer.echo(f"  | {line}")
            back = result.switched_back
            if back is not None and back.healthy:
                typer.echo(f"switched back: {result.from_version} serves again (healthy after {back.seconds:.1f}s)")
            else:
                if back is not None:
                    typer.echo(f"switching back to {result.from_version} failed too: {back.reason}")
                now = runtime.current()
                state = f"{now.version} runs but is not healthy" if now.running else "nothing is running"
                hint = ": see `backout status`; `backout rollback` brings back a restore point" if back is not None \
                    else ""
                typer.echo(f"{state} on {target.deployment} now{hint}")
    if not result.healthy:
        raise typer.Exit(EXIT_FAILED)


def stop(
    reason: str = typer.Option("", "--reason", metavar="TEXT", help="Why; kept in the history."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Drain and stop what runs (SIGTERM, the drain timeout, then kill); recorded in the history.

    \b
    Examples:
      backout stop --dry-run
      backout stop --reason "host maintenance" --yes"""
    target = target_from(config, deployment, None)
    with handle_errors():
        runtime = runtime_for(target)
        current = runtime.current()
    if dry_run:
        drain = target.require_settings().drain_timeout.total_seconds()
        text = f"would drain and stop {current.version} (up to {drain:g}s)" if current.running else "nothing is running"
        emit_json({"dry_run": True, "running": current.to_dict()}) if as_json else typer.echo(text)
        return
    confirm(f"drain and stop {target.deployment} ({current.version or 'nothing running'})?", yes)
    with handle_errors():
        result = stop_service(target, runtime, reason)
    if as_json:
        emit_json(result.to_dict())
    else:
        typer.echo(f"{'clean' if result.clean else 'FORCED'} stop in {result.seconds:.1f}s: {result.detail}")
    if not result.clean:
        raise typer.Exit(EXIT_FAILED)
