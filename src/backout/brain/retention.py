"""Which snapshots a prune keeps: the last N, everything pinned, the restore point, and anything an
unfinished operation (a journal, a watch window) still names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from backout.brain.manifest import ID_PATTERN, Manifest

__all__ = ["PrunePlan", "named_in", "plan_prune"]

_ANY_ID = re.compile(ID_PATTERN)


@dataclass
class PrunePlan:
    """Snapshots to keep (with the reason) and to delete; broken ones (with what is wrong); leftover files."""

    keep: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    leftovers: list[Path] = field(default_factory=list)
    leftover_bytes: int = 0

    @property
    def empty(self) -> bool:
        """True when the prune would delete nothing."""
        return not (self.delete or self.broken or self.leftovers)

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"keep": self.keep, "delete": self.delete, "broken": self.broken,
                "leftovers": [str(p) for p in self.leftovers], "leftover_bytes": self.leftover_bytes}


def named_in(files: Mapping[Path, str]) -> dict[str, str]:
    """Snapshot ids that the existing files among `files` (journals, watch state: JSON) mention, with the
    reason given for that file; any mention counts, whatever the file's layout."""
    named: dict[str, str] = {}
    for path, why in files.items():
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            continue
        for snapshot_id in _ANY_ID.findall(text):
            named.setdefault(snapshot_id, why)
    return named


def plan_prune(manifests: list[Manifest], keep_last: int, protected: Mapping[str, str] | None = None,
               broken: Mapping[str, str] | None = None) -> PrunePlan:
    """Keep every protected id (with its reason), every pinned one and the newest `keep_last`; delete the rest.

    `manifests` are complete snapshots only: a `broken` one (id -> what is wrong) never counts towards
    `keep_last` and is deleted unless something protects it."""
    plan = PrunePlan()
    protected = protected or {}
    newest_first = sorted(manifests, key=lambda m: m.created_at, reverse=True)
    for index, manifest in enumerate(newest_first):
        if manifest.id in protected:
            plan.keep[manifest.id] = protected[manifest.id]
        elif manifest.pinned:
            plan.keep[manifest.id] = "pinned"
        elif index < keep_last:
            plan.keep[manifest.id] = f"among the last {keep_last}"
        else:
            plan.delete.append(manifest.id)
    for snapshot_id, why in (broken or {}).items():
        if snapshot_id in protected:
            plan.keep[snapshot_id] = f"{protected[snapshot_id]} (though {why})"
        else:
            plan.broken[snapshot_id] = why
    return plan
