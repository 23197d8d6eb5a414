"""SQLite's errors in an operator's words: what happened to which file, and what to do.

SQLite says "database is locked", "attempt to write a readonly database" or "disk I/O error"; each has
a cause an operator can act on (a writer holding the brain, a hot journal left by a crashed writer, a
full or failing disk), and the kernel or the file system can tell which.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from backout.brain.liveness import lock_holders
from backout.errors import EXIT_ENVIRONMENT, EXIT_USAGE
from backout.fsutil import free_bytes

__all__ = ["explain"]


def explain(exc: sqlite3.Error, brain: Path | None, writing: Path | None = None) -> tuple[str, int]:
    """(one sentence, exit code) for `exc`, raised while reading `brain` (and writing into `writing`)."""
    code = getattr(exc, "sqlite_errorcode", None) or 0
    name = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
    primary = code & 0xFF
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and brain is not None:
        return _locked(brain), EXIT_ENVIRONMENT
    if primary == sqlite3.SQLITE_READONLY and brain is not None and _hot_journal(brain):
        return _hot(brain), EXIT_ENVIRONMENT
    if primary in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        folder = (writing or brain or Path(".")).absolute()
        folder = folder if folder.is_dir() else folder.parent
        free = _free_mib(folder)
        if primary == sqlite3.SQLITE_FULL:
            return (f"the disk holding {folder} is full ({free} free): free space there or choose another "
                    "folder"), EXIT_ENVIRONMENT
        return (f"SQLite could not read or write a file in {folder} ({name}: {exc}; {free} free there): if "
                "space is short free some, else the device may be failing (check dmesg) before retrying"
                ), EXIT_ENVIRONMENT
    return f"SQLite: {exc}; check that the file is the right SQLite database", EXIT_USAGE


def _locked(brain: Path) -> str:
    holders = [p for p in lock_holders(brain) if p > 0]
    who = ", ".join(f"pid {p} ({_command(p)})" for p in holders) or "another process"
    return (f"the brain {brain} is locked: {who} holds a write lock on it (in rollback-journal mode a writer "
            "keeps everybody else out until it commits); retry when it is done, or stop it first "
            "(`backout stop` for the service)")


def _hot_journal(brain: Path) -> bool:
    journal = brain.with_name(brain.name + "-journal")
    return journal.is_file() and journal.stat().st_size > 0


def _hot(brain: Path) -> str:
    return (f"the brain {brain} has a hot journal ({brain.name}-journal): a writer stopped in the middle of a "
            "transaction, and SQLite rolls that back the next time the brain is opened for writing, which "
            "backout never does to read it; start the service once (or run `sqlite3 "
            f"{brain} 'PRAGMA quick_check'` as its owner), then retry; do not delete the journal (that "
            "corrupts the brain)")


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "command unknown"
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return text if len(text) <= 60 else text[:57] + "..."


def _free_mib(folder: Path) -> str:
    try:
        return f"{free_bytes(folder) // 2**20} MiB"
    except OSError:
        return "free space unknown"
