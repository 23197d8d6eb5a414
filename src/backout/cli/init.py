"""`backout init`: write a commented backout.toml, detecting what it can, every value overridable."""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

import typer

from backout.cli.common import DryRunOpt, emit_json, fail
from backout.config import CONFIG_NAME, ConfigError, load_config
from backout.errors import EXIT_REFUSED, EXIT_USAGE
from backout.fsutil import replace_text

__all__ = ["init", "looks_secret", "render_config"]

_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names of settings that hold secrets: ENGINE_API_KEY, AD_ENCRYPTION_KEY, DB_PASSWORD, GITHUB_TOKEN, ...
_SECRET_NAME = re.compile(r"(?:^|_)(?:(?:API|ACCESS|SECRET|PRIVATE|MASTER|SIGNING|ENCRYPTION)?_?KEY|[A-Z]*TOKEN|SECRET|"
                          r"PASS|PASSWD|PASSWORD|PWD|CREDENTIAL|AUTH|AUTHORIZATION|DSN|SALT|COOKIE)S?(?:_|$)",
                          re.IGNORECASE)
# Values shaped like secrets: credentials in a URL, PEM keys, well-known token prefixes, JWTs.
_SECRET_VALUE = re.compile(r"://[^/\s:@]*:[^/\s@]+@|-----BEGIN|^(?:sk|rk)[-_]|^(?:ghp|gho|ghs|ghu|github_pat|"
                           r"glpat|xox[abposr])[-_]|^AKIA[0-9A-Z]{16}$|^eyJ[\w-]+\.[\w-]+\.")


if TYPE_CHECKING:
    from backout.profiles import Detected


def _q(value: object) -> str:
    """A TOML value (JSON strings are valid TOML basic strings)."""
    return json.dumps(str(value)) if not isinstance(value, (int, float, bool)) else json.dumps(value)


def _toml(value: object) -> str:
    """A TOML value: lists as arrays, dicts as inline tables, the rest as _q."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return _q(value)


def looks_secret(name: str, value: str) -> bool:
    """True when a setting is named like a secret or its value is shaped like one (a token, a key)."""
    if _SECRET_NAME.search(name) or _SECRET_VALUE.search(value):
        return True
    if len(value) < 20 or not re.fullmatch(r"[A-Za-z0-9+/=_-]+", value):
        return False
    mixed = all(re.search(chars, value) for chars in (r"[a-z]", r"[A-Z]", r"\d"))
    if not (mixed or (len(value) >= 32 and re.fullmatch(r"[0-9a-fA-F]+", value))):
        return False
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in Counter(value).values())
    return entropy >= 3.5  # random-looking: base64, base62 or hex tokens


def _env_pairs(pairs: list[str], check_secrets: bool = False) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not _ENV.match(name):
            fail(f"--env wants NAME=VALUE, got {pair!r} (secrets go by name: --pass-env NAME)", EXIT_USAGE)
        if check_secrets and looks_secret(name, value):
            fail(f"--env {name}=… looks like a secret and backout.toml must not hold one: pass it by name with "
                 f"--pass-env {name} (exported where backout runs) or --env-file {name}=PATH; if it is not a "
                 "secret, add it to the env table by hand", EXIT_USAGE)
        out[name] = value
    return out


def render_config(name: str, brain: str, health_url: str | None, runtime: str, section: dict[str, object],
                  env: dict[str, str], pass_env: list[str], env_files: dict[str, str], staging: bool,
                  profile: str = "generic", profile_how: str = "") -> str:
    """The text of a commented backout.toml for one deployment."""
    lines = [
        "# backout.toml — written by `backout init`; relative paths are relative to this file.",
        'state_dir = ".backout"   # history, journals, quarantine, salvage bundles, drill reports',
        "",
        f"[deployments.{name}]",
        f"brain = {_q(brain)}   # the SQLite file (with its -wal/-shm) as seen from this host",
        (f"health_url = {_q(health_url)}" if health_url else "# health_url = \"http://127.0.0.1:8000/health\""),
        f"profile = {_q(profile)}   # {profile_how or 'the service profile'}; engine, alembic, django or generic",
        f"runtime = {_q(runtime)}",
        f"staging = {'true' if staging else 'false'}   # drills refuse non-staging deployments unless told",
        'drain_timeout = "30s"   # SIGTERM, then this long to drain, then kill',
        'boot_timeout = "60s"    # how long a new version may take to become healthy',
        "frozen = []             # versions never to switch to",
        "",
        f"[deployments.{name}.{runtime}]",
    ]
    lines += [f"{key} = {_toml(value)}" for key, value in section.items() if value is not None]
    lines.append("# Plain settings only; secrets by name (pass_env) or from files (env_files), never here.")
    lines.append("env = {" + ", ".join(f"{k} = {_q(v)}" for k, v in env.items()) + "}")
    lines.append("pass_env = [" + ", ".join(_q(n) for n in pass_env) + "]")
    lines.append("env_files = {" + ", ".join(f"{k} = {_q(v)}" for k, v in env_files.items()) + "}")
    lines += [
        "",
        f"[deployments.{name}.snapshots]",
        "keep_last = 10      # prune keeps these, every pinned one and the restore point",
        "keep_restore_points = 3  # restore points of the last 3 promoted upgrades stay pinned",
        'max_age = "24h"     # older snapshots are flagged STALE',
        "",
        f"[deployments.{name}.salvage]",
        "exclude = []        # tables (glob) not to salvage, e.g. caches",
        "",
    ]
    return "\n".join(lines)


def _config_files(pairs: list[str], ports: list[str], command: str) -> dict[str, object]:
    """The process table's config_files and ports from --config-file and --named-port; a note on stderr when
    neither the command nor a config file takes {brain} and {port} (then no trial boot is possible)."""
    files = []
    for pair in pairs:
        template, sep, name = pair.rpartition("=")
        if not sep or not template or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            fail(f"--config-file wants TEMPLATE=NAME (NAME a plain file name such as app.yml), got {pair!r}", EXIT_USAGE)
        files.append({"template": template, "name": name})
    named = {}
    for pair in ports:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not value.isdigit():
            fail(f"--named-port wants NAME=PORT, e.g. admin=8001, got {pair!r}", EXIT_USAGE)
        named[name] = int(value)
    if not files and not ({"{brain}", "{port}"} <= set(re.findall(r"\{(?:brain|port)\}", command))):
        typer.echo("note: the command takes no {brain} and {port}; if the service reads them from a config file, "
                   "let backout render it for every start and trial: --config-file TEMPLATE=NAME (use {config}/NAME "
                   "in the command); otherwise no trial boot is possible and rollbacks restore the brain", err=True)
    return {"config_files": files or None, "ports": named or None}


_BRACED = re.compile(r"\{([A-Za-z_]+)(?::[^{}]*)?\}")  # what the process runtime reads as a placeholder


def _refuse_unset_placeholders(templates: dict[str, str | None], section: dict[str, object], base: Path,
                               health_url: str | None) -> None:
    """Refuse (exit 2, nothing written) a template whose placeholder would be empty or unknown at every start:
    {port} without --port, {port:NAME} without --named-port NAME=PORT, a misspelt placeholder."""
    from backout.runtime.templates import PLACEHOLDER, names_in

    files = [(f"--config-file {f['template']}", _read_template(base, str(f["template"])))
             for f in section.get("config_files") or []]  # type: ignore[union-attr]
    named = section.get("ports") or {}
    for flag, text in [*templates.items(), *files]:
        if not text:
            continue
        if not flag.startswith("--config-file"):  # config files keep every other brace (YAML, JSON) as it is
            unknown = [m[0] for m in _BRACED.finditer(text) if not PLACEHOLDER.fullmatch(m[0])]
            if unknown:
                fail(f"{flag} uses {unknown[0]}, which is not a placeholder (they are {{version}}, {{brain}}, "
                     "{port}, {state}, {config} and {port:NAME}); fix it and run init again; nothing was written",
                     EXIT_USAGE)
        for name in sorted(names_in(text)):
            if name == "port" and section.get("port") is None:
                try:
                    seen = urlsplit(health_url).port if health_url else None
                except ValueError:
                    seen = None
                example = f"--port {seen} (the port --health-url names)" if seen else "--port 8000"
                fail(f"{flag} uses {{port}}, but no --port says which port the service listens on, so it would be "
                     f"started with an empty port: add {example}; nothing was written", EXIT_USAGE)
            if name.startswith("port:") and name[5:] not in named:  # type: ignore[operator]
                fail(f"{flag} uses {{{name}}}, but no --named-port {name[5:]}=PORT sets that port: add one; "
                     "nothing was written", EXIT_USAGE)


def _read_template(base: Path, template: str) -> str | None:
    """A config file template's text (relative to the config's folder, like backout.toml's paths), or None."""
    path = Path(template) if Path(template).is_absolute() else base / template
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _profile(name: str | None, brain: Path) -> "Detected":
    """The named profile, or the one the brain's tables show (generic without a brain)."""
    from backout.profiles import Detected, ProfileError, detect, profile_named

    if name is None:
        return detect(brain)
    try:
        return Detected(profile_named(name), "named with --profile")
    except ProfileError as exc:
        fail(str(exc), EXIT_USAGE)


def init(
    runtime: str = typer.Option("process", "--runtime", metavar="RUNTIME", help="process (a local command) or compose."),
    name: str = typer.Option("engine", "--name", metavar="NAME", help="Deployment name."),
    command: Optional[str] = typer.Option(None, "--command", metavar="TEMPLATE",
                                          help="Process: the command that starts a version, with {version} {brain} "
                                          "{port}."),
    check: Optional[str] = typer.Option(None, "--check", metavar="TEMPLATE",
                                        help="Process: a command that exits 0 when {version} exists."),
    port: Optional[int] = typer.Option(None, "--port", metavar="PORT", help="Process: the port the service listens on."),
    migrate: Optional[str] = typer.Option(None, "--migrate", metavar="TEMPLATE",
                                          help="Migration command, run before start."),
    compose_file: Optional[Path] = typer.Option(None, "--compose-file", metavar="FILE", help="Compose: the compose file."),
    service: Optional[str] = typer.Option(None, "--service", metavar="NAME", help="Compose: the service running the brain."),
    brain: Optional[str] = typer.Option(None, "--brain", metavar="PATH", help="The brain's path on this host."),
    health_url: Optional[str] = typer.Option(None, "--health-url", metavar="URL",
                                             help="e.g. http://127.0.0.1:8000/health"),
    env: list[str] = typer.Option([], "--env", metavar="NAME=VALUE", help="A plain setting (repeatable)."),
    pass_env: list[str] = typer.Option([], "--pass-env", metavar="NAME",
                                       help="A secret passed by name from backout's environment (repeatable)."),
    env_file: list[str] = typer.Option([], "--env-file", metavar="NAME=PATH",
                                       help="A secret read from a file (repeatable)."),
    staging: bool = typer.Option(False, "--staging", help="Mark the deployment as staging (drills run on it)."),
    output: Path = typer.Option(Path(CONFIG_NAME), "--output", "-o", metavar="FILE", help="Where to write the config."),
    config_file: list[str] = typer.Option([], "--config-file", metavar="TEMPLATE=NAME",
                                          help="Process: a config file the service reads, rendered per run from "
                                          "TEMPLATE, used as {config}/NAME (repeatable)."),
    named_port: list[str] = typer.Option([], "--named-port", metavar="NAME=PORT",
                                         help="Process: one more port, used as {port:NAME} (repeatable)."),
    profile: Optional[str] = typer.Option(None, "--profile", metavar="PROFILE",
                                          help="Service profile: engine, alembic, django or generic (default: "
                                          "detected from the brain's tables)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing config file (refused otherwise)."),
    force_old: bool = typer.Option(False, "--yes", "-y", hidden=True),  # the old spelling of --force, for scripts
    dry_run: bool = DryRunOpt,
    as_json: bool = typer.Option(False, "--json", help="Print what was detected as JSON."),
) -> None:
    """Write a commented backout.toml for one deployment (detects compose settings where it can).

    Secrets never go into the file: pass them by name (--pass-env) or from a file (--env-file).
    An existing file is left alone unless --force.

    \b
    Examples:
      backout init --runtime process --brain ./brain.sqlite --port 8000 \\
          --command "engine serve --release {version} --brain {brain} --port {port}" \\
          --health-url http://127.0.0.1:8000/health --pass-env ENGINE_API_KEY
      backout init --runtime compose --compose-file docker-compose.yml --service engine"""
    force = force or force_old
    if not re.match(r"^[A-Za-z0-9_-]+$", name):
        fail(f"--name {name!r}: use letters, digits, '-' and '_' (it becomes a TOML table name)", EXIT_USAGE)
    for n in pass_env:
        if not _ENV.match(n):
            fail(f"--pass-env wants a variable name, got {n!r}", EXIT_USAGE)
    files = _env_pairs(env_file)
    if runtime == "process":
        if not command or not brain:
            fail("--runtime process needs --command TEMPLATE and --brain PATH", EXIT_USAGE)
        section: dict[str, object] = {"command": command, "check": check, "port": port, "migrate": migrate}
        section.update(_config_files(config_file, named_port, command))
        _refuse_unset_placeholders({"--command": command, "--check": check, "--migrate": migrate},
                                   section, output.parent, health_url)
    elif runtime == "compose":
        from backout.runtime.compose_file import detect

        if compose_file is None:
            fail("--runtime compose needs --compose-file FILE (and --service NAME when it has several)", EXIT_USAGE)
        try:
            found = detect(compose_file, service)
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        brain = brain or found.brain
        health_url = health_url or found.health_url
        if not brain:
            fail(f"cannot tell where service {found.service}'s brain is on this host; pass --brain PATH", EXIT_USAGE)
        section = {"file": str(compose_file), "service": found.service, "project": found.project,
                   "version_variable": found.version_variable, "migrate": migrate}
    else:
        fail(f"--runtime must be process or compose, not {runtime!r}", EXIT_USAGE)
    chosen = _profile(profile, Path(str(brain)) if Path(str(brain)).is_absolute() else output.parent / str(brain))
    text = render_config(name, str(brain), health_url, runtime, section, _env_pairs(env, check_secrets=True),
                         pass_env, files, staging, chosen.profile.name, chosen.how)
    if not as_json:
        typer.echo(f"profile: {chosen.profile.name} ({chosen.how})", err=True)
    if as_json or dry_run:
        emit_json({"path": str(output), "dry_run": dry_run, "runtime": runtime, "brain": brain,
                   "health_url": health_url, "profile": {"name": chosen.profile.name, "how": chosen.how},
                   runtime: section}) if as_json else typer.echo(text)
        if dry_run:
            return
    if os.path.lexists(output) and not force:
        fail(f"{output} exists; pass --force to overwrite it", EXIT_REFUSED)
    replace_text(output, text, mode=0o600)  # 0600 whatever it holds: a config is where secrets get pasted later
    try:
        load_config(output)  # what we wrote must load
    except ConfigError as exc:
        fail(f"the written config does not validate ({exc}); please report this", EXIT_USAGE)
    if not as_json:
        typer.echo(f"wrote {output}")
