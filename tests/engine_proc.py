"""Start the real reference Engine (`engine serve`) as a subprocess for tests.

Usage:

    with EngineProcess("2.3.1", brain=tmp_path / "brain.sqlite") as eng:
        eng.wait_healthy()                # RuntimeError with the logs if it never gets healthy
        httpx.get(eng.url + "/health")

For an Engine that is expected NOT to become healthy (crash build, bad brain, taken port...):

    eng = EngineProcess("2.4.0-crash", brain=...)
    proc = eng.start()                # the Popen; nothing is asserted
    assert not eng.wait_healthy(5, check=False)  # False when it exits or stays unhealthy
    code = eng.wait_exit(5)           # its exit code, or None if still running
    eng.stop(); print(eng.logs())
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import httpx

__all__ = ["DEFAULT_KEY", "EngineProcess", "engine_cli", "free_port"]

DEFAULT_KEY = "test-engine-key"
# Variables of the parent environment that would change how the child Engine behaves.
_SCRUBBED = ("ENGINE_API_KEY", "ENGINE_KEY_HASH", "SQLITE_DB_PATH", "ENGINE_TURN_MS",
             "ENGINE_DRAIN_TIMEOUT", "AD_ENCRYPTION_KEY", "ENGINE_LLM_OUTAGE_FILE")
_LIVE: set["EngineProcess"] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def engine_cli(*args: str, key: str | None = DEFAULT_KEY, env: Mapping[str, str | None] | None = None,
               timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run `engine ARGS...` (as `python -m engine.cli`) with ENGINE_API_KEY=key (None: unset)."""
    child_env = _child_env(key, env)
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=child_env, capture_output=True,
                          text=True, timeout=timeout)


def _child_env(key: str | None, extra: Mapping[str, str | None] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    if key is not None:
        env["ENGINE_API_KEY"] = key
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class EngineProcess:
    """One `engine serve` child process: start, wait for health, stop with SIGTERM, read its logs.

    `start()` may be called again after `stop()` (e.g. another release on the same brain); the
    arguments given to start() replace those given to the constructor. stdout and stderr of every
    start go to `log_path` (default: engine-<port>.log next to the brain); read them with logs().
    """

    def __init__(self, release: str = "2.3.1", brain: Path | str | None = None, port: int | None = None,
                 key: str | None = DEFAULT_KEY, host: str = "127.0.0.1",
                 extra_env: Mapping[str, str | None] | None = None, extra_args: Sequence[str] = (),
                 log_path: Path | str | None = None,
                 env: Mapping[str, str | None] | None = None) -> None:
        self.release, self.host, self.key = release, host, key
        self.port = port or free_port(host)
        self._tmpdir: Path | None = None
        self.brain = Path(brain) if brain is not None else self._default_brain()
        # Variables added to the child's environment (a None value removes one); `env` is an alias.
        self.extra_env: dict[str, str | None] = {**(env or {}), **(extra_env or {})}
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(log_path) if log_path is not None else self._default_log()
        self.last_health: tuple[int, Any] | None = None

    def _default_brain(self) -> Path:
        self._tmpdir = Path(tempfile.mkdtemp(prefix="engine-brain-"))
        return self._tmpdir / "brain.sqlite"

    def _default_log(self) -> Path:
        """engine-<port>.log next to the brain, or a temp file when that folder does not exist."""
        if self.brain.parent.is_dir():
            return self.brain.parent / f"engine-{self.port}.log"
        return Path(tempfile.mkstemp(prefix="engine-", suffix=".log")[1])

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the Engine."""
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """Auth header for requests to this Engine."""
        return {"X-Engine-Key": self.key} if self.key else {}

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The Popen of the current (or last) start; RuntimeError before start()."""
        if self.proc is None:
            raise RuntimeError("engine not started")
        return self.proc

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code of the child, once it has exited."""
        return None if self.proc is None else self.proc.poll()

    def command(self) -> list[str]:
        """The argv used to start the Engine."""
        return [sys.executable, "-m", "engine.cli", "serve", "--release", self.release, "--brain",
                str(self.brain), "--host", self.host, "--port", str(self.port), *self.extra_args]

    def start(self, release: str | None = None, brain: Path | str | None = None, port: int | None = None,
              extra_env: Mapping[str, str | None] | None = None,
              extra_args: Sequence[str] | None = None) -> subprocess.Popen[bytes]:
        """Start the Engine (output to the log file) and return the Popen; asserts nothing."""
        if self.running:
            raise RuntimeError(f"engine already running: {self!r}")
        self.release = release or self.release
        self.brain = Path(brain) if brain is not None else self.brain
        self.port = port or self.port
        if extra_env is not None:
            self.extra_env = dict(extra_env)
        if extra_args is not None:
            self.extra_args = list(extra_args)
        self.last_health = None
        with self.log_path.open("ab") as log:
            log.write(f"--- start {' '.join(self.command()[3:])}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), env=_child_env(self.key, self.extra_env),
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _LIVE.add(self)
        return self.proc

    def health(self, timeout: float = 2.0) -> tuple[int, Any] | None:
        """(status, JSON body) of GET /health, or None when nothing answers."""
        try:
            resp = httpx.get(self.url + "/health", timeout=timeout)
        except httpx.HTTPError:
            return None
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        self.last_health = (resp.status_code, body)
        return self.last_health

    def wait_healthy(self, timeout: float = 20.0, check: bool = True, interval: float = 0.05) -> bool:
        """Poll /health until it answers 200 (True).

        When the process exits or `timeout` passes first: raise RuntimeError with the last health
        answer and the logs, or with check=False just return False (for Engines expected to fail).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            answer = self.health(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if answer is not None and answer[0] == 200:
                return True
            time.sleep(interval)
        if check:
            raise RuntimeError(f"engine {self.release} on {self.url} not healthy (exit code "
                               f"{self.returncode}, last health {self.last_health}):\n{self.logs()}")
        return False

    def wait_health(self, predicate: Callable[[httpx.Response], bool], timeout: float = 20.0,
                    interval: float = 0.05) -> Any:
        """Poll /health until `predicate(response)` holds; the JSON body of that answer.

        Raises RuntimeError (with the logs) if the process exits or `timeout` passes first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            try:
                resp = httpx.get(self.url + "/health", timeout=2.0)
                if predicate(resp):
                    return resp.json()
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            time.sleep(interval)
        raise RuntimeError(f"engine {self.release} on {self.url}: health condition not met (exit code "
                           f"{self.returncode}):\n{self.logs()}")

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to exit; its exit code, or None if still running after `timeout`."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Send `sig` (SIGTERM: graceful drain), wait, SIGKILL after `timeout`; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            if self.wait_exit(timeout) is None:
                proc.kill()
                proc.wait(10)
        _LIVE.discard(self)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the process (a crash, no drain); its exit code."""
        return self.stop(timeout=10.0, sig=signal.SIGKILL)

    def logs(self) -> str:
        """Everything the process(es) wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        """Alias of logs()."""
        return self.logs()

    def cleanup(self) -> None:
        """Stop the process and delete any brain folder (and its log) this object created."""
        self.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> "EngineProcess":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"EngineProcess(release={self.release!r}, url={self.url!r}, pid={pid})"


@atexit.register
def _kill_leftovers() -> None:
    for eng in list(_LIVE):
        if eng.proc is not None and eng.proc.poll() is None:
            eng.proc.kill()
