"""Guarded upgrade, the decision: pre-flight checks made before anything stops.

One operation at a time; the target is not frozen and can be started; the version running now is
healthy (or --force) and will still be startable afterwards; there is room for the snapshots; the
target's announced changes are loaded; the predicted restore time is held against the recovery-time
target. The result, an UpgradeDecision, is kept in the upgrade's journal (see `upgrade_run.py`).
"""

from __future__ import annotations

import time
from typing import Any

from backout.brain.manifest import SnapshotStore
from backout.config import Target
from backout.errors import EXIT_ENVIRONMENT, EXIT_REFUSED, BackoutError
from backout.flows.check import expected_changes
from backout.flows.decisions import UpgradeDecision
from backout.flows.journals import refuse_if_pending
from backout.flows.prove import prove_target
from backout.fsutil import free_bytes
from backout.runtime.base import Runtime

__all__ = ["UpgradeRefused", "preflight", "restore_throughput"]

ASSUMED_MB_S = 100.0  # restore throughput when no snapshot has been timed on this machine yet


class UpgradeRefused(BackoutError):
    """A pre-flight check failed: nothing was stopped."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(f"{message}; nothing was stopped", exit_code)


def _brain_bytes(target: Target) -> int:
    wal = target.brain.with_name(target.brain.name + "-wal")
    return sum(p.stat().st_size for p in (target.brain, wal) if p.exists())


def restore_throughput(target: Target) -> tuple[float, str]:
    """MB/s a copy of the brain runs at here (from the newest timed snapshot), and where it comes from."""
    for manifest in SnapshotStore(target.snapshot_dir).of(target.deployment):
        if manifest.duration_s > 0.2 and manifest.size > 8 * 2**20:
            return manifest.size / 2**20 / manifest.duration_s, f"measured by snapshot {manifest.id}"
    return ASSUMED_MB_S, "assumed (no snapshot of this brain has been timed yet)"


def _check_room(target: Target, needed: int) -> None:
    store = SnapshotStore(target.snapshot_dir)
    free = free_bytes(store.ensure())
    if free < 2 * needed:
        stale = store.leftover_bytes()  # left by killed snapshot runs: prune frees them
        hint = f"`backout snapshot prune` frees {stale // 2**20} MiB left by killed snapshot runs, " if stale else ""
        raise UpgradeRefused(f"not enough space for the restore point: two snapshots of {needed // 2**20} MiB need "
                             f"{2 * needed // 2**20} MiB in {store.folder}, {free // 2**20} MiB free; {hint}free "
                             "space or set snapshots.dir", EXIT_ENVIRONMENT)


def _current(target: Target, runtime: Runtime, force: bool) -> tuple[str, dict[str, Any] | None]:
    current = runtime.current()
    if not current.running or not current.version:
        raise UpgradeRefused(f"nothing is running on {target.deployment}: an upgrade starts from a running version "
                             "(use `backout switch VERSION` for a first start)")
    health = target.probe(timeout=10).to_dict() if target.health_url else None
    if health and not health["ok"] and not force:
        raise UpgradeRefused(f"{current.version} is not healthy ({health['reason']}): fix it first, or pass --force")
    return current.version, health


def preflight(target: Target, runtime: Runtime, version: str, force: bool = False,
              watch_seconds: float | None = None) -> UpgradeDecision:
    """Every check made before anything stops; the upgrade's decision, or UpgradeRefused."""
    settings = target.require_settings()
    refuse_if_pending(target, "upgrade")
    previous, health = _current(target, runtime, force)
    if previous == version:
        raise UpgradeRefused(f"{target.deployment} already runs {version}")
    available = runtime.is_available(previous)
    if not available.ok:
        raise UpgradeRefused(f"the version running now (the restore point) {previous} is not available: "
                             f"{available.detail}")
    proof = prove_target(target, runtime, version, force)
    size = _brain_bytes(target)
    _check_room(target, size)
    mb_s, source = restore_throughput(target)
    predicted = size / 2**20 / mb_s
    rto = settings.upgrade.rto.total_seconds() if settings.upgrade.rto else None
    expected = expected_changes(settings, version)
    warnings = [f"a brain restore would take about {predicted:.0f}s ({size // 2**20} MiB at {mb_s:.0f} MB/s, "
                f"{source}), over the recovery-time target of {rto:.0f}s"] if rto and predicted > rto else []
    if health and not health["ok"]:
        warnings.append(f"{previous} is not healthy ({health['reason']}); going ahead because of --force")
    warnings += [f"FORCED: {what}" for what in proof.forced]
    return UpgradeDecision(
        deployment=target.deployment, from_version=previous, to_version=version, health_before=health,
        brain_bytes=size, predicted_restore_s=round(predicted, 1),
        throughput={"mb_s": round(mb_s, 1), "source": source}, rto_s=rto, warnings=warnings,
        expected_changes={"metrics": sorted(expected.metrics), "eval_cases": sorted(expected.eval_cases)},
        watch_s=watch_seconds if watch_seconds is not None else settings.upgrade.watch.total_seconds(),
        decided_at=time.time(), forced=bool(force and (proof.forced or (health and not health["ok"]))),
        proof=proof.to_dict())
