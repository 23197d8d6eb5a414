"""Which snapshots a prune keeps: the last N, everything pinned, and the latest restore point."""

from __future__ import annotations

from dataclasses import dataclass, field

from backout.brain.manifest import Manifest

__all__ = ["PrunePlan", "plan_prune"]


@dataclass
class PrunePlan:
    """Snapshots to keep (with the reason) and to delete."""

    keep: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"keep": self.keep, "delete": self.delete}


def plan_prune(manifests: list[Manifest], keep_last: int, protected: set[str] | None = None) -> PrunePlan:
    """Keep the newest `keep_last`, every pinned one and every protected id; delete the rest."""
    plan = PrunePlan()
    protected = protected or set()
    newest_first = sorted(manifests, key=lambda m: m.created_at, reverse=True)
    for index, manifest in enumerate(newest_first):
        if manifest.id in protected:
            plan.keep[manifest.id] = "restore point"
        elif manifest.pinned:
            plan.keep[manifest.id] = "pinned"
        elif index < keep_last:
            plan.keep[manifest.id] = f"among the last {keep_last}"
        else:
            plan.delete.append(manifest.id)
    return plan
