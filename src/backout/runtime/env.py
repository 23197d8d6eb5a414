"""The environment a service gets: plain settings, secrets passed through by name or read from files.

Secret values are only ever placed in a child's environment: never in argv, the config, logs or
journals (they name the variables, not their values)."""

from __future__ import annotations

import os

from backout.config import Secrets
from backout.errors import EXIT_USAGE
from backout.runtime.base import RuntimeFailure

__all__ = ["MissingSecret", "env_names", "service_env", "secret_values"]


class MissingSecret(RuntimeFailure):
    """A secret the deployment passes to its service is not in backout's environment (or its file is unreadable):
    a command that does not need the service's runtime can still show everything else."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message, EXIT_USAGE)
        self.name = name  # the variable's name, never its value


def secret_values(settings: Secrets) -> dict[str, str]:
    """The values of the secrets a deployment passes on (from backout's environment or files)."""
    values: dict[str, str] = {}
    for name in settings.pass_env:
        if name not in os.environ:
            raise MissingSecret(f"{name} is not set in backout's environment; the deployment passes it "
                                "to the service (pass_env). Export it, or read it from a file (env_files)", name)
        values[name] = os.environ[name]
    for name, path in settings.env_files.items():
        try:
            values[name] = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MissingSecret(f"cannot read {name} from {path}: {exc.strerror}", name) from None
    return values


def service_env(base: dict[str, str], settings: Secrets) -> dict[str, str]:
    """`base` plus the deployment's plain settings and its secrets."""
    return {**base, **settings.env, **secret_values(settings)}


def env_names(settings: Secrets) -> tuple[str, ...]:
    """The names of every variable the service gets from the deployment (for plans: never values)."""
    return tuple(sorted({*settings.env, *settings.pass_env, *settings.env_files}))
