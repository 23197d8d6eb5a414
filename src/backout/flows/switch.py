"""Switch: the plain building block of upgrade and rollback — drain, migrate, start, wait, record.

No snapshot and no watch window: take a snapshot first (`backout snapshot create`) when the new
version migrates the brain."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from backout.brain.schema import SchemaError, stamp
from backout.commands import recording
from backout.config import Target
from backout.errors import EXIT_USAGE
from backout.flows.prove import Proof, prove_target
from backout.history import Change, History, deployment_state
from backout.journal import fault_point
from backout.lock import operation_lock
from backout.plan import StepFailed
from backout.runtime.base import Command, HealthWait, Runtime, RuntimeFailure, StopResult

__all__ = ["SwitchPlan", "SwitchResult", "brain_stamp", "drain_facts", "moved_on", "plan_switch", "start_until_healthy",
           "stop_service", "switch_back", "switch_version"]


@dataclass
class SwitchResult:
    """What a switch did, step by step."""

    from_version: str | None
    to_version: str
    healthy: bool = False
    drain: StopResult | None = None
    migrate_output: list[str] | None = None
    health: HealthWait | None = None
    schema_before: dict[str, Any] | None = None
    schema_after: dict[str, Any] | None = None
    seconds: float = 0.0
    commands: list[Command] = field(default_factory=list)
    switched_back: HealthWait | None = None  # the previous version started again after the target failed

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"from": self.from_version, "to": self.to_version, "healthy": self.healthy,
                "switched_back": self.switched_back.to_dict() if self.switched_back else None,
                "drain": self.drain.to_dict() if self.drain else None,
                "migrated": self.migrate_output is not None,
                "health": self.health.to_dict() if self.health else None,
                "schema_before": self.schema_before, "schema_after": self.schema_after,
                "seconds": round(self.seconds, 3), "commands": [c.to_dict() for c in self.commands]}


def brain_stamp(target: Target) -> dict[str, Any] | None:
    """The brain's migration head and fingerprint, or None when there is no readable brain yet."""
    if not target.brain.exists():
        return None
    try:
        s = stamp(target.brain)
    except SchemaError:
        return None
    return {"head": s.head, "head_source": s.head_source, "fingerprint": s.fingerprint}


@dataclass
class SwitchPlan:
    """What a switch will run, and how the target was proven to start before anything stops."""

    commands: list[Command]
    proof: Proof


def plan_switch(target: Target, runtime: Runtime, version: str, force: bool = False) -> SwitchPlan:
    """Refuse early (judged bad, unavailable, does not start), then return the commands a switch would run."""
    settings = target.require_settings()
    running = runtime.current().running
    if not running:  # what runs holds its own port; a port held by anything else would fail the start
        taken = runtime.port_taken()
        if taken:
            raise RuntimeFailure(f"{taken}; nothing was started", EXIT_USAGE)
    proof = prove_target(target, runtime, version, force, something_runs=running)
    return SwitchPlan(runtime.switch_commands(version, settings.drain_timeout.total_seconds()), proof)


def switch_version(target: Target, runtime: Runtime, version: str, kind: str = "manual",
                   reason: str = "", force: bool = False) -> SwitchResult:
    """Drain what runs, migrate if configured, start `version`, wait for health, record it."""
    settings = target.require_settings()
    folder = deployment_state(target.state_dir, target.deployment)
    with operation_lock(folder, f"switch to {version}"):
        plan = plan_switch(target, runtime, version, force)
        commands = plan.commands
        started = time.monotonic()
        current = runtime.current()
        result = SwitchResult(current.version if current.running else None, version, commands=commands)
        result.schema_before = brain_stamp(target)
        with recording() as performed:  # the commands that ran: the same as the plan's when all goes well
            try:
                result.drain = runtime.stop(settings.drain_timeout.total_seconds())
                result.migrate_output = runtime.start(version, migrate=True)
                result.health = runtime.wait_healthy(time.monotonic() + settings.boot_timeout.total_seconds())
                result.healthy = result.health.healthy
            except RuntimeFailure as exc:
                result.health = HealthWait(False, time.monotonic() - started, None, str(exc), exc.log_tail)
            failed_at = time.monotonic()
            if not result.healthy and result.from_version and result.from_version != version:
                result.switched_back = switch_back(runtime, result.from_version, settings.drain_timeout.total_seconds(),
                                                   settings.boot_timeout.total_seconds())
        result.commands = performed
        result.schema_after = brain_stamp(target)
        result.seconds = time.monotonic() - started
        History(target.state_dir).append(Change(
            deployment=target.deployment, kind=kind, from_version=result.from_version, to_version=version,
            outcome="ok" if result.healthy else "failed", reason=reason,
            schema_before=result.schema_before, schema_after=result.schema_after,
            drain=result.drain.to_dict() if result.drain else None,
            health=result.health.to_dict() if result.health else None, duration_s=round(result.seconds, 3),
            detail=result.health.reason if result.health else "", forced=bool(plan.proof.forced)))
        if result.switched_back is not None:
            back = result.switched_back
            History(target.state_dir).append(Change(
                deployment=target.deployment, kind="manual", from_version=version, to_version=result.from_version,
                outcome="ok" if back.healthy else "failed", reason=f"switched back: {version} did not become healthy",
                health=back.to_dict(), duration_s=round(time.monotonic() - failed_at, 3), detail=back.reason))
        return result


def switch_back(runtime: Runtime, previous: str, drain_s: float, boot_s: float) -> HealthWait:
    """After the target failed to come up (its proof passed, yet the real start did not: a slow boot, a port
    still held), stop what is left of it and start `previous` again: a failed switch must not leave the
    service down when what served before can serve again."""
    started = time.monotonic()
    try:
        if runtime.current().running:
            runtime.stop(drain_s)
        runtime.start(previous, migrate=False)
        return runtime.wait_healthy(time.monotonic() + boot_s)
    except RuntimeFailure as exc:
        return HealthWait(False, time.monotonic() - started, None, str(exc), exc.log_tail)


def stop_service(target: Target, runtime: Runtime, reason: str = "") -> StopResult:
    """Drain and stop what runs, and record it."""
    settings = target.require_settings()
    with operation_lock(deployment_state(target.state_dir, target.deployment), "stop"):
        current = runtime.current()
        result = runtime.stop(settings.drain_timeout.total_seconds())
        if result.stopped:
            History(target.state_dir).append(Change(
                deployment=target.deployment, kind="stop", from_version=current.version, to_version=None,
                outcome="stopped", reason=reason, drain=result.to_dict(), duration_s=round(result.seconds, 3),
                detail=result.detail))
        return result



def drain_facts(runtime: Runtime, drain_s: float) -> dict[str, Any]:
    """Drain and stop what runs; the step's facts, saying whether the stop was clean or forced."""
    result = runtime.stop(drain_s)
    fault_point("inside:drain")  # stopped, not yet recorded: a resumed run must not call this stale
    return {"drain": result.to_dict(), "detail": f"{'clean drain' if result.clean else 'FORCED stop'}: "
                                                 f"{result.detail} ({result.seconds:.1f}s)"}


def start_until_healthy(runtime: Runtime, version: str, boot_s: float, migrate: bool = False) -> HealthWait:
    """Start `version` (unless a resumed run already did), wait for health; StepFailed when it does not come up."""
    current = runtime.current()
    try:
        if not (current.running and current.version == version):
            runtime.start(version, migrate=migrate)
    except RuntimeFailure as exc:
        raise StepFailed("start", f"{version} did not start: {exc}",
                         {"start": {"healthy": False, "reason": str(exc), "log_tail": exc.log_tail}}) from None
    wait = runtime.wait_healthy(time.monotonic() + boot_s)
    if not wait.healthy:
        raise StepFailed("start", f"{version} did not become healthy: {wait.reason}", {"start": wait.to_dict()})
    return wait


def moved_on(runtime: Runtime, planned_for: str | None, what: str) -> str | None:
    """Why a journal planned while `planned_for` ran is stale now (another version runs), or None.

    Nothing running is not stale: a drain cut short by a crash leaves exactly that."""
    current = runtime.current()
    if current.running and current.version != planned_for:
        return (f"the {what} was planned while {planned_for} ran, but {current.version} runs now; set the journal "
                "aside with --abandon and plan again")
    return None
