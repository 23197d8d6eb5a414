"""What is said to people during a rollback (Message), and how each channel took it (Delivery)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Delivery", "Message", "MessageKind"]

MessageKind = Literal["rollback-started", "rollback-succeeded", "rollback-failed", "info"]


@dataclass
class Message:
    """One notification: what happened, to which deployment, under which incident."""

    kind: MessageKind
    text: str
    deployment: str
    incident_id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass
class Delivery:
    """The outcome of sending to one channel; `detail` never holds a secret (URL, key)."""

    channel: str
    ok: bool
    detail: str
    attempts: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"channel": self.channel, "ok": self.ok, "detail": self.detail,
                "attempts": self.attempts, "seconds": round(self.seconds, 3)}
