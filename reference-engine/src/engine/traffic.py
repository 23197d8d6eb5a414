"""Realistic, seeded, open-loop traffic against a running Engine, summarised for humans and CI."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.client import AsyncEngineClient, TurnResult
from engine.releases import POISONED_TASK_ID
from engine.turn import PEOPLE

__all__ = ["PlannedTurn", "TrafficPlan", "TrafficProgress", "TrafficSummary", "plan_turns", "run_traffic",
           "run_traffic_async"]

CLIENT_ERROR = "CLIENT_ERROR"  # the client itself failed on a turn (never raised to the caller)

_PROJECTS = ("roadmap", "billing revamp", "onboarding flow", "search index", "mobile app", "data platform",
             "pricing page", "support backlog")
_TEAMS = ("platform", "design", "sales", "infra", "growth", "support")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_FACTS = (
    "The quarterly budget is {n}k.",
    "The {project} deadline is {day}.",
    "Our {team} standup is at {hour} am.",
    "The {project} owner is {a}.",
    "The staging database is {pct}% full.",
)
_MEETINGS = (
    "Had coffee with {a} and {b} about the {project}.",
    "{a} will review the {project} draft tomorrow.",
    "Call with {a}, {b} and {c} about the {project} went well.",
    "Met {a} to plan the {team} offsite.",
)
_QUESTIONS = (
    "What is the status of the {project}?",
    "When is the next {team} sync?",
    "Who owns the {project}?",
    "Can you summarise what {a} said about the {project}?",
)
_MCP_ASKS = (
    "Please email {a} the summary.",
    "Please email {a} the {project} notes.",
    "Please delete the old draft.",
)
_CHAT = ("Thanks, that helps.", "Let's pick this up tomorrow.", "Sounds good, go ahead.")
_KINDS: tuple[str, ...] = ("fact", "people", "question", "chat", "mcp")
_KIND_WEIGHTS = (0.30, 0.30, 0.25, 0.10, 0.05)
_TEMPLATES = {"fact": _FACTS, "people": _MEETINGS, "question": _QUESTIONS, "chat": _CHAT, "mcp": _MCP_ASKS}
_RATINGS = (5, 5, 4, 4, 4, 3, 2, 1, 0, -1)
_COMMENTS = ("spot on", "too long", "missed the point", "helpful, thanks")
FEEDBACK_SHARE = 0.2


OnResult = Callable[["PlannedTurn", TurnResult, float], None]


@dataclass(frozen=True)
class TrafficPlan:
    """What to send: `rate` turns per second for `duration` seconds, drawn from `seed`."""

    url: str
    key: str
    rate: float = 5.0
    duration: float = 10.0
    seed: int = 0
    poison_every: int = 0  # every Nth turn goes to POISONED_TASK_ID (0: never)
    concurrency: int = 64  # turns in flight at most; later ones wait for a slot
    conversations: int = 20  # size of the task-id pool, so threads grow
    timeout: float = 30.0

    @property
    def total_turns(self) -> int:
        """Number of turns scheduled: one every 1/rate seconds within the duration."""
        return max(1, math.ceil(self.rate * self.duration - 1e-9))


@dataclass(frozen=True)
class PlannedTurn:
    """One scheduled turn, and the feedback to send after it completes (if any)."""

    index: int  # 1-based
    at: float  # seconds after the start
    task_id: str
    message: str
    kind: str
    rating: int | None = None
    comment: str | None = None


@dataclass
class TrafficSummary:
    """Counts, latencies and failures of one traffic run."""

    url: str = ""
    attempted: int = 0  # turns issued
    sent: int = 0  # turns the Engine answered (any HTTP status)
    completed: int = 0
    failed: int = 0  # attempted but not completed, connection errors included (status 0)
    by_status: dict[int, int] = field(default_factory=dict)
    by_code: dict[str, int] = field(default_factory=dict)
    failed_by_task: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    feedback_sent: int = 0
    feedback_failed: int = 0
    mcp_asks: int = 0
    elapsed_s: float = 0.0
    rate: float = 0.0
    duration: float = 0.0
    seed: int = 0
    poison_every: int = 0
    interrupted: bool = False  # stopped early (Ctrl-C): the counts cover the turns sent until then

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (status codes become string keys)."""
        return {
            "url": self.url, "attempted": self.attempted, "sent": self.sent, "completed": self.completed,
            "failed": self.failed, "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_code": dict(sorted(self.by_code.items())),
            "failed_by_task": dict(sorted(self.failed_by_task.items())),
            "latency_p50_ms": self.latency_p50_ms, "latency_p95_ms": self.latency_p95_ms,
            "latency_p99_ms": self.latency_p99_ms, "latency_max_ms": self.latency_max_ms, "feedback_sent": self.feedback_sent,
            "feedback_failed": self.feedback_failed, "mcp_asks": self.mcp_asks, "elapsed_s": self.elapsed_s,
            "rate": self.rate, "duration": self.duration, "seed": self.seed,
            "poison_every": self.poison_every, "interrupted": self.interrupted,
        }

    def render(self) -> str:
        """A short human-readable table."""
        rows = [
            ("target", f"{self.url}  rate {self.rate:g}/s for {self.duration:g} s, seed {self.seed}"
             + (f", poison every {self.poison_every}" if self.poison_every else "")),
            ("turns", f"attempted {self.attempted}  sent {self.sent}  completed {self.completed}  "
                      f"failed {self.failed}"),
            ("status", _counts(self.by_status)),
            ("errors", _counts(self.by_code)),
            ("latency", f"p50 {_ms(self.latency_p50_ms)}  p95 {_ms(self.latency_p95_ms)}  p99 {_ms(self.latency_p99_ms)}  "
                        f"max {_ms(self.latency_max_ms)}"),
            ("feedback", f"{self.feedback_sent} sent, {self.feedback_failed} failed"),
            ("mcp asks", str(self.mcp_asks)),
            ("elapsed", f"{self.elapsed_s:.2f} s"),
        ]
        if self.failed_by_task:
            rows.append(("failed in", _counts(self.failed_by_task)))
        if self.interrupted:
            rows.append(("stopped", f"interrupted after {self.elapsed_s:.1f} s of {self.duration:g} s: "
                                    f"{self.attempted} of {math.ceil(self.rate * self.duration - 1e-9)} planned turns sent"))
        return "\n".join(f"{name:<10}{value}" for name, value in rows)

    def refused_by_key(self) -> bool:
        """True when turns got answers and every answer was 401 or 403: the key is wrong or missing."""
        answered = {status for status in self.by_status if status > 0}
        return self.sent > 0 and answered <= {401, 403}


def _counts(counts: dict[Any, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# -- the plan ---------------------------------------------------------------------------------


def _message(rng: random.Random, kind: str) -> str:
    a, b, c = rng.sample(PEOPLE, 3)
    template = rng.choice(_TEMPLATES[kind])
    return template.format(a=a, b=b, c=c, project=rng.choice(_PROJECTS), team=rng.choice(_TEAMS),
                           day=rng.choice(_DAYS), n=rng.randrange(10, 500), hour=rng.randrange(8, 11),
                           pct=rng.randrange(40, 96))


def plan_turns(plan: TrafficPlan) -> list[PlannedTurn]:
    """The deterministic turn schedule of a plan (same seed, same turns)."""
    rng = random.Random(plan.seed)
    turns = []
    for index in range(1, plan.total_turns + 1):
        kind = rng.choices(_KINDS, _KIND_WEIGHTS)[0]
        message = _message(rng, kind)
        task_id = f"traffic-{plan.seed}-{rng.randrange(max(1, plan.conversations)):02d}"
        if plan.poison_every > 0 and index % plan.poison_every == 0:
            task_id = POISONED_TASK_ID
        rating = comment = None
        if rng.random() < FEEDBACK_SHARE:
            rating = rng.choice(_RATINGS)
            comment = rng.choice(_COMMENTS) if rng.random() < 0.3 else None
        turns.append(PlannedTurn(index, (index - 1) / plan.rate, task_id, message, kind, rating, comment))
    return turns


# -- running ----------------------------------------------------------------------------------


@dataclass
class _Tally:
    results: list[tuple[PlannedTurn, TurnResult]] = field(default_factory=list)
    feedback_sent: int = 0
    feedback_failed: int = 0


async def _turn(client: AsyncEngineClient, slots: asyncio.Semaphore, turn: PlannedTurn,
                tally: _Tally, on_result: OnResult | None = None) -> None:
    """Send one turn (and its feedback); every outcome is recorded, nothing is raised."""
    async with slots:
        try:
            result = await client.execute(turn.task_id, turn.message)
        except Exception as exc:  # a client bug or odd answer must not stop the run
            result = TurnResult(status=0, error_code=CLIENT_ERROR,
                                error_message=f"{type(exc).__name__}: {exc}")
        tally.results.append((turn, result))
        if on_result is not None:
            on_result(turn, result, time.time())
        if result.ok and turn.rating is not None:
            try:
                message_id = f"{result.request_id}-assistant" if result.request_id else None
                await client.feedback(turn.task_id, turn.rating, message_id=message_id,
                                      comment=turn.comment)
                tally.feedback_sent += 1
            except Exception:
                tally.feedback_failed += 1


def _percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 2)


def _summarise(plan: TrafficPlan, tally: _Tally, elapsed: float) -> TrafficSummary:
    results = tally.results
    failed = [(t, r) for t, r in results if not r.ok]
    latencies = sorted(r.latency_ms for _, r in results if r.ok)
    return TrafficSummary(
        url=plan.url,
        attempted=len(results),
        sent=sum(1 for _, r in results if r.status > 0),
        completed=len(results) - len(failed),
        failed=len(failed),
        by_status=dict(Counter(r.status for _, r in results)),
        by_code=dict(Counter(r.error_code or "UNKNOWN" for _, r in failed)),
        failed_by_task=dict(Counter(t.task_id for t, _ in failed)),
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
        latency_p99_ms=_percentile(latencies, 99),
        latency_max_ms=latencies[-1] if latencies else None,
        feedback_sent=tally.feedback_sent,
        feedback_failed=tally.feedback_failed,
        mcp_asks=sum(1 for t, r in results if t.kind == "mcp" and r.status > 0),
        elapsed_s=round(elapsed, 3),
        rate=plan.rate, duration=plan.duration, seed=plan.seed, poison_every=plan.poison_every,
    )


_STOP_LOOK_S = 0.1  # how often the schedule looks at `stop` while it waits for the next turn


async def run_traffic_async(plan: TrafficPlan, on_result: OnResult | None = None,
                            stop: threading.Event | None = None, grace: float | None = None) -> TrafficSummary:
    """Send the plan's turns open-loop (on schedule, not waiting for earlier ones) and summarise.

    `on_result(turn, result, finished_at)` sees every turn as it ends; setting `stop` ends the run
    early: turns in flight still finish, or with `grace` at most that many seconds more (the others
    are abandoned and not counted)."""
    turns = plan_turns(plan)
    tally = _Tally()
    slots = asyncio.Semaphore(max(1, plan.concurrency))
    async with AsyncEngineClient(plan.url, plan.key, timeout=plan.timeout,
                                 max_connections=max(1, plan.concurrency)) as client:
        started = time.perf_counter()
        tasks = []
        for turn in turns:
            while (delay := started + turn.at - time.perf_counter()) > 0 and not (stop is not None and stop.is_set()):
                await asyncio.sleep(min(delay, _STOP_LOOK_S) if stop is not None else delay)
            if stop is not None and stop.is_set():
                break
            tasks.append(asyncio.create_task(_turn(client, slots, turn, tally, on_result)))
        stopped = stop is not None and stop.is_set()
        if stopped and grace is not None and tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=stopped)
        elapsed = time.perf_counter() - started
    summary = _summarise(plan, tally, elapsed)
    summary.interrupted = stopped and len(tally.results) < len(turns)
    return summary


def run_traffic(plan: TrafficPlan, on_result: OnResult | None = None,
                stop: threading.Event | None = None, grace: float | None = None) -> TrafficSummary:
    """Run the plan to completion (or until `stop`) on a fresh event loop and return its summary."""
    return asyncio.run(run_traffic_async(plan, on_result, stop, grace))


class TrafficProgress:
    """How a long run is going, on stderr: a progress bar on a terminal; otherwise one line every `every`
    seconds (none when `every` is 0). Use as a context manager; pass `on_result` to run_traffic."""

    def __init__(self, plan: TrafficPlan, every: float = 10.0, stream: Any = None) -> None:
        import sys

        self.plan, self.every = plan, every
        self.stream = stream if stream is not None else sys.stderr
        self.total = plan.total_turns
        self.done = self.ok = 0
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None

    def on_result(self, turn: PlannedTurn, result: TurnResult, at: float) -> None:
        """Count one finished turn (called from the traffic's event loop)."""
        with self._lock:
            self.done += 1
            self.ok += bool(result.ok)
            if not result.ok:
                self.statuses[result.status] += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, failed=self.done - self.ok)

    def line(self) -> str:
        """The progress as one line of text."""
        with self._lock:
            done, ok, statuses = self.done, self.ok, dict(self.statuses)
        failed = done - ok
        why = ", ".join(f"{'no answer' if k == 0 else k}: {v}" for k, v in sorted(statuses.items()))
        return (f"engine traffic: {done}/{self.total} turns done after {time.monotonic() - self._started:.0f} s of "
                f"{self.plan.duration:g} s: {ok} completed, {failed} failed" + (f" ({why})" if why else ""))

    def __enter__(self) -> "TrafficProgress":
        self._started = time.monotonic()
        if self._terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("traffic"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("turns, {task.fields[failed]} failed"), TimeElapsedColumn(),
                                 console=Console(file=self.stream), transient=True)
            self._task = self._bar.add_task("traffic", total=self.total, failed=0)
            self._bar.start()
        elif self.every > 0:
            self._thread = threading.Thread(target=self._lines, name="traffic-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._quit.set()
        if self._thread is not None:
            self._thread.join(1)
        if self._bar is not None:
            self._bar.stop()

    def _terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def _lines(self) -> None:
        while not self._quit.wait(self.every):
            print(self.line(), file=self.stream, flush=True)
