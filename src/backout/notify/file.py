"""A local channel: every message appended as one JSON line to a private file (drills, audits)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from backout.fsutil import describe_os_error, fsync_dir
from backout.notify.message import Delivery, Message

__all__ = ["append_message", "file_label"]


def file_label(path: Path) -> str:
    """How the channel is named in plans and deliveries, e.g. "file /var/log/backout.jsonl"."""
    return f"file {path}"


def append_message(path: Path, message: Message) -> Delivery:
    """Append `message` as one JSON line to `path` (0600, fsynced); failures become the Delivery."""
    started = time.monotonic()
    label = file_label(path)
    record = {"at": datetime.now(UTC).isoformat(timespec="milliseconds"),
              "source": "backout", **message.to_dict()}
    try:
        _append_line(path, json.dumps(record, ensure_ascii=False) + "\n")
    except OSError as exc:
        return Delivery(label, False, f"{label}: {describe_os_error(exc, path)}", 1,
                        time.monotonic() - started)
    return Delivery(label, True, f"{label}: appended", 1, time.monotonic() - started)


def _append_line(path: Path, line: str) -> None:
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:  # a file made by hand: messages name incidents
            os.fchmod(fd, 0o600)
        data = memoryview(line.encode("utf-8"))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
