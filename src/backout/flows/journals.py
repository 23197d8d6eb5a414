"""The life-cycle of an operation's journal, owned by the flows (the CLI only parses and prints).

A new operation is refused while another one is unfinished (the refusal quotes the command that
finishes it, from `ledger.pending_operations`, the same list `status` shows); `--resume` opens the
interrupted journal or says there is none.
"""

from __future__ import annotations

from pathlib import Path

from backout.config import Target
from backout.errors import EXIT_REFUSED, EXIT_USAGE, BackoutError
from backout.journal import Journal
from backout.ledger import Pending, pending_operations

__all__ = ["PendingOperation", "abandon", "refuse_if_pending", "resume_journal"]


class PendingOperation(BackoutError):
    """Another operation of the deployment is unfinished: finish or abandon it first."""

    def __init__(self, pending: Pending, what: str) -> None:
        how = f"finish it with `{pending.finish}`" + (f" or set it aside with `{pending.abandon}`"
                                                     if pending.abandon else "")
        super().__init__(f"{pending.detail} is pending: {how}; no {what} started and nothing was stopped",
                         EXIT_REFUSED)
        self.pending = pending


def refuse_if_pending(target: Target, what: str, allow: tuple[str, ...] = ()) -> None:
    """PendingOperation when an unfinished operation (other than the kinds in `allow`) exists."""
    for pending in pending_operations(target):
        if pending.kind not in allow:
            raise PendingOperation(pending, what)


def resume_journal(path: Path, what: str) -> Journal:
    """The interrupted operation's journal (`--resume`), or a usage error when there is none."""
    if not path.exists():
        raise BackoutError(f"there is no interrupted {what} to resume", EXIT_USAGE)
    return Journal.open(path, {})


def abandon(target: Target, path: Path, what: str) -> list[str]:
    """`--abandon`: set the journal aside (kept, renamed); lines that say where everything it moved is.

    A rollback abandoned after its restore has put the bad window's rows in a quarantined brain (and
    maybe a salvage bundle): they are named here and in the history, never left for nobody to find."""
    from backout.history import Change, History, deployment_state
    from backout.ledger import command_for
    from backout.lock import operation_lock

    if not path.exists():
        raise BackoutError(f"there is no interrupted {what} to abandon", EXIT_USAGE)
    with operation_lock(deployment_state(target.state_dir, target.deployment), f"abandon {what}"):
        journal = Journal.open(path, {})
        kept = journal.set_aside("abandoned")
        lines = [f"set aside: {kept}"]
        moved = _displaced(target, journal)
        if moved:
            decision = dict(journal.operation.get("decision") or {})
            History(target.state_dir).append(Change(
                deployment=target.deployment, kind=what, from_version=decision.get("from_version"),
                to_version=decision.get("to_version"), outcome="abandoned", detail="; ".join(moved)))
            lines += moved
    lines.append(f"check `{command_for(target, 'status')}` before anything else")
    return lines


def _displaced(target: Target, journal: Journal) -> list[str]:
    """Where an abandoned rollback left the brain it displaced, and the bad window's rows."""
    from backout.ledger import command_for

    facts, decision = journal.facts, dict(journal.operation.get("decision") or {})
    quarantine = facts.get("quarantine") or (facts.get("volume_restore") or {}).get("quarantined_volume")
    if not quarantine:
        return []
    out = [f"the brain it displaced, with the bad window's rows, is kept in {quarantine}"]
    salvage = facts.get("salvage") or {}
    snapshot = (decision.get("snapshot") or {}).get("id")
    if salvage.get("folder"):
        out.append(f"those rows were salvaged into {salvage['folder']}: replay them with "
                   f"`{command_for(target, 'salvage', 'replay', str(decision.get('incident_id')))}`")
    elif snapshot:
        brain = Path(str(quarantine)) / target.brain.name
        out.append(f"extract them with `{command_for(target, 'salvage', 'extract', '--snapshot', snapshot, '--from', str(brain))}`")
    return out
