"""Guarded upgrade, carried out: the steps between the pre-flight and the watch window.

baseline → online snapshot (early insurance) → drain → final snapshot of the quiescent brain (the
restore point: taken before the new version ever starts, so a brain rollback loses nothing written
before the switch) → record and pin the restore point → migrate, start, wait healthy → regression
evals → pre-arm the rollback (stage the restore point's copy beside the brain; trial-boot the
previous version on the new brain) → record. Journaled like a rollback. If a step fails after the
drain and before the new version is healthy, the rollback runs at once (`rollback_now`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from backout.brain.manifest import SnapshotError, SnapshotStore
from backout.errors import EXIT_REFUSED, BackoutError
from backout.evidence import Redactor, secrets_of
from backout.brain.restore import stage_snapshot
from backout.brain.snapshot import create_snapshot
from backout.config import Target
from backout.flows.check import base_url, capture_baseline
from backout.flows.decisions import UpgradeDecision
from backout.flows.paths import watch_state
from backout.flows.rollback import RollbackRequest
from backout.flows.rollback_run import rollback_now
from backout.flows.switch import moved_on, brain_stamp, drain_facts, start_until_healthy
from backout.fsutil import atomic_write_json, free_bytes
from backout.history import Change, History, RestorePoint, config_hash, deployment_state, save_restore_point
from backout.journal import Journal
from backout.plan import Command, Plan, Step, execute, failed_step, performed_commands, timeline
from backout.progress import NO_PROGRESS, Progress
from backout.runtime.base import Runtime
from backout.runtime.trial import remember_trial, schema_key, trial_boot, trial_commands, trial_possible
from backout.signals.evals import run_evals

__all__ = ["UpgradeRun"]

# A failure in these steps leaves the service down or on a version that is not healthy: roll back at once.
# Before them nothing was stopped; after them the new version serves (the watch window decides).
_ROLL_BACK_WHEN_FAILING = ("drain", "snapshot-final", "volume-snapshot", "restore-point", "start")


class UpgradeRun:
    """One upgrade: its pre-flight decision (from the journal) and its steps."""

    def __init__(self, target: Target, runtime: Runtime, journal: Journal, progress: Progress = NO_PROGRESS) -> None:
        self.target = target
        self.settings = target.require_settings()
        self.runtime = runtime
        self.journal = journal
        self.d = UpgradeDecision.from_dict(journal.operation["decision"])
        self.store = SnapshotStore(target.snapshot_dir)
        self.progress = progress
        self.redactor = Redactor(secrets_of(self.settings))
        journal.redact = self.redactor.obj  # start failures keep the service's log lines

    @property
    def facts(self) -> dict[str, Any]:
        """What the steps fixed so far."""
        return self.journal.facts

    def stale(self) -> str | None:
        """Why resuming this journal now would be wrong (another version runs since it was written), or None."""
        if self.journal.done("drain") or self.facts.get("rolling_back"):
            return None
        return moved_on(self.runtime, self.d.from_version, "upgrade")

    def plan(self) -> Plan:
        """The steps, each with its commands and files."""
        d, drain = self.d, self.settings.drain_timeout.total_seconds()
        snapshots = str(self.store.folder)
        stop = self.runtime.stop_commands(drain)
        start = self.runtime.start_commands(d.to_version, migrate=True)
        evals = f" ({self.settings.evals.command})" if self.settings.evals else " (none configured)"
        return Plan("upgrade", d.to_dict(), [
            Step("baseline", f"Record the baseline of {d.from_version}: health, requests, regression evals{evals}",
                 files=[str(deployment_state(self.target.state_dir, self.target.deployment) / "signals")],
                 action=self.baseline),
            Step("snapshot-online", "Online snapshot of the live brain, verified (early insurance)",
                 files=[str(self.target.brain), snapshots], action=self.snapshot_online),
            Step("drain", f"Drain and stop {d.from_version} (up to {drain:g}s, then killed)", stop,
                 action=self.drain),
            Step("snapshot-final", "Final snapshot of the quiescent brain, verified and pinned: the restore point",
                 files=[str(self.target.brain), snapshots], action=self.snapshot_final),
            *self._volume_steps(),
            Step("restore-point", f"Record the restore point ({d.from_version}, final snapshot, schema stamp)",
                 files=[str(deployment_state(self.target.state_dir, self.target.deployment) / "restore-point.json")],
                 action=self.restore_point),
            Step("start", f"Migrate (if configured) and start {d.to_version}; wait until healthy (up to "
                 f"{self.settings.boot_timeout.total_seconds():g}s)", start, action=self.start),
            Step("evals", f"Run the regression evals against {d.to_version} and compare with the baseline",
                 action=self.evals),
            Step("arm", "Pre-arm the rollback: stage a verified copy of the restore point beside the brain (a brain "
                 f"rollback becomes a rename) and trial-boot {d.from_version} on a copy of the new brain",
                 self._trial_commands(), files=[str(self.target.brain.parent)], action=self.arm),
            Step("record", "Record the upgrade in the history and open the watch window",
                 files=[str(self.target.state_dir / "history.jsonl"), str(watch_state(self.target))],
                 action=self.record),
        ])

    def _trial_commands(self) -> list[Command]:
        """The arm step's trial boot of the previous version, when one is possible."""
        if trial_possible(self.target) is not None:
            return []
        return trial_commands(self.target, self.d.from_version)

    def _volume_steps(self) -> list[Step]:
        volume = self.settings.volume
        if volume is None:
            return []
        return [Step("volume-snapshot", f"Snapshot the data volume ({volume.provider}) of the quiescent brain, "
                     "tagged with the deployment, version, restore point and schema head", action=self.volume_snapshot)]

    # -- the steps -----------------------------------------------------------------------------

    def baseline(self) -> dict[str, Any]:
        """The good version's requests, health and evals, stored for the verdict."""
        try:
            baseline = capture_baseline(self.target, self.runtime, with_evals=True)
        except BackoutError as exc:  # upgrading away from a version judged bad: its traffic is no baseline
            if exc.exit_code != EXIT_REFUSED:
                raise
            return {"baseline": None, "detail": f"the stored baseline is kept: {exc}"}
        return {"baseline": baseline.summary(), "detail": f"{len(baseline.requests)} requests"
                + (f", evals {sum(baseline.evals.cases.values())}/{len(baseline.evals.cases)}" if baseline.evals else "")}

    def _snapshot(self, label: str, pin: bool) -> dict[str, Any]:
        manifest = create_snapshot(self.store, self.target.brain, self.target.deployment, label=label, pin=pin,
                                   version=self.d.from_version, progress=self.progress)
        return {"id": manifest.id, "size": manifest.size, "seconds": manifest.duration_s,
                "schema_stamp": manifest.schema_stamp, "tables": {t: m["rows"] for t, m in manifest.tables.items()}}

    def snapshot_online(self) -> dict[str, Any]:
        """Early insurance, while the previous version still serves."""
        snap = self._snapshot(f"before {self.d.to_version} (online)", pin=False)
        return {"snapshot_online": snap, "detail": f"{snap['id']} in {snap['seconds']:.1f}s"}

    def drain(self) -> dict[str, Any]:
        """SIGTERM, the drain, SIGKILL at the deadline."""
        return drain_facts(self.runtime, self.settings.drain_timeout.total_seconds())

    def snapshot_final(self) -> dict[str, Any]:
        """The restore point's snapshot: the brain as the previous version left it."""
        snap = self._snapshot(f"restore point before {self.d.to_version}", pin=True)
        return {"snapshot_final": snap, "detail": f"{snap['id']} in {snap['seconds']:.1f}s (pinned)"}

    def volume_snapshot(self) -> dict[str, Any]:
        """The volume-level copy of the restore point (the brain is consistent: the service is stopped)."""
        from backout.volumes.factory import volume_for

        provider = volume_for(self.target)
        assert provider is not None
        final = self.facts["snapshot_final"]
        snap = provider.snapshot({"deployment": self.target.deployment, "version": self.d.from_version,
                                  "restore-point": final["id"],
                                  "schema-head": str(final["schema_stamp"].get("head"))})
        return {"volume_snapshot": snap.to_dict(), "detail": f"{provider.name} snapshot {snap.id} ({snap.state})"}

    def restore_point(self) -> dict[str, Any]:
        """Record the restore point durably (its snapshot is pinned)."""
        snap = self.facts["snapshot_final"]
        digest = self.runtime.image_digest(self.d.from_version)
        volume = (self.facts.get("volume_snapshot") or {}).get("id")
        point = RestorePoint(self.target.deployment, self.d.from_version, snap["id"], snap["schema_stamp"],
                             config_hash(self.target.config_path), digest, volume_snapshot=volume)
        save_restore_point(self.target.state_dir, point)
        return {"restore_point": {"version": point.version, "snapshot_id": point.snapshot_id, "image_digest": digest},
                "detail": f"{point.version} + {point.snapshot_id}"}

    def start(self) -> dict[str, Any]:
        """Migrate if configured, start the new version, wait for health; record the schema after."""
        wait = start_until_healthy(self.runtime, self.d.to_version, self.settings.boot_timeout.total_seconds(),
                                   migrate=True)
        return {"start": wait.to_dict(), "switched_at": time.time(), "schema_after": brain_stamp(self.target),
                "detail": f"healthy after {wait.seconds:.1f}s"}

    def evals(self) -> dict[str, Any]:
        """The regression evals against the new version (the watch window's verdict counts them)."""
        if self.settings.evals is None:
            return {"evals": None, "detail": "no evals configured"}
        try:
            run = run_evals(self.settings.evals, base_url(self.target), self.d.to_version)
        except BackoutError as exc:  # the watch window still judges errors, latency and health
            return {"evals": None, "detail": f"evals could not run: {exc}"}
        return {"evals": {"cases": run.cases, "ts": run.ts, "version": run.version, "source": run.source},
                "detail": f"{sum(run.cases.values())}/{len(run.cases)} passed" +
                          (f"; failing: {', '.join(run.failed)}" if run.failed else "")}

    def arm(self) -> dict[str, Any]:
        """Stage the restore point beside the brain and learn whether the previous version reads the new brain."""
        snap = self.facts["snapshot_final"]
        notes = []
        staged = None
        if free_bytes(self.target.brain.parent) < 2 * int(snap["size"]):  # the new version needs room to write
            notes.append("not staged (less than twice its size free beside the brain); a brain rollback will copy "
                         "the snapshot instead")
        else:
            try:
                staged = str(stage_snapshot(self.store, snap["id"], self.target.brain, self.progress))
            except (SnapshotError, OSError) as exc:  # pre-arming is an optimisation: never fail the upgrade for it
                notes.append(f"not staged ({exc}); a brain rollback will copy the snapshot instead")
        trial = None
        if trial_possible(self.target) is None:
            key = schema_key(self.target.brain)
            result = trial_boot(self.target, self.runtime, self.d.from_version)
            remember_trial(self.target, self.d.from_version, key, result)
            trial = result.to_dict()
            notes.append(f"{self.d.from_version} on the new brain: {result.reason}")
        return {"staged": staged, "trial": trial, "detail": "; ".join(notes) or "staged"}

    def record(self) -> dict[str, Any]:
        """The history line, and the watch window's state."""
        History(self.target.state_dir).append(self._change("ok"))
        atomic_write_json(watch_state(self.target), {
            "deployment": self.target.deployment, "version": self.d.to_version,
            "previous": self.d.from_version, "switched_at": self.facts["switched_at"],
            "until": self.facts["switched_at"] + self.d.watch_s, "evals": self.facts.get("evals"),
            "staged": self.facts.get("staged"), "restore_point": self.facts["restore_point"]})
        return {}

    def _change(self, outcome: str, detail: str = "") -> Change:
        final = self.facts.get("snapshot_final") or {}
        return Change(deployment=self.target.deployment, kind="upgrade", from_version=self.d.from_version,
                      to_version=self.d.to_version, outcome=outcome,
                      schema_before={"head": final["schema_stamp"].get("head")} if final else None,
                      schema_after=self.facts.get("schema_after"), snapshot_before=final.get("id"),
                      drain=self.facts.get("drain"), health=self.facts.get("start"), detail=self.redactor.text(detail),
                      forced=self.d.forced,
                      from_healthy=bool(self.d.health_before is None or self.d.health_before.get("ok")))

    # -- running it ----------------------------------------------------------------------------

    def run(self, on_step: Callable[[Step, str], None] | None = None,
            on_rollback: Callable[[Step, str], None] | None = None) -> dict[str, Any]:
        """The steps; a failure that left the service down rolls back at once. Returns the upgrade's result."""
        if self.facts.get("rolling_back"):  # a crash during that rollback: finish it
            return self._roll_back(str(self.facts["rolling_back"]), on_rollback)
        try:
            execute(self.plan(), self.journal, on_step)
        except Exception as exc:
            failed = failed_step(self.journal)
            History(self.target.state_dir).append(self._change("failed", str(exc)))
            if failed not in _ROLL_BACK_WHEN_FAILING:
                if failed in ("baseline", "snapshot-online"):
                    self.journal.finish()  # nothing was stopped: nothing to resume
                raise
            self.journal.remember(rolling_back=str(exc) or type(exc).__name__)
            return self._roll_back(str(exc), on_rollback)
        self.journal.finish()
        return self.result("watching", "")

    def _roll_back(self, why: str, on_rollback: Callable[[Step, str], None] | None) -> dict[str, Any]:
        """Back to the previous version at once; the upgrade's journal stays until the rollback's exists."""
        final = self.facts.get("snapshot_final") or self.facts.get("snapshot_online") or {}
        rollback = rollback_now(self.target, self.runtime, RollbackRequest(
            to_version=self.d.from_version, snapshot_id=final.get("id"), from_version=self.d.to_version,
            reason=f"the upgrade to {self.d.to_version} failed: {why}"), on_rollback, self.progress)
        self.journal.finish()
        outcome = "rolled-back" if rollback["result"]["outcome"] == "rolled-back" else "failed"
        return self.result(outcome, why, rollback)

    def result(self, outcome: str, why: str, rollback: dict[str, Any] | None = None) -> dict[str, Any]:
        """The upgrade's result as JSON."""
        return {"outcome": outcome, "why": why, "from_version": self.d.from_version,
                "to_version": self.d.to_version, "timings": {e["step"]: e["seconds"] for e in timeline(self.journal)},
                "restore_point": self.facts.get("restore_point"), "snapshot_final": self.facts.get("snapshot_final"),
                "drain": self.facts.get("drain"), "evals": self.facts.get("evals"), "staged": self.facts.get("staged"),
                "trial": self.facts.get("trial"), "rollback": rollback["result"] if rollback else None,
                "commands": performed_commands(self.journal)}
