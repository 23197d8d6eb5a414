"""Traffic kept running through a drill, every turn recorded: the error-rate and latency series of
the report, and which turns the service accepted (none of them may be lost)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from backout.errors import EXIT_ENVIRONMENT, BackoutError

__all__ = ["Turn", "TrafficRecorder", "burst", "engine_traffic"]


def engine_traffic() -> ModuleType:
    """The reference Engine's traffic generator: the Engine's turns are what the default drill sends. The
    Engine is an optional part of backout; a clear error says how to get it when it is missing."""
    try:
        from engine import traffic
    except ImportError:
        raise BackoutError("this drill sends the Engine's turns, and the reference Engine is not installed; "
                           "install backout with its reference Engine (the `engine` package of its source tree)", EXIT_ENVIRONMENT) from None
    return traffic


@dataclass(frozen=True)
class Turn:
    """One turn as the client saw it."""

    at: float  # when it ended (epoch seconds)
    task_id: str
    status: int
    ok: bool
    latency_ms: float


@dataclass
class TrafficRecorder:
    """Open-loop turns at `rate` per second until stopped."""

    url: str
    key: str
    rate: float
    turns: list[Turn] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "TrafficRecorder":
        """Begin sending (in a thread)."""
        traffic = engine_traffic()
        plan = traffic.TrafficPlan(url=self.url, key=self.key, rate=self.rate, duration=3600, seed=int(time.time()),
                                   conversations=50, timeout=30)
        self._thread = threading.Thread(target=traffic.run_traffic, args=(plan, self._record, self._stop),
                                        daemon=True)
        self._thread.start()
        return self

    def _record(self, turn: Any, result: Any, at: float) -> None:  # engine.traffic's PlannedTurn, TurnResult
        self.turns.append(Turn(at, turn.task_id, result.status, result.ok, result.latency_ms))

    def stop(self) -> None:
        """Stop sending; turns in flight finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def since(self, start: float) -> list[Turn]:
        """Turns that ended at or after `start`."""
        return [t for t in list(self.turns) if t.at >= start]

    def series(self) -> list[dict[str, Any]]:
        """Per second: requests, server errors (5xx or no answer) and p95 latency of the good ones."""
        buckets: dict[int, list[Turn]] = {}
        for turn in list(self.turns):
            buckets.setdefault(int(turn.at), []).append(turn)
        out = []
        for second in sorted(buckets):
            turns = buckets[second]
            good = sorted(t.latency_ms for t in turns if t.ok)
            out.append({"t": second, "requests": len(turns),
                        "errors": sum(1 for t in turns if t.status >= 500 or t.status == 0),
                        "p95_ms": round(good[min(len(good) - 1, int(0.95 * len(good)))], 1) if good else None})
        return out


def burst(url: str, key: str, turns: int, rate: float = 40.0) -> int:
    """Send `turns` turns quickly (realistic memory for the drill to protect); how many succeeded."""
    traffic = engine_traffic()
    plan = traffic.TrafficPlan(url=url, key=key, rate=rate, duration=turns / rate, seed=int(time.time()) + 1,
                               conversations=40)
    return int(traffic.run_traffic(plan).completed)
