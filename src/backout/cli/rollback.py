"""`backout rollback` (plan, then a journaled, resumable rollback) and `backout freeze`/`unfreeze`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, cast

import typer

from backout.cli.common import (abandon_journal, ConfigOpt, DeploymentOpt, DryRunOpt, JsonOpt, YesOpt, confirm, emit_json, fail,
                                handle_errors, human_age, human_bytes, progress_bar, target_from)
from backout.cli.common import say, version_arg
from backout.errors import EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE
from backout.flows.decisions import RollbackDecision
from backout.flows.rollback import Mode, RollbackRequest, decide_rollback
from backout.flows.journals import resume_journal
from backout.flows.paths import rollback_journal
from backout.flows.rollback_run import RollbackRun, new_journal
from backout.cli.framework import errors as click_errors
from backout.freeze import freeze_version, frozen_versions, unfreeze_version
from backout.history import Change, History, deployment_state
from backout.journal import Journal
from backout.lock import operation_lock
from backout.plan import Plan, Step, StepFailed
from backout.runtime.factory import runtime_for

__all__ = ["rollback", "freeze", "unfreeze"]


def rollback(
    to: Optional[str] = typer.Option(None, "--to", callback=version_arg, metavar="VERSION", help="Version to return to (default: the restore point)."),
    snapshot: Optional[str] = typer.Option(None, "--snapshot", metavar="ID", help="Snapshot to restore if the brain is rolled back. A unique beginning of "
                                          "its id works too, and latest names the newest."),
    reason: str = typer.Option("", "--reason", metavar="TEXT", help="The symptom, for the announcement and the postmortem "
                               "(default: the latest verdict's reason)."),
    mode: str = typer.Option("auto", "--mode", metavar="MODE", help="auto (choose the layer), image, or brain."),
    resume: bool = typer.Option(False, "--resume", help="Continue a rollback that was interrupted."),
    abandon: bool = typer.Option(False, "--abandon", help="Set an interrupted rollback's journal aside (kept, "
                                 "renamed) instead of finishing it."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Roll back to the restore point: choose the layer, drain, restore, verify, tell people, keep the evidence.

    Prints the plan first: target version and snapshot (with its age), the bad window, rows written
    since the snapshot, the layer (image only, or image + brain when the target cannot read the
    brain; a trial boot on a copy settles it) and every step with its commands and files.
    --dry-run stops there. The run is journaled: after a crash, `--resume` finishes it.

    \b
    Examples:
      backout rollback --dry-run
      backout rollback --reason "error rate 12% since the upgrade to 2.4.0" --yes"""
    if mode not in ("auto", "image", "brain"):
        fail(f"--mode must be auto, image or brain, not {mode!r}", EXIT_USAGE)
    target = target_from(config, deployment, None)
    if abandon:
        abandon_journal(target, rollback_journal(target), "rollback", yes)
        return
    with handle_errors():
        if snapshot and not resume:
            from backout.brain.manifest import SnapshotStore

            snapshot = SnapshotStore(target.snapshot_dir).resolve(snapshot, target.deployment, target.brain)
        runtime = runtime_for(target)
        with operation_lock(deployment_state(target.state_dir, target.deployment), "rollback"):
            journal = _journal(target, runtime, RollbackRequest(to, snapshot, reason, cast(Mode, mode)), resume, dry_run, yes,
                               as_json)
            if journal is None:
                return
            _run(target, runtime, journal, as_json)


def _journal(target: Any, runtime: Any, req: RollbackRequest, resume: bool, dry_run: bool, yes: bool,
             as_json: bool) -> Journal | None:
    """The journal to run: the interrupted one (--resume) or a new one after the plan is shown and confirmed."""
    if resume:
        journal = resume_journal(rollback_journal(target), "rollback")
        stale = RollbackRun(target, runtime, journal).stale()
        if stale:
            fail(stale, EXIT_REFUSED)
        return journal
    decision = decide_rollback(target, runtime, req)
    journal = new_journal(target, decision)
    plan = RollbackRun(target, runtime, journal).plan()
    if as_json and (dry_run or decision.blocked):
        emit_json({"dry_run": dry_run, "plan": plan.to_dict()})
    elif not as_json:
        typer.echo("\n".join(render_plan(plan)), err=not dry_run)
    if decision.blocked:
        fail(decision.blocked, EXIT_REFUSED)
    if dry_run:
        return None
    confirm(f"roll back {target.deployment} to {decision.to_version} ({decision.layer} layer)?", yes)
    journal.save()
    return journal


def _run(target: Any, runtime: Any, journal: Journal, as_json: bool) -> None:
    def show(step: Step, phase: str) -> None:
        if not as_json and phase == "done":
            entry = journal.data.get("timeline", [])[-1]
            say(f"  done {step.name:<12} {entry['seconds']:>6.1f}s  {entry['detail']}")

    with progress_bar(not as_json) as bar:
        run = RollbackRun(target, runtime, journal, bar)
        try:
            result = run.run(show)
        except StepFailed as exc:
            outcome = run.result("failed")
            if as_json:
                emit_json({"plan": run.plan().to_dict(), "result": outcome})
            else:
                _print_failure(run, str(exc))
            raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        emit_json({"plan": run.plan().to_dict(), "result": result})
    else:
        _print_result(result)
    if result["outcome"] != "rolled-back":
        raise typer.Exit(EXIT_FAILED)


def render_plan(plan: Plan) -> list[str]:
    """The plan as text: the decision, then the numbered steps."""
    d = RollbackDecision.from_dict(plan.facts)
    snap = d.snapshot
    lines = [f"rollback plan for {d.deployment} (incident {d.incident_id})",
             f"  running now   {d.from_version}" + ("" if d.running else " (not running)"),
             f"  bad window    since {d.bad_window.start or 'unknown'}",
             f"  symptom       {d.signals.symptom}",
             f"  target        {d.to_version} ({d.target_source})",
             "  snapshot      " + (f"{snap.id}, taken {human_age(snap.age_seconds)} ago while "
                                   f"{snap.version or '?'} ran, {human_bytes(snap.size)}" if snap
                                   else f"none: {d.snapshot_note}")]
    if snap:
        lines.append("  written since " + (", ".join(f"{t} +{n}" for t, n in sorted(d.rows_since_snapshot.items()))
                                           or "nothing"))
    lines.append(f"  layer         {'IMAGE + BRAIN' if d.restores_brain else 'IMAGE only'}: {d.layer_reason}")
    if d.volume:
        lines.append(f"  volume        {d.volume['provider']} snapshot {d.volume['snapshot']} of "
                     f"{d.volume['volume'].get('id')} is restored instead of the brain file")
    if d.trial:
        lines.append(f"  trial boot    {d.trial['how']}: {d.trial['reason']} ({d.trial['seconds']:.1f}s)")
        lines += [f"                | {line[:160]}" for line in d.trial.get("log_tail", [])[-3:]]
    lines.append(f"  impact        {d.signals.impact.why}")  # says "customer impact: …" or "no customer impact: …"
    lines.append("steps:")
    for number, step in enumerate(plan.steps, 1):
        lines += step.render(number)
    return lines


def _print_result(result: dict[str, Any]) -> None:
    ok = result["outcome"] == "rolled-back"
    typer.echo(f"{'rolled back' if ok else 'rolled back, NOT verified'}: {result['from_version']} -> "
               f"{result['to_version']} ({result['layer']} layer) in {result['total_seconds']:.1f}s")
    typer.echo(f"  why this layer  {result['layer_reason']}")
    if result.get("drain"):
        typer.echo(f"  drain           {'clean' if result['drain']['clean'] else 'FORCED'}: {result['drain']['detail']}")
    if result.get("salvage"):
        s = result["salvage"]
        typer.echo(f"  salvaged        {s['total']} rows -> {s['folder']}")
    if result.get("quarantine"):
        typer.echo(f"  quarantine      {result['quarantine']}")
    effects = result.get("effects") or {}
    if effects.get("table"):
        typer.echo(f"  external        {len(effects.get('rows') or [])} {effects['table']} rows in the bad window "
                   "(no rollback undoes them)")
    for row in (effects.get("rows") or [])[:10]:  # the effects table's own columns, in its order
        typer.echo("                  " + " ".join(str(v) for k, v in row.items() if k != "id" and v is not None)[:150])
    verify = result.get("verify") or {}
    for part in ("errors", "evals"):
        if verify.get(part):
            typer.echo(f"  verify {part:<8} {verify[part]['detail']}")
    for n in result.get("notifications") or []:
        typer.echo(f"  notified        {n['channel']}: {'ok' if n['ok'] else 'FAILED ' + n['detail']}")
    page = result.get("status_page") or {}
    typer.echo(f"  status page     {'updated' if page.get('updated') else 'not updated'} ({page.get('why', '')})")
    typer.echo(f"  incident        {result['incident_folder']}")
    for step in result.get("next_steps") or []:
        typer.echo(f"  next            {step}")


def _print_failure(run: RollbackRun, why: str) -> None:
    typer.echo(f"ROLLBACK FAILED: {why}", err=True)
    start = run.facts.get("start") or {}
    for line in (start.get("log_tail") or [])[-10:]:
        typer.echo(f"  | {line}", err=True)
    typer.echo(f"state: brain {run.target.brain}" + (f", quarantine {run.facts['quarantine']}"
                                                     if run.facts.get("quarantine") else "") +
               f"; evidence in {run.folder}", err=True)
    for step in run.next_steps("failed"):
        typer.echo(f"next: {step}", err=True)


def freeze(
    ctx: typer.Context,
    version: Optional[str] = typer.Argument(None, callback=version_arg, metavar="VERSION",
                                          help="Version to refuse in upgrades and switches."),
    reason: Optional[str] = typer.Option(None, "--reason", metavar="TEXT",
                                         help="Why, kept with the freeze and in the history."),
    list_frozen: bool = typer.Option(False, "--list", help="List the frozen versions instead: who froze each (by "
                                     "hand, a rollback, or backout.toml), when and why."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Freeze VERSION by hand: upgrades and switches refuse it until it is unfrozen.

    \b
    Examples:
      backout freeze 2.4.0 --reason "corrupts threads with emoji (INC-231)" --yes
      backout freeze --list"""
    if list_frozen:
        if version is not None or reason is not None:
            fail("freeze --list takes no VERSION and no --reason; see `backout freeze --help`", EXIT_USAGE)
        target = target_from(config, deployment, None)
        with handle_errors():
            _list_frozen(target, as_json)
        return
    for name, value in (("version", version), ("reason", reason)):
        if value is None:  # the same sentence as any other missing argument
            raise click_errors.MissingParameter(ctx=ctx, param=next(p for p in ctx.command.params if p.name == name))
    assert version is not None and reason is not None
    target = target_from(config, deployment, None)
    if dry_run:
        emit_json({"dry_run": True, "freeze": version}) if as_json else typer.echo(f"would freeze {version}")
        return
    confirm(f"freeze {version} for {target.deployment}?", yes)
    with handle_errors():
        earlier = freeze_version(target, version, reason, source="manual")
    if earlier is not None:
        said = f"{version} was frozen already ({_frozen_by(earlier)}: {earlier.get('reason')}); kept as it was"
        emit_json({"frozen": version, "already": True, "source": earlier.get("source"),
                   "reason": earlier.get("reason"), "detail": said}) if as_json else typer.echo(said)
        return
    emit_json({"frozen": version, "already": False, "source": "manual", "reason": reason}) if as_json else \
        typer.echo(f"{version} frozen: {reason}")


def _frozen_by(entry: dict[str, Any]) -> str:
    source = entry.get("source")
    return {"manual": "by hand", "rollback": "by a rollback", "config": "in backout.toml"}.get(str(source),
                                                                                               str(source or "?"))


def _list_frozen(target: Any, as_json: bool) -> None:
    """`freeze --list`: every frozen version with who froze it, when and why."""
    every = frozen_versions(target)
    rows = [{"version": v, "source": e.get("source"), "reason": e.get("reason"), "at": e.get("at"),
             "incident": e.get("incident")} for v, e in sorted(every.items())]
    if as_json:
        emit_json({"deployment": target.deployment, "frozen": rows})
        return
    if not rows:
        typer.echo(f"no version of {target.deployment} is frozen")
        return
    width = max(len("VERSION"), *(len(r["version"]) for r in rows))
    typer.echo(f"{'VERSION':<{width}}  {'FROZEN':<13}  {'SINCE':<20}  REASON")
    for r in rows:
        since = str(r["at"] or "-")[:19].replace("T", " ")
        incident = f" (incident {r['incident']})" if r["incident"] else ""
        typer.echo(f"{r['version']:<{width}}  {_frozen_by(r):<13}  {since:<20}  {r['reason'] or '-'}{incident}")


def unfreeze(
    version: str = typer.Argument(..., callback=version_arg, metavar="VERSION",
                                help="A version frozen by a rollback or by `backout freeze`."),
    reason: str = typer.Option(..., "--reason", metavar="TEXT", help="Why it is safe again, kept in the history."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Lift the freeze a rollback put on VERSION, saying why; recorded in the history.

    A version that is not frozen but was judged bad (it failed to start, or was rolled back from) is
    judged unknown again; one that is neither is left alone (exit 0, nothing to do).

    \b
    Examples:
      backout unfreeze 2.4.0 --reason "2.4.0 rebuilt with the fix for INC-231" --yes"""
    from backout.ledger import Ledger

    target = target_from(config, deployment, None)
    with handle_errors():
        frozen = frozen_versions(target).get(version)
        judged = Ledger(target).standing(version)
    if frozen is None and judged.standing != "bad":
        said = f"{version} is not frozen; nothing to do"
        emit_json({"unfrozen": None, "version": version, "frozen": False, "dry_run": dry_run, "detail": said}) \
            if as_json else typer.echo(said)
        return
    if dry_run:
        emit_json({"dry_run": True, "unfreeze": version}) if as_json else typer.echo(f"would unfreeze {version}")
        return
    confirm(f"unfreeze {version} for {target.deployment}?", yes)
    with handle_errors():
        was = unfreeze_version(target, version)
        why = was.get("reason") if was is not None else f"not frozen, but judged bad: {judged.why}"
        History(target.state_dir).append(Change(deployment=target.deployment, kind="unfreeze", from_version=version,
                                                to_version=None, outcome="ok", reason=reason,
                                                detail=f"unfrozen {version} (was: {why})"))
    if as_json:
        emit_json({"unfrozen": version, "was": was, "judged": judged.to_dict() if was is None else None,
                   "reason": reason})
    elif was is not None:
        typer.echo(f"{version} unfrozen (it was frozen {_frozen_by(was)}: {was.get('reason')})")
    else:
        typer.echo(f"{version} was not frozen, but it was judged bad ({judged.why}); it is unknown again")
