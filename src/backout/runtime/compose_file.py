"""Reading and editing a compose file: the service, its image and version variable, its brain.

Edits go through ruamel.yaml's round-trip mode so that comments and layout survive."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from backout.config import ConfigError
from backout.fsutil import replace_text

__all__ = ["ComposeFacts", "brain_in_container", "detect", "load_compose", "image_for", "set_image_tag", "read_env_file",
           "write_env_variable", "split_image", "replace_file_text"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
DEFAULT_BRAIN_IN_CONTAINER = "/data/brain.sqlite"


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and quoting are kept
    yaml.preserve_quotes = True
    return yaml


def load_compose(path: Path) -> Any:
    """The parsed compose file; ConfigError when missing or not YAML."""
    try:
        data = _yaml().load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"compose file {path} does not exist") from None
    except YAMLError as exc:
        raise ConfigError(f"compose file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ConfigError(f"compose file {path} has no `services:` section")
    return data


def service_of(data: Any, path: Path, service: str | None) -> tuple[str, Any]:
    """The named service (or the only one), ConfigError naming the services otherwise."""
    services = data["services"]
    if service is None:
        if len(services) != 1:
            raise ConfigError(f"{path} has services {', '.join(services)}; choose one with --service NAME")
        service = next(iter(services))
    if service not in services:
        raise ConfigError(f"{path} has no service {service!r}; it has: {', '.join(services)}")
    return service, services[service]


def split_image(ref: str) -> tuple[str, str]:
    """'127.0.0.1:5000/engine:2.3.1' -> ('127.0.0.1:5000/engine', '2.3.1'); no tag -> 'latest'."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return ref, "latest"
    return name, tag


def image_for(template: str, version: str, variable: str | None) -> str:
    """The image reference a version runs: the variable substituted, or the tag replaced."""
    if variable:
        return _VAR.sub(lambda m: version if (m.group(1) or m.group(3)) == variable else m.group(0), template)
    return f"{split_image(template)[0]}:{version}"


def set_image_tag(path: Path, service: str, version: str) -> str:
    """Rewrite the service's image tag in the compose file (comments survive); returns the old text."""
    text = path.read_text(encoding="utf-8")
    yaml = _yaml()
    data = yaml.load(text)
    node = data["services"][service]
    node["image"] = f"{split_image(str(node['image']))[0]}:{version}"
    out = io.StringIO()
    yaml.dump(data, out)
    replace_file_text(path, out.getvalue())
    return text


def replace_file_text(path: Path, text: str) -> None:
    """Replace a compose file or .env durably, keeping its mode (a .env may hold secrets)."""
    replace_text(path, text)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def write_env_variable(path: Path, name: str, value: str) -> None:
    """Set NAME=value in a .env file, keeping every other line as it was."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    done = False
    for i, line in enumerate(lines):
        if line.split("=", 1)[0].strip() == name and not line.lstrip().startswith("#"):
            lines[i], done = f"{name}={value}", True
    if not done:
        lines.append(f"{name}={value}")
    replace_file_text(path, "\n".join(lines) + "\n")


@dataclass
class ComposeFacts:
    """What `backout init` can tell from a compose file."""

    service: str
    project: str
    image: str
    version_variable: str | None
    brain: str | None
    health_url: str | None


def _variable(image: str) -> str | None:
    match = _VAR.search(split_image(image)[1]) or _VAR.search(image)
    return (match.group(1) or match.group(3)) if match else None


def brain_in_container(node: Any) -> str:
    """Where the service finds its brain inside the container."""
    env = node.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env if "=" in str(item))
    return str(env.get("SQLITE_DB_PATH") or DEFAULT_BRAIN_IN_CONTAINER)


def _mounts(node: Any) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume of the service."""
    out = []
    for item in node.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) >= 2:
                source, target = parts[0], parts[1]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
                out.append((kind, source, target))
        elif isinstance(item, dict):
            out.append((str(item.get("type", "volume")), str(item.get("source", "")), str(item.get("target", ""))))
    return out


def brain_on_host(compose: Path, project: str, node: Any, data: Any) -> str | None:
    """The brain's path on this host, for a bind mount or a named volume holding it."""
    inside = brain_in_container(node)
    for kind, source, target in _mounts(node):
        if not inside.startswith(target.rstrip("/") + "/"):
            continue
        rel = inside[len(target.rstrip("/")) + 1:]
        if kind == "bind":
            return str((compose.parent / os.path.expanduser(source)).resolve() / rel)
        declared = (data.get("volumes") or {}).get(source) or {}
        name = declared.get("name") if isinstance(declared, dict) else None
        mountpoint = volume_mountpoint(name or f"{project}_{source}")
        return str(Path(mountpoint) / rel) if mountpoint else None
    return None


def volume_mountpoint(volume: str) -> str | None:
    """Where Docker keeps (or, before the first `up`, will keep) a named volume on this host."""
    try:
        out = subprocess.run(["docker", "volume", "inspect", volume], capture_output=True, text=True)
        if out.returncode == 0:
            return str(json.loads(out.stdout)[0]["Mountpoint"])
        root = subprocess.run(["docker", "info", "--format", "{{.DockerRootDir}}"], capture_output=True, text=True)
    except OSError:
        return None  # no docker CLI: the operator passes --brain
    return f"{root.stdout.strip()}/volumes/{volume}/_data" if root.returncode == 0 and root.stdout.strip() else None


def _health_url(node: Any) -> str | None:
    env = node.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env if "=" in str(item))
    if node.get("network_mode") == "host":
        port = env.get("ENGINE_PORT") or env.get("PORT") or "8000"
        return f"http://127.0.0.1:{port}/health"
    for mapping in node.get("ports") or []:
        parts = str(mapping).split(":")
        if len(parts) >= 2:
            return f"http://127.0.0.1:{parts[-2]}/health"
    return None


def detect(compose: Path, service: str | None, project: str | None = None) -> ComposeFacts:
    """Service, image, version variable, brain on the host and health URL, as far as they show."""
    data = load_compose(compose)
    name, node = service_of(data, compose, service)
    image = str(node.get("image") or "")
    if not image:
        raise ConfigError(f"service {name} in {compose} has no `image:`; backout switches versions by image tag")
    project = project or str(data.get("name") or compose.resolve().parent.name).lower()
    return ComposeFacts(name, project, image, _variable(image), brain_on_host(compose, project, node, data),
                        _health_url(node))
