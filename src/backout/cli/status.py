"""`backout status`: what runs, its health, the brain, snapshots, the restore point, the last drill."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from backout.brain.manifest import SnapshotStore
from backout.brain.snapshot import verify_snapshot
from backout.cli.common import (BrainOpt, ConfigOpt, DeploymentOpt, IntoOpt, JsonOpt, emit_json, handle_errors,
                                human_age, human_bytes, target_from)
from backout.config import Target
from backout.flows.paths import rollback_journal
from backout.freeze import frozen_versions
from backout.history import History, load_restore_point
from backout.runtime.factory import runtime_for
from backout.signals.health import probe

__all__ = ["status", "collect_status"]


def _brain(target: Target) -> dict[str, Any]:
    sizes = {s or "db": target.brain.with_name(target.brain.name + s).stat().st_size
             for s in ("", "-wal") if target.brain.with_name(target.brain.name + s).exists()}
    return {"path": str(target.brain), "exists": target.brain.exists(), "bytes": sum(sizes.values()), "files": sizes}


def _snapshots(target: Target) -> dict[str, Any]:
    manifests = SnapshotStore(target.snapshot_dir).of(target.deployment)
    newest = manifests[0] if manifests else None
    return {"count": len(manifests), "newest": newest.id if newest else None,
            "newest_age_seconds": round(newest.age_seconds()) if newest else None,
            "stale": newest is None or newest.age_seconds() > target.max_age.total_seconds(),
            "max_age_seconds": target.max_age.total_seconds()}


def _restore_point(target: Target, verify: bool) -> dict[str, Any] | None:
    point = load_restore_point(target.state_dir, target.deployment)
    if point is None:
        return None
    store = SnapshotStore(target.snapshot_dir)
    snapshot_ok = store.db_path(point.snapshot_id).exists() and store.manifest_path(point.snapshot_id).exists()
    if verify and snapshot_ok:
        snapshot_ok = verify_snapshot(store, point.snapshot_id).ok
    version_ok = None
    if target.settings is not None and target.settings.runtime is not None:
        version_ok = runtime_for(target).is_available(point.version).ok
    return {**point.to_dict(), "snapshot_present": snapshot_ok, "snapshot_verified": verify and snapshot_ok,
            "version_available": version_ok, "ready": bool(snapshot_ok and version_ok is not False)}


DRILL_MAX_AGE_S = 90 * 86400  # the runbook asks for a drill every quarter


def _last_drill(target: Target) -> dict[str, Any] | None:
    reports = sorted((target.state_dir / "drills").glob("drill-*.json")) if (target.state_dir / "drills").is_dir() else []
    if not reports:
        return None
    import time

    age = round(time.time() - reports[-1].stat().st_mtime)
    return {"report": str(reports[-1]), "age_seconds": age, "stale": age > DRILL_MAX_AGE_S}


def collect_status(target: Target, verify: bool = False) -> dict[str, Any]:
    """Everything `backout status` shows, as data."""
    out: dict[str, Any] = {"deployment": target.deployment, "brain": _brain(target), "snapshots": _snapshots(target)}
    if target.settings is not None and target.settings.runtime is not None:
        out["runtime"] = target.settings.runtime
        out["running"] = runtime_for(target).current().to_dict()
        out["frozen"] = sorted(frozen_versions(target))
        pending = rollback_journal(target)
        out["pending_rollback"] = str(pending) if pending.exists() else None
    if target.health_url:
        out["health"] = probe(target.health_url, timeout=5).to_dict()
    out["restore_point"] = _restore_point(target, verify)
    changes = History(target.state_dir).entries(target.deployment)
    out["last_change"] = changes[-1] if changes else None
    out["last_drill"] = _last_drill(target)
    return out


def status(
    verify: bool = typer.Option(False, "--verify", help="Also verify the restore point's snapshot (reads it whole)."),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Show the version running, health, brain size, newest snapshot (STALE when too old), the restore
    point and whether it is ready, frozen versions and the last drill."""
    target = target_from(config, deployment, brain, into)
    with handle_errors():
        data = collect_status(target, verify)
    if as_json:
        emit_json(data)
        return
    typer.echo(f"deployment   {data['deployment']}" + (f" ({data['runtime']})" if "runtime" in data else ""))
    if "running" in data:
        run = data["running"]
        typer.echo(f"running      {run['version'] + ' (pid/id ' + str(run['id']) + ')' if run['running'] else 'nothing'}")
    if "health" in data:
        typer.echo(f"health       {data['health']['reason']}")
    b = data["brain"]
    typer.echo(f"brain        {b['path']} ({human_bytes(b['bytes']) if b['exists'] else 'missing'})")
    s = data["snapshots"]
    if s["newest"]:
        flag = "  STALE" if s["stale"] else ""
        typer.echo(f"snapshots    {s['count']}, newest {s['newest']} ({human_age(s['newest_age_seconds'])} old){flag}")
    else:
        typer.echo("snapshots    none  STALE (no snapshot to roll back to)")
    rp = data["restore_point"]
    if rp:
        typer.echo(f"restore pt   {rp['version']} + snapshot {rp['snapshot_id']}: {'ready' if rp['ready'] else 'NOT READY'}"
                   f" (snapshot {'verified' if rp['snapshot_verified'] else 'present' if rp['snapshot_present'] else 'MISSING'},"
                   f" version {'available' if rp['version_available'] else 'unknown' if rp['version_available'] is None else 'NOT AVAILABLE'})")
    else:
        typer.echo("restore pt   none recorded")
    if data.get("frozen"):
        typer.echo(f"frozen       {', '.join(data['frozen'])}")
    if data.get("pending_rollback"):
        typer.echo("rollback     INTERRUPTED: finish it with `backout rollback --resume`")
    d = data["last_drill"]
    warn = "  OLDER THAN 90 DAYS: rehearse with `backout drill`" if d and d["stale"] else ""
    typer.echo(f"last drill   {human_age(d['age_seconds']) + ' ago' + warn if d else 'never (rehearse with `backout drill`)'}")
