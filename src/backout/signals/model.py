"""The data the verdict is computed from, and the verdict itself: plain, serialisable values.

Sources (logs, Prometheus, /metrics, health probes, eval runs) produce these; `decide` turns them
into a Verdict; scenario files in tests/scenarios/ are these values written as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "Decision", "RequestSample", "HealthSample", "EvalRun", "ExpectedChanges", "Policy",
    "Observations", "EvidenceRow", "Verdict",
]

Decision = Literal["roll-back", "hold", "inconclusive"]


@dataclass(frozen=True)
class RequestSample:
    """One finished request, as a log line or a metrics source tells it."""

    ts: float  # epoch seconds when it finished
    status: int
    duration_ms: float | None  # None: the source does not say (an access log without durations)
    task_id: str | None = None
    path: str = ""
    code: str | None = None  # the error code, when the service names one

    @property
    def error(self) -> bool:
        """A server-side failure (5xx)."""
        return self.status >= 500


@dataclass(frozen=True)
class HealthSample:
    """One health probe."""

    ts: float
    ok: bool
    status_code: int | None = None
    failing: tuple[str, ...] = ()  # subsystems reporting non-ok
    reason: str = ""


@dataclass
class EvalRun:
    """Results of one regression-eval run, case by case."""

    cases: dict[str, bool]  # case name -> passed
    ts: float = 0.0
    version: str | None = None
    source: str = ""  # the command or file it came from

    @property
    def failed(self) -> list[str]:
        """Names of the failing cases."""
        return sorted(name for name, ok in self.cases.items() if not ok)


@dataclass
class ExpectedChanges:
    """Behaviour changes the target version announces (changelog or config): not counted against it."""

    metrics: set[str] = field(default_factory=set)  # "errors", "latency"
    eval_cases: set[str] = field(default_factory=set)


@dataclass
class Policy:
    """Thresholds of the verdict (backout.toml [deployments.NAME.verdict])."""

    health_failures: int = 3  # consecutive failed probes ...
    health_seconds: float = 45.0  # ... lasting at least this long
    window_seconds: float = 20.0  # metric windows
    min_requests: int = 30  # per comparison; fewer is inconclusive
    alpha: float = 0.01  # significance of the error and latency tests
    error_ratio: float = 2.0  # error rate must also be this many times the baseline ...
    error_floor: float = 0.02  # ... and at least this much higher in absolute terms
    latency_ratio: float = 1.5  # p95 must be this many times the baseline's
    sustained_windows: int = 2  # consecutive bad windows, not improving, for "sustained"
    local_share: float = 0.8  # errors this concentrated on one task/request are "local"
    tie_breaker: Decision = "roll-back"  # mixed, sustained evidence: the runbook says roll back

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass
class Observations:
    """Everything known at the moment of the check."""

    now: float
    switched_at: float | None  # when the version under judgement started (None: no switch known)
    baseline_requests: list[RequestSample] = field(default_factory=list)
    requests: list[RequestSample] = field(default_factory=list)  # since the switch
    health: list[HealthSample] = field(default_factory=list)  # since the switch, oldest first
    baseline_evals: EvalRun | None = None
    evals: EvalRun | None = None
    customer_reports: list[str] = field(default_factory=list)
    expected: ExpectedChanges = field(default_factory=ExpectedChanges)
    version: str | None = None
    baseline_version: str | None = None


@dataclass
class EvidenceRow:
    """One line of the evidence table."""

    signal: str  # health, errors, latency, evals, reports
    baseline: str
    now: str
    test: str
    verdict: str  # "trigger", "ok", "not counted: <why>", "too little data"

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return asdict(self)


@dataclass
class Verdict:
    """roll-back, hold or inconclusive — always with its evidence."""

    decision: Decision
    reason: str  # one line for the incident channel
    evidence: list[EvidenceRow] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)  # signals that call for a rollback
    not_counted: list[str] = field(default_factory=list)  # non-triggers that held, with why
    needs_seconds: float | None = None  # inconclusive: how much longer to wait

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"decision": self.decision, "reason": self.reason, "triggers": self.triggers,
                "not_counted": self.not_counted, "needs_seconds": self.needs_seconds,
                "evidence": [row.to_dict() for row in self.evidence]}
