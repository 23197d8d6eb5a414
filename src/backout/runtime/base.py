"""The runtime interface every adapter implements, and the results it reports."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backout.errors import EXIT_ENVIRONMENT, BackoutError
from backout.signals.health import HealthProbe, probe

__all__ = ["Availability", "Command", "Current", "HealthWait", "Runtime", "RuntimeFailure", "StopResult",
           "not_retryable"]


class RuntimeFailure(BackoutError):
    """A runtime action failed; `log_tail` holds the service's last log lines when they explain it."""

    def __init__(self, message: str, exit_code: int = EXIT_ENVIRONMENT, log_tail: list[str] | None = None) -> None:
        super().__init__(message, exit_code)
        self.log_tail = log_tail or []


@dataclass(frozen=True)
class Command:
    """One command a runtime would run: argv as data, with what it is for."""

    purpose: str
    argv: tuple[str, ...]
    env_names: tuple[str, ...] = ()  # environment variables it gets (names only: values may be secret)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"purpose": self.purpose, "argv": list(self.argv), "env": list(self.env_names)}

    def shell(self) -> str:
        """The argv as one line a person can read (never executed through a shell)."""
        import shlex

        return shlex.join(self.argv)


@dataclass
class Current:
    """What runs now, as far as the runtime knows."""

    version: str | None
    running: bool
    ident: str | None = None  # pid or container id
    since: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"version": self.version, "running": self.running, "id": self.ident, "since": self.since}


@dataclass
class Availability:
    """Can this version be started? With the reason when not, and what to do."""

    ok: bool
    detail: str


@dataclass
class StopResult:
    """How a stop went: a clean drain, or a kill at the deadline."""

    stopped: bool
    clean: bool
    seconds: float
    exit_code: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"stopped": self.stopped, "clean": self.clean, "seconds": round(self.seconds, 3),
                "exit_code": self.exit_code, "detail": self.detail}


@dataclass
class HealthWait:
    """The end of waiting for health: healthy, or why not."""

    healthy: bool
    seconds: float
    last: HealthProbe | None = None
    reason: str = ""
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"healthy": self.healthy, "seconds": round(self.seconds, 3), "reason": self.reason,
                "last_probe": self.last.to_dict() if self.last else None, "log_tail": self.log_tail}


class Runtime(abc.ABC):
    """Switches one deployment between versions. Adapters build their commands as data."""

    name: str = ""

    def __init__(self, health_url: str | None, brain: Path) -> None:
        self.health_url = health_url
        self.brain = brain
        self.started_at: datetime | None = None  # set by start(): the logs of this start begin here

    def start_logs(self, tail: int = 20) -> list[str]:
        """The last lines logged since the current version was started."""
        return self.logs(since=self.started_at, tail=tail)

    @abc.abstractmethod
    def current(self) -> Current:
        """What runs now."""

    @abc.abstractmethod
    def is_available(self, version: str) -> Availability:
        """Whether `version` can be started, checked before anything is stopped."""

    @abc.abstractmethod
    def stop(self, drain_timeout: float) -> StopResult:
        """Drain and stop what runs: SIGTERM, wait up to `drain_timeout`, then kill."""

    @abc.abstractmethod
    def start(self, version: str) -> None:
        """Start `version` detached; returns once it is launched (not yet healthy)."""

    @abc.abstractmethod
    def migrate(self, version: str) -> list[str] | None:
        """Run the deployment's migrate command for `version`, if it has one; its output lines."""

    @abc.abstractmethod
    def exited(self) -> int | None:
        """The exit code if the started version has already died, else None."""

    @abc.abstractmethod
    def logs(self, since: datetime | None = None, tail: int | None = None) -> list[str]:
        """The service's log lines (since a time, or the last `tail`)."""

    @abc.abstractmethod
    def describe(self, version: str) -> list[Command]:
        """The commands a switch to `version` would run, in order."""

    @abc.abstractmethod
    def describe_stop(self) -> list[Command]:
        """The commands that drain and stop what runs."""

    @abc.abstractmethod
    def describe_start(self, version: str) -> list[Command]:
        """The commands that start `version` (without a migrate step)."""

    def wait_healthy(self, deadline: float) -> HealthWait:
        """Poll health until ok; fail fast with the last log lines when the service exits first.

        `deadline` is a time.monotonic() value. Without a health URL, "running" is all we know.
        """
        start = time.monotonic()
        last: HealthProbe | None = None
        while True:
            code = self.exited()
            if code is not None:
                return HealthWait(False, time.monotonic() - start, last,
                                  f"exited with code {code} before it was healthy", self.start_logs())
            if self.health_url is None:
                return HealthWait(True, time.monotonic() - start, None, "running (no health URL configured)")
            last = probe(self.health_url, timeout=min(10.0, max(0.5, deadline - time.monotonic())))
            if last.ok:
                return HealthWait(True, time.monotonic() - start, last, "healthy")
            if not_retryable(last):
                return HealthWait(False, time.monotonic() - start, last,
                                  f"refuses to serve: {last.reason()}", self.start_logs())
            if time.monotonic() >= deadline:
                return HealthWait(False, time.monotonic() - start, last,
                                  f"not healthy in time: {last.reason()}", self.start_logs())
            time.sleep(0.2)


def not_retryable(p: HealthProbe) -> bool:
    """A brain the version cannot read will not heal by waiting (the Engine's MIGRATION_* codes)."""
    body = p.body if isinstance(p.body, dict) else {}
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return bool(code and str(code).startswith("MIGRATION_"))
