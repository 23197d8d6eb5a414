"""How long-running library work reports progress, without knowing about terminals."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress", "NO_PROGRESS"]


class Progress(Protocol):
    """Receives phases of work and the amount done in each."""

    def phase(self, name: str, total: int | None = None) -> None:
        """A new phase begins; `total` units (bytes, rows) when known."""

    def advance(self, amount: int) -> None:
        """`amount` more units of the current phase are done."""


class _NoProgress:
    def phase(self, name: str, total: int | None = None) -> None:
        return None

    def advance(self, amount: int) -> None:
        return None


NO_PROGRESS: Progress = _NoProgress()
