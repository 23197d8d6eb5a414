"""A minimal supervisor for detached services: records the service's exit code in a file.

`python -m backout.runtime.supervise EXIT_FILE -- ARGV...` runs ARGV in its own process group
(the group backout signals) and, when it ends, writes {"code": N} to EXIT_FILE. Without it a
service started by an earlier backout run would die unobserved and its exit code (0, 143 or -15
for a clean drain) would be lost. The supervisor ignores SIGTERM/SIGINT itself: the signal sent
to the group reaches the service directly, and the supervisor must outlive it to record the code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Run the service and record how it ended."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m backout.runtime.supervise EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # The service must not inherit the ignored signals: restore the defaults in the child.
        child = subprocess.Popen(command, preexec_fn=_default_signals)
    except OSError as exc:
        _record(exit_file, 127, f"cannot start {command[0]!r}: {exc.strerror}")
        print(f"backout supervise: cannot start {command[0]!r}: {exc.strerror}", flush=True)
        return 127
    code = child.wait()
    _record(exit_file, code, "")
    return code if code >= 0 else 128 - code


def _default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _record(path: str, code: int, error: str) -> None:
    tmp = f"{path}.tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600),
                   "w", encoding="utf-8") as f:  # 0600 whatever the service's umask
        json.dump({"code": code, "error": error, "at": datetime.now(timezone.utc).isoformat()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
