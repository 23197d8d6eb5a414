"""The on-disk record of an operation's steps, so a crashed run resumes and never repeats one.

Also the fault-injection hook: `BACKOUT_FAULT_AT=<point>` makes the process SIGKILL itself at
that point (`before:<step>` or `after:<step>`; a bare step name means `before:`), so tests can
prove that re-running after a crash at every step ends in a correct state.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

from backout.errors import BackoutError
from backout.fsutil import atomic_write_json, ensure_private_dir, fsync_dir

__all__ = ["Journal", "JournalError", "fault_point"]


class JournalError(BackoutError):
    """A journal is unreadable or belongs to another operation."""


def fault_point(point: str) -> None:
    """SIGKILL this process if BACKOUT_FAULT_AT names `point` (test-only crash injection)."""
    wanted = os.environ.get("BACKOUT_FAULT_AT")
    if not wanted:
        return
    if wanted == point or (":" not in wanted and point == f"before:{wanted}"):
        os.kill(os.getpid(), signal.SIGKILL)


class Journal:
    """Steps done so far and the facts they fixed (paths, times), in one JSON file."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.redact: Callable[[Any], Any] = lambda value: value  # set by flows: facts may quote service logs

    @classmethod
    def open(cls, path: Path, operation: dict[str, Any]) -> "Journal":
        """Load the journal at `path`, or start a new one for `operation`."""
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                raise JournalError(f"journal {path} is corrupt; inspect it, then move it aside to start over") from None
            return cls(path, data)
        ensure_private_dir(path.parent)
        journal = cls(path, {"operation": operation, "done": [], "facts": {}})
        journal.save()
        return journal

    @property
    def operation(self) -> dict[str, Any]:
        """What this journal is about (kind, target, arguments)."""
        return dict(self.data["operation"])

    @property
    def facts(self) -> dict[str, Any]:
        """Values fixed by earlier steps (so a resumed run reuses them)."""
        facts: dict[str, Any] = self.data["facts"]
        return facts

    def done(self, step: str) -> bool:
        """True when `step` completed in an earlier (or this) run."""
        return step in self.data["done"]

    def mark(self, step: str, **facts: Any) -> None:
        """Record `step` as completed, with any facts it fixed, durably."""
        self.facts.update(self.redact(facts))
        if step not in self.data["done"]:
            self.data["done"].append(step)
        self.save()

    def remember(self, **facts: Any) -> None:
        """Record facts before a step completes (e.g. a name chosen for it)."""
        self.facts.update(self.redact(facts))
        self.save()

    def save(self) -> None:
        """Write the journal durably."""
        atomic_write_json(self.path, self.data)

    def finish(self) -> None:
        """The operation completed: the journal goes away (durably: it must not come back after a power loss)."""
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)

    def set_aside(self, why: str) -> Path | None:
        """Move the journal out of the way (kept, renamed), e.g. when an operation is abandoned."""
        if not self.path.exists():
            return None
        kept = self.path.with_name(f"{self.path.stem}.{why}-{int(time.time())}.json")
        os.rename(self.path, kept)
        fsync_dir(self.path.parent)
        return kept
