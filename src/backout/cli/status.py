"""`backout status`: what runs, its health, the brain, snapshots, the restore point, the last drill."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer

from backout.brain.manifest import SnapshotStore
from backout.brain.snapshot import verify_snapshot
from backout.cli.common import (BrainOpt, ConfigOpt, DeploymentOpt, IntoOpt, JsonOpt, emit_json, handle_errors,
                                human_age, human_bytes, target_from)
from backout.config import Target
from backout.freeze import frozen_versions
from backout.history import History
from backout.ledger import Ledger, NoRollback, Running, pending_operations, running_version
from backout.runtime.base import Runtime
from backout.runtime.env import MissingSecret
from backout.runtime.factory import runtime_for

__all__ = ["status", "collect_status"]

T = TypeVar("T")


def _readable(unread: list[dict[str, str]], part: str, read: Callable[[], T]) -> T | None:
    """`read()`; None, and a note of the part and the secret it needs, when backout's environment lacks that
    secret (the rest of the status is still shown)."""
    try:
        return read()
    except MissingSecret as exc:
        unread.append({"part": part, "needs": exc.name, "why": str(exc)})
        return None


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


def _restore_point(target: Target, ledger: Ledger, runtime: Runtime | None, verify: bool,
                   unread: list[dict[str, str]]) -> dict[str, Any] | None:
    point = ledger.point
    if point is None:
        return None
    store = SnapshotStore(target.snapshot_dir)
    snapshot_ok = store.db_path(point.snapshot_id).exists() and store.manifest_path(point.snapshot_id).exists()
    if verify and snapshot_ok:
        snapshot_ok = verify_snapshot(store, point.snapshot_id).ok
    version_ok = _readable(unread, f"whether {point.version} can still start",
                           lambda: runtime.is_available(point.version).ok) if runtime is not None else None
    judged = ledger.standing(point.version)
    return {**point.to_dict(), "snapshot_present": snapshot_ok, "snapshot_verified": verify and snapshot_ok,
            "version_available": version_ok, "standing": judged.to_dict(),
            "ready": bool(snapshot_ok and version_ok is not False and judged.standing != "bad")}


def _rollback_target(target: Target, ledger: Ledger, running: Running) -> dict[str, Any]:
    """What `backout rollback` would return to now (the same function it calls), or why there is none."""
    try:
        chosen = ledger.rollback_target(running)
    except NoRollback as exc:
        return {"version": None, "source": None, "why_not": str(exc)}
    return {"version": chosen.version, "source": chosen.source, "snapshot_id": chosen.snapshot_id, "why_not": None}


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
    out: dict[str, Any] = {"deployment": target.deployment, "brain": _brain(target), "snapshots": _snapshots(target),
                           "unread": []}
    found = target.detected_profile
    out["profile"] = {"name": found.profile.name, "how": found.how}
    ledger = Ledger(target)
    runtime = runtime_for(target) if target.settings is not None and target.settings.runtime is not None else None
    if runtime is not None:
        out["runtime"] = runtime.name
        running = _readable(out["unread"], "what runs", lambda: running_version(target, runtime))
        if running is not None:
            out["running"] = running.to_dict()
            out["rollback_target"] = _rollback_target(target, ledger, running)
        frozen = frozen_versions(target)
        out["frozen"] = sorted(frozen)
        out["frozen_by"] = {v: frozen[v].get("source") for v in sorted(frozen)}  # manual, rollback or config
    out["pending"] = [p.to_dict() for p in pending_operations(target)]
    if target.health_url:
        out["health"] = target.probe(timeout=5).to_dict()
    out["restore_point"] = _restore_point(target, ledger, runtime, verify, out["unread"])
    out["versions"] = [j.to_dict() for j in ledger.judgements()]
    changes = History(target.state_dir).entries(target.deployment)
    out["last_change"] = changes[-1] if changes else None
    out["last_drill"] = _last_drill(target)
    return out


def _running_line(data: dict[str, Any]) -> str:
    """What runs, said so that it cannot contradict the health line."""
    run = data["running"]
    if run["running"]:
        return f"{run['version']} (pid/id {run['id']})"
    answers = data.get("health", {}).get("ok")
    last = f"; {run['version']} ran last" if run["version"] else ""
    if answers:
        return f"nothing started by backout{last}, BUT something answers on the health URL (not under backout's control)"
    return f"nothing{last}"


def status(
    verify: bool = typer.Option(False, "--verify", help="Also verify the restore point's snapshot (reads it whole)."),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Show the version running, health, brain size, newest snapshot (STALE when too old), the restore
    point and whether it is ready, frozen versions and the last drill.

    Anything left unfinished (an interrupted upgrade, rollback or restore) is listed with the command
    that finishes it.

    \b
    Examples:
      backout status
      backout status --config /etc/backout/backout.toml --deployment engine --json"""
    target = target_from(config, deployment, brain, into)
    with handle_errors():
        data = collect_status(target, verify)
    if as_json:
        emit_json(data)
        return
    typer.echo(f"deployment   {data['deployment']}" + (f" ({data['runtime']})" if "runtime" in data else ""))
    if "running" in data:
        typer.echo(f"running      {_running_line(data)}")
    elif "runtime" in data:
        typer.echo("running      not read (see below)")
    if "health" in data:
        typer.echo(f"health       {data['health']['reason']}")
    b = data["brain"]
    typer.echo(f"brain        {b['path']} ({human_bytes(b['bytes']) if b['exists'] else 'missing'})")
    typer.echo(f"profile      {data['profile']['name']} ({data['profile']['how']})")
    s = data["snapshots"]
    if s["newest"]:
        flag = "  STALE" if s["stale"] else ""
        typer.echo(f"snapshots    {s['count']}, newest {s['newest']} ({human_age(s['newest_age_seconds'])} old){flag}")
    else:
        typer.echo("snapshots    none  STALE (no snapshot to roll back to)")
    rp = data["restore_point"]
    if rp:
        standing = rp["standing"]["standing"]
        typer.echo(f"restore pt   {rp['version']} + snapshot {rp['snapshot_id']}: {'ready' if rp['ready'] else 'NOT READY'}"
                   f" (snapshot {'verified' if rp['snapshot_verified'] else 'present' if rp['snapshot_present'] else 'MISSING'},"
                   f" version {'available' if rp['version_available'] else 'not checked' if rp['version_available'] is None else 'NOT AVAILABLE'}"
                   + (f", JUDGED BAD: {rp['standing']['why']}" if standing == "bad" else "") + ")")
    else:
        typer.echo("restore pt   none recorded")
    target_ = data.get("rollback_target")
    if target_:
        typer.echo(f"rollback to  {target_['version']} ({target_['source']})" if target_["version"]
                   else f"rollback to  nothing: {target_['why_not']}")
    if data.get("frozen"):
        by = {"manual": "by hand", "rollback": "by a rollback", "config": "in backout.toml"}
        typer.echo("frozen       " + ", ".join(f"{v} ({by.get(str(data.get('frozen_by', {}).get(v)), '?')})"
                                               for v in data["frozen"]))
    for pending in data["pending"]:
        typer.echo(f"PENDING      {pending['detail']}: finish with `{pending['finish']}`"
                   + (f" or abandon with `{pending['abandon']}`" if pending["abandon"] else ""))
    d = data["last_drill"]
    warn = "  OLDER THAN 90 DAYS: rehearse with `backout drill`" if d and d["stale"] else ""
    typer.echo(f"last drill   {human_age(d['age_seconds']) + ' ago' + warn if d else 'never (rehearse with `backout drill`)'}")
    for part in data["unread"]:  # what needed a secret backout's environment lacks (its name, never a value)
        typer.echo(f"not read     {part['part']}: {part['why']}")
