"""Rollback, the decision: which version to return to, which snapshot, and which layer.

Everything here only reads (the trial boot runs on a throwaway copy). The result is a plain dict,
the rollback's *decision*, kept in the journal so a resumed run carries out the same plan; the
steps that carry it out are in `rollback_run.py`.

Layer choice: *image only* when the brain's schema stamp equals the restore point's, or differs only
additively and the target is known to tolerate that (`rollback.additive_tolerant`); otherwise a trial
boot of the target on a copy of the current brain settles it: healthy → image only; refused or
crashed → image + brain.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from backout.brain.manifest import Manifest, SnapshotError, SnapshotStore, same_brain, utcnow
from backout.brain.schema import SchemaError, SchemaStamp, diff, stamp
from backout.brain.tables import connect_readonly, quote_ident, user_tables
from backout.config import Target
from backout.evidence import Redactor, secrets_of
from backout.flows.badwindow import bad_window_facts
from backout.flows.decisions import BadWindow, Layer, RollbackDecision, SchemaFacts, Signals, SnapshotChoice
from backout.flows.journals import refuse_if_pending
from backout.history import STARTS, History, load_restore_point
from backout.ledger import Ledger, NoRollback, Running, running_version
from backout.runtime.base import Runtime
from backout.runtime.trial import TrialResult, cached_trial, remember_trial, schema_key, trial_boot, trial_possible

__all__ = ["Mode", "NoRollback", "RollbackRequest", "decide_rollback", "incident_id_for"]

Mode = Literal["auto", "image", "brain"]


@dataclass(frozen=True)
class RollbackRequest:
    """What the operator asked for."""

    to_version: str | None = None
    snapshot_id: str | None = None
    reason: str = ""
    mode: Mode = "auto"
    from_version: str | None = None  # the bad version, when the caller knows it (a failed upgrade's target)


def incident_id_for(version: str | None, now: datetime | None = None) -> str:
    """`20261127T011500Z-2.4.0-errors`: sortable, and says what was rolled back."""
    stamp_ = (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", version or "unknown").strip("-.")[:40] or "unknown"
    return f"{stamp_}-{slug}"


def _usable(store: SnapshotStore, manifest: Manifest) -> bool:
    """Cheap check: passed integrity_check when taken, and the file is there at its size (hashed at restore)."""
    path = store.db_path(manifest.id)
    return manifest.integrity_check == "ok" and path.is_file() and path.stat().st_size == manifest.size


def _snapshot_of_version(store: SnapshotStore, deployment: str, version: str, brain: Path) -> Manifest | None:
    for manifest in store.of(deployment, brain):  # newest first; a shared folder may hold another brain's
        if manifest.version == version and _usable(store, manifest):
            return manifest
    return None


def _switched_at(target: Target, version: str | None) -> str | None:
    """When the version now running was switched to (the start of the bad window)."""
    for entry in reversed(History(target.state_dir).entries(target.deployment)):
        if entry.get("to_version") == version and entry.get("kind") in STARTS:
            return str(entry["at"])
    return None


def _choose_snapshot(store: SnapshotStore, target: Target, version: str, named: str | None) -> tuple[Manifest | None, str]:
    """The snapshot a brain rollback would restore, or None with why not."""
    if named:
        try:
            manifest = store.load(named)
        except SnapshotError as exc:
            return None, str(exc)
        if manifest.deployment != target.deployment:
            return None, f"snapshot {named} belongs to deployment {manifest.deployment!r}"
        if not same_brain(manifest.source, target.brain):
            return None, f"snapshot {named} was taken from the brain {manifest.source}, not {target.brain}"
        if not _usable(store, manifest):
            return None, f"snapshot {named} is missing, truncated or failed integrity_check when taken"
        return manifest, f"snapshot {named}"
    newest = _snapshot_of_version(store, target.deployment, version, target.brain)
    if newest is None:
        return None, f"no verified snapshot of {target.deployment} taken while {version} ran"
    return newest, f"the newest verified snapshot taken while {version} ran"


def _stamp_now(brain: Path) -> SchemaStamp | None:
    try:
        return stamp(brain) if brain.exists() else None
    except SchemaError:
        return None


def _rows_since(brain: Path, manifest: Manifest | None) -> dict[str, int]:
    """Rows per table the brain gained since the snapshot (by rowid above its high-water mark)."""
    if manifest is None or not brain.exists():
        return {}
    out: dict[str, int] = {}
    try:
        conn = connect_readonly(brain)
        try:
            for table in user_tables(conn):
                mark = manifest.tables.get(table, {})
                high = mark.get("max_rowid")
                where = "" if high is None and not mark else f" WHERE rowid > {int(high or 0)}"
                try:
                    count = int(conn.execute(f"SELECT count(*) FROM {quote_ident(table)}{where}").fetchone()[0])
                except sqlite3.OperationalError:  # WITHOUT ROWID
                    continue
                if count:
                    out[table] = count
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return {}
    return out


def _layer(target: Target, runtime: Runtime, req: RollbackRequest, version: str, point: dict[str, Any] | None,
           now: SchemaStamp | None) -> tuple[Layer, str, dict[str, Any] | None, dict[str, Any] | None]:
    """(layer, why, trial evidence, schema diff)."""
    changes = diff(SchemaStamp.from_dict(point), now).to_dict() if point and now else None
    if req.mode != "auto":
        return req.mode, f"chosen with --mode {req.mode}", None, changes
    settings = target.require_settings()
    if changes is not None and changes["kind"] == "none":
        return "image", f"the brain's schema is unchanged since the snapshot (head {now.head if now else '?'})", None, changes
    if changes is not None and changes["kind"] == "additive" and settings.rollback.additive_tolerant:
        return ("image", f"only additive schema changes since the snapshot ({_summary(changes)}), and "
                f"rollback.additive_tolerant says {version} reads those", None, changes)
    if now is None and target.brain.exists():
        return "brain", "the current brain cannot be read as SQLite: restoring it is the only way back", None, changes
    why_not = trial_possible(target)
    said = f"schema {changes['kind']} since the snapshot ({_summary(changes)})" if changes else "schema unknown"
    if why_not:
        return "brain", f"{said}; no trial boot ({why_not}): restoring the brain is the safe choice", None, changes
    fingerprint = schema_key(target.brain)
    trial = cached_trial(target, version, fingerprint)
    if trial is None:
        trial = trial_boot(target, runtime, version)
        remember_trial(target, version, fingerprint, trial, Redactor(secrets_of(settings)).obj)
    unproven = _writes_not_proven(changes, target, trial)
    if trial.healthy and unproven:
        first = unproven[0]
        return "brain", (f"{said}; a trial boot of {version} on a copy of the current brain is {trial.reason}, but "
                         f"{first['detail']} ({first['table']}) breaks {version}'s writes and no smoke request wrote "
                         f"to {first['table']}: restoring the brain is the safe choice (add a writing smoke request "
                         "for that table to the profile to let a trial decide)"), trial.to_dict(), changes
    if trial.healthy:
        return "image", f"{said}, but a trial boot of {version} on a copy of the current brain is {trial.reason}", \
            trial.to_dict(), changes
    return "brain", f"{said}; a trial boot of {version} on a copy of the current brain failed: {trial.reason}", \
        trial.to_dict(), changes


def _writes_not_proven(changes: dict[str, Any] | None, target: Target, trial: TrialResult) -> list[dict[str, Any]]:
    """Schema changes that break only the old version's writes, on tables no smoke request of this trial wrote
    to: a healthy trial that only read does not show them."""
    if not changes:
        return []
    ran = trial.smoke is not None and trial.smoke.get("ok") and not trial.smoke.get("skipped")
    written = {t.lower() for r in target.profile.smoke if r.method != "GET" for t in r.tables} if ran else set()
    return [c for c in changes["changes"] if c.get("breaks") == "writes" and c["table"].lower() not in written]


def _summary(changes: dict[str, Any] | None) -> str:
    if not changes:
        return "unknown"
    items = [c["detail"] for c in changes["changes"][:3]]
    more = len(changes["changes"]) - len(items)
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def _blocked(target: Target, version: str, why_snapshot: str, changes: dict[str, Any] | None, layer_why: str) -> str:
    dropped = [f"{c['name']}: {c['detail']}" for c in (changes or {}).get("changes", []) if c.get("loses_data")]
    data = f"a migration dropped data {version} expects ({'; '.join(dropped[:3])}) and " if dropped else ""
    return (f"no rollback is possible: {data}{version} cannot serve the current brain ({layer_why}), and there is "
            f"{why_snapshot}. Data recovery instead: the brain {target.brain} is untouched; keep a copy "
            f"(`backout snapshot create`), look in {target.state_dir / 'quarantine'} for displaced brains, and try "
            f"`sqlite3 {target.brain} .recover | sqlite3 recovered.sqlite` on a copy")


def decide_rollback(target: Target, runtime: Runtime, req: RollbackRequest) -> RollbackDecision:
    """Everything the rollback will do, decided up front (the brain and the service are only read)."""
    refuse_if_pending(target, "rollback", allow=("upgrade", "watch"))  # a rollback closes those
    current = running_version(target, runtime)
    if req.from_version:
        current = Running(req.from_version, current.running, current.ident, current.since)
    bad = current.version
    chosen = Ledger(target).rollback_target(current, req.to_version, req.snapshot_id)
    version = chosen.version
    if version == bad and current.running:
        raise NoRollback(f"{target.deployment} already runs {version}; nothing to roll back")
    available = runtime.is_available(version)
    if not available.ok:
        raise NoRollback(f"cannot roll back to {version}: {available.detail}; nothing was stopped")
    store = SnapshotStore(target.snapshot_dir)
    manifest, why_snapshot = _choose_snapshot(store, target, version, chosen.snapshot_id)
    point = load_restore_point(target.state_dir, target.deployment)
    point_stamp = point.schema_stamp if point and manifest and point.snapshot_id == manifest.id else None
    then = point_stamp or (manifest.schema_stamp if manifest else None)
    now = _stamp_now(target.brain)
    layer, why, trial, changes = _layer(target, runtime, req, version, then, now)
    started = datetime.now(timezone.utc)
    window = BadWindow(_switched_at(target, bad), started.isoformat(timespec="milliseconds"))
    volume = _volume_choice(target, layer, manifest, point, version)
    blocked = _blocked(target, version, why_snapshot, changes, why) \
        if layer == "brain" and manifest is None and volume is None else None
    decision = RollbackDecision(
        incident_id=incident_id_for(bad, started), deployment=target.deployment, from_version=bad, to_version=version,
        target_source=chosen.source, mode=req.mode, reason=req.reason, running=current.running,
        snapshot=_snapshot_choice(store, manifest), snapshot_note=why_snapshot,
        restore_point=point.to_dict() if point else None, bad_window=window,
        rows_since_snapshot=_rows_since(target.brain, manifest), layer=layer, layer_reason=why, trial=trial,
        schema=SchemaFacts({"head": (then or {}).get("head")},
                           {"head": now.head if now else None, "fingerprint": now.fingerprint if now else None},
                           changes),
        signals=Signals.from_dict(bad_window_facts(target, runtime, window.start, req.reason)),
        decided_at=time.time(), volume=volume, blocked=blocked)
    redactor = Redactor(secrets_of(target.require_settings()))  # it goes into the journal: logs may quote a secret
    return RollbackDecision.from_dict(redactor.obj(decision.to_dict()))


def _volume_choice(target: Target, layer: str, manifest: Manifest | None, point: Any,
                   version: str) -> dict[str, Any] | None:
    """For a brain rollback on a deployment whose volume snapshots replace brain snapshots: which one (the
    restore point's, else the newest completed one taken while `version` ran)."""
    volume = target.require_settings().volume
    if layer != "brain" or volume is None or volume.use != "instead":
        return None
    from backout.volumes.factory import volume_for

    provider = volume_for(target)
    assert provider is not None
    chosen = point.volume_snapshot if point is not None and manifest and point.snapshot_id == manifest.id else None
    done = [s for s in provider.snapshots(target.deployment) if s.state == "completed"]
    if chosen is None and manifest is not None:
        chosen = next((s.id for s in done if s.tags.get("restore-point") == manifest.id), None)
    if chosen is None and manifest is None:  # with a brain snapshot, only its own moment will do (salvage marks)
        chosen = next((s.id for s in done if s.tags.get("version") == version), None)
    if chosen is None:
        return None
    return {"provider": provider.name, "snapshot": chosen, "volume": provider.describe(),
            "plan": [c.to_dict() for c in provider.plan_restore(chosen)]}


def _snapshot_choice(store: SnapshotStore, manifest: Manifest | None) -> SnapshotChoice | None:
    if manifest is None:
        return None
    return SnapshotChoice(manifest.id, manifest.created_at, round(manifest.age_seconds(), 1), manifest.version,
                          manifest.size, str(store.db_path(manifest.id)), manifest.pinned)
