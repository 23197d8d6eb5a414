"""Trial boot: can an older version serve the brain as it is now? Start it and see.

The target version is started against a throwaway copy of the current brain, on a spare port (a
process) or in a temporary compose project (a container), then its health and the profile's smoke
requests (reads and writes: the copy is thrown away) are checked. The live service and its brain are never touched; the copy is removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from backout.brain.skeleton import copy_brain_skeleton
from backout.brain.snapshot import copy_live_brain
from backout.config import ConfigError, Deployment, Target
from backout.fsutil import atomic_write_json, ensure_private_dir
from backout.history import deployment_state, now_iso
from backout.commands import Command, isolated, note
from backout.runtime.base import HealthWait, Runtime, RuntimeFailure
from backout.runtime.compose import ComposeRuntime, project_name
from backout.runtime.smoke import run_smoke
from backout.runtime.templates import names_in

__all__ = ["TrialResult", "cached_trial", "clean_stale_trials", "remember_trial", "schema_key", "trial_boot",
           "trial_commands", "trial_possible"]


@dataclass
class TrialResult:
    """What the trial boot showed."""

    healthy: bool
    reason: str
    seconds: float
    how: str  # where it ran: "process on port N" or "container in project P"
    health: dict[str, Any] | None = None
    smoke: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)
    at: str | None = None  # when it ran, for cached results
    refused: bool = False  # the version itself refused the brain or died: a verdict on the brain, worth keeping
    skeleton: bool = False  # ran on the brain's schema and small tables only, not on a whole copy

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"healthy": self.healthy, "reason": self.reason, "seconds": round(self.seconds, 3), "how": self.how,
                "health": self.health, "smoke": self.smoke, "log_tail": self.log_tail, "refused": self.refused,
                "skeleton": self.skeleton}


SKELETON_ABOVE_BYTES = 64 * 2**20  # smaller brains are copied whole at once


def schema_key(brain: Path) -> str | None:
    """What a trial result depends on: the brain's migration head and schema fingerprint."""
    from backout.brain.schema import SchemaError, stamp

    try:
        now = stamp(brain) if brain.exists() else None
    except SchemaError:
        return None
    return f"{now.head}:{now.fingerprint}" if now else None


def _cache_path(target: Target) -> Path:
    return deployment_state(target.state_dir, target.deployment) / "trials.json"


def _cache_key(target: Target, version: str, fingerprint: str) -> str:
    """`version@fingerprint@setup`: a trial's outcome depends on the brain's schema and also on what the trial
    asked (the profile's smoke requests, health rule and refusal signs) and how it started the version (the
    runtime's settings). A pass remembered before a writing smoke request was added proves nothing about writes."""
    settings = target.require_settings()
    profile = target.profile
    runtime = settings.process or settings.compose
    setup = {"smoke": [r.model_dump(mode="json") for r in profile.smoke], "health": profile.health.model_dump(),
             "refusal": profile.refusal.model_dump(), "api_key_header": profile.api_key_header,
             "runtime": runtime.model_dump(mode="json") if runtime is not None else None}
    digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{version}@{fingerprint}@{digest}"


def cached_trial(target: Target, version: str, fingerprint: str | None) -> TrialResult | None:
    """A trial boot of `version` already run on a brain with this schema fingerprint (e.g. by the upgrade's
    watch window, so a rollback in a hurry need not copy the brain again)."""
    if not fingerprint:
        return None
    try:
        data = json.loads(_cache_path(target).read_text(encoding="utf-8"))
        entry = data[_cache_key(target, version, fingerprint)]
    except (OSError, ValueError, KeyError):
        return None
    return TrialResult(**{**entry, "how": entry["how"] + " (run earlier on a brain with this same schema)"})


def remember_trial(target: Target, version: str, fingerprint: str | None, result: TrialResult,
                   redact: Callable[[Any], Any] = lambda x: x) -> None:
    """Keep a trial's outcome for this (version, schema fingerprint): only a pass or a refusal by the version
    itself (a port in use or a failed pull says nothing about the brain)."""
    if not fingerprint or not (result.healthy or result.refused):
        return
    path = _cache_path(target)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data[_cache_key(target, version, fingerprint)] = redact({**result.to_dict(), "at": now_iso()})
    data = dict(list(data.items())[-20:])
    ensure_private_dir(path.parent)
    atomic_write_json(path, data)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


def trial_possible(target: Target) -> str | None:
    """None when a trial boot can run for this deployment; otherwise why not, in words."""
    settings = target.require_settings()
    if not target.health_url:
        return "the deployment has no health_url to judge a trial boot by"
    if not target.brain.exists():
        return f"there is no brain at {target.brain} to copy"
    if settings.runtime == "process":
        assert settings.process is not None
        used = names_in(settings.process.command)
        for file in settings.process.config_files:
            try:
                used |= names_in(file.template.read_text(encoding="utf-8"))
            except OSError:
                return f"the config template {file.template} cannot be read"
        if not {"brain", "port"} <= used:
            return ("neither the process command nor its config files take {brain} and {port}, so a trial could "
                    "not be kept off the live brain (render the service's config file per run: config_files)")
        return None
    if not _host_network(settings):
        return "the compose service does not use network_mode: host, so a trial could not get a port of its own"
    if _port_variable(settings) is None:
        return "no variable sets the service's port (set rollback.trial_port_env)"
    return None


def _host_network(settings: Deployment) -> bool:
    from backout.runtime.compose_file import load_compose, service_of

    assert settings.compose is not None
    _, node = service_of(load_compose(settings.compose.file), settings.compose.file, settings.compose.service)
    return str(node.get("network_mode", "")) == "host"


def _port_variable(settings: Deployment) -> str | None:
    if settings.rollback.trial_port_env:
        return settings.rollback.trial_port_env
    from backout.runtime.compose_file import load_compose, service_of

    assert settings.compose is not None
    _, node = service_of(load_compose(settings.compose.file), settings.compose.file, settings.compose.service)
    env = node.get("environment") or {}
    if isinstance(env, list):
        env = dict(str(item).split("=", 1) for item in env if "=" in str(item))
    port = str(urlsplit(str(settings.health_url)).port or "")
    matches = [k for k, v in env.items() if str(v) == port]
    return matches[0] if len(matches) == 1 else None


def trial_boot(target: Target, runtime: Runtime, version: str, skeleton_enough: bool = False,
               migrate: bool = False) -> TrialResult:
    """Start `version` on a copy of the current brain, check health and the smoke request, clean up.

    A big brain is tried first on its skeleton (schema and small tables): a refusal there is final,
    and saves copying the whole brain; only a pass is repeated on a full copy (unless
    `skeleton_enough`: a pre-flight only asks whether the version starts on this schema). With `migrate`,
    the deployment's migrate command runs on the copy first, as a switch to `version` would run it."""
    why_not = trial_possible(target)
    if why_not:
        raise ConfigError(f"a trial boot is not possible: {why_not}")
    for command in trial_commands(target, version, migrate):
        note(command)  # what plans show; the trial's own commands touch only its throwaway copy
    with isolated():
        if target.brain.stat().st_size > SKELETON_ABOVE_BYTES:
            first = _guarded(target, runtime, version, skeleton=True, migrate=migrate)
            if first.refused or (skeleton_enough and first.healthy):
                return first  # refused on the schema alone: it refuses the brain too
        return _guarded(target, runtime, version, skeleton=False, migrate=migrate)


def _guarded(target: Target, runtime: Runtime, version: str, skeleton: bool, migrate: bool) -> TrialResult:
    """A trial that could not run is a failed trial (not cached, not a refusal), never an exception."""
    try:
        return _trial_on(target, runtime, version, skeleton, migrate)
    except Exception as exc:  # a copy, a port, Docker: the rollback must still be decidable
        return TrialResult(False, f"the trial could not run ({type(exc).__name__}: {exc})", 0.0,
                           "skeleton" if skeleton else "copy")


def clean_stale_trials(target: Target) -> list[str]:
    """Trials a killed backout left behind: stop their process group or compose project, remove the copy."""
    cleaned = []
    for folder in deployment_state(target.state_dir, target.deployment).glob("trial-*"):
        _stop_stale(folder)
        shutil.rmtree(folder, ignore_errors=True)
        cleaned.append(folder.name)
    return cleaned


def _stop_stale(folder: Path) -> None:
    try:
        record = json.loads((folder / "runtime" / "service.pid.json").read_text(encoding="utf-8"))
        os.killpg(int(record["pgid"]), signal.SIGKILL)
    except (OSError, ValueError, KeyError):
        pass  # no process trial, or it is gone already
    try:
        project = json.loads((folder / "trial.json").read_text(encoding="utf-8"))["project"]
    except (OSError, ValueError, KeyError):
        return
    try:
        subprocess.run(["docker", "compose", "-p", str(project), "down", "-v", "--timeout", "5"],
                       capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _trial_on(target: Target, runtime: Runtime, version: str, skeleton: bool, migrate: bool) -> TrialResult:
    settings = target.require_settings()
    clean_stale_trials(target)  # a trial of a killed run must not hold the port or the disk
    folder = deployment_state(target.state_dir, target.deployment) / f"trial-{secrets.token_hex(4)}"
    ensure_private_dir(folder)
    try:
        copy = folder / target.brain.name
        if skeleton:
            copy_brain_skeleton(target.brain, copy)
        else:
            copy_live_brain(target.brain, copy)
        port = settings.rollback.trial_port or _free_port()
        url = _with_port(str(target.health_url), port)
        if settings.runtime == "process":
            result = _trial_process(target, version, copy, port, url, folder, not skeleton, migrate)
        else:
            result = _trial_container(target, runtime, version, copy, port, url, folder, not skeleton, migrate)
        result.skeleton = skeleton
        if skeleton:
            result.how = result.how.replace("a copy of the brain", "the brain's schema and small tables")
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _judge(wait: HealthWait, url: str, target: Target, how: str, smoke_it: bool = True) -> TrialResult:
    health = wait.last.to_dict() if wait.last else None
    if not wait.healthy:
        refused = wait.reason.startswith(("refuses to serve", "exited with code"))
        return TrialResult(False, wait.reason, wait.seconds, how, health, None, wait.log_tail, refused=refused)
    smoke = run_smoke(url, target.profile.smoke, target.api_headers()) if smoke_it else None
    if smoke is not None and not smoke["ok"]:
        # Health passes on this schema but a real read or write fails on the server's side: the version
        # cannot use this brain (a 4xx says more about the request or the key than about the brain).
        failed = smoke["requests"][-1].get("status") or 0
        return TrialResult(False, f"healthy, but a smoke request failed: {smoke['detail']}", wait.seconds, how,
                           health, smoke, refused=failed >= 500)
    if smoke is None:
        said = "healthy (no smoke requests in the profile)"
    elif smoke.get("skipped"):
        said = f"healthy ({smoke['detail']})"
    else:
        said = f"healthy and {len(smoke['requests'])} smoke request(s) passed"
    return TrialResult(True, said, wait.seconds, how, health, smoke)


def _deadline(settings: Deployment) -> float:
    return time.monotonic() + settings.boot_timeout.total_seconds()


def _trial_process(target: Target, version: str, copy: Path, port: int, url: str, folder: Path,
                   smoke: bool = True, migrate: bool = False) -> TrialResult:
    from backout.runtime.process import ProcessRuntime

    settings = target.require_settings()
    assert settings.process is not None
    ports = {name: _free_port() for name in settings.process.ports}  # every named port a spare one too
    trial = ProcessRuntime(settings.process.model_copy(update={"port": port, "ports": ports}), copy, url,
                           folder / "runtime", profile=target.profile)
    trial.throwaway = True  # its log goes with its folder: the failure quotes it instead of naming it
    how = f"process on port {port} against a copy of the brain"
    try:
        trial.start(version, migrate=migrate)
        return _judge(trial.wait_healthy(_deadline(settings)), url, target, how, smoke)
    except RuntimeFailure as exc:
        return TrialResult(False, str(exc), 0.0, how, log_tail=exc.log_tail)
    finally:
        trial.stop(5)


def trial_commands(target: Target, version: str, migrate: bool = False) -> list[Command]:
    """What a trial boot of `version` runs, for plans (its folder, port and copy are chosen when it runs): the
    start commands of the trial's own runtime (with the migrate step when `migrate`), folder and ports as
    placeholders."""
    settings = target.require_settings()
    judge = ("wait for health" + (" and the smoke requests" if target.profile.smoke else "") +
             ", then stop it and remove the copy")
    if settings.runtime == "process":
        from backout.runtime.process import ProcessRuntime

        assert settings.process is not None
        spare = {name: f"<spare port {name}>" for name in settings.process.ports}
        twin = ProcessRuntime(settings.process.model_copy(update={"port": "<spare port>", "ports": spare}),
                              Path("<trial folder>") / target.brain.name, target.health_url,
                              Path("<trial folder>/runtime"), profile=target.profile)
        where = "on a spare port"
    else:
        twin = _trial_runtime(target, "<project>-trial-<id>", Path("<trial folder>/trial-override.yml"),
                              target.brain, Path("<trial folder>/runtime"), target.health_url)
        where = "in a temporary compose project"
    commands = twin.start_commands(version, migrate)
    if settings.runtime == "compose":  # the override pins the image: no version edit, only migrate and up
        commands = [c for c in commands[:-1] if c.purpose.startswith("migrate")] + commands[-1:]
    *before, start = commands
    return [Command(f"trial boot: {c.purpose} (on the throwaway copy)", c.argv, c.env_names, ("<trial folder>",),
                    kind="trial") for c in before] + [
        Command(f"trial boot: start {version} {where} against a throwaway copy of the brain; {judge}", start.argv,
                start.env_names, ("<trial folder>",), kind="trial")]


def _trial_runtime(target: Target, project: str, override: Path, brain: Path, state: Path,
                   url: str | None) -> ComposeRuntime:
    """The live compose runtime's twin for a trial: its own project, the image and brain copy pinned by `override`."""
    settings = target.require_settings()
    assert settings.compose is not None
    return ComposeRuntime(settings.compose.model_copy(update={"project": project}), brain, url, state, override=override,
                          profile=target.profile)


def _trial_container(target: Target, runtime: Runtime, version: str, copy: Path, port: int, url: str,
                     folder: Path, smoke: bool = True, migrate: bool = False) -> TrialResult:
    from backout.runtime.compose_file import brain_in_container, load_compose, service_of

    settings = target.require_settings()
    assert settings.compose is not None
    file = settings.compose.file
    service, node = service_of(load_compose(file), file, settings.compose.service)
    inside = brain_in_container(node)
    data = folder / "data"
    data.mkdir(mode=0o700)
    os.rename(copy, data / Path(inside).name)
    override = folder / "trial-override.yml"
    project = re.sub(r"[^a-z0-9_-]", "", f"{project_name(settings.compose)}-trial-{folder.name[-8:]}")
    atomic_write_json(folder / "trial.json", {"project": project})  # so a killed run's trial can be taken down
    trial = _trial_runtime(target, project, override, data / Path(inside).name, folder / "runtime", url)
    trial.throwaway = True  # the project is removed afterwards, its logs with it
    override.write_text(_override(service, trial.image(version), str(_port_variable(settings)), port, data,
                                  str(Path(inside).parent)), encoding="utf-8")
    how = f"container in compose project {project}, port {port}, against a copy of the brain"
    try:
        trial.start(version, migrate=migrate)
        return _judge(trial.wait_healthy(_deadline(settings)), url, target, how, smoke)
    except RuntimeFailure as exc:
        return TrialResult(False, str(exc), 0.0, how, log_tail=exc.log_tail)
    finally:
        trial.remove()


def _override(service: str, image: str, port_env: str, port: int, data: Path, inside_dir: str) -> str:
    return (f"services:\n  {service}:\n    image: \"{image}\"\n    restart: \"no\"\n"
            f"    environment:\n      {port_env}: \"{port}\"\n"
            f"    volumes:\n      - type: bind\n        source: \"{data}\"\n        target: \"{inside_dir}\"\n")
