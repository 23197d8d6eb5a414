"""Traffic kept running through a drill, every turn recorded: the error-rate and latency series of
the report, and which turns the service accepted (none of them may be lost).

Two senders: the reference Engine's own turns (the Engine profile's `traffic = "engine"`, and the
default drill), or, for any other service, the requests of the staging deployment's
`[drill] requests`, sent in turn."""

from __future__ import annotations

from abc import ABC, abstractmethod
import bisect
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable

import httpx

from backout.errors import EXIT_ENVIRONMENT, BackoutError
from backout.profiles.model import SmokeRequest

__all__ = ["Turn", "Traffic", "EngineTraffic", "RequestTraffic", "burst", "engine_traffic"]


def engine_traffic() -> ModuleType:
    """The reference Engine's traffic generator: the Engine's turns are what the default drill sends. The
    Engine is an optional part of backout; a clear error says how to get it when it is missing."""
    try:
        from engine import traffic
    except ImportError:
        raise BackoutError("this drill sends the reference Engine's turns, and the reference Engine is not installed: "
                           "`pip install backout-engine` (the reference-engine/ folder of backout's source tree); a "
                           "drill on your own staging deployment needs only `[deployments.NAME.drill] requests`",
                           EXIT_ENVIRONMENT) from None
    return traffic


@dataclass(frozen=True)
class Turn:
    """One turn (or request) as the client saw it."""

    at: float  # when it ended (epoch seconds)
    task_id: str
    status: int
    ok: bool
    latency_ms: float


class Traffic(ABC):
    """Open-loop traffic at `rate` per second until stopped; subclasses say what one turn is."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.turns: list[Turn] = []
        self.started_at: float | None = None  # when sending began (epoch seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Traffic":
        """Begin sending (in a thread)."""
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @abstractmethod
    def _run(self) -> None:
        """Send turns at the rate until stopped (what one turn is, the subclass says)."""

    def stop(self) -> None:
        """Stop sending; turns in flight finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def since(self, start: float) -> list[Turn]:
        """Turns that ended at or after `start`."""
        return [t for t in list(self.turns) if t.at >= start]

    def series(self, edges: Iterable[float] = (), width: float = 1.0) -> list[dict[str, Any]]:
        """Buckets of about `width` seconds from the start of the traffic to its last turn: requests, server
        errors (5xx or no answer), of those no answer, and p95 latency of the good ones.

        Every time in `edges` (the switch, the detection, ...) is a bucket boundary: the stretch between two
        edges is cut into equal buckets of `width` seconds or so, so no bucket holds turns from both sides of a
        mark. Each bucket is [t, t_end); a turn counts when it ended. A bucket without a turn has requests 0."""
        turns = sorted(list(self.turns), key=lambda turn: turn.at)
        if not turns:
            return []
        first = min(self.started_at or turns[0].at, turns[0].at)
        last = max(turns[-1].at, first + 1e-3)
        cuts = sorted({first, last, *(e for e in edges if first < e < last)})
        bounds: list[float] = []
        for a, b in zip(cuts, cuts[1:]):
            n = max(1, round((b - a) / width))
            bounds += [a + (b - a) * i / n for i in range(n)]
        bounds.append(last)
        out = []
        at = [turn.at for turn in turns]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            final = i == len(bounds) - 2  # the last bucket holds the last turn
            inside = turns[bisect.bisect_left(at, a):bisect.bisect_right(at, b) if final else bisect.bisect_left(at, b)]
            good = sorted(t.latency_ms for t in inside if t.ok)
            out.append({"t": round(a, 6), "t_end": round(b, 6), "requests": len(inside),
                        "errors": sum(1 for t in inside if t.status >= 500 or t.status == 0),
                        "no_answer": sum(1 for t in inside if t.status == 0),
                        "p95_ms": round(good[min(len(good) - 1, int(0.95 * len(good)))], 1) if good else None})
        return out


class EngineTraffic(Traffic):
    """The reference Engine's turns, from its own traffic generator."""

    def __init__(self, url: str, key: str, rate: float) -> None:
        super().__init__(rate)
        self.url, self.key = url, key
        self._traffic = engine_traffic()  # fails before any thread starts when the Engine is missing

    def _run(self) -> None:
        plan = self._traffic.TrafficPlan(url=self.url, key=self.key, rate=self.rate, duration=3600,
                                         seed=int(time.time()), conversations=50, timeout=30)
        self._traffic.run_traffic(plan, self._record, self._stop)

    def _record(self, turn: Any, result: Any, at: float) -> None:  # engine.traffic's PlannedTurn, TurnResult
        self.turns.append(Turn(at, turn.task_id, result.status, result.ok, result.latency_ms))


# `{n}`: one counter for every request of this process, started at the clock's milliseconds, so the numbers
# of the seed, the traffic and an earlier drill on the same staging never repeat.
_NUMBERS = itertools.count(int(time.time() * 1000))


def _fill(value: Any, n: int) -> Any:
    """`{n}` in a request's text (path, body strings, nested) becomes the counter."""
    if isinstance(value, str):
        return value.replace("{n}", str(n))
    if isinstance(value, dict):
        return {k: _fill(v, n) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, n) for v in value]
    return value


class RequestTraffic(Traffic):
    """The configured requests, in turn; one answer in the expected statuses is an accepted turn."""

    WORKERS = 16  # requests in flight at most (a slow build must not stop the clock of an open loop)

    def __init__(self, url: str, headers: dict[str, str], requests: list[SmokeRequest], rate: float,
                 timeout: float = 30.0) -> None:
        super().__init__(rate)
        self.url, self.headers, self.requests = url.rstrip("/"), headers, requests
        self.client = httpx.Client(timeout=timeout, trust_env=False, headers=headers)
        self._sent = itertools.count()

    def send(self) -> Turn:
        """One request (the next of the list), timed; status 0 when there was no answer."""
        n = next(_NUMBERS)
        request = self.requests[next(self._sent) % len(self.requests)]
        path, body = _fill(request.path, n), _fill(request.body, n)
        started = time.perf_counter()
        try:
            status = self.client.request(request.method, self.url + path, json=body).status_code
        except httpx.HTTPError:
            status = 0
        turn = Turn(time.time(), f"{request.method} {path} #{n}", status, status in request.expect_status,
                    (time.perf_counter() - started) * 1000)
        self.turns.append(turn)
        return turn

    def _run(self) -> None:
        with ThreadPoolExecutor(self.WORKERS, thread_name_prefix="drill-traffic") as pool:
            due = time.monotonic()
            while not self._stop.is_set():
                pool.submit(self.send)
                due += 1 / self.rate
                self._stop.wait(max(0.0, due - time.monotonic()))

    def burst(self, count: int) -> int:
        """Send `count` requests quickly (rows for the drill to protect); how many were accepted."""
        with ThreadPoolExecutor(4) as pool:
            return sum(1 for turn in pool.map(lambda _: self.send(), range(count)) if turn.ok)


def burst(url: str, key: str, turns: int, rate: float = 40.0) -> int:
    """Send `turns` Engine turns quickly (realistic memory for the drill to protect); how many succeeded."""
    traffic = engine_traffic()
    plan = traffic.TrafficPlan(url=url, key=key, rate=rate, duration=turns / rate, seed=int(time.time()) + 1,
                               conversations=40)
    return int(traffic.run_traffic(plan).completed)
