"""The backout.toml model, in one place: deployments, their brains and snapshot settings."""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from backout.config_errors import KeyProblem, NestedErrors, describe_not_toml, describe_not_utf8, describe_problems
from backout.errors import BackoutError
from backout.fsutil import check_component
from backout.profiles.model import Profile, SmokeRequest

if TYPE_CHECKING:
    from backout.profiles import Detected, Profile
    from backout.signals.health import HealthProbe

__all__ = [
    "Config",
    "ConfigError",
    "Deployment",
    "DrillSettings",
    "NotifySettings",
    "ProfileChoice",
    "RollbackSettings",
    "SalvageSettings",
    "SecretSource",
    "TrackerSettings",
    "UpgradeSettings",
    "VolumeSettings",
    "SnapshotSettings",
    "Target",
    "find_config",
    "load_config",
    "parse_duration",
    "resolve_target",
]

CONFIG_NAME = "backout.toml"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400,
          "w": 604800, "week": 604800, "weeks": 604800}
MAX_DURATION = timedelta(days=3650)  # longer is a typo, and would overflow date arithmetic
_DURATION_FORMS = "write a number and a unit: 90s, 15m, 24h, 7d, 2w (or 90 seconds, 15 minutes, 24 hours, 7 days, 2 weeks)"


class ConfigError(ValueError):
    """The configuration is missing, unreadable or malformed; the message says where and what to do."""


def parse_duration(value: Any) -> timedelta:
    """'90s', '15m', '24h', '7d', '2w', '1h30m', '24 hours', '2 minutes' (or a number of seconds) -> timedelta;
    ValueError with a sentence for anything else, negative or longer than MAX_DURATION."""
    if isinstance(value, timedelta):
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = float(min(value, 2 * int(MAX_DURATION.total_seconds())))  # a huge int does not fit a float
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str):
        seconds = _duration_seconds(value.strip().lower())
        if seconds is None:
            raise ValueError(f"{shown} is not a duration; {_DURATION_FORMS}")
    else:
        raise ValueError(f"{shown} is not a duration; {_DURATION_FORMS}")
    if math.isnan(seconds):
        raise ValueError(f"{shown} is not a duration; {_DURATION_FORMS}")
    if seconds < 0:
        raise ValueError(f"{shown} is not a duration; it cannot be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{shown} is too long for a duration; the longest accepted is "
                         f"{MAX_DURATION.days}d (ten years)")
    return timedelta(seconds=seconds)


def _duration_seconds(text: str) -> float | None:
    """Seconds in '1h30m' or '1 hour 30 minutes' (each unit once); None when it is not a duration."""
    seconds, seen, pos = 0.0, set(), 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or match[2] not in _UNITS or _UNITS[match[2]] in seen:
            return None
        seen.add(_UNITS[match[2]])
        seconds += float(match[1]) * _UNITS[match[2]]
        pos = match.end()
    return seconds if seen else None


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _moved: ClassVar[dict[str, tuple[str, str]]] = {}  # key that moved -> (its full name, how to write it now)

    @model_validator(mode="before")
    @classmethod
    def _refuse_moved(cls, data: Any) -> Any:
        """A key that moved: say where it went, rather than "extra inputs are not permitted"."""
        for key, (name, where) in cls._moved.items():
            if isinstance(data, dict) and key in data:
                raise KeyProblem(key, f"`{name}` moved to the service profile: {where}")
        return data


class SnapshotSettings(_Model):
    """Where a deployment's snapshots live and how long they are kept."""

    dir: Path | None = None  # default: <state_dir>/snapshots/<deployment>
    keep_last: int = Field(10, ge=1)
    max_age: Duration = timedelta(hours=24)
    keep_restore_points: int = Field(3, ge=1)  # the last N promoted upgrades' restore points stay pinned


class SalvageSettings(_Model):
    """Which tables salvage extracts (glob patterns; empty include = every table)."""

    include: list[str] = []
    exclude: list[str] = []


class Secrets(_Model):
    """Environment for the service. Secrets never appear here in clear: only their names."""

    env: dict[str, str] = {}  # plain settings, written as they are
    pass_env: list[str] = []  # names passed through from backout's own environment
    env_files: dict[str, Path] = {}  # NAME = file whose content is the value


class ConfigFile(_Model):
    """A file the service reads its settings from (its database path, its ports), rendered from `template`
    for every start and every trial boot into a folder of its own, as `name` (0600). Placeholders as in
    commands: {version} {brain} {port} {state} {config} {port:NAME}; other braces are left alone."""

    template: Path
    name: str

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}", value):
            raise ValueError(f"config file name {value!r}: a plain file name such as app.yml (it is written "
                             "into the run's own folder)")
        return value


class ProcessSettings(Secrets):
    """A version is a value put into a command template, run as a local process group."""

    command: str  # e.g. "engine serve --release {version} --brain {brain} --port {port}"
    config_files: list[ConfigFile] = []  # rendered into {config} before every start (and every trial)
    ports: dict[str, int] = {}  # more ports by name, {port:NAME}; a trial boot gets free ones
    check: str | None = None  # exits 0 when {version} exists, e.g. "engine releases --changelog {version}"
    port: int | None = Field(None, ge=1, le=65535)
    migrate: str | None = None  # run after the old version stopped, before the new one starts
    workdir: Path | None = None


class ComposeSettings(Secrets):
    """A version is an image tag of one service in a docker compose project."""

    file: Path
    service: str
    project: str | None = None  # default: the compose file's folder name
    version_variable: str | None = None  # e.g. ENGINE_VERSION in `image: engine:${ENGINE_VERSION}`
    env_file: Path | None = None  # where that variable lives; default: .env beside the compose file
    registry: str | None = None  # pull from here when the image is not local, e.g. 127.0.0.1:5000
    migrate: str | None = None  # command run in a one-off container of the new image


class EvalSettings(_Model):
    """The regression evals: a command that writes JUnit XML or JSON results to {out}."""

    command: str  # e.g. "engine eval --url {url} --json {out}"; placeholders {url} {out} {version}
    format: Literal["auto", "junit", "json"] = "auto"
    timeout: Duration = timedelta(minutes=10)
    pass_env: list[str] = []  # secrets the eval command needs, by name


class VerdictSettings(_Model):
    """How the rollback verdict is computed (thresholds default to the runbook's). Which requests count,
    and the Prometheus queries, are the service profile's (profile.request_path, profile.prometheus)."""

    _moved = {"path": ("verdict.path", "write profile.request_path")}

    source: Literal["logs", "scrape", "prometheus"] = "logs"
    scrape_url: str | None = None  # for source = "scrape", e.g. http://127.0.0.1:8000/metrics
    scrape_key_env: str | None = None  # env var holding the key for the scrape (sent in the profile's key header)
    prometheus_url: str | None = None  # for source = "prometheus"; the queries are the profile's
    health_failures: int = Field(3, ge=1)
    health_duration: Duration = timedelta(seconds=30)  # detection within a minute (bench/RESULTS.md)
    window: Duration = timedelta(seconds=20)
    min_requests: int = Field(30, ge=1)
    alpha: float = Field(0.01, gt=0, lt=1)
    error_ratio: float = Field(2.0, ge=1)
    error_floor: float = Field(0.02, ge=0)
    latency_ratio: float = Field(1.5, ge=1)
    sustained_windows: int = Field(2, ge=1)
    local_share: float = Field(0.8, gt=0, le=1)
    tie_breaker: Literal["roll-back", "hold", "inconclusive"] = "roll-back"
    baseline_window: Duration = timedelta(minutes=10)  # how much history a baseline captures


class ExpectedChange(_Model):
    """What a version announces will change (not counted against it)."""

    metrics: list[Literal["errors", "latency"]] = []
    eval_cases: list[str] = []


class SecretSource(_Model):
    """Where a secret comes from: an environment variable or a file, never the config itself."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretSource":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` (a variable name) or `file` (a path) for a secret")
        return self

    def describe(self) -> str:
        """Where the value is read from (safe to print)."""
        return f"${self.env}" if self.env else f"file {self.file}"

    def value(self) -> str:
        """The secret's value; ConfigError naming the variable or file when it is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"{self.env} is not set in backout's environment; export it (the config names "
                                  "the variable, never the value)")
            return value
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file {self.file}: {exc.strerror}") from None


class SlackChannel(_Model):
    """A Slack incoming webhook (its URL is the secret)."""

    name: str = "slack"
    webhook: SecretSource


class WebhookChannel(_Model):
    """A generic JSON webhook: POSTs each message as JSON."""

    name: str = "webhook"
    url: SecretSource
    headers: dict[str, SecretSource] = {}  # e.g. Authorization = {env = "PAGER_TOKEN"}


class StatuspageSettings(_Model):
    """The Statuspage REST API: an incident while customers are affected, and a component status."""

    api_base: str = "https://api.statuspage.io/v1"
    page_id: str
    component_id: str | None = None
    api_key: SecretSource


class NotifySettings(_Model):
    """Who hears about a rollback, and what counts as real customer impact (for the status page)."""

    slack: list[SlackChannel] = []
    webhook: list[WebhookChannel] = []
    statuspage: StatuspageSettings | None = None
    file: Path | None = None  # every message also appended here as a JSON line
    timeout: Duration = timedelta(seconds=10)
    retries: int = Field(3, ge=0, le=10)
    impact_error_rate: float = Field(0.05, ge=0, le=1)  # bad-window error rate that customers notice
    impact_latency_ratio: float = Field(2.0, ge=1)  # bad-window p95 / baseline p95 that customers notice


class TrackerSettings(_Model):
    """Where postmortems are filed as tickets: the GitHub issues API or a generic webhook."""

    kind: Literal["github", "webhook"]
    api_base: str = "https://api.github.com"
    repo: str | None = None  # owner/name, for kind = "github"
    token: SecretSource | None = None  # for kind = "github"
    url: SecretSource | None = None  # for kind = "webhook"
    labels: list[str] = ["incident", "rollback"]

    @model_validator(mode="after")
    def _complete(self) -> "TrackerSettings":
        if self.kind == "github" and (not self.repo or self.token is None):
            raise ValueError("tracker kind = 'github' needs `repo` (owner/name) and `token` = {env = ...}")
        if self.kind == "webhook" and self.url is None:
            raise ValueError("tracker kind = 'webhook' needs `url` = {env = ...} or {file = ...}")
        return self


class RollbackSettings(_Model):
    """How a rollback chooses its layer and checks the result."""

    _moved = {"smoke": ("rollback.smoke", "write it as a list, [[deployments.NAME.profile.smoke]] with method, "
                                          "path, expect_status")}

    additive_tolerant: bool = False  # older versions are known to read brains with newer additive migrations
    trial_port: int | None = Field(None, ge=1, le=65535)  # spare port for the trial boot (default: a free one)
    trial_port_env: str | None = None  # compose: the variable that sets the service's port, e.g. ENGINE_PORT
    verify_window: Duration = timedelta(seconds=10)  # how long errors are watched after the target is healthy


class UpgradeSettings(_Model):
    """How `backout upgrade` watches a new version, and the recovery-time target it plans against."""

    watch: Duration = timedelta(minutes=15)  # the watch window after the switch
    check_every: Duration = timedelta(seconds=15)  # how often the verdict is computed while watching
    auto_rollback: bool = True  # roll back by itself on a roll-back verdict
    rto: Duration | None = timedelta(minutes=5)  # recovery-time target: warn when a restore would take longer


class VolumeSettings(_Model):
    """The data volume holding the brain, for volume-level snapshots. Cloud credentials come from each
    SDK's standard environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS), never from this file."""

    provider: Literal["local", "ebs", "gcp"]
    use: Literal["also", "instead"] = "also"  # beside brain snapshots, or instead of them for brain rollbacks
    # local: a directory (or a bind-mounted volume) on this host that holds the brain
    path: Path | None = None
    # ebs
    volume_id: str | None = None
    region: str | None = None
    availability_zone: str | None = None
    instance_id: str | None = None
    device: str | None = None  # e.g. /dev/xvdf
    # gcp
    project: str | None = None
    zone: str | None = None
    disk: str | None = None
    instance: str | None = None
    device_name: str | None = None
    # ebs and gcp
    endpoint_url: str | None = None  # another API endpoint: EC2 (ebs) or Compute Engine (gcp); for gcp a
    # plain http://127.0.0.1 or http://localhost one gets anonymous credentials, never ADC (tests: a moto
    # server or a replay server on 127.0.0.1)
    # all
    timeout: Duration = timedelta(minutes=30)  # how long a snapshot or a volume may take to be ready
    initialize: bool = True  # read the brain's blocks once after a cloud restore (volumes load lazily)

    @model_validator(mode="after")
    def _complete(self) -> "VolumeSettings":
        needed = {"local": ["path"], "ebs": ["volume_id", "region", "instance_id", "device"],
                  "gcp": ["project", "zone", "disk", "instance", "device_name"]}[self.provider]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"volume provider {self.provider!r} needs {', '.join(missing)}")
        return self


class DrillSettings(_Model):
    """What a drill on this (staging) deployment rehearses, and its targets."""

    production_version: str = "2.3.1"  # what production runs: the drill starts staging on it
    broken_version: str | None = None  # the build the drill upgrades to; unset: the Engine's build for --break
    expect_layer: Literal["image", "brain"] | None = None  # the layer the rollback should take (unset: either)
    rto: Duration = timedelta(minutes=2)  # switch to verified recovery
    rpo_rows: int = Field(0, ge=0)  # rows that may be lost (neither restored nor salvaged)
    traffic_rate: float = Field(8.0, gt=0, le=200)  # turns (or requests) per second kept running through the drill
    # What the drill sends to a service other than the reference Engine: these requests in turn, "{n}" in a
    # path or a body's text becomes a number no other request of the drill has. Empty: no traffic (detection
    # then relies on health and evals).
    requests: list[SmokeRequest] = []


class ProfileChoice(BaseModel):
    """`profile = "alembic"`, or a [deployments.NAME.profile] table: `name` (omitted: detected from the
    brain) and any field of the profile to override (see backout.profiles.model.Profile)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    _keys_of: ClassVar[type[BaseModel]] = Profile  # its keys, for suggestions in config errors

    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _valid(self) -> "ProfileChoice":
        from backout.profiles import ProfileError, profile_named
        from backout.profiles.model import merge

        try:
            merge(profile_named(self.name or "generic"), self.overrides())
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise NestedErrors(exc.errors(), f"{where}: {first['msg']}") from None
        return self

    def overrides(self) -> dict[str, Any]:
        """The profile fields this deployment sets itself."""
        return dict(self.model_extra or {})


class Deployment(_Model):
    """One service that backout manages."""

    _moved = {"api_key_header": ("api_key_header", "write profile.api_key_header (and profile.api_key_prefix, "
                                                   "e.g. \"Bearer \")")}

    brain: Path
    health_url: str | None = None
    api_key: SecretSource | None = None  # the service's API key, sent in the profile's api_key_header
    profile: ProfileChoice = Field(default_factory=lambda: ProfileChoice())
    staging: bool = False
    runtime: Literal["process", "compose"] | None = None
    drain_timeout: Duration = timedelta(seconds=30)
    boot_timeout: Duration = timedelta(seconds=60)
    frozen: list[str] = []  # versions never to switch to
    process: ProcessSettings | None = None
    compose: ComposeSettings | None = None
    snapshots: SnapshotSettings = SnapshotSettings()
    salvage: SalvageSettings = SalvageSettings()
    verdict: VerdictSettings = VerdictSettings()
    evals: EvalSettings | None = None
    expected_changes: dict[str, ExpectedChange] = {}  # version -> announced changes
    notify: NotifySettings = NotifySettings()
    tracker: TrackerSettings | None = None
    rollback: RollbackSettings = RollbackSettings()
    upgrade: UpgradeSettings = UpgradeSettings()
    drill: DrillSettings = DrillSettings()
    volume: VolumeSettings | None = None
    changelog_command: str | None = None  # prints a version's changelog JSON, e.g. "engine releases --changelog {version} --json"

    @model_validator(mode="after")
    def _runtime_has_settings(self) -> "Deployment":
        if self.runtime == "process" and self.process is None:
            raise ValueError("runtime = 'process' needs a [deployments.NAME.process] table with `command`")
        if self.runtime == "compose" and self.compose is None:
            raise ValueError("runtime = 'compose' needs a [deployments.NAME.compose] table with `file` and `service`")
        return self


class Config(_Model):
    """A whole backout.toml."""

    state_dir: Path = Path(".backout")
    deployments: dict[str, Deployment] = Field(min_length=1)

    @field_validator("deployments")
    @classmethod
    def _names_stay_in_their_folder(cls, deployments: dict[str, Deployment]) -> dict[str, Deployment]:
        # A deployment's name becomes a folder name (snapshots/<name>): it must not leave its folder.
        for name in deployments:
            try:
                check_component(name, "deployment name")
            except BackoutError as exc:
                raise KeyProblem(name, str(exc)) from None
        return deployments


def find_config(explicit: Path | None) -> Path | None:
    """The config to use: --config, else $BACKOUT_CONFIG, else ./backout.toml when it exists."""
    if explicit is not None:
        return explicit
    env = os.environ.get("BACKOUT_CONFIG")
    if env:
        return Path(env)
    local = Path(CONFIG_NAME)
    return local if local.is_file() else None


def _relative_to(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)


def _read_config(path: Path) -> str:
    """The text of a config file; ConfigError with one sentence when it cannot be read as UTF-8 text."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path, or write one with `backout init`"
                          ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; name the file in it, e.g. --config "
                          f"{path / CONFIG_NAME}") from None
    except PermissionError:
        raise ConfigError(f"cannot read config file {path}: permission denied; give this user read access to it "
                          "(or run as a user who has it)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")  # an editor's byte-order mark is not worth an error
    except UnicodeDecodeError as exc:
        raise ConfigError(describe_not_utf8(path, data, exc)) from None


def load_config(path: Path) -> Config:
    """Read and validate a backout.toml; relative paths in it are relative to its folder. ConfigError says
    what is wrong: the file, the line, the key as written, what to do (every problem, up to ten)."""
    text = _read_config(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(describe_not_toml(path, text, str(exc))) from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_problems(path, text, exc.errors(), Config)) from None
    base = path.absolute().parent
    deployments = {name: _absolute_paths(dep, base) for name, dep in config.deployments.items()}
    state_dir = _relative_to(base, config.state_dir)
    for name, dep in deployments.items():
        _check_volume_paths(path, name, dep, state_dir)
    return config.model_copy(update={"state_dir": state_dir, "deployments": deployments})


def _check_volume_paths(config: Path, name: str, dep: Deployment, state_dir: Path) -> None:
    """A local volume must hold the brain, and must not hold backout's own state (a restore would move it)."""
    if dep.volume is None or dep.volume.path is None:
        return
    volume = dep.volume.path.absolute()
    if not dep.brain.absolute().is_relative_to(volume):
        raise ConfigError(f"{config}: deployments.{name}: the brain {dep.brain} is not inside volume.path {volume}")
    for what, folder in (("state_dir", state_dir), ("snapshots.dir", dep.snapshots.dir)):
        if folder is not None and folder.absolute().is_relative_to(volume):
            raise ConfigError(f"{config}: deployments.{name}: {what} {folder} is inside volume.path {volume}: a "
                              "volume restore would move backout's own state; put it elsewhere")


def _absolute_paths(dep: Deployment, base: Path) -> Deployment:
    """Paths in a deployment are relative to the config file's folder."""
    update: dict[str, Any] = {
        "brain": _relative_to(base, dep.brain),
        "snapshots": dep.snapshots.model_copy(
            update={"dir": _relative_to(base, dep.snapshots.dir) if dep.snapshots.dir else None}),
        "notify": dep.notify.model_copy(
            update={"file": _relative_to(base, dep.notify.file) if dep.notify.file else None}),
    }
    if dep.volume is not None and dep.volume.path is not None:
        update["volume"] = dep.volume.model_copy(update={"path": _relative_to(base, dep.volume.path)})
    for name in ("process", "compose"):
        section = getattr(dep, name)
        if section is None:
            continue
        fields: dict[str, Any] = {"env_files": {k: _relative_to(base, v) for k, v in section.env_files.items()}}
        if isinstance(section, ProcessSettings) and section.config_files:
            fields["config_files"] = [f.model_copy(update={"template": _relative_to(base, f.template)})
                                      for f in section.config_files]
        for key in ("workdir", "file", "env_file"):
            value = getattr(section, key, None)
            if value is not None:
                fields[key] = _relative_to(base, value)
        update[name] = section.model_copy(update=fields)
    return dep.model_copy(update=update)


@dataclass(frozen=True)
class Target:
    """The deployment a command works on, with every path resolved."""

    deployment: str  # its name in the config, or the brain's absolute path when there is none
    brain: Path  # symlinks resolved: the file SQLite opens, with its -wal/-shm beside it
    snapshot_dir: Path
    state_dir: Path
    keep_last: int = 10
    max_age: timedelta = timedelta(hours=24)
    keep_restore_points: int = 3
    salvage: SalvageSettings = SalvageSettings()
    health_url: str | None = None
    staging: bool = False
    config_path: Path | None = None
    settings: Deployment | None = None  # the whole deployment section, when there is a config

    @cached_property
    def detected_profile(self) -> "Detected":
        """The service profile, and how it was chosen (named, or detected from the brain)."""
        from backout.profiles import resolve

        choice = self.settings.profile if self.settings is not None else ProfileChoice()
        return resolve(choice.name, choice.overrides(), self.brain)

    @property
    def profile(self) -> "Profile":
        """The service profile: everything service-specific (see backout.profiles)."""
        return self.detected_profile.profile

    def api_headers(self) -> dict[str, str]:
        """The service's API key in the profile's header (none without a configured key)."""
        key = self.settings.api_key if self.settings is not None else None
        return self.profile.api_headers(key.value() if key is not None else None)

    def probe(self, timeout: float = 10.0) -> "HealthProbe":
        """One look at the health URL, judged by the profile's rule (the URL must be set)."""
        from backout.signals.health import probe

        assert self.health_url is not None
        return probe(self.health_url, timeout=timeout, rule=self.profile.health)

    def require_settings(self) -> Deployment:
        """The deployment's configuration; ConfigError when running without a backout.toml."""
        if self.settings is None or self.settings.runtime is None:
            raise ConfigError("this command needs a deployment with a runtime in backout.toml; "
                              "create one with `backout init`")
        return self.settings


def resolve_target(
    config_path: Path | None,
    deployment: str | None = None,
    brain: Path | None = None,
    into: Path | None = None,
) -> Target:
    """Pick the deployment from the config, or build one from --brain/--into without a config."""
    found = find_config(config_path)
    if found is None:
        if brain is None:
            raise ConfigError(f"no {CONFIG_NAME} here: pass --brain PATH (and --into DIR) or --config FILE")
        state = Path(".backout").absolute()
        # The brain is resolved once, here: SQLite keeps -wal/-shm beside a symlink's target, not the link.
        return Target(deployment=str(brain.absolute()), brain=brain.resolve(),
                      snapshot_dir=(into or state / "snapshots").absolute(), state_dir=state)
    config = load_config(found)
    name = deployment or _only_deployment(config, found)
    if name not in config.deployments:
        known = ", ".join(sorted(config.deployments))
        raise ConfigError(f"deployment {name!r} is not in {found}; known: {known}")
    dep = config.deployments[name]
    snapshot_dir = into or dep.snapshots.dir or config.state_dir / "snapshots" / name
    return Target(deployment=name, brain=(brain or dep.brain).resolve(), snapshot_dir=snapshot_dir.absolute(),
                  state_dir=config.state_dir.absolute(), keep_last=dep.snapshots.keep_last,
                  max_age=dep.snapshots.max_age, keep_restore_points=dep.snapshots.keep_restore_points,
                  salvage=dep.salvage, health_url=dep.health_url,
                  staging=dep.staging, config_path=found.absolute(), settings=dep)


def _only_deployment(config: Config, path: Path) -> str:
    if len(config.deployments) == 1:
        return next(iter(config.deployments))
    known = ", ".join(sorted(config.deployments))
    raise ConfigError(f"{path} has several deployments ({known}); choose one with --deployment NAME")
