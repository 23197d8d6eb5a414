"""Rollback, carried out: the plan's steps and what each does, run through the journal.

announce → diagnostics → drain → [restore → salvage] → start → verify → freeze → notify →
postmortem → record. Each step is safe to run again after a crash (notifications are sent at least
once). If the target never becomes healthy the run stops there, posts the failure and leaves the
brain and the quarantine as they are; `--resume` tries the start again, it never loops by itself.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from backout.brain.manifest import SnapshotStore
from backout.brain.restore import RestoreRequest, pending_restore, restore_commands, restore_snapshot
from backout.brain.salvage import SUMMARY_FILE, SalvageError, salvage
from backout.config import Target
from backout.evidence import (DiagnosticsInput, Redactor, collect_diagnostics, file_ticket, migration_history,
                              secrets_of, write_postmortem, write_regression_case)
from backout.flows.badwindow import effects_since, epoch
from backout.flows.paths import rollback_journal, upgrade_journal, watch_state
from backout.flows.switch import moved_on, drain_facts, start_until_healthy
from backout.flows.check import base_url, policy_of, request_samples, state_files
from backout.freeze import freeze_version
from backout.fsutil import atomic_write_json, ensure_private_dir
from backout.history import Change, History, deployment_state, now_iso
from backout.errors import BackoutError
from backout.flows.decisions import RollbackDecision
from backout.flows.rollback import NoRollback, RollbackRequest, decide_rollback
from backout.journal import Journal
from backout.lock import operation_lock
from backout.notify import Message, Notifier
from backout.plan import Plan, Step, StepFailed, execute, timeline
from backout.progress import NO_PROGRESS, Progress
from backout.commands import Command, perform
from backout.runtime.base import Runtime
from backout.signals.evals import run_evals

__all__ = ["RollbackRun", "incident_folder", "new_journal", "rollback_now"]


def incident_folder(target: Target, incident_id: str) -> Path:
    """`<state>/incidents/<id>/`: the evidence, the salvage and the postmortem of one rollback."""
    return target.state_dir / "incidents" / incident_id


class RollbackRun:
    """One rollback: its decision (from the journal), its steps, and the incident record it keeps."""

    def __init__(self, target: Target, runtime: Runtime, journal: Journal, progress: Progress = NO_PROGRESS) -> None:
        self.target = target
        self.settings = target.require_settings()
        self.runtime = runtime
        self.journal = journal
        self.d = RollbackDecision.from_dict(journal.operation["decision"])
        self.folder = incident_folder(target, self.d.incident_id)
        self.notifier = Notifier(self.settings.notify)
        self.redactor = Redactor(secrets_of(self.settings))
        journal.redact = self.redactor.obj
        self.progress = progress

    @property
    def facts(self) -> dict[str, Any]:
        """What the steps fixed so far."""
        return self.journal.facts

    def stale(self) -> str | None:
        """Why resuming this journal now would be wrong (another version runs since it was written), or None."""
        if self.journal.done("drain"):
            return None
        return moved_on(self.runtime, self.d.from_version, "rollback")

    # -- the plan ------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """The steps, each with its commands and files; brain steps only for a brain rollback."""
        d, brain = self.d, self.d.layer == "brain"
        steps = [self._announce_step(), self._diagnostics_step(), self._drain_step()]
        # Salvage reads only the quarantined file: it runs once the target serves again.
        steps += [self._restore_step(), self._start_step(), self._salvage_step()] if brain else [self._start_step()]
        steps += [self._verify_step(), self._freeze_step(), self._notify_step(), self._postmortem_step(),
                  Step("record", "Record the rollback in the history", files=[str(self.target.state_dir / "history.jsonl")],
                       action=self.record)]
        return Plan("rollback", d.to_dict(), steps)

    def _announce_step(self) -> Step:
        channels = ", ".join(self.notifier.configured) or "no channels configured"
        return Step("announce", f"Announce \"{self.announcement()}\" to {channels}; status page: "
                    f"{self._status_page_plan()}", action=self.announce)

    def _status_page_plan(self) -> str:
        impact = self.d.signals.impact
        if self.settings.notify.statuspage is None:
            return "none configured"
        return f"open an incident ({impact.why})" if impact.real else f"not updated ({impact.why})"

    def _diagnostics_step(self) -> Step:
        return Step("diagnostics", "Capture the bad window's evidence before anything stops (secrets redacted)",
                    files=[str(self.folder / "diagnostics"), str(self.folder / "diagnostics.tar.gz")],
                    action=self.diagnostics)

    def _drain_step(self) -> Step:
        drain = self.settings.drain_timeout.total_seconds()
        return Step("drain", f"Drain and stop {self.d.from_version} (up to {drain:g}s, then killed)",
                    self.runtime.stop_commands(drain), action=self.drain)

    def _restore_step(self) -> Step:
        snap = self.d.snapshot
        volume = self.d.volume
        if volume:
            commands = [Command.from_dict(c) for c in volume["plan"]] + self._initialize_commands()
            return Step("restore", f"Restore the data volume from {volume['provider']} snapshot {volume['snapshot']} "
                        "(the displaced volume is kept, marked quarantine)", commands, action=self.restore_volume)
        if snap is None:
            return Step("restore", f"Restore the brain: NOT POSSIBLE ({self.d.snapshot_note})")
        return Step("restore", f"Restore snapshot {snap.id} (taken {_age(snap.age_seconds)} before the "
                    f"decision, while {snap.version or '?'} ran) over the brain; the current brain goes to "
                    "quarantine first (hard link) and the swap is one rename",
                    restore_commands(self._restore_request()), files=[str(self.target.brain), snap.path],
                    action=self.restore)

    def _salvage_step(self) -> Step:
        return Step("salvage", "Salvage the bad window's rows from the quarantined brain; list its external effects",
                    files=[str(self.folder / "salvage")], action=self.salvage)

    def _start_step(self) -> Step:
        boot = self.settings.boot_timeout.total_seconds()
        return Step("start", f"Start {self.d.to_version} and wait until healthy (up to {boot:g}s)",
                    self.runtime.start_commands(self.d.to_version), action=self.start)

    def _verify_step(self) -> Step:
        window = self.settings.rollback.verify_window.total_seconds()
        evals = f", and the eval cases that passed before pass again ({self.settings.evals.command})" \
            if self.settings.evals else ""
        return Step("verify", f"Verify: health ok, error rate within the baseline over {window:g}s{evals}",
                    action=self.verify)

    def _freeze_step(self) -> Step:
        return Step("freeze", f"Freeze {self.d.from_version}: `backout upgrade` refuses it until "
                    f"`backout unfreeze {self.d.from_version} --reason …`",
                    files=[str(deployment_state(self.target.state_dir, self.target.deployment) / "frozen.json")],
                    action=self.freeze)

    def _notify_step(self) -> Step:
        return Step("notify", "Post the all-clear once health is ok and errors have recovered (or the failure); "
                    "resolve the status page incident if one was opened", action=self.notify)

    def _postmortem_step(self) -> Step:
        tracker = f"; file it in the tracker ({self.settings.tracker.kind})" if self.settings.tracker else ""
        return Step("postmortem", f"Write the postmortem and a regression eval case{tracker}",
                    files=[str(self.folder / "postmortem.md"), str(self.folder / "regression")],
                    action=self.postmortem)

    # -- the steps -----------------------------------------------------------------------------

    def announcement(self) -> str:
        """The first message: "Rolling back to v2.3.1 due to <symptom>."."""
        return f"Rolling back {self.target.deployment} to v{self.d.to_version} due to {self.d.signals.symptom}."

    def _message(self, kind: str, text: str) -> Message:
        fields = {"from": str(self.d.from_version), "to": str(self.d.to_version), "layer": self.d.layer}
        return Message(kind, self.redactor.text(text), self.target.deployment, self.d.incident_id, fields)  # type: ignore[arg-type]

    def announce(self) -> dict[str, Any]:
        """Tell every channel; open a status page incident when customers were really affected."""
        deliveries = [x.to_dict() for x in self.notifier.broadcast(self._message("rollback-started", self.announcement()))]
        page: dict[str, Any] = {"updated": False, "why": self.d.signals.impact.why}
        if self.settings.notify.statuspage is not None and self.d.signals.impact.real:
            delivery, incident = self.notifier.status_page_open(
                f"Degraded service: {self.target.deployment}", self.redactor.text(self.announcement()))
            page = {"updated": delivery.ok, "incident": incident, "why": self.d.signals.impact.why,
                    "detail": delivery.detail}
        elif self.settings.notify.statuspage is None:
            page["why"] = "no status page configured"
        else:
            page["why"] = "skipped: " + page["why"]
        return {"notifications": deliveries, "status_page": page}

    def diagnostics(self) -> dict[str, Any]:
        """Logs, health, verdict, schema and versions of the bad window, in a folder and a .tar.gz."""
        ensure_private_dir(self.folder)
        since = epoch(self.d.bad_window.start, time.time() - 3600)
        logs = self.runtime.logs(since=datetime.fromtimestamp(since, timezone.utc))
        health = [s.__dict__ | {"failing": list(s.failing)} for s in state_files(self.target).health_since(since)]
        if self.target.health_url:
            health.append({"ts": time.time(), **self.target.probe(timeout=5).to_dict()})
        snap = self.d.snapshot
        table = self.target.profile.effects_table
        mark = (SnapshotStore(self.target.snapshot_dir).load(snap.id).tables.get(table or "", {}).get("max_rowid")
                if snap else None)
        calls = effects_since(self.target.brain, table, mark, self.d.bad_window.start)
        tarball = collect_diagnostics(self.folder, DiagnosticsInput(
            incident_id=self.d.incident_id, deployment=self.target.deployment, logs=logs, health=health,
            verdict=self.d.signals.verdict, baseline=self.d.signals.baseline,
            schema_restore_point=self.d.schema.snapshot, schema_now=self.d.schema.now,
            schema_diff=self.d.schema.diff, migrations=migration_history(self.target.brain),
            versions=self._versions(), extra={"signals": self.d.signals, "trial": self.d.trial}),
            self.redactor)
        return {"diagnostics": str(tarball), "effects": _effects(table, calls), "log_lines": len(logs)}

    def _versions(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from": self.d.from_version, "to": self.d.to_version, "runtime": self.runtime.name}
        images = {v: {"image": self.runtime.image(v), "id": self.runtime.image_digest(v)}
                  for v in (self.d.from_version, self.d.to_version) if v and self.runtime.image(v)}
        if images:
            out["images"] = images
        return out

    def drain(self) -> dict[str, Any]:
        """SIGTERM, the drain, SIGKILL at the deadline; say which."""
        return drain_facts(self.runtime, self.settings.drain_timeout.total_seconds())

    def _finished_restore(self) -> Path | None:
        """The quarantine of this rollback's restore, if it completed before a crash."""
        for marker in (self.target.state_dir / "quarantine").glob("*/quarantine.json"):
            try:
                data = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("reason") == self._restore_reason() and data.get("replaced_by_snapshot") == \
                    self._snapshot_id() and not pending_restore(self.target.state_dir, self.target.brain):
                return marker.parent
        return None

    def _snapshot_id(self) -> str:
        """The snapshot of a brain rollback (one without is blocked before it starts)."""
        assert self.d.snapshot is not None
        return self.d.snapshot.id

    def _volume(self) -> dict[str, Any]:
        """The volume snapshot a volume rollback restores."""
        assert self.d.volume is not None
        return self.d.volume

    def _restore_request(self) -> RestoreRequest:
        return RestoreRequest(SnapshotStore(self.target.snapshot_dir), self._snapshot_id(), self.target.brain,
                              self.target.deployment, self.target.state_dir, reason=self._restore_reason(),
                              finish_with="`backout rollback --resume`")

    def _restore_reason(self) -> str:
        return f"rollback {self.d.incident_id}"

    def restore(self) -> dict[str, Any]:
        """Quarantine the current brain and put the snapshot in its place (journaled, verified)."""
        snap = self.d.snapshot
        assert snap is not None  # a brain rollback without a snapshot is blocked before it starts
        done = self._finished_restore()
        if done is not None:  # finished just before a crash: never restore (and quarantine) twice
            return {"quarantine": str(done), "detail": f"restored {snap.id} (found after a restart)"}
        result = restore_snapshot(self._restore_request(), self.progress)
        return {"quarantine": str(result.quarantine) if result.quarantine else None,
                "detail": f"restored {snap.id}; displaced brain in {result.quarantine}"}

    def _brain_in_quarantine(self) -> Path:
        volume = self.settings.volume
        if self.facts.get("volume_restore") and volume is not None and volume.path is not None:
            return self.target.brain.relative_to(volume.path.resolve())  # the whole folder was displaced
        return Path(self.target.brain.name)

    def _initialize_commands(self) -> list[Command]:
        """Volumes restored from cloud snapshots load blocks lazily: the brain is read once before it serves."""
        volume = self.settings.volume
        if volume is None or volume.provider == "local" or not volume.initialize:
            return []
        return [Command("read the brain once, so its blocks are fetched before the service needs them",
                        ("dd", f"if={self.target.brain}", "of=/dev/null", "bs=1M"), kind="read")]

    def _initialize_brain(self) -> str:
        """Volumes restored from cloud snapshots load blocks lazily: read the brain once before it serves."""
        from backout.volumes.ebs import initialize_file

        if not self.target.brain.exists():
            return (f"the brain {self.target.brain} is not visible here yet (mount the new volume): read it once "
                    "before starting, e.g. `cat brain.sqlite > /dev/null`, or its first queries will be slow")
        (command,) = self._initialize_commands()
        read = perform(command, lambda: initialize_file(self.target.brain))
        return f"read the brain once ({read // 2**20} MiB) so its blocks are loaded before it serves"

    def restore_volume(self) -> dict[str, Any]:
        """The volume instead of the brain file: the service is already drained, the start step follows."""
        from backout.volumes import Hooks
        from backout.volumes.factory import volume_for

        provider = volume_for(self.target)
        assert provider is not None and self.settings.volume is not None
        local = self.settings.volume.provider == "local"
        done = self._finished_volume_restore(provider, local)  # finished just before a crash: not twice
        if done is None:
            self.journal.remember(volume_restore_started=True)
            done = provider.restore(self._volume()["snapshot"], Hooks(lambda: None, lambda: None))
        if not local:
            if not self.target.brain.exists():
                raise StepFailed("restore", f"volume {done.new_volume} is attached but the brain is not visible at "
                                 f"{self.target.brain}: mount it, then `backout rollback --resume`")
            if self.settings.volume.initialize:
                done.warnings.append(self._initialize_brain())
        return {"volume_restore": done.to_dict(), "quarantine": done.quarantined_volume if local else None,
                "detail": f"volume {done.new_volume} in place; displaced: {done.quarantined_volume}"
                          + "".join(f"; {w}" for w in done.warnings)}

    def _finished_volume_restore(self, provider: Any, local: bool) -> Any:
        """The restore this rollback already completed (its provider journal finished, ours not yet marked)."""
        from backout.volumes import VolumeRestore

        if not self.facts.get("volume_restore_started"):
            return None
        snap, before = self._volume()["snapshot"], self._volume()["volume"].get("id")
        if not local:
            now = provider.describe().get("id")
            return VolumeRestore(snap, now, before, ["found after a restart"]) if now and now != before else None
        path = Path(str(before))
        for marker in path.parent.glob(f"{path.name}.quarantine-*/quarantine.json"):
            try:
                data = json.loads(marker.read_text(encoding="utf-8"))
                at = datetime.fromisoformat(str(data["at"])).timestamp()
            except (OSError, ValueError, KeyError):
                continue
            if data.get("replaced_by_snapshot") == snap and at >= float(self.d.decided_at) - 2:
                return VolumeRestore(snap, str(path), str(marker.parent), ["found after a restart"])
        return None

    def salvage(self) -> dict[str, Any]:
        """Rows written since the snapshot, from the quarantined brain, into the incident folder."""
        quarantine = self.facts.get("quarantine")
        displaced = (self.facts.get("volume_restore") or {}).get("quarantined_volume")
        if quarantine and self.d.snapshot is None:
            return {"salvage": None, "detail": f"nothing salvaged: without a brain snapshot there are no marks to "
                                               f"tell the bad window's rows; the displaced data is kept in {quarantine}"}
        if not quarantine:
            why = (f"the displaced volume {displaced} is kept (marked quarantine): attach it and run "
                   "`backout salvage extract` on its brain" if displaced else "there was no brain to displace")
            return {"salvage": None, "detail": f"nothing salvaged here: {why}"}
        out = self.folder / "salvage"
        manifest = SnapshotStore(self.target.snapshot_dir).load(self._snapshot_id())
        newer = Path(quarantine) / self._brain_in_quarantine()
        if not (out / SUMMARY_FILE).exists():
            try:
                salvage(manifest.marks(), manifest.created_at, newer, out,
                        include=self.settings.salvage.include or None, exclude=self.settings.salvage.exclude,
                        snapshot_id=manifest.id, schema_diff=self.d.schema.diff)
            except (SalvageError, OSError, sqlite3.Error) as exc:  # the quarantine keeps every row: go on
                return {"salvage": {"folder": None, "total": 0, "tables": {}, "error": str(exc)},
                        "detail": f"salvage FAILED ({exc}); the rows are still in {quarantine}: "
                                  f"`backout salvage extract --snapshot {manifest.id} --from {newer}`"}
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
        tables = {t["table"]: t["added"] + t["changed"] for t in summary.get("tables", []) if t["added"] + t["changed"]}
        table = self.target.profile.effects_table
        calls = effects_since(newer, table, manifest.tables.get(table or "", {}).get("max_rowid") or 0, None)
        return {"salvage": {"folder": str(out), "total": summary.get("total", 0), "tables": tables},
                "effects": _effects(table, calls),
                "detail": f"{summary.get('total', 0)} rows salvaged, {len(calls)} external effects"}

    def start(self) -> dict[str, Any]:
        """Start the target (unless a resumed run already did) and wait for health."""
        wait = start_until_healthy(self.runtime, self.d.to_version, self.settings.boot_timeout.total_seconds())
        return {"start": wait.to_dict(), "healthy_at": time.time(), "detail": f"healthy after {wait.seconds:.1f}s"}

    def verify(self) -> dict[str, Any]:
        """Health ok, errors back within the baseline over a short window, evals green again."""
        healthy_at = float(self.facts.get("healthy_at") or time.time())
        window = self.settings.rollback.verify_window.total_seconds()
        time.sleep(max(0.0, healthy_at + window - time.time()))
        health = self.target.probe(timeout=10).to_dict() if self.target.health_url else None
        errors = self._errors_recovered(healthy_at)
        evals = self._evals_green()
        ok = (health is None or health["ok"]) and errors["ok"] and evals["ok"]
        verdict = {"ok": ok, "health": health, "errors": errors, "evals": evals}
        said = "verified" if ok else "NOT verified: " + "; ".join(
            part["detail"] for part in (errors, evals) if not part["ok"]) + ("" if not health or health["ok"]
                                                                           else f"; health {health['reason']}")
        return {"verify": verdict, "detail": said}

    def _errors_recovered(self, since: float) -> dict[str, Any]:
        try:
            samples = request_samples(self.target, self.runtime, since, time.time())
        except Exception as exc:  # a metrics source being down must not fail a finished rollback
            return {"ok": True, "detail": f"error rate not measured ({exc})"}
        base = self.d.signals.baseline
        if not samples:
            return {"ok": True, "requests": 0, "detail": "no requests in the window: nothing to compare"}
        rate = sum(1 for s in samples if s.error) / len(samples)
        policy = policy_of(self.settings)
        limit = max((base or {}).get("error_rate") or 0.0, 0.0) * policy.error_ratio
        limit = max(limit, policy.error_floor)
        ok = rate <= limit
        return {"ok": ok, "requests": len(samples), "error_rate": round(rate, 4), "limit": round(limit, 4),
                "detail": f"error rate {rate:.1%} over {len(samples)} requests (limit {limit:.1%})"}

    def _evals_green(self) -> dict[str, Any]:
        baseline = state_files(self.target).load_baseline()
        if self.settings.evals is None:
            return {"ok": True, "detail": "no evals configured"}
        if baseline is None or baseline.evals is None:
            return {"ok": True, "detail": "no baseline evals to compare with"}
        try:
            run = run_evals(self.settings.evals, base_url(self.target), self.d.to_version)
        except BackoutError as exc:  # the target serves: report, do not stop the rollback here
            return {"ok": False, "detail": f"evals could not run: {exc}"}
        passed_before = {name for name, ok in baseline.evals.cases.items() if ok}
        failing = sorted(name for name in passed_before if not run.cases.get(name, False))
        return {"ok": not failing, "failing": failing,
                "detail": "evals green again" if not failing else f"cases that passed before fail: {', '.join(failing)}"}

    def freeze(self) -> dict[str, Any]:
        """`backout upgrade` refuses the bad version until it is unfrozen with a reason."""
        if self.d.from_version:
            freeze_version(self.target, self.d.from_version, f"rolled back: {self.d.signals.symptom}",
                           self.d.incident_id, source="rollback")
        return {"detail": f"{self.d.from_version} frozen"}

    def verified(self) -> bool:
        """True when the verify step passed."""
        return bool(self.facts.get("verify", {}).get("ok"))

    def notify(self) -> dict[str, Any]:
        """The all-clear (or the failure), and the status page incident resolved."""
        if self.verified():
            msg = self._message("rollback-succeeded", f"All clear: {self.target.deployment} is back on "
                                f"v{self.d.to_version}, healthy, errors recovered ({self.d.layer} rollback).")
        else:
            msg = self._message("rollback-failed", f"Rollback of {self.target.deployment} to v{self.d.to_version} "
                                f"finished but is not verified: {self.facts.get('verify', {})}.")
        deliveries = [x.to_dict() for x in self.notifier.broadcast(msg)]
        page = dict(self.facts.get("status_page") or {})
        if page.get("incident") and self.verified():
            delivery = self.notifier.status_page_resolve(page["incident"], "Service restored; we are monitoring.")
            page["resolved"] = delivery.ok
        return {"notifications": [*self.facts.get("notifications", []), *deliveries], "status_page": page}

    def postmortem(self) -> dict[str, Any]:
        """postmortem.md, the regression eval case, and the tracker ticket when one is configured."""
        incident = self.incident("rolled-back" if self.verified() else "rolled-back-unverified")
        self.save_incident(incident)
        path = write_postmortem(self.folder, incident, self.redactor)
        case = write_regression_case(self.folder, incident, self.redactor, turn_path=self.target.profile.turn_path)
        ticket = None
        if self.settings.tracker is not None:
            title = f"Postmortem: {self.target.deployment} rolled back from {self.d.from_version} to {self.d.to_version}"
            result = file_ticket(self.settings.tracker, title, path.read_text(encoding="utf-8"))
            ticket = {"ok": result.ok, "url": result.url, "detail": result.detail}
        return {"postmortem": str(path), "regression_case": str(case) if case else None, "ticket": ticket}

    def record(self) -> dict[str, Any]:
        """One history line for the rollback; whatever the rolled-back upgrade left open is closed."""
        History(self.target.state_dir).append(self._change("ok" if self.verified() else "failed"))
        pending = upgrade_journal(self.target)
        own = pending.exists() and "rolling_back" in Journal.open(pending, {}).facts  # the upgrade that called us
        aborted = None if own else Journal(pending, {}).set_aside("aborted-by-rollback")
        watch_state(self.target).unlink(missing_ok=True)  # the watch of the bad version is over
        for staged in self.target.brain.parent.glob(f".{self.target.brain.name}.restore-*.tmp*"):
            staged.unlink(missing_ok=True)  # a copy staged for this rollback that an image rollback did not use
        return {"detail": f"interrupted upgrade set aside: {aborted}" if aborted else ""}

    def _change(self, outcome: str) -> Change:
        snap = self.d.snapshot
        return Change(deployment=self.target.deployment, kind="rollback", from_version=self.d.from_version,
                      to_version=self.d.to_version, outcome=outcome, reason=self.d.signals.symptom,
                      snapshot_after=snap.id if snap and self.d.restores_brain else None,
                      drain=self.facts.get("drain"), health=self.facts.get("start"),
                      detail=f"{self.d.layer} rollback, incident {self.d.incident_id}")  # facts: redacted

    # -- the incident record -------------------------------------------------------------------

    def incident(self, outcome: str) -> dict[str, Any]:
        """The incident record (incident.json): the decision, what the steps found, the timeline."""
        d, f = self.d, self.facts
        signals = d.signals.to_dict()
        return {
            "id": d.incident_id, "deployment": self.target.deployment, "from_version": d.from_version,
            "to_version": d.to_version, "reason": d.signals.symptom, "started_at": d.bad_window.end,
            "finished_at": now_iso(), "outcome": outcome, "layer": d.layer, "layer_reason": d.layer_reason,
            "trial": d.trial, "snapshot": d.snapshot.to_dict() if d.snapshot else None,
            "bad_window": d.bad_window.to_dict(), "verdict": d.signals.verdict,
            "signals": {k: signals[k] for k in ("window", "baseline", "impact")},
            "rows_since_snapshot": d.rows_since_snapshot, "salvage": f.get("salvage"),
            "effects": f.get("effects") or _effects(None, []), "failed_requests": d.signals.failed_requests,
            "failed_eval_cases": d.signals.failed_eval_cases, "timeline": timeline(self.journal),
            "drain": f.get("drain"), "verify": f.get("verify"), "notifications": f.get("notifications", []),
            "status_page": f.get("status_page"), "quarantine": f.get("quarantine"),
            "diagnostics": f.get("diagnostics"), "next_steps": self.next_steps(outcome),
        }

    def save_incident(self, incident: dict[str, Any]) -> None:
        """Write incident.json (redacted) in the incident folder."""
        ensure_private_dir(self.folder)
        atomic_write_json(self.folder / "incident.json", self.redactor.obj(incident))

    def next_steps(self, outcome: str) -> list[str]:
        """What a person should do now, given how the rollback ended."""
        d, steps = self.d, []
        if outcome == "failed":
            steps += [f"{d.to_version} did not become healthy: read the log tail in the timeline and "
                      f"{self.folder / 'diagnostics'}",
                      f"the brain at {self.target.brain} and the quarantine were left as they are",
                      "fix the cause, then `backout rollback --resume` tries the start again"]
        if self.facts.get("salvage"):
            steps.append(f"replay the salvaged rows once fixed: `backout salvage replay {d.incident_id}`")
        effects = self.facts.get("effects") or {}
        if effects.get("rows"):
            steps.append(f"check the {len(effects['rows'])} external effects ({effects['table']}) of the bad window")
        steps.append(f"fix {d.from_version}, then `backout unfreeze {d.from_version} --reason …`")
        return steps

    # -- running it ----------------------------------------------------------------------------

    def run(self, on_step: Callable[[Step, str], None] | None = None) -> dict[str, Any]:
        """Execute the remaining steps; on a failed start, post the failure and stop (journal kept)."""
        def keep(step: Step, phase: str) -> None:
            self.save_incident(self.incident("running"))
            if on_step:
                on_step(step, phase)

        try:
            execute(self.plan(), self.journal, keep)
        except Exception as exc:  # tell people, keep the journal (`--resume`), never loop
            self._failed(str(exc) or type(exc).__name__)
            raise
        outcome = "rolled-back" if self.verified() else "rolled-back-unverified"
        self.save_incident(self.incident(outcome))  # after the last step's "running": the record ends with the outcome
        self.journal.finish()
        return self.result(outcome)

    def _failed(self, why: str) -> None:
        deliveries = self.notifier.broadcast(self._message(
            "rollback-failed", f"Rollback of {self.target.deployment} to v{self.d.to_version} FAILED: {why}. "
            "The brain and the quarantine are left as they are; a person must act."))
        self.journal.remember(notifications=[*self.facts.get("notifications", []), *(x.to_dict() for x in deliveries)])
        incident = self.incident("failed")
        self.save_incident(incident)
        write_postmortem(self.folder, incident, self.redactor)
        History(self.target.state_dir).append(self._change("failed"))

    def result(self, outcome: str) -> dict[str, Any]:
        """The result as JSON: layer and why, snapshot, incident, timings per step."""
        incident = self.incident(outcome)
        return {"outcome": outcome, "incident_id": self.d.incident_id, "incident_folder": str(self.folder),
                "from_version": self.d.from_version, "to_version": self.d.to_version, "layer": self.d.layer,
                "layer_reason": self.d.layer_reason, "snapshot": self.d.snapshot.to_dict() if self.d.snapshot else None,
                "timings": {e["step"]: e["seconds"] for e in incident["timeline"]},
                "total_seconds": round(time.time() - self.d.decided_at, 3),
                **{k: incident[k] for k in ("drain", "verify", "salvage", "effects", "quarantine", "status_page",
                                            "notifications", "next_steps")}}


def _effects(table: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The bad window's external effects: the profile's effects table and its rows (none without one)."""
    return {"table": table, "rows": rows}


def _age(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def new_journal(target: Target, decision: RollbackDecision) -> Journal:
    """A journal for a rollback about to run (not yet on disk: `save()` it once confirmed)."""
    return Journal(rollback_journal(target), {"operation": {"kind": "rollback", "decision": decision.to_dict()},
                                          "done": [], "facts": {}})


def rollback_now(target: Target, runtime: Runtime, req: RollbackRequest,
                 on_step: Callable[[Step, str], None] | None = None, progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Decide and carry out a rollback at once, without asking (what upgrade and watch call); a rollback
    already pending (its journal left by a crash) is finished instead."""
    with operation_lock(deployment_state(target.state_dir, target.deployment), "rollback"):
        path = rollback_journal(target)
        if path.exists():
            journal = Journal.open(path, {})
        else:
            decision = decide_rollback(target, runtime, req)
            if decision.blocked:
                raise NoRollback(decision.blocked)
            journal = new_journal(target, decision)
            journal.save()
        run = RollbackRun(target, runtime, journal, progress)
        try:
            return {"plan": run.plan().to_dict(), "result": run.run(on_step)}
        except StepFailed:
            return {"plan": run.plan().to_dict(), "result": run.result("failed")}
