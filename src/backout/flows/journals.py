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

__all__ = ["PendingOperation", "refuse_if_pending", "resume_journal"]


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
