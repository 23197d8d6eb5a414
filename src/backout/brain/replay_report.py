"""Replay's report and the reasons it gives: what replay did with each table's salvaged rows, and why a row
was not replayed or was left out by design. Shared by the SQL replay (`backout.brain.replay`) and a service
profile's own import (`backout.profiles.engine_bundle`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout.errors import EXIT_ENVIRONMENT, EXIT_USAGE, BackoutError
from backout.profiles.model import Profile

__all__ = [
    "KEYS_KEPT",
    "KeyRefused",
    "LEFT_OUT_EFFECTS",
    "LEFT_OUT_LEDGER",
    "LEFT_OUT_SHADOW",
    "NotReplayed",
    "REASON_CHANGED",
    "REASON_DANGLING_EDGE",
    "REASON_KEY_TAKEN",
    "REASON_TABLE_MISSING",
    "REASON_TOO_LARGE",
    "REASON_UNIQUE",
    "ReplayError",
    "ReplayReport",
    "ServiceUnreachable",
    "TableReplay",
    "left_out_reason",
    "salvaged_rows",
]

KEYS_KEPT = 100  # keys listed per reason; the count is always complete

REASON_CHANGED = "changed since the snapshot; review by hand"
REASON_KEY_TAKEN = "its primary key holds another row in the live brain; review by hand"
REASON_UNIQUE = "a unique constraint matches another row in the live brain; review by hand"
REASON_TABLE_MISSING = "table missing in the live brain"
REASON_TOO_LARGE = "row alone is larger than the service's request limit"
REASON_DANGLING_EDGE = "an end of the edge is missing from the salvaged brain"
LEFT_OUT_EFFECTS = (
    "its rows record effects outside the brain (sent emails, deleted resources): never replayed; "
    "list them in the rollback report"
)
LEFT_OUT_LEDGER = "migration ledger: the live brain's own migrations decide it; never replayed"
LEFT_OUT_SHADOW = "shadow table of a virtual table: rebuilt from its source table; never replayed"


class ReplayError(BackoutError):
    """Replay cannot start or finish: the bundle is missing or corrupt, or the service said no."""


class ServiceUnreachable(ReplayError):
    """The service did not answer (or kept answering 5xx)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_ENVIRONMENT)


class KeyRefused(ReplayError):
    """The service refused the API key (401/403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


@dataclass
class NotReplayed:
    """Rows of one table left alone for one reason, with (some of) their keys."""

    reason: str
    rows: int = 0
    keys: list[Any] = field(default_factory=list)

    def add(self, key: Any = None) -> None:
        """Count one more row (and keep its key while fewer than KEYS_KEPT are kept)."""
        self.rows += 1
        if key is not None and len(self.keys) < KEYS_KEPT:
            self.keys.append(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"reason": self.reason, "rows": self.rows, "keys": list(self.keys)}


@dataclass
class TableReplay:
    """What replay did (or, in a dry run, would do) with one table's salvaged rows."""

    table: str
    rows: int = 0
    replayed: int = 0
    already_present: int = 0
    skipped: list[NotReplayed] = field(default_factory=list)
    left_out: NotReplayed | None = None
    renumbered: list[dict[str, Any]] = field(default_factory=list)  # {"from": old key, "to": new key} (--renumber)

    @property
    def not_replayed(self) -> int:
        """Rows that could not be replayed (left-out tables are not counted here)."""
        return sum(s.rows for s in self.skipped)

    def skip(self, reason: str, key: Any = None) -> None:
        """Record one row not replayed for `reason`."""
        found = next((s for s in self.skipped if s.reason == reason), None)
        if found is None:
            found = NotReplayed(reason)
            self.skipped.append(found)
        found.add(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "table": self.table,
            "rows": self.rows,
            "replayed": self.replayed,
            "already_present": self.already_present,
            "not_replayed": self.not_replayed,
            "reasons": [s.to_dict() for s in self.skipped],
            "left_out": self.left_out.rows if self.left_out else 0,
            "left_out_reason": self.left_out.reason if self.left_out else None,
            "renumbered": self.renumbered[:KEYS_KEPT],
            "renumbered_rows": len(self.renumbered),
        }


@dataclass
class ReplayReport:
    """The outcome of one replay, per table and in total."""

    bundle: Path
    mode: str  # "engine" (the service's import API: profiles/engine_bundle.py) or "sql" (straight into the brain)
    destination: str
    dry_run: bool
    tables: list[TableReplay]
    requests: int = 0  # Engine: requests sent (dry run: that would be sent)

    @property
    def replayed(self) -> int:
        """Rows written (dry run: that would be written; Engine dry run: that would be sent)."""
        return sum(t.replayed for t in self.tables)

    @property
    def already_present(self) -> int:
        """Rows the live brain already had."""
        return sum(t.already_present for t in self.tables)

    @property
    def not_replayed(self) -> int:
        """Rows that could not be replayed."""
        return sum(t.not_replayed for t in self.tables)

    @property
    def left_out(self) -> int:
        """Rows never replayed by design (the effects table, migration ledgers, what the API omits)."""
        return sum(t.left_out.rows for t in self.tables if t.left_out)

    @property
    def complete(self) -> bool:
        """True when every row was replayed or already present (left-out tables aside)."""
        return self.not_replayed == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "bundle": str(self.bundle),
            "mode": self.mode,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "requests": self.requests,
            "complete": self.complete,
            "totals": {
                "replayed": self.replayed,
                "already_present": self.already_present,
                "not_replayed": self.not_replayed,
                "left_out": self.left_out,
            },
            "tables": [t.to_dict() for t in self.tables],
        }

    def render(self) -> str:
        """A short text: a line per table with rows, then reasons and totals."""
        return "\n".join(
            [self._heading(), *self._table_lines(), *self._reason_lines(), self._total()]
        )

    def _heading(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        if self.mode == "engine":
            sent = "would send" if self.dry_run else "sent"
            return (
                f"{verb} into {self.destination} ({sent} {self.requests} request"
                f"{'s' if self.requests != 1 else ''} to its import endpoint, each under 1 MiB)"
            )
        return f"{verb} into {self.destination} (SQL, one transaction per table)"

    def _table_lines(self) -> list[str]:
        shown = [t for t in self.tables if t.rows]
        width = max([len("table"), *(len(t.table) for t in shown)])
        head = "to send" if self.dry_run and self.mode == "engine" else "replayed"
        cells = f"{'rows':>6}  {head:>8}  {'present':>7}  {'not replayed':>12}  {'left out':>8}"
        lines = [f"{'table':<{width}}  {cells}"]
        for t in shown:
            left_out = t.left_out.rows if t.left_out else 0
            lines.append(
                f"{t.table:<{width}}  {t.rows:>6}  {t.replayed:>8}  {t.already_present:>7}  "
                f"{t.not_replayed:>12}  {left_out:>8}"
            )
        return lines

    def _reason_lines(self) -> list[str]:
        lines = []
        for t in self.tables:
            for s in t.skipped:
                keys = f" (keys: {_short_keys(s.keys)})" if s.keys else ""
                lines.append(
                    f"not replayed: {t.table}, {s.rows} row{'s' if s.rows != 1 else ''}: "
                    f"{s.reason}{keys}"
                )
            if t.renumbered:
                moved = ", ".join(f"{m['from']}" + (f" -> {m['to']}" if m["to"] is not None else "")
                                  for m in t.renumbered[:KEYS_KEPT])
                lines.append(f"{'would renumber' if self.dry_run else 'renumbered'}: {t.table}, "
                             f"{len(t.renumbered)} row{'s' if len(t.renumbered) != 1 else ''} whose key another "
                             f"row took since the rollback ({moved})")
            if t.left_out and t.left_out.rows:
                n = t.left_out.rows
                lines.append(
                    f"left out: {t.table}, {n} row{'s' if n != 1 else ''}: {t.left_out.reason}"
                )
        return lines

    def _total(self) -> str:
        if self.dry_run and self.mode == "engine":
            return (
                f"total: {self.replayed} rows would be sent; the Engine skips rows it already has; "
                f"{self.not_replayed} cannot be sent, {self.left_out} left out"
            )
        verb = "would be replayed" if self.dry_run else "replayed"
        return (
            f"total: {self.replayed} {verb}, {self.already_present} already present, "
            f"{self.not_replayed} not replayed, {self.left_out} left out"
        )


def _short_keys(keys: list[Any], shown: int = 5) -> str:
    text = ", ".join(json.dumps(k, default=str) for k in keys[:shown])
    return text + (", ..." if len(keys) > shown else "")


def left_out_reason(table: str, profile: Profile) -> str | None:
    """Why the rows of `table` are never replayed under `profile` (its effects table, a migration ledger),
    or None."""
    if table == profile.effects_table:
        return LEFT_OUT_EFFECTS
    if table.lower() in profile.ledger_tables():
        return LEFT_OUT_LEDGER
    return None


def salvaged_rows(entry: dict[str, Any]) -> int:
    """Rows salvage wrote for one table of summary.json (added and changed)."""
    return int(entry.get("added", 0)) + int(entry.get("changed", 0))
