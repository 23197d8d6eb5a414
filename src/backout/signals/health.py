"""One probe of a health URL, judged the way the Engine's orchestrator judges it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

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
            return f"no answer ({self.error})"
        status = self.body.get("status") if isinstance(self.body, dict) else None
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


def probe(url: str, timeout: float = 10.0) -> HealthProbe:
    """GET `url`: a timeout, any non-2xx, or a 2xx whose body has `status` != "ok" is a failure.

    A 2xx without a `status` field (services without the Engine's body shape) is healthy."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return HealthProbe(False, error=type(exc).__name__ + (f": {exc}" if str(exc) else ""))
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:500]
    failing = []
    if isinstance(body, dict) and isinstance(body.get("subsystems"), dict):
        failing = [k for k, v in body["subsystems"].items() if v != "ok"]
    ok = 200 <= response.status_code < 300
    if ok and isinstance(body, dict) and "status" in body:
        ok = body["status"] == "ok"
    return HealthProbe(ok, response.status_code, body, None, failing)
