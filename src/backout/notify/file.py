"""A local channel: every message appended as one JSON line to a private file (drills, audits)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from backout.fsutil import HostilePath, describe_os_error, ensure_private_dir, fsync_dir, open_private
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
    except HostilePath as exc:  # a planted link or hard link: never written through
        return Delivery(label, False, f"{label}: {exc}", 1, time.monotonic() - started)
    except OSError as exc:
        return Delivery(label, False, f"{label}: {describe_os_error(exc, path)}", 1,
                        time.monotonic() - started)
    return Delivery(label, True, f"{label}: appended", 1, time.monotonic() - started)


def _append_line(path: Path, line: str) -> None:
    created = not os.path.lexists(path)
    ensure_private_dir(path.parent)
    fd = open_private(path)  # 0600 even when made by hand: messages name incidents
    try:
        data = memoryview(line.encode("utf-8"))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
