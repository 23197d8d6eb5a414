"""Which snapshots a prune keeps: the last N, everything pinned, the restore point, and anything an
unfinished operation (a journal, a watch window) still names; and which old restore points it unpins first
(only the restore points of the last `keep_restore_points` promoted upgrades stay pinned)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from backout.brain.manifest import ID_PATTERN, Manifest

__all__ = ["OPERATOR_PIN", "PrunePlan", "named_in", "plan_prune", "plan_unpin"]

_ANY_ID = re.compile(ID_PATTERN)
OPERATOR_PIN = "operator"  # a manifest's `pinned_by` when a person pinned it (`backout snapshot pin`)


@dataclass
class PrunePlan:
    """Restore points to unpin first (with the reason); snapshots to keep (with the reason) and to delete; broken
    ones (with what is wrong); leftover files."""

    unpin: dict[str, str] = field(default_factory=dict)
    keep: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    leftovers: list[Path] = field(default_factory=list)
    leftover_bytes: int = 0

    @property
    def empty(self) -> bool:
        """True when the prune would unpin and delete nothing."""
        return not (self.unpin or self.delete or self.broken or self.leftovers)

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"unpin": self.unpin, "keep": self.keep, "delete": self.delete, "broken": self.broken,
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


class UpgradePoint(Protocol):
    """An upgrade's restore point, as the ledger reports it (ledger.RestorePointOf)."""

    snapshot_id: str
    from_version: str | None
    to_version: str | None
    at: str | None
    promoted: bool


def _upgrade_words(point: UpgradePoint) -> str:
    when = f" at {point.at[:19].replace('T', ' ')} UTC" if point.at else ""
    return f"restore point of the upgrade {point.from_version or '?'} -> {point.to_version or '?'}{when}"


def plan_unpin(points: Sequence[UpgradePoint], manifests: list[Manifest], keep: int,
               protected: Mapping[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Which restore points to unpin, and which stay pinned, each with the reason: (unpin, held).

    `points` are the upgrades that took a restore point, newest first. The restore points of the last `keep`
    promoted upgrades stay pinned, and so does every newer one (an upgrade in its watch window, rolled back or
    failed); older ones are unpinned unless `protected` names them (the restore point, a journal, a watch
    window) or a person pinned them with `backout snapshot pin`. Only pinned, complete snapshots among
    `manifests` are considered: an unpinned or missing one is left to the other rules."""
    protected = protected or {}
    pinned = {m.id: m for m in manifests if m.pinned}
    unpin: dict[str, str] = {}
    held: dict[str, str] = {}
    promoted = 0
    for point in points:
        manifest = pinned.get(point.snapshot_id)
        words = _upgrade_words(point)
        if promoted < keep:
            promoted += point.promoted
            if manifest is not None:
                held[point.snapshot_id] = (f"{words}, one of the last {keep} promoted" if point.promoted else
                                           f"{words}, not promoted, newer than the last {keep} promoted")
            continue
        if manifest is None or point.snapshot_id in protected:
            continue
        if (manifest.model_extra or {}).get("pinned_by") == OPERATOR_PIN:
            held[point.snapshot_id] = f"{words}, pinned with `backout snapshot pin`"
            continue
        unpin[point.snapshot_id] = (f"{words}: older than the restore points of the last {keep} promoted "
                                    f"upgrades (keep_restore_points = {keep})")
    return unpin, held
