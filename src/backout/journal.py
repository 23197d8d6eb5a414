"""The on-disk record of an operation's steps, so a crashed run resumes and never repeats one.

One journal per slot: `Journal.slot_path` says where the one journal of an operation on a slot
is kept (a restore over a brain, a volume restore over a directory, a disk or a device, the
rollback or upgrade of a deployment) and `Journal.for_slot` opens it, so two runs of the same
operation share it and another operation on the same slot finds it pending.

Also the fault-injection hook: `BACKOUT_FAULT_AT=<point>` makes the process SIGKILL itself at
that point (a bare step name means `before:<step>`), so tests can prove that re-running after a
crash at every point ends in a correct state. The points:

- `before:<step>` and `after:<step>`, for every step of every plan, from the executor
  (`plan.execute`); step names are unique within a flow:
  upgrade     baseline snapshot-online drain snapshot-final volume-snapshot restore-point start
              evals arm record
  rollback    announce diagnostics drain restore start salvage verify freeze notify postmortem
              record
  restore     stage checkpoint quarantine swap   (a snapshot restore, and a rollback's restore step)
  local       volume-stage volume-stop volume-swap volume-record
  ebs         ebs-create ebs-stop ebs-detach ebs-tag ebs-attach
  gcp         gcp-create gcp-stop gcp-detach gcp-label gcp-attach
  (the `*-stop` steps stop the service on every run, a resumed one too, and are never marked done)
- `inside:<step>`, in the middle of a step, where a crash leaves it half done: `inside:drain`
  (stopped, not yet recorded), `inside:swap` (the staged brain's inode noted, not yet renamed),
  `inside:volume-swap` (between the two renames of an entry), `inside:ebs-create`,
  `inside:gcp-create` (the API call made, its volume or disk not yet recorded), `inside:ebs-attach`,
  `inside:gcp-detach`, `inside:gcp-attach` (the call made, the step not yet marked done).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Mapping

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

    @staticmethod
    def slot_path(folder: Path, kind: str, key: str | None = None) -> Path:
        """Where the one journal of a `kind` operation on a slot is kept: <folder>/journals/<kind>-<hash>.json
        for a slot named by `key` (a brain, a directory, a disk), <folder>/<kind>.journal.json without one."""
        if key is None:
            return folder / f"{kind}.journal.json"
        return folder / "journals" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"

    @classmethod
    def for_slot(cls, folder: Path, kind: str, key: str, operation: dict[str, Any],
                 same: tuple[str, ...] = ("snapshot",)) -> "Journal":
        """The slot's pending journal, or a new one for `operation`; a pending one that differs from `operation`
        in the `same` fields is kept when a step is done (the caller refuses) and replaced when none is."""
        path = cls.slot_path(folder, kind, key)
        journal = cls.open(path, operation)
        if journal.data["done"] or all(journal.operation.get(f) == operation.get(f) for f in same):
            return journal
        journal.finish()  # refused before any step: nothing to resume
        return cls.open(path, operation)

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

    def rename_steps(self, names: Mapping[str, str]) -> None:
        """Count steps done under the names an earlier version gave them as done under their new names."""
        done = [names.get(step, step) for step in self.data["done"]]
        if done != self.data["done"]:
            self.data["done"] = done
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
