"""The process runtime: a version is a value put into a command template, run as its own
process group (setsid), detached, with a pid file and a log file in the state folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backout.brain.liveness import lock_holders
from backout.config import ProcessSettings
from backout.errors import EXIT_REFUSED, EXIT_USAGE
from backout.fsutil import atomic_write_json, ensure_private_dir
from backout.commands import SPAWN, Command, perform, run_command
from backout.profiles import generic
from backout.profiles.model import Profile
from backout.runtime.base import Availability, Current, Runtime, RuntimeFailure, StopResult, port_free
from backout.runtime.env import env_names, service_env
from backout.runtime.templates import PLACEHOLDER, fill, names_in, render_config_files

__all__ = ["ProcessRuntime", "CLEAN_EXIT_CODES", "template_argv"]

# After SIGTERM: a clean exit, the shell convention for "killed by SIGTERM", or Python's -15.
CLEAN_EXIT_CODES = (0, 143, -15)
_PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")


_UNKNOWN = re.compile(r"\{([A-Za-z_]+)(?::[^{}]*)?\}")


def template_argv(template: str, values: dict[str, str], ports: Mapping[str, int | str] | None = None) -> tuple[str, ...]:
    """A command template's argv with its placeholders ({version} {brain} {port} {state} {config}
    {port:NAME}) filled in."""
    unknown = [m[0] for m in _UNKNOWN.finditer(template) if not PLACEHOLDER.fullmatch(m[0])]
    if unknown:
        raise RuntimeFailure(f"command template {template!r} has an unknown placeholder {unknown[0]}; "
                             "placeholders are {version}, {brain}, {port}, {state}, {config}, {port:NAME}", EXIT_USAGE)
    try:
        tokens = shlex.split(template)
    except ValueError as exc:
        raise RuntimeFailure(f"command template {template!r} is malformed ({exc})", EXIT_USAGE) from None
    return tuple(fill(token, values, ports or {}, f"command template {template!r}") for token in tokens)


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (from /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start_time: str | None) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if start_time is not None and fields[19] != start_time:
        return False  # the pid was reused by another process
    return fields[0] != "Z"  # a zombie has exited; only its parent has not reaped it yet


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of the group count as gone.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class ProcessRuntime(Runtime):
    """Runs versions of one deployment as local, detached process groups."""

    name = "process"

    def __init__(self, settings: ProcessSettings, brain: Path, health_url: str | None, state: Path,
                 profile: Profile = generic.PROFILE) -> None:
        super().__init__(health_url, brain, profile)
        self.settings = settings
        self.state = state
        self.pid_file = state / "service.pid.json"
        self.exit_file = state / "service.exit.json"
        self.log_file = state / "service.log"
        self.config_dir = state / "config"  # the config files of the current start
        self._child: subprocess.Popen[bytes] | None = None

    # -- commands as data (each is what the lifecycle methods below carry out) ----------------------------------------------------------------------

    def _values(self, version: str) -> dict[str, str]:
        return {"version": version, "brain": str(self.brain), "port": str(self.settings.port or ""),
                "state": str(self.state), "config": str(self.config_dir)}

    def _argv(self, template: str, version: str) -> tuple[str, ...]:
        if self.settings.port is None and "port" in names_in(template):
            try:
                guess = urlsplit(self.health_url).port if self.health_url else None
            except ValueError:
                guess = None
            raise RuntimeFailure(f"command template {template!r} uses {{port}}, but the process table in backout.toml "
                                 f"sets no `port`: add `port = {guess or 'PORT'}` (the port the service listens on"
                                 + (", as health_url says" if guess else "") + "); nothing was started", EXIT_USAGE)
        return template_argv(template, self._values(version), self.settings.ports)

    def log_location(self) -> str | None:
        """The service log file (every start appends to it)."""
        return str(self.log_file.absolute())

    def port_taken(self) -> str | None:
        """The configured port (or a named one) when another process listens on it."""
        for name, port in [("port", self.settings.port), *((f"ports.{n}", p) for n, p in self.settings.ports.items())]:
            if isinstance(port, int) and port and not port_free(port):
                return (f"port {port} (`{name}` in backout.toml) is already in use by another process, not by a version "
                        "backout started: stop that process or change the port in backout.toml")
        return None

    def _render_command(self, version: str) -> Command:
        files = self.settings.config_files
        names = ", ".join(f"{f.template} -> {f.name}" for f in files)
        return Command(f"render the config files of {version} into {self.config_dir} (0600): {names}",
                       ("backout-render", str(self.config_dir), *(str(f.template) for f in files)),
                       files=tuple(str(self.config_dir / f.name) for f in files), kind="write")

    def _render(self, version: str) -> None:
        render_config_files([(f.template, f.name) for f in self.settings.config_files], self.config_dir,
                            self._values(version), self.settings.ports)

    def stop_commands(self, drain_timeout: float) -> list[Command]:
        """SIGTERM to the process group in the pid file, SIGKILL at the drain deadline; none when nothing runs."""
        rec = self._running_record()
        if rec is None:
            return []
        return [Command(f"drain and stop: SIGTERM to process group {rec['pgid']} (recorded in {self.pid_file.name}), "
                        f"SIGKILL at the {drain_timeout:g}s drain deadline", ("kill", "-TERM", "--", f"-{rec['pgid']}"),
                        files=(str(self.pid_file),), kind="signal", timeout=drain_timeout)]

    def start_commands(self, version: str, migrate: bool = False) -> list[Command]:
        """The config files rendered (when any), the migrate template (when asked and configured), then the
        command template under the supervisor."""
        commands = [self._render_command(version)] if self.settings.config_files else []
        commands += [self._migrate_command(version)] if migrate and self.settings.migrate else []
        argv = self._argv(self.settings.command, version)
        return commands + [Command(f"start {version} detached in its own session, output to {self.log_file.name}; "
                                   "the supervisor records its exit code",
                                   (sys.executable, "-m", "backout.runtime.supervise", str(self.exit_file), "--", *argv),
                                   env_names(self.settings), (str(self.pid_file), str(self.log_file)), SPAWN,
                                   cwd=self._cwd())]

    def _cwd(self) -> str | None:
        return str(self.settings.workdir) if self.settings.workdir else None

    def _migrate_command(self, version: str) -> Command:
        assert self.settings.migrate is not None
        return Command(f"migrate the brain for {version}", self._argv(self.settings.migrate, version),
                       env_names(self.settings), (str(self.brain),), timeout=3600,
                       cwd=self._cwd())

    # -- state ---------------------------------------------------------------------------------

    def _record(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return data

    def current(self) -> Current:
        """The version in the pid file, and whether its process still runs."""
        rec = self._record()
        if rec is None:
            return Current(None, False)
        running = _alive(int(rec["pid"]), rec.get("start_time"))
        return Current(rec.get("version"), running, str(rec["pid"]), rec.get("started_at"))

    def is_available(self, version: str) -> Availability:
        """The command resolves; with a `check` template, the service itself accepts the version."""
        argv = self._argv(self.settings.command, version)
        exe = argv[0]
        found = shutil.which(exe, path=self._env().get("PATH")) if "/" not in exe else (exe if os.access(exe, os.X_OK) else None)
        if not found:
            return Availability(False, f"command {exe!r} not found or not executable; fix `command` in backout.toml")
        if self.settings.check:
            check = self._argv(self.settings.check, version)
            try:
                out = subprocess.run(check, env=self._env(), capture_output=True, text=True, timeout=60,
                                     cwd=self.settings.workdir or None)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return Availability(False, f"check command {shlex.join(check)} failed to run: {exc}")
            if out.returncode != 0:
                said = (out.stderr or out.stdout).strip().splitlines()
                return Availability(False, f"{shlex.join(check)} says no: {said[-1] if said else 'exit ' + str(out.returncode)}")
        if self.settings.check:
            return Availability(True, f"{shlex.join(self._argv(self.settings.check, version))} accepts it")
        return Availability(True, f"{exe} resolves to {found}", proven=False)

    def _env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k in _PASSED_THROUGH or k.startswith("LC_")}
        return service_env(base, self.settings)

    # -- lifecycle -----------------------------------------------------------------------------

    def _refuse_if_taken(self) -> None:
        port = self.settings.port
        if isinstance(port, int) and port and not port_free(port):
            raise RuntimeFailure(f"port {port} is already in use by another process; stop it or change "
                                 "`port` in backout.toml", EXIT_USAGE)
        if self.brain.exists():
            holders = lock_holders(self.brain)
            if holders:
                raise RuntimeFailure(f"the brain {self.brain} is already open by process {', '.join(map(str, holders))};"
                                     " another instance is running: stop it first", EXIT_REFUSED)

    def start(self, version: str, migrate: bool = False) -> list[str] | None:
        """Migrate if asked, then launch `version` in its own session; returns at once (see wait_healthy)."""
        current = self.current()
        if current.running:
            raise RuntimeFailure(f"{current.version} is still running (pid {current.ident}); stop it first", EXIT_REFUSED)
        self._refuse_if_taken()
        ensure_private_dir(self.state)
        lines: list[list[str]] = []
        for command in self.start_commands(version, migrate):
            if command.kind == "write":
                perform(command, lambda: self._render(version))
            elif command.kind == SPAWN:
                perform(command, lambda c=command: self._spawn(c, version))  # type: ignore[misc]
            else:
                lines.append(self._migrate(command, version))
        return lines[0] if lines else None

    def _spawn(self, command: Command, version: str) -> None:
        self.started_at = datetime.now(timezone.utc)
        started_at = self.started_at.isoformat(timespec="milliseconds")
        with open(self.log_file, "ab") as log:
            os.chmod(self.log_file, 0o600)
            log.write(f"--- backout: starting {version} at {started_at}\n".encode())
            log.flush()
            self.exit_file.unlink(missing_ok=True)
            try:
                child = subprocess.Popen(command.argv, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=command.cwd)
            except OSError as exc:
                raise RuntimeFailure(f"cannot start {command.argv[0]!r}: {exc.strerror}", EXIT_USAGE) from None
        self._child = child
        service_argv = list(command.argv[command.argv.index("--") + 1:])
        atomic_write_json(self.pid_file, {"pid": child.pid, "pgid": child.pid, "version": version,
                                          "start_time": _proc_start_time(child.pid), "started_at": started_at,
                                          "argv": service_argv})

    def exited(self) -> int | None:
        """The service's exit code once it has died (recorded by its supervisor), else None."""
        if self._child is not None:
            if self._child.poll() is None:
                return None
        else:
            rec = self._record()
            if rec is None or _alive(int(rec["pid"]), rec.get("start_time")):
                return None
        code = self._exit_code()
        return code if code is not None else -1

    def _exit_code(self) -> int | None:
        try:
            return int(json.loads(self.exit_file.read_text())["code"])
        except (OSError, ValueError, KeyError):
            return None

    def _running_record(self) -> dict[str, Any] | None:
        """The pid file's record while its process or any of its group still runs."""
        rec = self._record()
        if rec is None or not (_alive(int(rec["pid"]), rec.get("start_time")) or _group_alive(int(rec["pgid"]))):
            return None
        return rec

    def stop(self, drain_timeout: float) -> StopResult:
        """SIGTERM to the whole group, wait for the drain, SIGKILL the group at the deadline."""
        rec = self._running_record()
        if rec is None:
            self._forget()
            return StopResult(False, True, 0.0, None, "nothing was running")
        (command,) = self.stop_commands(drain_timeout)
        return perform(command, lambda: self._drain_group(rec, drain_timeout))

    def _drain_group(self, rec: dict[str, Any], drain_timeout: float) -> StopResult:
        start = time.monotonic()
        pid, pgid = int(rec["pid"]), int(rec["pgid"])
        self._signal_group(pgid, signal.SIGTERM)
        deadline = start + drain_timeout
        while time.monotonic() < deadline and (_alive(pid, rec.get("start_time")) or _group_alive(pgid)):
            time.sleep(0.05)
        forced = _alive(pid, rec.get("start_time")) or _group_alive(pgid)
        if forced:
            self._signal_group(pgid, signal.SIGKILL)
            while _group_alive(pgid) and time.monotonic() < deadline + 10:
                time.sleep(0.05)
        code = self._reap()
        seconds = time.monotonic() - start
        self._forget()
        if forced:
            return StopResult(True, False, seconds, code,
                              f"still running at the {drain_timeout:g}s drain deadline: killed (SIGKILL); "
                              "in-flight work was lost")
        clean = code is None or code in CLEAN_EXIT_CODES
        detail = "drained and exited" + (f" with code {code}" if code is not None else "")
        return StopResult(True, clean, seconds, code, detail if clean else f"exited with code {code} after SIGTERM")

    def _signal_group(self, pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> int | None:
        if self._child is not None:
            try:
                self._child.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return self._exit_code()  # the service's own code, from its supervisor

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self._child = None

    def _migrate(self, command: Command, version: str) -> list[str]:
        """Run the migrate command to completion, its output appended to the service log."""
        try:
            out = run_command(command, self._env())
        except OSError as exc:
            raise RuntimeFailure(f"cannot run migrate command {command.argv[0]!r}: {exc.strerror}", EXIT_USAGE) from None
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"migrate for {version} did not finish in {command.timeout:g}s") from None
        lines = (out.stdout + out.stderr).splitlines()
        with open(self.log_file, "a", encoding="utf-8") as log:
            log.write(f"--- backout: migrate for {version}: {command.shell()} (exit {out.returncode})\n")
            log.writelines(line + "\n" for line in lines)
        if out.returncode != 0:
            raise RuntimeFailure(f"migrate for {version} failed with exit code {out.returncode}", log_tail=lines[-20:])
        return lines

    def logs(self, since: datetime | None = None, tail: int | None = None) -> list[str]:
        """Lines of the service log, optionally only those since a time or the last `tail`."""
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        if since is not None:
            lines = _since(lines, since)
        return lines[-tail:] if tail else lines


def _since(lines: list[str], since: datetime) -> list[str]:
    """Lines from the first one stamped at or after `since` (JSON `ts`/`timestamp`, or a start marker)."""
    since = since.replace(microsecond=since.microsecond // 1000 * 1000)  # stamps carry milliseconds
    for index, line in enumerate(lines):
        stamp = _line_time(line)
        if stamp is not None and stamp >= since:
            return lines[index:]
    return []


def _line_time(line: str) -> datetime | None:
    text = None
    if line.startswith("{"):
        try:
            record = json.loads(line)
            text = record.get("ts") or record.get("timestamp") or record.get("time")
        except ValueError:
            return None
    elif line.startswith("--- backout: ") and " at " in line:
        text = line.rsplit(" at ", 1)[1]
    if not text:
        return None
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
