"""What every volume provider does: snapshot the data volume holding the brain, list those snapshots,
and restore one (the displaced volume kept, never deleted), with its steps as data for plans.

The service is drained before a restore and started after it by the caller's callbacks, so a
provider never needs to know the runtime. Before a snapshot the caller makes the brain consistent
on disk (drained, or its WAL checkpointed)."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from backout.errors import EXIT_ENVIRONMENT, BackoutError
from backout.journal import Journal
from backout.plan import Plan, Step, execute
from backout.runtime.base import Command

__all__ = ["Hooks", "VolumeError", "VolumeProvider", "VolumeRestore", "VolumeSnapshot", "run_restore"]


class VolumeError(BackoutError):
    """A provider call failed; the message names the resource and, for permissions, the missing action."""

    def __init__(self, message: str, exit_code: int = EXIT_ENVIRONMENT) -> None:
        super().__init__(message, exit_code)


@dataclass
class VolumeSnapshot:
    """One volume-level snapshot."""

    id: str
    provider: str
    volume: str  # the volume (or directory, or disk) it was taken of
    created_at: str  # ISO 8601
    state: str  # "completed", "pending", "error"
    tags: dict[str, str] = field(default_factory=dict)  # deployment, version, restore_point, schema_head, ...
    size_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass
class VolumeRestore:
    """What a restore did: the volume now in place, and where the displaced one is kept."""

    snapshot_id: str
    new_volume: str
    quarantined_volume: str | None
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. lazily loaded blocks

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def run_restore(plan: Plan, journal: Journal, result: VolumeRestore, prefix: str) -> None:
    """Execute a restore's plan; each journaled step it runs now goes into `result.steps` without `prefix`."""
    def done(step: Step, phase: str) -> None:
        if phase == "done" and not step.always:
            result.steps.append(step.name.removeprefix(prefix))

    execute(plan, journal, done)


@dataclass
class Hooks:
    """What the caller does around a restore: drain and stop the service, start it again."""

    stop_service: Callable[[], None]
    start_service: Callable[[], None]
    progress: Callable[[str], None] = lambda message: None  # one line per stage ("waiting for vol-1: 40%")


class VolumeProvider(abc.ABC):
    """One provider (local directory, EBS volume, GCP persistent disk) for one deployment's volume."""

    name: str = ""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts about the volume now: id, zone, device, attached instance, size (for plans and status)."""

    @abc.abstractmethod
    def snapshot(self, tags: dict[str, str]) -> VolumeSnapshot:
        """Snapshot the volume, tagged; wait until it is complete (VolumeError at the timeout)."""

    @abc.abstractmethod
    def snapshots(self, deployment: str) -> list[VolumeSnapshot]:
        """The deployment's volume snapshots, newest first."""

    @abc.abstractmethod
    def plan_restore(self, snapshot_id: str) -> list[Command]:
        """The steps a restore of `snapshot_id` takes, as commands (for --dry-run), with the ids involved."""

    @abc.abstractmethod
    def restore(self, snapshot_id: str, hooks: Hooks) -> VolumeRestore:
        """Put the snapshot's data in place of the volume: stop (hooks), swap, start (hooks).

        The displaced volume is kept and marked as quarantine, never deleted. If attaching the new
        volume fails, the old one is put back and the service started again before raising."""
