"""The compose runtime: a version is an image tag of one service of a Docker Compose v2 project.

Every action is an argv list for the `docker compose -p P -f F` CLI (Kamal's commands-as-data);
the version goes into the project's `.env` variable when the image uses one, otherwise into the
service's image tag (edited with ruamel.yaml so comments survive)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx

from backout.config import ComposeSettings, ConfigError
from backout.errors import EXIT_ENVIRONMENT, EXIT_USAGE
from backout.commands import Command, note, perform
from backout.profiles import generic
from backout.profiles.model import Profile
from backout.runtime.base import Availability, Current, Runtime, RuntimeFailure, StopResult
from backout.runtime.compose_file import (image_for, load_compose, read_env_file, replace_file_text, service_of,
                                          set_image_tag, split_image, write_env_variable)
from backout.runtime.env import env_names, service_env
from backout.signals.health import HealthProbe

__all__ = ["ComposeRuntime", "project_name"]

CLEAN_EXIT_CODES = (0, 143)


class ComposeRuntime(Runtime):
    """Runs versions of one compose service; drains with `docker compose stop --timeout N`."""

    name = "compose"

    poll_interval = 0.5  # each look at the container is two docker calls

    def __init__(self, settings: ComposeSettings, brain: Path, health_url: str | None, state: Path,
                 override: Path | None = None, profile: Profile = generic.PROFILE) -> None:
        super().__init__(health_url, brain, profile)
        self.settings = settings
        self.override = override  # a second compose file that pins the image (a trial boot): no version edit
        self.state = state
        self.file = settings.file
        self.project = project_name(settings)
        self.env_file = settings.env_file or self.file.parent / ".env"
        data = load_compose(self.file)
        self.service, node = service_of(data, self.file, settings.service)
        self.template = str(node.get("image") or "")
        if not self.template:
            raise ConfigError(f"service {self.service} in {self.file} has no `image:`")

    # -- commands as data ----------------------------------------------------------------------

    def _compose(self, *args: str) -> tuple[str, ...]:
        base: tuple[str, ...] = ("docker", "compose", "-p", self.project, "-f", str(self.file))
        if self.override is not None:
            base += ("-f", str(self.override))
        if self.settings.env_file is not None:
            base += ("--env-file", str(self.env_file))
        return base + args

    def image(self, version: str) -> str:
        """The image reference `version` runs."""
        return image_for(self.template, version, self.settings.version_variable)

    def _remote(self, version: str) -> str | None:
        if not self.settings.registry:
            return None
        name, tag = split_image(self.image(version))
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            name = rest  # the image names a registry already: use the configured one instead
        return f"{self.settings.registry}/{name}:{tag}"

    def _set_version_command(self, version: str) -> Command:
        if self.settings.version_variable:
            return Command(f"set {self.settings.version_variable}={version} in {self.env_file}",
                           ("edit", str(self.env_file), f"{self.settings.version_variable}={version}"),
                           files=(str(self.env_file),), kind="edit")
        return Command(f"set the image tag of {self.service} to {version} in {self.file} (comments kept)",
                       ("edit", str(self.file), f"services.{self.service}.image={self.image(version)}"),
                       files=(str(self.file),), kind="edit")

    def _migrate_argv(self, version: str) -> list[str]:
        """The migrate template's argv for `version` ({version} is its one placeholder)."""
        assert self.settings.migrate is not None
        try:
            return [token.format(version=version) for token in shlex.split(self.settings.migrate)]
        except (KeyError, IndexError, ValueError) as exc:
            raise RuntimeFailure(f"migrate template {self.settings.migrate!r} is malformed ({exc}); its one "
                                 "placeholder is {version}", EXIT_USAGE) from None

    def stop_commands(self, drain_timeout: float) -> list[Command]:
        """`docker compose stop --timeout N service`: SIGTERM, the drain, SIGKILL at N seconds; none when nothing runs."""
        if self._running_container() is None:
            return []
        return [Command(f"drain and stop {self.service} (SIGTERM, then SIGKILL at the {int(drain_timeout)}s timeout)",
                        self._compose("stop", "--timeout", str(int(drain_timeout)), self.service),
                        timeout=drain_timeout + 60)]

    def start_commands(self, version: str, migrate: bool = False) -> list[Command]:
        """Pull if needed, point the project at `version`, migrate in a one-off container if asked, `up -d`."""
        pulls, edits, migrations, up = self._start_parts(version, migrate)
        return [*pulls, *edits, *migrations, up]

    def _start_parts(self, version: str, migrate: bool) -> tuple[list[Command], list[Command], list[Command], Command]:
        edits = [self._set_version_command(version)] if self.override is None else []
        migrations = [Command("migrate the brain in a one-off container of the new image",
                              self._compose("run", "--rm", "--no-deps", "-T", self.service,
                                            *self._migrate_argv(version)),
                              env_names(self.settings), (str(self.brain),), timeout=3600)] if migrate and self.settings.migrate else []
        up = Command(f"start {self.image(version)}", self._compose("up", "-d", "--no-deps", self.service),
                     env_names(self.settings), timeout=600)
        return self._pull_commands(version), edits, migrations, up

    def _pull_commands(self, version: str) -> list[Command]:
        remote = self._remote(version)
        if not remote or self._local(version):
            return []
        return [Command(f"pull {remote} from the registry", ("docker", "pull", remote), timeout=1800),
                Command("tag it as the compose file names it", ("docker", "tag", remote, self.image(version)))]

    def remove_commands(self) -> list[Command]:
        """`docker compose down -v`: the project's containers and volumes removed (for throwaway projects)."""
        return [Command(f"remove the compose project {self.project} and its volumes",
                        self._compose("down", "-v", "--timeout", "5"), timeout=120)]

    # -- running docker ------------------------------------------------------------------------

    def _run(self, argv: tuple[str, ...], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = service_env(dict(os.environ), self.settings)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        except FileNotFoundError:
            raise RuntimeFailure("the docker CLI is not installed; install Docker with Compose v2", EXIT_ENVIRONMENT) from None
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"{shlex.join(argv)} did not finish in {timeout:g}s") from None
        if check and out.returncode != 0:
            raise self._failure(argv, out)
        return out

    def _exec(self, command: Command, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one of this runtime's exec commands, noting it as performed."""
        note(command)
        return self._run(command.argv, timeout=command.timeout or 300, check=check)

    def _failure(self, argv: tuple[str, ...], out: subprocess.CompletedProcess[str]) -> RuntimeFailure:
        said = (out.stderr or out.stdout).strip()
        if "Cannot connect to the Docker daemon" in said or "Is the docker daemon running" in said \
                or "connect: no such file" in said or "permission denied" in said and "docker.sock" in said:
            host = os.environ.get("DOCKER_HOST", "the default socket")
            return RuntimeFailure(f"Docker is not reachable at {host}: start the Docker daemon (or set DOCKER_HOST)"
                                  "; nothing was changed", EXIT_ENVIRONMENT)
        last = said.splitlines()[-1] if said else f"exit code {out.returncode}"
        return RuntimeFailure(f"{shlex.join(argv[:6])} … failed: {last}", EXIT_ENVIRONMENT, said.splitlines()[-20:])

    def _container(self) -> dict[str, Any] | None:
        out = self._run(self._compose("ps", "-a", "--format", "json", self.service))
        rows = _json_rows(out.stdout)
        return rows[0] if rows else None

    def _inspect(self, ident: str) -> dict[str, Any]:
        out = self._run(("docker", "inspect", ident))
        data: list[dict[str, Any]] = json.loads(out.stdout)
        return data[0]

    def image_digest(self, version: str) -> str | None:
        """The local image id of `version` (what exactly ran), if the image is here."""
        out = self._run(("docker", "image", "inspect", "--format", "{{.Id}}", self.image(version)), check=False)
        return out.stdout.strip() or None

    def _local(self, version: str) -> bool:
        return self._run(("docker", "image", "inspect", self.image(version)), check=False).returncode == 0

    # -- the interface -------------------------------------------------------------------------

    def current(self) -> Current:
        """The service's container: its image tag is the version."""
        row = self._container()
        if row is None:
            return Current(None, False)
        info = self._inspect(str(row["ID"]))
        version = split_image(str(info["Config"]["Image"]))[1]
        running = bool(info["State"]["Running"]) and not info["State"].get("Restarting")
        return Current(version, running, str(row["ID"])[:12], info["State"].get("StartedAt"))

    def is_available(self, version: str) -> Availability:
        """The image is on this host, or in the configured registry (checked before anything stops)."""
        self._run(("docker", "version", "--format", "{{.Server.Version}}"))
        image = self.image(version)
        if self._local(version):
            return Availability(True, f"image {image} is on this host")
        remote = self._remote(version)
        if remote and _registry_has(remote):
            return Availability(True, f"image {remote} is in the registry (will be pulled)")
        where = f"neither on this host nor in the registry {self.settings.registry}" if remote else \
            "not on this host and no registry is configured"
        return Availability(False, f"image {image} is {where}; the previous image may have been deleted: rebuild it "
                                   f"from the release's git tag (docker build -t {image} .) or push it to the registry")

    def _running_container(self) -> str | None:
        """The id of the service's container while it runs."""
        row = self._container()
        if row is None or self._inspect(str(row["ID"]))["State"]["Running"] is False:
            return None
        return str(row["ID"])

    def stop(self, drain_timeout: float) -> StopResult:
        """Carry out stop_commands: SIGTERM, the drain, SIGKILL at the timeout; then read the exit code."""
        start = time.monotonic()
        ident = self._running_container()
        commands = self.stop_commands(drain_timeout) if ident else []
        if ident is None or not commands:
            return StopResult(False, True, 0.0, None, "nothing was running")
        for command in commands:
            self._exec(command)
        seconds = time.monotonic() - start
        state = self._inspect(ident)["State"]
        code = int(state.get("ExitCode", -1))
        if code in CLEAN_EXIT_CODES:
            return StopResult(True, True, seconds, code, f"drained and exited with code {code}")
        forced = code == 137 and seconds >= drain_timeout - 1
        detail = (f"still running at the {drain_timeout:g}s drain deadline: killed (SIGKILL); in-flight work was lost"
                  if forced else f"exited with code {code} after SIGTERM")
        return StopResult(True, False, seconds, code, detail)

    def start(self, version: str, migrate: bool = False) -> list[str] | None:
        """Carry out start_commands: the container is recreated from `version`'s image."""
        pulls, edits, migrations, up = self._start_parts(version, migrate)
        for command in pulls:
            self._exec(command)
        undo = [perform(command, lambda: self._set_version(version)) for command in edits]
        lines = [self._migrate(command, version, undo) for command in migrations]
        self.started_at = datetime.now(timezone.utc)
        self._exec(up)
        return lines[0] if lines else None

    def _migrate(self, command: Command, version: str, undo: list[Callable[[], None]]) -> list[str]:
        out = self._exec(command, check=False)
        lines = (out.stdout + out.stderr).splitlines()
        if out.returncode != 0:
            for put_back in undo:  # the project keeps naming the version that last ran
                put_back()
            raise RuntimeFailure(f"migrate for {version} failed with exit code {out.returncode}", EXIT_ENVIRONMENT,
                                 lines[-20:])
        return lines

    def _set_version(self, version: str) -> Callable[[], None]:
        """Point the project at `version`; returns how to put the previous value back."""
        if self.settings.version_variable:
            name = self.settings.version_variable
            previous = read_env_file(self.env_file).get(name)
            write_env_variable(self.env_file, name, version)
            return lambda: write_env_variable(self.env_file, name, previous) if previous is not None else None
        old_text = set_image_tag(self.file, self.service, version)
        return lambda: replace_file_text(self.file, old_text)

    def remove(self) -> None:
        """Carry out remove_commands (best effort: a throwaway project that is gone already is fine)."""
        for command in self.remove_commands():
            try:
                self._exec(command, check=False)
            except RuntimeFailure:
                pass

    def exited(self) -> int | None:
        """The container's exit code once it has stopped (or is restarting after a crash)."""
        row = self._container()
        if row is None:
            return None
        state = self._inspect(str(row["ID"]))["State"]
        if state.get("Running") and not state.get("Restarting"):
            return None
        if state.get("Status") == "created":
            return None
        return int(state.get("ExitCode", -1))

    def log_location(self) -> str | None:
        """The command that prints the service's whole log."""
        return f"`{shlex.join(self._compose('logs', '--no-color', self.service))}`"

    def logs(self, since: datetime | None = None, tail: int | None = None) -> list[str]:
        """`docker compose logs` of the service."""
        args = ["logs", "--no-color", "--no-log-prefix"]
        if since is not None:
            args += ["--since", since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")]
        if tail is not None:
            args += ["--tail", str(tail)]
        out = self._run(self._compose(*args, self.service), check=False)
        return (out.stdout + out.stderr).splitlines()

    def health_probe(self, timeout: float) -> HealthProbe | None:
        """Health by URL (as for processes); without one, the container's own health status."""
        if self.health_url is not None:
            return super().health_probe(timeout)
        row = self._container()
        if row is None:
            return HealthProbe(False, error="the service has no container")
        health = self._inspect(str(row["ID"]))["State"].get("Health", {}).get("Status")
        said = f"container health: {health or 'running (no healthcheck)'}"
        return HealthProbe(True, body={"status": "ok", "container": said}) if health in ("healthy", None) \
            else HealthProbe(False, error=said)


def project_name(settings: ComposeSettings) -> str:
    """The compose project's name: configured, or the compose file's folder name."""
    return settings.project or settings.file.resolve().parent.name.lower()


def _json_rows(text: str) -> list[dict[str, Any]]:
    """`docker compose ps --format json` prints one object per line (newer) or a list (older)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        rows: list[dict[str, Any]] = json.loads(text)
        return rows
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _registry_has(remote: str) -> bool:
    """Ask a registry (HTTP API v2) whether it has the image."""
    host, _, rest = remote.partition("/")
    name, tag = split_image(rest)
    try:
        r = httpx.head(f"http://{host}/v2/{name}/manifests/{tag}", timeout=5, headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                      "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"})
    except httpx.HTTPError:
        return False
    return r.status_code == 200
