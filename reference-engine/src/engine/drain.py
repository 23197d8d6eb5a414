"""Graceful drain on SIGTERM, built on purpose: plain uvicorn closes its listener at once.

While draining the listener stays open: /health answers 503 "draining", new turns get 503 with
Retry-After, in-flight turns run to `completed`; then working memory is flushed (lifespan
shutdown) and the process exits 0 — or at the drain deadline, whatever is still running is cut.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from typing import Any
from types import FrameType

import uvicorn

from engine.core import EngineCore

__all__ = ["DrainingServer"]


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM starts a drain instead of an immediate shutdown."""

    def __init__(self, config: uvicorn.Config, core: EngineCore) -> None:
        super().__init__(config)
        self.core = core
        self.drain_deadline: float | None = None
        # Log lines the signal handler asked for. A handler runs between two bytecodes of whatever
        # the main thread was doing, possibly inside JsonLog.emit with its lock held, so it must
        # not log itself (that deadlocked: a drain that never started); on_tick writes them.
        self._notes: deque[tuple[str, str, dict[str, Any]]] = deque()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: SIGTERM/SIGINT begin the drain; a second SIGINT forces exit."""
        core = self.core
        if core.release.bug == "drain" and sig == signal.SIGTERM:
            self._notes.append(("WARNING", "SIGTERM ignored",
                                {"version": core.release.version, "code": "DRAIN_IGNORED"}))
            return
        if self.drain_deadline is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        # Not appended to _captured_signals: uvicorn would re-raise the signal after shutdown and
        # the process would die with -15 instead of exiting 0 after a clean drain.
        self.drain_deadline = time.monotonic() + core.settings.drain_timeout
        if core.phase in ("ready", "starting"):
            core.phase = "draining"
        self._notes.append(("INFO", "drain started", {"signal": signal.Signals(sig).name,
                                                      "in_flight": len(core.turns),
                                                      "drain_timeout_s": core.settings.drain_timeout}))

    async def on_tick(self, counter: int) -> bool:
        """Called by uvicorn's main loop every 0.1 s; ends the loop once the drain is done."""
        while self._notes:
            level, message, fields = self._notes.popleft()
            self.core.log.emit(level, message, **fields)
        if self.drain_deadline is not None and not self.should_exit:
            if not self.core.turns:
                self.core.log.info("drain complete", in_flight=0)
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                self.core.log.warning("drain deadline reached; cutting in-flight turns",
                                      in_flight=len(self.core.turns), code="DRAIN_TIMEOUT")
                self.should_exit = True
                self.force_exit = True
        return await super().on_tick(counter)
