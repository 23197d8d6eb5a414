"""Commands as data: what a runtime, a volume provider or a restore runs, built once and used twice.

A plan shows a `Command` (`--dry-run`); the code that carries it out receives the very same object
and notes it as performed, so the journal records what ran and a test can hold the two side by
side. Most commands are argv lists run as subprocesses (never through a shell); the others are
in-process actions (a signal to a process group, an edit of a `.env`, a hard link, a rename, a WAL
checkpoint) that argv describes as the equivalent command line. Values known only once a command
runs are written as explicit placeholders (`<time>`), the same in the plan and in the journal.
Environment variables appear by name only: their values may be secret.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["EXEC", "SPAWN", "Command", "isolated", "note", "perform", "recording", "run_command"]

T = TypeVar("T")

# Kinds of Command: "exec" runs argv to completion, "spawn" starts it detached; every other kind is
# an in-process action that argv only describes: "signal", "edit", "copy", "link", "rename",
# "remove", "checkpoint", "write", "api".
EXEC, SPAWN = "exec", "spawn"


@dataclass(frozen=True)
class Command:
    """One command: argv as data, what it is for, the environment names it gets and the files it touches."""

    purpose: str
    argv: tuple[str, ...]
    env_names: tuple[str, ...] = ()  # variables it gets (names only: values may be secret)
    files: tuple[str, ...] = ()  # files and folders it changes
    kind: str = EXEC
    timeout: float | None = None  # seconds before it is given up (a drain deadline, for a signal)
    cwd: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"purpose": self.purpose, "argv": list(self.argv), "env": list(self.env_names),
                "files": list(self.files), "kind": self.kind, "timeout": self.timeout, "cwd": self.cwd}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Command":
        """The command back from its JSON form (e.g. kept in a journal's decision)."""
        return cls(str(data["purpose"]), tuple(data["argv"]), tuple(data.get("env", ())),
                   tuple(data.get("files", ())), str(data.get("kind", EXEC)), data.get("timeout"), data.get("cwd"))

    def shell(self) -> str:
        """The argv as one line a person can read (never executed through a shell)."""
        return shlex.join(self.argv)


_active: ContextVar[tuple[list[Command], ...]] = ContextVar("backout_commands_performed", default=())


@contextmanager
def recording() -> Iterator[list[Command]]:
    """Collect the commands performed inside the block (enclosing recordings get them too)."""
    performed: list[Command] = []
    token = _active.set((*_active.get(), performed))
    try:
        yield performed
    finally:
        _active.reset(token)


@contextmanager
def isolated() -> Iterator[list[Command]]:
    """Collect the commands performed inside the block for this block only (e.g. a trial boot's own)."""
    performed: list[Command] = []
    token = _active.set((performed,))
    try:
        yield performed
    finally:
        _active.reset(token)


def note(command: Command) -> None:
    """Record `command` as performed in every active recording."""
    for performed in _active.get():
        performed.append(command)


def perform(command: Command, action: Callable[[], T]) -> T:
    """Carry out `command` by `action` (the in-process code that does what it describes), noting it."""
    note(command)
    return action()


def run_command(command: Command, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run an exec command to completion, output captured; OSError and TimeoutExpired reach the caller."""
    if command.kind != EXEC:
        raise ValueError(f"{command.kind} command {command.shell()!r} is not run as a subprocess")
    note(command)
    return subprocess.run(command.argv, env=dict(env) if env is not None else None, capture_output=True, text=True,
                          timeout=command.timeout, cwd=command.cwd)
