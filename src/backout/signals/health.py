"""One probe of a health URL, judged by the service profile's health rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from backout.http_errors import describe_http_error
from backout.profiles.model import HealthRule

__all__ = ["HealthProbe", "probe"]


@dataclass
class HealthProbe:
    """The outcome of one GET of the health URL."""

    ok: bool
    status_code: int | None = None  # None: no answer (refused, timeout)
    body: Any = None
    error: str | None = None
    failing: list[str] = field(default_factory=list)  # subsystems reporting non-ok

    def reason(self) -> str:
        """Why the probe is not ok, in a few words."""
        if self.ok:
            return "healthy"
        if self.status_code is None:
            return self.error or "no answer"
        status = self.body.get("status") if isinstance(self.body, dict) else None  # the usual spelling
        error = self.body.get("error") if isinstance(self.body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        parts = [f"HTTP {self.status_code}"]
        if status:
            parts.append(f"status {status!r}")
        if self.failing:
            parts.append("failing: " + ", ".join(self.failing))
        if code:
            parts.append(f"code {code}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"ok": self.ok, "status_code": self.status_code, "body": self.body, "error": self.error,
                "failing": self.failing, "reason": self.reason()}


def probe(url: str, timeout: float = 10.0, rule: HealthRule = HealthRule()) -> HealthProbe:
    """GET `url`: a timeout or any non-2xx is a failure; so is a 2xx whose JSON body has the rule's status
    field with a value outside its ok values (a body without the field is healthy unless required)."""
    try:
        # verify=False for plain http only: there is no certificate to check, and loading the CA bundle for
        # every probe costs 30-50 ms (a watch window probes every few seconds). https is verified as usual.
        response = httpx.get(url, timeout=timeout, verify=not url.lower().startswith("http://"))
    except httpx.HTTPError as exc:
        return HealthProbe(False, error=describe_http_error(exc, url))
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:500]
    failing = []
    subsystems = body.get(rule.subsystems_field) if isinstance(body, dict) and rule.subsystems_field else None
    if isinstance(subsystems, dict):
        failing = [k for k, v in subsystems.items() if v != "ok"]
    ok = 200 <= response.status_code < 300
    if ok and rule.status_field is not None:
        has = isinstance(body, dict) and rule.status_field in body
        if has:
            ok = str(body[rule.status_field]) in rule.ok_values
        elif rule.status_required:
            ok = False
    return HealthProbe(ok, response.status_code, body, None, failing)
