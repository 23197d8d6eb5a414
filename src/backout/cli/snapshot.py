"""`backout snapshot`: create, list, show, verify, pin, prune and restore brain snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import httpx
import typer

from backout.flows.journals import refuse_if_pending
from backout.brain.manifest import Manifest, SnapshotError, SnapshotStore
from backout.brain.restore import RestoreRequest, restore_commands, restore_snapshot
from backout.brain.restore import restore_journals
from backout.brain.retention import OPERATOR_PIN, PrunePlan, named_in, plan_prune, plan_unpin
from backout.brain.snapshot import create_snapshot, verify_snapshot
from backout.cli.common import (BrainOpt, ConfigOpt, DeploymentOpt, DryRunOpt, IntoOpt, JsonOpt, YesOpt, confirm,
                                emit_json, handle_errors, human_age, human_bytes, or_word, progress_bar, target_from,
                                yes_no)
from backout.cli.framework import Typer
from backout.commands import recording
from backout.config import Target
from backout.errors import EXIT_FAILED, EXIT_REFUSED, BackoutError
from backout.flows.paths import rollback_journal, upgrade_journal, watch_state
from backout.history import deployment_state, load_restore_point
from backout.ledger import Ledger
from backout.lock import operation_lock

__all__ = ["app"]

app = Typer(
    help="Verified, consistent snapshots of a live brain, and atomic restore with quarantine. "
    "Works without a config: --brain PATH and --into DIR, like the sqlite3 shell.\n\n"
    "\b\nExamples:\n"
    "  backout snapshot create --label before-2.4.0\n"
    "  backout snapshot list --brain ./brain.sqlite --into ./snapshots",
    no_args_is_help=True,
)

_ID_HELP = ("A snapshot id, as `backout snapshot list` shows them. A unique beginning of one works too, and "
            "latest names the newest.")


def _store(target: Target) -> SnapshotStore:
    return SnapshotStore(target.snapshot_dir)


def _resolve(target: Target, ref: str) -> str:
    """The whole id that ID names (an id, a unique beginning of one, or latest); exit 2 naming the candidates."""
    with handle_errors():
        return _store(target).resolve(ref, target.deployment, target.brain)


def _running_version(target: Target) -> str | None:
    """The version running: what the deployment's runtime started (when it runs), else what the service
    reports on its health URL (a `version` field), else unknown."""
    if target.settings is not None and target.settings.runtime is not None:
        from backout.runtime.factory import runtime_for

        try:
            current = runtime_for(target).current()
        except BackoutError:
            current = None
        if current is not None and current.running and current.version:
            return current.version
    if not target.health_url:
        return None
    try:
        body = httpx.get(target.health_url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return str(version) if version else None


def _row(m: Manifest, target: Target) -> dict[str, object]:
    age = m.age_seconds()
    return {"id": m.id, "created_at": m.created_at, "age_seconds": round(age), "size": m.size,
            "label": m.label, "version": m.version, "pinned": m.pinned,
            "stale": age > target.max_age.total_seconds(), "schema_head": m.schema_stamp.get("head")}


@app.command()
def create(
    label: Optional[str] = typer.Option(None, "--label", metavar="TEXT", help="A note kept in the manifest."),
    pin: bool = typer.Option(False, "--pin", help="Never prune this snapshot."),
    version: Optional[str] = typer.Option(None, "--version-running", metavar="VERSION",
                                           help="Version the service runs now (recorded)."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Take an online snapshot of the live brain (the service keeps running), verify it, record it.

    \b
    Examples:
      backout snapshot create --label before-2.4.0 --pin
      backout snapshot create --brain /data/brain.sqlite --into /data/snapshots"""
    target = target_from(config, deployment, brain, into)
    if dry_run:
        plan = {"action": "snapshot create", "brain": str(target.brain), "into": str(target.snapshot_dir),
                "deployment": target.deployment, "label": label, "pinned": pin}
        emit_json(plan) if as_json else typer.echo(
            f"would snapshot {target.brain} into {target.snapshot_dir} (deployment {target.deployment})")
        return
    with handle_errors(), progress_bar(not as_json) as bar:
        manifest = create_snapshot(_store(target), target.brain, target.deployment, label=label, pin=pin,
                                   version=version or _running_version(target), progress=bar)
    if as_json:
        emit_json(manifest.model_dump(mode="json"))
        return
    typer.echo(f"snapshot {manifest.id}: {human_bytes(manifest.size)}, integrity {manifest.integrity_check}, "
               f"schema {_schema_text(manifest.schema_stamp)}, {manifest.duration_s:.2f}s "
               f"-> {_store(target).db_path(manifest.id)}")


def _schema_text(stamp: dict[str, Any]) -> str:
    """'head 2 (schema_migrations)', or 'no migration recorded' for a brain without a migration ledger."""
    head = stamp.get("head")
    return f"head {head} ({stamp.get('head_source')})" if head is not None else "no migration recorded"


@app.command("list")
def list_(
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """List snapshots, newest first: age, size, label, version, pinned; stale ones are flagged.

    Only complete snapshots of this brain are listed; broken ones and leftovers of killed runs are warned about.

    \b
    Examples:
      backout snapshot list
      backout snapshot list --brain ./brain.sqlite --into ./snapshots --json"""
    target = target_from(config, deployment, brain, into)
    store = _store(target)
    manifests = store.of(target.deployment, target.brain)
    rows = [_row(m, target) for m in manifests]
    unreadable = [str(item) for item in store.manifests() if isinstance(item, SnapshotError)]
    broken = [{"id": m.id, "problem": why} for m, why in store.broken(target.deployment, target.brain)]
    leftovers = [str(p) for p in store.leftovers()]
    if as_json:
        emit_json({"deployment": target.deployment, "folder": str(store.folder),
                   "max_age_seconds": target.max_age.total_seconds(), "snapshots": rows,
                   "unreadable": unreadable, "broken": broken, "incomplete": leftovers})
        return
    if not rows:
        typer.echo(f"no snapshots in {store.folder}")
    else:
        typer.echo(f"{'ID':<25} {'AGE':>8} {'SIZE':>10} {'VERSION':<10} {'PIN':<3} LABEL")
        for m, r in zip(manifests, rows):
            stale = "  STALE" if r["stale"] else ""
            typer.echo(f"{m.id:<25} {human_age(m.age_seconds()):>8} {human_bytes(m.size):>10} "
                       f"{m.version or '-':<10} {'yes' if m.pinned else '':<3} {m.label or ''}{stale}")
        if any(r["stale"] for r in rows):
            typer.echo(f"STALE: older than the maximum age ({human_age(target.max_age.total_seconds())})")
    for line in unreadable:
        typer.echo(f"unreadable: {line}")
    for item in broken:
        typer.echo(f"BROKEN {item['id']}: {item['problem']}; not usable (`backout snapshot prune` removes it)")
    for path in leftovers:
        typer.echo(f"incomplete (left by a killed snapshot run, not usable; prune cleans it): {path}")


@app.command()
def show(
    snapshot_id: str = typer.Argument(..., metavar="ID", help=_ID_HELP),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Show one snapshot's manifest: source, schema stamp, tables and their high-water marks.

    \b
    Examples:
      backout snapshot show 20261204T101500Z-3f9a1c
      backout snapshot show latest --json"""
    target = target_from(config, deployment, brain, into)
    snapshot_id = _resolve(target, snapshot_id)
    with handle_errors():
        manifest = _store(target).load(snapshot_id)
    if as_json:
        emit_json(manifest.model_dump(mode="json"))
        return
    typer.echo(f"id          {manifest.id}\ndeployment  {manifest.deployment}\ncreated     {manifest.created_at} "
               f"({human_age(manifest.age_seconds())} ago)\nsource      {manifest.source}\nversion     "
               f"{manifest.version or '-'}\nlabel       {manifest.label or '-'}\npinned      {yes_no(manifest.pinned)}\n"
               f"size        {human_bytes(manifest.size)}\nsha256      {manifest.sha256}\nintegrity   "
               f"{manifest.integrity_check}\nschema      {_schema_text(manifest.schema_stamp)}, fingerprint "
               f"{or_word(manifest.schema_stamp.get('fingerprint'), 'not recorded')[:16]}…\nmethod      {manifest.method}")
    typer.echo(f"{'TABLE':<28} {'ROWS':>10} {'MAX ROWID':>10}")
    for table, mark in manifest.tables.items():
        typer.echo(f"{table:<28} {mark['rows']:>10} {str(mark['max_rowid'] or '-'):>10}")


@app.command()
def verify(
    snapshot_id: str = typer.Argument(..., metavar="ID", help=_ID_HELP),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Check a snapshot: sha256, integrity_check, and the manifest agreeing with the file. Exit 1 if not.

    \b
    Examples:
      backout snapshot verify 20261204T101500Z-3f9a1c
      backout snapshot verify 20261204T10"""
    target = target_from(config, deployment, brain, into)
    store = _store(target)
    snapshot_id = _resolve(target, snapshot_id)
    with handle_errors(), progress_bar(not as_json) as bar:
        store.check_id(snapshot_id)
        report = verify_snapshot(store, snapshot_id, bar)
    if as_json:
        emit_json(report.to_dict())
    else:
        for name, ok, detail in report.checks:
            typer.echo(f"{'ok  ' if ok else 'FAIL'} {name:<16} {detail}")
        typer.echo(f"snapshot {snapshot_id}: {'verified' if report.ok else 'FAILED verification'}")
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _set_pin(snapshot_id: str, pinned: bool, target: Target, dry_run: bool, as_json: bool) -> None:
    store = _store(target)
    snapshot_id = _resolve(target, snapshot_id)
    with handle_errors():
        manifest = store.load(snapshot_id)
        if not dry_run:
            manifest.pinned = pinned
            if pinned:  # pinned by a person: prune's restore-point retention never unpins it
                manifest.pinned_by = OPERATOR_PIN
            else:
                (manifest.model_extra or {}).pop("pinned_by", None)
            store.save(manifest)
    word = ("would be " if dry_run else "") + ("pinned" if pinned else "unpinned")
    emit_json({"id": snapshot_id, "pinned": pinned, "dry_run": dry_run}) if as_json else typer.echo(
        f"snapshot {snapshot_id} {word}")


@app.command()
def pin(snapshot_id: str = typer.Argument(..., metavar="ID", help=_ID_HELP), dry_run: bool = DryRunOpt, yes: bool = YesOpt,
        as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt, deployment: Optional[str] = DeploymentOpt,
        brain: Optional[Path] = BrainOpt, into: Optional[Path] = IntoOpt) -> None:
    """Pin a snapshot so prune never deletes it (harmless, so no confirmation is asked). A restore point pinned
    here is never unpinned by prune's restore-point retention either.

    \b
    Examples:
      backout snapshot pin 20261204T101500Z-3f9a1c
      backout snapshot pin latest"""
    _set_pin(snapshot_id, True, target_from(config, deployment, brain, into), dry_run, as_json)


@app.command()
def unpin(snapshot_id: str = typer.Argument(..., metavar="ID", help=_ID_HELP), dry_run: bool = DryRunOpt, yes: bool = YesOpt,
          as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt, deployment: Optional[str] = DeploymentOpt,
          brain: Optional[Path] = BrainOpt, into: Optional[Path] = IntoOpt) -> None:
    """Unpin a snapshot (prune may then delete it once it is not among the last N).

    \b
    Examples:
      backout snapshot unpin 20261204T101500Z-3f9a1c --yes"""
    target = target_from(config, deployment, brain, into)
    snapshot_id = _resolve(target, snapshot_id)
    if not dry_run:
        confirm(f"unpin snapshot {snapshot_id} (prune may then delete it)?", yes)
    _set_pin(snapshot_id, False, target, dry_run, as_json)


def _needed(target: Target) -> dict[str, str]:
    """Snapshot ids something unfinished or the restore point still needs, with the reason."""
    files = {rollback_journal(target): "needed by the interrupted rollback",
             upgrade_journal(target): "needed by the interrupted upgrade",
             watch_state(target): "needed by the upgrade's watch window",
             **{path: "needed by a pending restore" for path in restore_journals(target.state_dir)}}
    needed = named_in(files)
    point = load_restore_point(target.state_dir, target.deployment)
    if point is not None:
        needed.setdefault(point.snapshot_id, "restore point")
    return needed


def _plan(target: Target, store: SnapshotStore, keep_last: int, keep_points: int) -> PrunePlan:
    """Old restore points to unpin first, then what the usual rules keep and delete (as if they were unpinned)."""
    broken = {m.id: why for m, why in store.broken(target.deployment, target.brain)}
    manifests, needed = store.of(target.deployment, target.brain), _needed(target)
    unpin, held = plan_unpin(Ledger(target).restore_points(), manifests, keep_points, needed)
    after = [m.model_copy(update={"pinned": False}) if m.id in unpin else m for m in manifests]
    plan = plan_prune(after, keep_last, {**held, **needed}, broken)
    plan.unpin = unpin
    plan.leftovers, plan.leftover_bytes = store.leftovers(), store.leftover_bytes()
    return plan


def _unpin(store: SnapshotStore, plan: PrunePlan) -> None:
    for sid in plan.unpin:
        manifest = store.load(sid)
        manifest.pinned = False
        store.save(manifest)


def _print_plan(plan: PrunePlan) -> None:
    for sid, why in plan.unpin.items():
        typer.echo(f"unpin   {sid}  ({why})")
    for sid, why in plan.keep.items():
        typer.echo(f"keep    {sid}  ({why})")
    for sid in plan.delete:
        typer.echo(f"delete  {sid}")
    for sid, why in plan.broken.items():
        typer.echo(f"delete  {sid}  (broken: {why})")
    for path in plan.leftovers:
        typer.echo(f"clean   {path}  (left by a killed snapshot run)")


@app.command()
def prune(
    keep_last: Optional[int] = typer.Option(None, "--keep-last", min=1, metavar="N",
                                            help="Keep the N newest (default: the config's keep_last, or 10)."),
    keep_restore_points: Optional[int] = typer.Option(
        None, "--keep-restore-points", min=1, metavar="N",
        help="Keep the restore points of the last N promoted upgrades pinned (default: the config's "
        "keep_restore_points, or 3)."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Delete old snapshots: keeps the last N, everything pinned, the restore point and whatever an unfinished
    rollback, upgrade, watch window or restore names; also deletes broken snapshots and the leftovers of killed
    snapshot runs. Only snapshots of this deployment's brain are touched (a folder may be shared).

    Every upgrade pins its restore point; prune first unpins those older than the restore points of the last
    keep_restore_points promoted upgrades (never the current restore point, one an upgrade still in its watch
    window or an interrupted rollback or restore names, nor one pinned with `backout snapshot pin`), then
    applies the rules above. --dry-run lists what it would unpin and why.

    \b
    Examples:
      backout snapshot prune --keep-last 5 --dry-run
      backout snapshot prune --keep-last 5 --keep-restore-points 2 --yes"""
    target = target_from(config, deployment, brain, into)
    store = _store(target)
    keep_last, keep_points = keep_last or target.keep_last, keep_restore_points or target.keep_restore_points
    plan = _plan(target, store, keep_last, keep_points)
    if as_json and (dry_run or plan.empty):
        emit_json({**plan.to_dict(), "dry_run": dry_run})
        return
    if not as_json:
        _print_plan(plan)
    if dry_run or plan.empty:
        typer.echo("nothing unpinned or deleted" + (" (dry run)" if dry_run else ""))
        return
    unpin = f"unpin {len(plan.unpin)} old restore point(s), " if plan.unpin else ""
    confirm(f"{unpin}delete {len(plan.delete) + len(plan.broken)} snapshot(s) and {len(plan.leftovers)} leftover "
            f"file(s) from {store.folder}?", yes)
    with handle_errors(), operation_lock(deployment_state(target.state_dir, target.deployment), "prune"):
        plan = _plan(target, store, keep_last, keep_points)  # again, under the lock: journals may have come
        _unpin(store, plan)
        for sid in [*plan.delete, *plan.broken]:
            store.remove(sid)
        plan.leftovers = store.clean_leftovers()
    emit_json({**plan.to_dict(), "dry_run": False}) if as_json else typer.echo(
        (f"unpinned {len(plan.unpin)} old restore point(s); " if plan.unpin else "")
        + f"deleted {len(plan.delete) + len(plan.broken)} snapshot(s) and {len(plan.leftovers)} leftover file(s)")


def _refuse_if_runtime_runs(target: Target, service_stopped: bool) -> None:
    """With a configured runtime, ask it (the lock probe alone cannot see into every container); what it knows
    wins over --service-stopped, which only covers a runtime that cannot be asked."""
    if target.settings is None or target.settings.runtime is None:
        return
    from backout.runtime.factory import runtime_for

    try:
        current = runtime_for(target).current()
    except Exception as exc:  # noqa: BLE001 - whatever stops the runtime answering, backout cannot know
        if service_stopped:
            return
        raise SnapshotError(f"cannot tell whether {target.deployment} is running ({exc}); make sure it is stopped, "
                            "then pass --service-stopped", EXIT_REFUSED) from None
    if current.running:
        raise SnapshotError(f"{target.deployment} is running {current.version} ({current.ident}): stop it first "
                            "(`backout stop` drains it); --service-stopped cannot override what the runtime says",
                            EXIT_REFUSED)


@app.command()
def restore(
    snapshot_id: str = typer.Argument(..., metavar="ID", help=_ID_HELP),
    reason: str = typer.Option("manual restore", "--reason", metavar="TEXT",
                                 help="Why; names the quarantine folder."),
    service_stopped: bool = typer.Option(False, "--service-stopped",
                                         help="Vouch that the service is stopped when backout cannot tell (the "
                                         "runtime cannot be asked, the brain's locks cannot be probed); never "
                                         "overrides a runtime or a lock that says it runs."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Restore a snapshot over the brain. The service must be stopped; the current brain goes to quarantine.

    Journaled: if interrupted, run the same command again to finish.

    \b
    Examples:
      backout snapshot restore 20261204T101500Z-3f9a1c --dry-run
      backout snapshot restore 20261204T101500Z-3f9a1c --reason "bad import at 14:02" --yes"""
    target = target_from(config, deployment, brain, into)
    store = _store(target)
    snapshot_id = _resolve(target, snapshot_id)
    req = RestoreRequest(store, snapshot_id, target.brain, target.deployment, target.state_dir, reason,
                         service_stopped)
    with handle_errors():
        manifest = store.load(snapshot_id)
        # An interrupted upgrade or rollback owns the brain until it is finished or abandoned.
        refuse_if_pending(target, "restore", allow=("restore", "watch"))
    if dry_run:  # the very commands the restore performs (and records), with the snapshot's size and age
        commands = restore_commands(req)
        if as_json:
            emit_json({"dry_run": True, "snapshot": snapshot_id, "size": manifest.size,
                       "age_seconds": round(manifest.age_seconds()), "commands": [c.to_dict() for c in commands]})
            return
        typer.echo(f"restore snapshot {snapshot_id} ({human_bytes(manifest.size)}, {human_age(manifest.age_seconds())} "
                   f"old) over {target.brain}:")
        for i, c in enumerate(commands, 1):
            typer.echo(f"{i}. {c.purpose}\n   $ {c.shell()}")
        return
    confirm(f"replace {target.brain} with snapshot {snapshot_id} (the current brain goes to quarantine)?", yes)
    # One operation per deployment: no switch may start the service while the brain is replaced.
    with handle_errors(), operation_lock(deployment_state(target.state_dir, target.deployment), "restore"):
        _refuse_if_runtime_runs(target, service_stopped)
        refuse_if_pending(target, "restore", allow=("restore", "watch"))  # again, under the lock
        with progress_bar(not as_json) as bar, recording() as performed:
            result = restore_snapshot(req, bar)
    if as_json:
        emit_json({**result.to_dict(), "commands": [c.to_dict() for c in performed]})
    else:
        typer.echo(f"restored {snapshot_id} over {target.brain}" + (" (resumed)" if result.resumed else ""))
        if result.quarantine:
            typer.echo(f"displaced brain kept in {result.quarantine}")
