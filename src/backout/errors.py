"""Errors that end a command, each with its exit code (the table is in the README)."""

from __future__ import annotations

__all__ = ["BackoutError", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_ENVIRONMENT",
           "EXIT_ROLL_BACK", "EXIT_INCONCLUSIVE", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and its check failed (e.g. a snapshot fails verification)
EXIT_USAGE = 2  # bad input: unknown id, missing or malformed file or config
EXIT_REFUSED = 3  # refused for safety: service running, wrong deployment, unverified snapshot
EXIT_ENVIRONMENT = 4  # the machine failed us: disk full, I/O error, permissions, Docker down
EXIT_ROLL_BACK = 5  # the verdict is roll-back and nothing acted on it (check; upgrade/watch without auto-rollback)
EXIT_INCONCLUSIVE = 6  # not enough evidence yet for a verdict (check)
EXIT_INTERRUPTED = 130  # Ctrl-C; `backout status` lists what is left unfinished and the command that finishes it


class BackoutError(Exception):
    """A failure to report in one line, with what to do, and the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
