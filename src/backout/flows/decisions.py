"""The decisions flows make before acting, typed: what a rollback and an upgrade will do, and why.

A decision is computed once (reads only), shown by `--dry-run`, kept in the operation's journal
(as JSON: `to_dict`/`from_dict`) so a resumed run carries out the same plan, and read by the
steps as attributes, never by string keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["BadWindow", "Impact", "RollbackDecision", "SchemaFacts", "Signals", "SnapshotChoice",
           "UpgradeDecision"]

Layer = Literal["image", "brain"]


@dataclass(frozen=True)
class SnapshotChoice:
    """The snapshot a brain rollback restores: which, how old, taken while which version ran."""

    id: str
    created_at: str
    age_seconds: float
    version: str | None
    size: int
    path: str
    pinned: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass(frozen=True)
class BadWindow:
    """From the switch to the bad version (None when unknown) until the rollback was decided."""

    start: str | None
    end: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (`from`, `to`)."""
        return {"from": self.start, "to": self.end}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BadWindow":
        """Inverse of to_dict."""
        return cls(data.get("from"), str(data["to"]))


@dataclass(frozen=True)
class Impact:
    """Whether customers felt the bad window (a status page incident is opened only then), and why."""

    real: bool
    why: str


@dataclass(frozen=True)
class Signals:
    """What the bad window looked like: the symptom in one line, the verdict and its numbers."""

    symptom: str
    impact: Impact
    verdict: dict[str, Any] | None = None
    window: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    customer_reports: list[str] = field(default_factory=list)
    failed_requests: list[dict[str, Any]] = field(default_factory=list)
    failed_eval_cases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Signals":
        """Inverse of to_dict."""
        return cls(**{**data, "impact": Impact(**data["impact"])})


@dataclass(frozen=True)
class SchemaFacts:
    """The brain's schema at the snapshot and now, and the difference (None when unknown)."""

    snapshot: dict[str, Any]
    now: dict[str, Any]
    diff: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass(frozen=True)
class RollbackDecision:
    """Everything a rollback will do, decided up front: target, snapshot, layer, and the bad window."""

    incident_id: str
    deployment: str
    from_version: str | None
    to_version: str
    target_source: str
    mode: str
    reason: str
    running: bool
    snapshot: SnapshotChoice | None
    snapshot_note: str
    restore_point: dict[str, Any] | None
    bad_window: BadWindow
    rows_since_snapshot: dict[str, int]
    layer: Layer
    layer_reason: str
    trial: dict[str, Any] | None
    schema: SchemaFacts
    signals: Signals
    decided_at: float
    volume: dict[str, Any] | None = None  # a volume snapshot restored instead of the brain file
    blocked: str | None = None  # why no rollback is possible (nothing is run then)

    @property
    def restores_brain(self) -> bool:
        """True when the brain (or its volume) goes back too, not only the version."""
        return self.layer == "brain"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the journal keeps and `--dry-run --json` prints)."""
        out = asdict(self)
        out.update(snapshot=self.snapshot.to_dict() if self.snapshot else None, bad_window=self.bad_window.to_dict(),
                   schema=self.schema.to_dict(), signals=self.signals.to_dict())
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RollbackDecision":
        """Inverse of to_dict."""
        snapshot = data.get("snapshot")
        return cls(**{**data, "snapshot": SnapshotChoice(**snapshot) if snapshot else None,
                      "bad_window": BadWindow.from_dict(data["bad_window"]), "schema": SchemaFacts(**data["schema"]),
                      "signals": Signals.from_dict(data["signals"])})


@dataclass(frozen=True)
class UpgradeDecision:
    """The pre-flight of an upgrade: what was checked before anything stops, and the numbers it found."""

    deployment: str
    from_version: str
    to_version: str
    health_before: dict[str, Any] | None
    brain_bytes: int
    predicted_restore_s: float
    throughput: dict[str, Any]
    rto_s: float | None
    warnings: list[str]
    expected_changes: dict[str, list[str]]
    watch_s: float
    decided_at: float
    forced: bool = False  # --force let something through (recorded in the history)
    proof: dict[str, Any] | None = None  # how the target was shown to start before the stop

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UpgradeDecision":
        """Inverse of to_dict."""
        return cls(**data)
