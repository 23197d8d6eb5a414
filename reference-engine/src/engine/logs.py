"""JSON log lines on stdout, one per event, in the Engine's log format."""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["JsonLog"]


class JsonLog:
    """Writes one JSON object per line; safe to call from any thread."""

    def __init__(self, stream: TextIO | None = None, logger: str = "engine") -> None:
        self.stream = stream or sys.stdout
        self.logger = logger
        self._lock = threading.Lock()

    def emit(self, level: str, message: str, **fields: Any) -> None:
        """Write one log line with `ts`, `level`, `logger`, `message` and the given fields."""
        record = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "level": level,
            "logger": self.logger,
            "message": message,
            **fields,
        }
        line = json.dumps(record, default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def info(self, message: str, **fields: Any) -> None:
        """An INFO line."""
        self.emit("INFO", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        """A WARNING line."""
        self.emit("WARNING", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        """An ERROR line."""
        self.emit("ERROR", message, **fields)
