"""The runtime interface every adapter implements, and the results it reports."""

from __future__ import annotations

import abc
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backout.commands import Command
from backout.errors import EXIT_ENVIRONMENT, BackoutError
from backout.profiles import generic
from backout.profiles.model import Profile
from backout.signals.health import HealthProbe, probe

__all__ = ["Availability", "Command", "Current", "HealthWait", "Runtime", "RuntimeFailure", "StopResult", "port_free"]


def port_free(port: int) -> bool:
    """Whether a listener could bind `port` on the loopback address now (one listening on any address holds it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RuntimeFailure(BackoutError):
    """A runtime action failed; `log_tail` holds the service's last log lines when they explain it."""

    def __init__(self, message: str, exit_code: int = EXIT_ENVIRONMENT, log_tail: list[str] | None = None) -> None:
        super().__init__(message, exit_code)
        self.log_tail = log_tail or []


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
    proven: bool = True  # the check shows the version itself exists (not only that a command resolves)


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
    _LOG_LOOK_EVERY = 1.0  # seconds between two looks at the logs for a refusal while waiting for health

    def __init__(self, health_url: str | None, brain: Path, profile: Profile = generic.PROFILE) -> None:
        self.health_url = health_url
        self.brain = brain
        self.profile = profile  # how health is judged and what a refused database looks like
        self.started_at: datetime | None = None  # set by start(): the logs of this start begin here
        self.throwaway = False  # a trial boot's twin: its logs are removed with it, so none are named

    def start_logs(self, tail: int = 20) -> list[str]:
        """The last lines logged since the current version was started."""
        return self.logs(since=self.started_at, tail=tail)

    def log_location(self) -> str | None:
        """Where an operator reads the whole service log (a file, or the command that prints it); None when
        the runtime keeps none that outlives it."""
        return None

    def port_taken(self) -> str | None:
        """When nothing of this deployment runs: a port it is to listen on that another process holds, in
        words (what and what to do), else None."""
        return None

    def _failed_start(self, reason: str, tail: list[str], quote: bool = True) -> str:
        """A failed start's reason with the service's own last words and where its whole log is."""
        said = next((line.strip() for line in reversed(tail) if line.strip() and not line.startswith("--- backout:")),
                    None)
        where = None if self.throwaway else self.log_location()
        return (reason + (f"; its last log line: {said[:300]}" if quote and said else "")
                + (f"; the service's log: {where}" if where else ""))

    @abc.abstractmethod
    def current(self) -> Current:
        """What runs now."""

    @abc.abstractmethod
    def is_available(self, version: str) -> Availability:
        """Whether `version` can be started, checked before anything is stopped."""

    @abc.abstractmethod
    def stop_commands(self, drain_timeout: float) -> list[Command]:
        """The commands that drain and stop what runs (SIGTERM, then a kill at `drain_timeout` seconds)."""

    @abc.abstractmethod
    def start_commands(self, version: str, migrate: bool = False) -> list[Command]:
        """The commands that start `version` detached, after the migrate command when `migrate` and one is set."""

    def switch_commands(self, version: str, drain_timeout: float) -> list[Command]:
        """Every command of a switch to `version`, in order: drain and stop, migrate, start."""
        return self.stop_commands(drain_timeout) + self.start_commands(version, migrate=True)

    @abc.abstractmethod
    def stop(self, drain_timeout: float) -> StopResult:
        """Carry out stop_commands(drain_timeout) if something runs."""

    @abc.abstractmethod
    def start(self, version: str, migrate: bool = False) -> list[str] | None:
        """Carry out start_commands(version, migrate); returns once launched (not yet healthy), with the
        migrate command's output lines when one ran."""

    @abc.abstractmethod
    def exited(self) -> int | None:
        """The exit code if the started version has already died, else None."""

    @abc.abstractmethod
    def logs(self, since: datetime | None = None, tail: int | None = None) -> list[str]:
        """The service's log lines (since a time, or the last `tail`)."""

    def image(self, version: str) -> str | None:
        """The image `version` runs, for runtimes that run images."""
        return None

    def image_digest(self, version: str) -> str | None:
        """What exactly runs `version` (an image id), when the runtime can tell."""
        return None

    def health_probe(self, timeout: float) -> HealthProbe | None:
        """One look at the service's health; None when the runtime knows no more than "running"."""
        if self.health_url is None:
            return None
        return probe(self.health_url, timeout=timeout, rule=self.profile.health)

    poll_interval = 0.2  # seconds between two health probes

    def wait_healthy(self, deadline: float) -> HealthWait:
        """Poll health until ok; fail fast with the last log lines when the service exits or refuses first.

        `deadline` is a time.monotonic() value. The one health loop of every runtime and trial boot."""
        start = time.monotonic()
        last: HealthProbe | None = None
        looked = start
        while True:
            code = self.exited()
            if code is not None:
                tail = self.start_logs()
                said = self.profile.refusal_line(tail, self.brain.name, exited=code != 0)
                return HealthWait(False, time.monotonic() - start, last, self._failed_start(
                    f"exited with code {code} before it was healthy"
                    + (f"; it refused the database: {said}" if said else ""), tail, quote=not said), tail)
            last = self.health_probe(timeout=min(10.0, max(0.5, deadline - time.monotonic())))
            if last is None:
                return HealthWait(True, time.monotonic() - start, None, "running (no health URL configured)")
            if last.ok:
                return HealthWait(True, time.monotonic() - start, last, "healthy")
            said = last.reason() if self.profile.refusal_code(last.body) else None
            if said is None and self.profile.refusal.log_patterns and time.monotonic() - looked >= self._LOG_LOOK_EVERY:
                looked = time.monotonic()
                said = self.profile.refusal_line(self.start_logs(tail=50))
            if said is not None:
                return HealthWait(False, time.monotonic() - start, last,
                                  self._failed_start(f"refuses to serve: {said}", [], quote=False), self.start_logs())
            if time.monotonic() >= deadline:
                tail = self.start_logs()
                return HealthWait(False, time.monotonic() - start, last,
                                  self._failed_start(f"not healthy in time: {last.reason()}", tail), tail)
            time.sleep(self.poll_interval)

