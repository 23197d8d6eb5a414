"""The drill's staging deployment: a self-contained one in a temporary folder (the reference Engine
as a local process), or a configured deployment marked `staging = true`."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backout.config import Target, resolve_target
from backout.errors import EXIT_REFUSED, EXIT_USAGE, BackoutError
from backout.flows.drill_traffic import engine_traffic

__all__ = ["BREAKS", "FIRST_SIGNAL", "Rehearsal", "Staging", "configured_staging", "rehearsal", "self_contained_staging"]

# --break MODE -> (the broken build, the signals that should call for the rollback)
BREAKS: dict[str, tuple[str, frozenset[str]]] = {
    "errors": ("2.4.0-errors", frozenset({"errors", "evals"})),  # its failing turns fail eval cases too
    "latency": ("2.4.0-latency", frozenset({"latency"})),
    "health": ("2.4.0-health", frozenset({"not healthy at start"})),
    "eval": ("2.4.0-eval", frozenset({"evals"})),
    "crash": ("2.4.0-crash", frozenset({"not healthy at start"})),
    "drain": ("2.4.0-drain", frozenset({"forced stop at the drain"})),
}
# --break MODE -> the signal its build is meant to show first (the errors build's failing turns fail evals too,
# and the evals may answer first)
FIRST_SIGNAL: dict[str, str] = {"errors": "errors", "latency": "latency", "health": "not healthy at start",
                                "eval": "evals", "crash": "not healthy at start", "drain": "forced stop at the drain"}

_CONFIG = """\
# A self-contained staging deployment written by `backout drill`.
state_dir = ".backout"

[deployments.staging]
brain = "brain.sqlite"
health_url = "http://127.0.0.1:{port}/health"
api_key = {{ env = "ENGINE_API_KEY" }}
profile = "engine"
runtime = "process"
staging = true
drain_timeout = "5s"
boot_timeout = "15s"

[deployments.staging.process]
command = "{python} -m engine.cli serve --release {{version}} --brain {{brain}} --port {{port}}"
check = "{python} -m engine.cli releases --changelog {{version}}"
port = {port}
env = {{ ENGINE_TURN_MS = "40" }}
pass_env = ["ENGINE_API_KEY"]

[deployments.staging.verdict]
window = "4s"
min_requests = 15
sustained_windows = 2
health_failures = 2
health_duration = "3s"
baseline_window = "30s"

[deployments.staging.evals]
command = "{python} -m engine.cli eval --url {{url}} --json {{out}} --quiet"
pass_env = ["ENGINE_API_KEY"]

[deployments.staging.upgrade]
watch = "{watch}"
check_every = "2s"
rto = "2m"

[deployments.staging.rollback]
verify_window = "3s"

[deployments.staging.notify]
file = "notifications.jsonl"

[deployments.staging.drill]
rto = "2m"
rpo_rows = 0
traffic_rate = 8
"""


@dataclass(frozen=True)
class Rehearsal:
    """What a drill upgrades staging to, what should call for the rollback, and what it sends meanwhile."""

    production: str
    broken: str
    expected: frozenset[str] | None  # the triggers that should call for the rollback; None: any of them
    layer: str | None  # the layer the rollback should take; None: either
    traffic: str  # "engine" (the Engine's turns), "requests" ([drill] requests) or "none"


def rehearsal(target: Target, mode: str, broken: str | None = None) -> Rehearsal:
    """The drill's plan for this staging deployment: the Engine's broken build for `mode`, or the broken
    build the deployment names (`[drill] broken_version`, or `broken`) for any other service."""
    settings = target.require_settings()
    drill, profile = settings.drill, target.profile
    traffic = "engine" if profile.traffic == "engine" else ("requests" if drill.requests else "none")
    broken = broken or drill.broken_version
    if broken is not None:
        return Rehearsal(drill.production_version, broken, None, drill.expect_layer, traffic)
    where = f"[deployments.{target.deployment}.drill]"
    if profile.name != "engine":
        raise BackoutError(f"deployment {target.deployment} runs a {profile.name} service: a drill upgrades it to a build "
                           f"that fails on purpose, and only you know which one. Name it as broken_version in {where} "
                           "(or pass --broken VERSION), and production_version there too", EXIT_USAGE)
    if mode not in BREAKS:
        raise BackoutError(f"--break must be one of {', '.join(BREAKS)}, not {mode!r}", EXIT_USAGE)
    version, expected = BREAKS[mode]
    return Rehearsal(drill.production_version, version, expected, drill.expect_layer or "brain", traffic)


@dataclass
class Staging:
    """Where the drill runs: the deployment, its config, and whether the drill made (and removes) it."""

    target: Target
    config: Path
    env: dict[str, str]  # what backout's children need (the API key), beside the inherited environment
    temporary: Path | None = None

    def cleanup(self) -> None:
        """Remove the self-contained folder (nothing of a configured deployment is removed)."""
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_contained_staging(watch_s: int = 45) -> Staging:
    """A staging deployment of the reference Engine in a new temporary folder (0700)."""
    engine_traffic()  # the Engine is an optional part of backout: say how to get it before anything starts
    folder = Path(tempfile.mkdtemp(prefix="backout-drill-"))
    config = folder / "backout.toml"
    config.write_text(_CONFIG.format(port=_free_port(), python=sys.executable, watch=f"{watch_s}s"), encoding="utf-8")
    key = os.environ.get("ENGINE_API_KEY") or secrets.token_hex(16)  # a throwaway key, never on argv
    return Staging(resolve_target(config, "staging"), config, {"ENGINE_API_KEY": key}, folder)


def configured_staging(config: Path | None, name: str | None, production_ok: bool) -> Staging:
    """A deployment from backout.toml; refused unless marked staging (or the operator insists)."""
    target = resolve_target(config, name)
    settings = target.require_settings()
    if target.profile.name != "engine" and "production_version" not in settings.drill.model_fields_set:
        raise BackoutError(f"deployment {target.deployment}: set production_version in [deployments.{target.deployment}"
                           ".drill] (the version the drill starts staging on, as production runs it)", EXIT_USAGE)
    if not settings.staging and not production_ok:
        raise BackoutError(f"deployment {target.deployment} is not marked `staging = true`: a drill upgrades it to "
                           "a broken build on purpose. Mark it staging, or pass --i-know-this-is-production",
                           EXIT_REFUSED)
    if settings.api_key is None or settings.api_key.env is None:
        env: dict[str, str] = {}
    else:
        env = {settings.api_key.env: settings.api_key.value()}
    return Staging(target, target.config_path or Path("backout.toml"), env)
