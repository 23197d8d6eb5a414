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
from backout.runtime.base import Availability, Command, Current, Runtime, RuntimeFailure, StopResult
from backout.runtime.compose_file import (image_for, load_compose, read_env_file, replace_file_text, service_of,
                                          set_image_tag, split_image, write_env_variable)
from backout.runtime.env import env_names, service_env

__all__ = ["ComposeRuntime"]

CLEAN_EXIT_CODES = (0, 143)


class ComposeRuntime(Runtime):
    """Runs versions of one compose service; drains with `docker compose stop --timeout N`."""

    name = "compose"

    def __init__(self, settings: ComposeSettings, brain: Path, health_url: str | None, state: Path) -> None:
        super().__init__(health_url, brain)
        self.settings = settings
        self.state = state
        self.file = settings.file
        self.project = settings.project or self.file.resolve().parent.name.lower()
        self.env_file = settings.env_file or self.file.parent / ".env"
        data = load_compose(self.file)
        self.service, node = service_of(data, self.file, settings.service)
        self.template = str(node.get("image") or "")
        if not self.template:
            raise ConfigError(f"service {self.service} in {self.file} has no `image:`")

    # -- commands as data ----------------------------------------------------------------------

    def _compose(self, *args: str) -> tuple[str, ...]:
        base: tuple[str, ...] = ("docker", "compose", "-p", self.project, "-f", str(self.file))
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
                           ("edit", str(self.env_file), f"{self.settings.version_variable}={version}"))
        return Command(f"set the image tag of {self.service} to {version} in {self.file} (comments kept)",
                       ("edit", str(self.file), f"services.{self.service}.image={self.image(version)}"))

    def _migrate_command(self, version: str) -> list[str]:
        """The migrate template's argv for `version` ({version} is its one placeholder)."""
        assert self.settings.migrate is not None
        try:
            return [token.format(version=version) for token in shlex.split(self.settings.migrate)]
        except (KeyError, IndexError, ValueError) as exc:
            raise RuntimeFailure(f"migrate template {self.settings.migrate!r} is malformed ({exc}); its one "
                                 "placeholder is {version}", EXIT_USAGE) from None

    def describe(self, version: str) -> list[Command]:
        """Set the version, pull if needed, drain+stop, migrate, up."""
        *prepare, up = self.describe_start(version)
        migrate = [Command("migrate the brain in a one-off container of the new image",
                           self._compose("run", "--rm", "--no-deps", self.service, *self._migrate_command(version)))
                   ] if self.settings.migrate else []
        return [*prepare, *self.describe_stop(), *migrate, up]

    def describe_stop(self) -> list[Command]:
        """`docker compose stop --timeout N service`."""
        return [Command("drain and stop the service (SIGTERM, then SIGKILL at the timeout)",
                        self._compose("stop", "--timeout", "<drain_timeout>", self.service))]

    def describe_start(self, version: str) -> list[Command]:
        """Set the version, pull if needed, `up -d` the service."""
        commands = [self._set_version_command(version)]
        remote = self._remote(version)
        if remote and not self._local(version):
            commands += [Command(f"pull {remote} from the registry", ("docker", "pull", remote)),
                         Command("tag it as the compose file names it", ("docker", "tag", remote, self.image(version)))]
        return commands + [Command(f"start {self.image(version)}", self._compose("up", "-d", "--no-deps", self.service),
                                   env_names(self.settings))]

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

    def stop(self, drain_timeout: float) -> StopResult:
        """`docker compose stop --timeout N`: SIGTERM, the drain, SIGKILL at N seconds."""
        row = self._container()
        start = time.monotonic()
        if row is None or self._inspect(str(row["ID"]))["State"]["Running"] is False:
            return StopResult(False, True, 0.0, None, "nothing was running")
        self._run(self._compose("stop", "--timeout", str(int(drain_timeout)), self.service), timeout=drain_timeout + 60)
        seconds = time.monotonic() - start
        state = self._inspect(str(row["ID"]))["State"]
        code = int(state.get("ExitCode", -1))
        if code in CLEAN_EXIT_CODES:
            return StopResult(True, True, seconds, code, f"drained and exited with code {code}")
        forced = code == 137 and seconds >= drain_timeout - 1
        detail = (f"still running at the {drain_timeout:g}s drain deadline: killed (SIGKILL); in-flight work was lost"
                  if forced else f"exited with code {code} after SIGTERM")
        return StopResult(True, False, seconds, code, detail)

    def _set_version(self, version: str) -> Callable[[], None]:
        """Point the project at `version`; returns how to put the previous value back."""
        if self.settings.version_variable:
            name = self.settings.version_variable
            previous = read_env_file(self.env_file).get(name)
            write_env_variable(self.env_file, name, version)
            return lambda: write_env_variable(self.env_file, name, previous) if previous is not None else None
        old_text = set_image_tag(self.file, self.service, version)
        return lambda: replace_file_text(self.file, old_text)

    def _pull(self, version: str) -> None:
        remote = self._remote(version)
        if remote and not self._local(version):
            self._run(("docker", "pull", remote), timeout=1800)
            self._run(("docker", "tag", remote, self.image(version)))

    def migrate(self, version: str) -> list[str] | None:
        """`docker compose run --rm` of the new image with the migrate command."""
        if not self.settings.migrate:
            return None
        self._pull(version)
        undo = self._set_version(version)
        argv = self._compose("run", "--rm", "--no-deps", "-T", self.service,
                             *self._migrate_command(version))
        out = self._run(argv, timeout=3600, check=False)
        lines = (out.stdout + out.stderr).splitlines()
        if out.returncode != 0:
            undo()  # the project keeps naming the version that last ran
            raise RuntimeFailure(f"migrate for {version} failed with exit code {out.returncode}", EXIT_ENVIRONMENT, lines[-20:])
        return lines

    def start(self, version: str) -> None:
        """Set the version and `up -d --no-deps` the service (the container is recreated)."""
        self._pull(version)
        self._set_version(version)
        self.started_at = datetime.now(timezone.utc)
        self._run(self._compose("up", "-d", "--no-deps", self.service), timeout=600)

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

    def logs(self, since: datetime | None = None, tail: int | None = None) -> list[str]:
        """`docker compose logs` of the service."""
        args = ["logs", "--no-color", "--no-log-prefix"]
        if since is not None:
            args += ["--since", since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")]
        if tail is not None:
            args += ["--tail", str(tail)]
        out = self._run(self._compose(*args, self.service), check=False)
        return (out.stdout + out.stderr).splitlines()

    def wait_healthy(self, deadline: float):  # type: ignore[no-untyped-def]
        """Health by URL (as for processes); without one, the container's own health status."""
        if self.health_url is not None:
            return super().wait_healthy(deadline)
        from backout.runtime.base import HealthWait

        start = time.monotonic()
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                return HealthWait(False, time.monotonic() - start, None, f"exited with code {code}", self.start_logs())
            row = self._container()
            if row is None:
                return HealthWait(False, time.monotonic() - start, None, "the service has no container")
            health = self._inspect(str(row["ID"]))["State"].get("Health", {}).get("Status")
            if health in ("healthy", None):
                return HealthWait(True, time.monotonic() - start, None, f"container health: {health or 'running'}")
            time.sleep(0.5)
        return HealthWait(False, time.monotonic() - start, None, "container not healthy in time", self.start_logs())


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
