"""`backout upgrade VERSION` (pre-flight, a restore point, the switch, the watch window) and `backout watch`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from backout.cli.common import (abandon_journal, ConfigOpt, DeploymentOpt, DryRunOpt, JsonOpt, YesOpt, confirm, fail,
                                handle_errors, human_bytes, progress_bar, target_from)
from backout.cli.common import emit_json, err_console, say, version_arg
from backout.config import Target, parse_duration
from backout.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_REFUSED, EXIT_ROLL_BACK, EXIT_USAGE
from backout.flows.decisions import UpgradeDecision
from backout.flows.journals import resume_journal
from backout.flows.paths import upgrade_journal
from backout.flows.upgrade import preflight
from backout.flows.upgrade_run import UpgradeRun
from backout.flows.watch import WatchEvent, load_watch, promote, rollback_step_events, watch
from backout.history import deployment_state
from backout.journal import Journal
from backout.lock import operation_lock
from backout.plan import Plan, Step
from backout.runtime.base import Runtime
from backout.runtime.factory import runtime_for

__all__ = ["upgrade", "watch_command"]

AutoOpt = typer.Option(None, "--auto-rollback/--no-auto-rollback",
                       help="On a roll-back verdict, roll back at once (default from the config: yes) or only "
                            "print the command.")


def upgrade(
    version: Optional[str] = typer.Argument(None, callback=version_arg, metavar="VERSION", help="The version to upgrade to (image tag, or the command "
                                            "template's value); not needed with --resume or --abandon."),
    watch_for: Optional[str] = typer.Option(None, "--watch", metavar="DURATION", help="Watch window, e.g. 15m (default: upgrade.watch; "
                                                                  "0 to skip)."),
    auto_rollback: Optional[bool] = AutoOpt,
    force: bool = typer.Option(False, "--force", help="Upgrade even though the running version is not healthy, the "
                               "target is judged bad, or it could not be proven to start (recorded in the history)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an upgrade that was interrupted."),
    abandon: bool = typer.Option(False, "--abandon", help="Set an interrupted upgrade's journal aside (kept, renamed)."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Upgrade with a restore point, then watch, ready to roll back at once.

    Pre-flight (before anything stops): the target is not frozen and is available, the running
    version is healthy and will still be startable, there is room for two snapshots, baselines
    are taken, announced changes are loaded, the predicted restore time is held against the
    recovery-time target. Then: online snapshot, drain, final snapshot of the quiescent brain
    (the restore point, pinned), migrate + start + wait healthy, regression evals, pre-armed
    rollback, and the watch window. A failure after the drain rolls back at once. With --json,
    events stream as JSON lines.

    \b
    Examples:
      backout upgrade 2.4.0 --dry-run
      backout upgrade 2.4.0 --watch 15m --yes"""
    target = target_from(config, deployment, None)
    if abandon:
        abandon_journal(target, upgrade_journal(target), "upgrade", yes)
        return
    if version is None and not resume:
        fail("which version? `backout upgrade VERSION` (or `--resume` to finish an interrupted upgrade)", EXIT_USAGE)
    seconds = _seconds(watch_for)
    with handle_errors():
        runtime = runtime_for(target)
        auto = target.require_settings().upgrade.auto_rollback if auto_rollback is None else auto_rollback
        with operation_lock(deployment_state(target.state_dir, target.deployment), f"upgrade to {version or '…'}"):
            journal = _journal(target, runtime, version, force, seconds, resume, dry_run, yes, as_json)
            if journal is None:
                return
            result = _run(target, runtime, journal, as_json)
        if result["outcome"] != "watching":
            _finish(result, as_json)
            raise typer.Exit(EXIT_FAILED)  # the upgrade did not stick (rolled back, or worse)
        if not UpgradeDecision.from_dict(journal.operation["decision"]).watch_s:  # --watch 0: promoted at once
            detail = promote(target, load_watch(target))
            _event({"event": "promoted", "detail": detail}) if as_json else typer.echo(detail)
            return
        _watch(target, runtime, auto, as_json)


def _seconds(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    if text.strip() == "0":
        return 0.0  # "0 to skip", as the help says
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        fail(f"--watch: {exc}", EXIT_USAGE)


def _journal(target: Target, runtime: Runtime, version: Optional[str], force: bool, seconds: Optional[float], resume: bool,
             dry_run: bool, yes: bool, as_json: bool) -> Journal | None:
    path = upgrade_journal(target)
    if resume:
        journal = resume_journal(path, "upgrade")
        planned = UpgradeDecision.from_dict(journal.operation["decision"]).to_version
        if version is not None and planned != version:
            fail(f"the interrupted upgrade is to {planned}, not {version}",
                 EXIT_USAGE)
        stale = UpgradeRun(target, runtime, journal).stale()
        if stale:
            fail(stale, EXIT_REFUSED)
        return journal
    assert version is not None
    decision = preflight(target, runtime, version, force, seconds)
    journal = Journal(path, {"operation": {"kind": "upgrade", "decision": decision.to_dict()}, "done": [],
                             "facts": {}})
    plan = UpgradeRun(target, runtime, journal).plan()
    if as_json:
        _event({"event": "plan", "dry_run": dry_run, "plan": plan.to_dict()})
    else:
        typer.echo("\n".join(render_plan(plan)), err=not dry_run)
    if dry_run:
        return None
    confirm(f"upgrade {target.deployment} from {decision.from_version} to {version}?", yes)
    journal.save()
    return journal


def render_plan(plan: Plan) -> list[str]:
    """The pre-flight result and the steps, as text."""
    d = UpgradeDecision.from_dict(plan.facts)
    proof = (d.proof or {}).get("how", "?")
    lines = [f"upgrade plan for {d.deployment}: {d.from_version} -> {d.to_version}",
             f"  pre-flight    target proven to start ({proof}); the running version healthy and startable "
             "afterwards; room for two snapshots",
             f"  brain         {human_bytes(d.brain_bytes)}; a brain rollback would take about "
             f"{d.predicted_restore_s:.0f}s ({d.throughput['mb_s']:.0f} MB/s, {d.throughput['source']})",
             f"  announced     {_announced(d.expected_changes)}",
             f"  watch         {d.watch_s:.0f}s after the switch"]
    lines += [f"  WARNING       {w}" for w in d.warnings]
    lines.append("steps:")
    for number, step in enumerate(plan.steps, 1):
        lines += step.render(number)
    return lines


def _announced(expected: dict[str, list[str]]) -> str:
    parts = [f"{m} change" for m in expected["metrics"]] + [f"eval case {c}" for c in expected["eval_cases"]]
    return ", ".join(parts) + " (not counted against it)" if parts else "no behaviour changes announced"


def _event(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, default=str))


def _step_printer(as_json: bool, journal: Journal, prefix: str = "") -> Any:
    def show(step: Step, phase: str) -> None:
        if phase != "done":
            return
        entry = journal.data.get("timeline", [])[-1]
        if as_json:
            _event({"event": "step", "step": step.name,
                    **{k: entry[k] for k in ("started_at", "finished_at", "seconds", "outcome", "detail")}})
        else:
            say(f"  {prefix}done {step.name:<16} {entry['seconds']:>6.1f}s  {entry['detail']}")
    return show


def _run(target: Target, runtime: Runtime, journal: Journal, as_json: bool) -> dict[str, Any]:
    with progress_bar(not as_json) as bar:
        run = UpgradeRun(target, runtime, journal, bar)
        if not as_json:
            say("upgrading…")
        result = run.run(_step_printer(as_json, journal), _rollback_printer(as_json))
    if as_json:
        _event({"event": "upgraded" if result["outcome"] == "watching" else "upgrade-failed", **result})
    elif result["outcome"] == "watching":
        say(f"{result['to_version']} is healthy; restore point {result['restore_point']['version']} + "
            f"snapshot {result['restore_point']['snapshot_id']} (pinned)")
    return result


def _rollback_printer(as_json: bool) -> Any:
    def show(event: WatchEvent) -> None:
        _event(event.to_dict()) if as_json else say(f"  rollback: {event.detail}")
    return rollback_step_events(show)


def _finish(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        return
    rollback = result.get("rollback")
    typer.echo(f"upgrade to {result['to_version']} FAILED: {result['why']}")
    if rollback:
        typer.echo(f"rolled back to {rollback['to_version']} ({rollback['layer']} layer): {rollback['outcome']}; "
                   f"incident {rollback['incident_folder']}")


def _watch(target: Target, runtime: Runtime, auto: bool, as_json: bool) -> None:
    view = _WatchView(target, as_json)
    try:
        with view:
            outcome, rollback = watch(target, runtime, auto, view.show)
    except KeyboardInterrupt:
        typer.echo("stopped watching; nothing was changed. Resume the watch with `backout watch`", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        _event({"event": "result", "outcome": outcome, "rollback": rollback["result"] if rollback else None})
    else:
        view.summary(outcome, rollback)
    if outcome not in ("promoted", "ended"):  # 5: a roll-back verdict to act on; 1: rolled back (or worse)
        raise typer.Exit(EXIT_ROLL_BACK if outcome == "roll-back-advised" else EXIT_FAILED)


class _WatchView:
    """On a terminal: a live table whose countdown ticks between checks, then, once the window ends, what
    followed (the rollback's steps) as lines. One line per event otherwise; JSON lines with --json."""

    def __init__(self, target: Target, as_json: bool) -> None:
        self.as_json = as_json
        self.target = target
        self.last: WatchEvent | None = None
        self.table: WatchEvent | None = None  # the last event with a verdict: what the table shows
        self.live = Live(console=err_console, get_renderable=self._render, refresh_per_second=2, transient=False) \
            if err_console.is_terminal and not as_json else None

    def __enter__(self) -> "_WatchView":
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.stop()

    def show(self, event: WatchEvent) -> None:
        self.last = event
        if event.verdict:
            self.table = event
        if self.as_json:
            _event(event.to_dict())
        elif self.live and self.live.is_started:
            self.live.refresh()
            if event.event != "check":  # the window is over: the last table stays, what follows comes as lines
                self.live.stop()
        elif event.event == "rollback-step":
            say(f"  rollback: {event.detail}")
        else:
            decision = (event.verdict or {}).get("decision", "")
            say(f"  watch {event.left_s:>6.0f}s left  {event.event:<8} {decision:<12} {event.detail}")

    def _render(self) -> Group:
        event = self.table
        if event is None:
            return Group(Text(f"watching {self.target.deployment}: waiting for the first verdict…"))
        verdict = event.verdict or {}
        left = max(0.0, event.left_s - (time.time() - event.at)) if self.last is event else event.left_s
        table = Table(title=f"watching {self.target.deployment}: {left:.0f}s left — "
                            f"{str(verdict.get('decision', '')).upper()}", title_justify="left")
        for column in ("signal", "baseline", "now", "test", "verdict"):
            table.add_column(column)
        for row in verdict.get("evidence", []):
            table.add_row(row["signal"], row["baseline"], row["now"], row["test"], row["verdict"])
        return Group(table, Text((self.last or event).detail))  # the reason wraps at the left edge

    def summary(self, outcome: str, rollback: dict[str, Any] | None) -> None:
        if outcome == "promoted":
            typer.echo(self.last.detail if self.last else "promoted")
        elif rollback:
            r = rollback["result"]
            typer.echo(f"ROLLED BACK: {r['from_version']} -> {r['to_version']} ({r['layer']} layer, "
                       f"{r['outcome']}) because {self.table.verdict['reason'] if self.table and self.table.verdict else '?'}")
            typer.echo(f"  why this layer  {r['layer_reason']}")
            typer.echo(f"  incident        {r['incident_folder']}")
        elif self.last:
            typer.echo(self.last.detail)


def watch_command(
    auto_rollback: Optional[bool] = AutoOpt,
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Watch the last upgrade again (after Ctrl-C): the verdict until its window ends; promote or roll back.

    \b
    Examples:
      backout watch --dry-run
      backout watch --yes
      backout watch --no-auto-rollback --json --yes"""
    target = target_from(config, deployment, None)
    with handle_errors():
        runtime = runtime_for(target)
        state = load_watch(target)
        auto = target.require_settings().upgrade.auto_rollback if auto_rollback is None else auto_rollback
        said = _watch_plan(target, state, auto)
        if as_json and dry_run:
            emit_json({"dry_run": True, "plan": said})
        elif not as_json:
            typer.echo("\n".join(f"  {k:<14} {v}" for k, v in said.items()), err=not dry_run)
        if dry_run:
            return
        confirm(f"watch {state['version']} on {target.deployment} again "
                f"({'rolls back' if auto else 'advises a rollback'} on a roll-back verdict)?", yes)
        _watch(target, runtime, auto, as_json)


def _watch_plan(target: Target, state: dict[str, Any], auto: bool) -> dict[str, str]:
    """What `backout watch` would do, in the words it prints (and --json keys)."""
    left = state["until"] - time.time()
    every = target.require_settings().upgrade.check_every.total_seconds()
    point = state.get("restore_point") or {}
    back = f"{state['previous']}" + (f" (restore point, snapshot {point['snapshot_id']})" if point.get("snapshot_id")
                                     else "")
    return {
        "watching": f"{state['version']} (upgraded from {state['previous']})",
        "window": f"{max(0.0, left):.0f}s left, a verdict every {every:g}s" if left > 0
                  else "ended: one last verdict decides",
        "roll-back": f"{'roll back at once' if auto else 'print the rollback command'} to {back}",
        "otherwise": f"promote {state['version']} when the window ends",
    }
