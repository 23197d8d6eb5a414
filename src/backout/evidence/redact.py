"""Redaction of secrets in everything an incident keeps: logs, payloads, reports.

Two nets, both applied to every string: the known values of the deployment's secrets (exact
matches, also in their JSON-escaped and URL-encoded forms), and patterns for credentials whose
values backout never knew (header, JSON, `name=value` and `--flag value` forms, bearer tokens,
passwords in URLs, Slack webhook URLs).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import BaseModel

from backout.config import ConfigError, Deployment, SecretSource

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "secrets_of"]

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6  # shorter values would blank out ordinary words and numbers

# Names whose values are credentials: x-engine-key, authorization, api_key, access_token,
# client_secret, DB_PASSWORD, session cookie... but not `output_tokens` or `monkey`.
_WORD = (r"(?:[\w-]*[_-])?(?:api[_-]?key|key|token|secrets?|password|passwd|authorization"
         r"|cookie|credentials?|signature)(?![\w-])")
_NAME = rf"(?<![\w-]){_WORD}"
_NAME_RE = re.compile(rf"^{_WORD}$", re.IGNORECASE)
_SCHEME = r"(?:(?:Bearer|Basic|Token|Digest)\s+)?"
_BARE = r"[^\s\"',;&]+"  # an unquoted value ends at a space, quote, separator or the next parameter
_QUOTED = r"""(["'])(?:\\.|(?!\3).)*\3"""  # group 3 is the quote
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # "api_key": "value" (JSON) and 'api_key': 'value' (Python reprs)
    (re.compile(rf"""(["'])({_NAME})\1(\s*:\s*)(["'])(?:\\.|(?!\4).)*\4""", re.IGNORECASE),
     rf"\1\2\1\3\4{REDACTED}\4"),
    # Authorization: Bearer xyz / X-Service-Key: xyz / token: xyz (headers, YAML, log text)
    (re.compile(rf"({_NAME})([ \t]*:[ \t]*)({_SCHEME}){_BARE}", re.IGNORECASE),
     rf"\1\2\3{REDACTED}"),
    # password="xyz", secret='xyz'
    (re.compile(rf"({_NAME})(\s*=\s*){_QUOTED}", re.IGNORECASE), rf"\1\2\3{REDACTED}\3"),
    # api_key=xyz, ?key=xyz&..., ENGINE_API_KEY=xyz, --token=xyz
    (re.compile(rf"({_NAME})(=)({_SCHEME})(?![\"']){_BARE}", re.IGNORECASE), rf"\1\2\3{REDACTED}"),
    # --token xyz, --api-key xyz
    (re.compile(rf"(--{_WORD})(\s+)(?![-\"']){_BARE}", re.IGNORECASE), rf"\1\2{REDACTED}"),
    # Bearer tokens wherever they appear
    (re.compile(r"\b(Bearer\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=-]+"), rf"\1{REDACTED}"),
    # https://user:password@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@\"']+:)[^/\s@\"']+@", re.IGNORECASE),
     rf"\1{REDACTED}@"),
    # Slack incoming webhooks: the whole path is the credential
    (re.compile(r"(https://hooks\.slack\.com/services/)[^\s\"'<>)]+"), rf"\1{REDACTED}"),
]


class Redactor:
    """Replaces known secret values and credential-looking patterns with [REDACTED]."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {form for value in secrets for form in _forms(value)}
        ordered = sorted(forms, key=len, reverse=True)  # longest first: a secret containing another
        self._known = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, s: str) -> str:
        """`s` with every known secret and credential pattern replaced by [REDACTED]."""
        if self._known is not None:
            s = self._known.sub(REDACTED, s)
        for pattern, replacement in _PATTERNS:
            s = pattern.sub(replacement, s)
        return s

    def obj(self, o: Any) -> Any:
        """A deep copy of dicts, lists and tuples with every string (keys included) redacted."""
        if isinstance(o, str):
            return self.text(o)
        if isinstance(o, dict):
            return {self._key(k): self._value(k, v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [self.obj(item) for item in o]
        return o

    def _key(self, key: Any) -> Any:
        return self.text(key) if isinstance(key, str) else key

    def _value(self, key: Any, value: Any) -> Any:
        """A scalar under a credential-named key is redacted whatever it looks like."""
        named = isinstance(key, str) and _NAME_RE.match(key) is not None
        if named and value is not None and isinstance(value, (str, int, float)) \
                and not isinstance(value, bool):
            return REDACTED
        return self.obj(value)


def _forms(value: str) -> set[str]:
    """The value as it may appear in text: as is, JSON-escaped, URL-encoded; none when too short."""
    value = value.strip()
    if len(value) < MIN_SECRET_LENGTH:
        return set()
    forms = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value)}
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def secrets_of(settings: Deployment) -> list[str]:
    """The values of every secret the deployment references; missing ones are silently skipped."""
    found: list[str] = []
    _walk(settings, found)
    unique = dict.fromkeys(v for v in found if v)
    return list(unique)


def _walk(node: Any, found: list[str]) -> None:
    if isinstance(node, SecretSource):
        found.extend(_source_value(node))
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            value = getattr(node, name)
            found.extend(_named_values(name, value))
            _walk(value, found)
    elif isinstance(node, dict):
        for item in node.values():
            _walk(item, found)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _walk(item, found)


def _source_value(source: SecretSource) -> list[str]:
    try:
        return [source.value()]
    except ConfigError:
        return []


def _named_values(field: str, value: Any) -> list[str]:
    """Secrets named by a field rather than held in a SecretSource."""
    if field in ("pass_env", "scrape_key_env"):  # variable names in backout's environment
        names = value if isinstance(value, list) else [value] if value else []
        return [os.environ.get(n, "") for n in names]
    if field == "env_files" and isinstance(value, dict):  # NAME = file whose content is the value
        return [_read(Path(p)) for p in value.values()]
    if field == "env" and isinstance(value, dict):  # plain settings, unless a name says otherwise
        return [str(v) for k, v in value.items() if _NAME_RE.match(k)]
    return []


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""
