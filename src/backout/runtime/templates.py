"""Placeholders in command templates and in the config files a service reads its settings from.

`{version}`, `{brain}`, `{port}`, `{state}` (the runtime's state folder), `{config}` (the folder the
config files of this start are rendered into) and `{port:NAME}` (one more port by name, for services
that listen on several). Only these are replaced; every other brace — a YAML flow map, a JSON
object, a shell `${VAR}` — is left as it is, so a config file needs no escaping.

A deployment's config files are rendered for every start into a folder of their own (0700, files
0600): the real start into the runtime's state folder, each trial boot into its throwaway folder,
so that a trial never reads the live database's path or port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from backout.errors import EXIT_USAGE, BackoutError
from backout.fsutil import ensure_private_dir, replace_text

__all__ = ["PLACEHOLDER", "TemplateError", "fill", "names_in", "render_config_files"]

PLACEHOLDER = re.compile(r"\{(version|brain|port|state|config)(?::([A-Za-z0-9_-]+))?\}")


class TemplateError(BackoutError):
    """A template names a port that is not configured, or a template file cannot be read."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def fill(template: str, values: Mapping[str, str], ports: Mapping[str, int | str], where: str) -> str:
    """`template` with its placeholders replaced; `where` names it in errors."""

    def one(match: re.Match[str]) -> str:
        name, port = match[1], match[2]
        if port is None:
            return str(values.get(name, ""))
        if name != "port":
            raise TemplateError(f"{where}: {{{name}:{port}}} is not a placeholder; only ports take a name, "
                                f"as in {{port:{port}}}")
        if port not in ports:
            known = ", ".join(sorted(ports)) or "none"
            raise TemplateError(f"{where}: {{port:{port}}} names no configured port (configured: {known}); add "
                                f"`{port} = PORT` to the process table's `ports`")
        return str(ports[port])

    return PLACEHOLDER.sub(one, template)


def names_in(text: str) -> set[str]:
    """The placeholders `text` uses ("port:api" for a named port)."""
    return {m[1] + (f":{m[2]}" if m[2] else "") for m in PLACEHOLDER.finditer(text)}


def render_config_files(files: list[tuple[Path, str]], folder: Path, values: Mapping[str, str],
                        ports: Mapping[str, int | str]) -> list[Path]:
    """Render each (template, name) into `folder` (0700), each file 0600; the paths written."""
    ensure_private_dir(folder)
    written = []
    for template, name in files:
        try:
            text = template.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"cannot read the config template {template}: {exc.strerror}; fix "
                                "`config_files` in backout.toml") from None
        path = folder / name
        replace_text(path, fill(text, values, ports, str(template)), mode=0o600)
        written.append(path)
    return written
