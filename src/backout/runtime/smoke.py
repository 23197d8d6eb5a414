"""Smoke requests: the real reads and writes a trial boot makes once health is ok. An old version can
boot on a newer schema and fail on its first query or its first insert; these requests find out."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from backout.http_errors import describe_http_error
from backout.profiles.model import SmokeRequest

__all__ = ["run_smoke"]

_MISSING = object()


def run_smoke(health_url: str, requests: list[SmokeRequest], headers: dict[str, str]) -> dict[str, Any] | None:
    """Run `requests` in order against the service behind `health_url`; stops at the first failure.
    None when there are none; else {"ok", "detail", "requests": [each one's outcome]}."""
    if not requests:
        return None
    parts = urlsplit(health_url)
    done = []
    with httpx.Client(base_url=f"{parts.scheme}://{parts.netloc}", headers=headers, timeout=15) as client:
        for request in requests:
            outcome = _one(client, request)
            done.append(outcome)
            if outcome.get("status") in (401, 403):
                # A refused key says nothing about the version or the brain: the rest cannot run either.
                why = "the API key was refused" if headers else "no api_key is configured"
                return {"ok": True, "skipped": True, "requests": done,
                        "detail": f"smoke requests not run: {request.label()} answered HTTP "
                                  f"{outcome['status']} ({why}; set api_key for the deployment)"}
            if not outcome["ok"]:
                return {"ok": False, "detail": f"{request.label()}: {outcome['detail']}", "requests": done}
    return {"ok": True, "detail": f"{len(done)} request(s) as expected", "requests": done}


def _one(client: httpx.Client, request: SmokeRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"request": request.label(), "ok": False}
    try:
        response = client.request(request.method, request.path, json=request.body)
    except httpx.HTTPError as exc:
        return {**out, "detail": f"no answer: {describe_http_error(exc, str(client.base_url))}"}
    out["status"] = response.status_code
    if response.status_code not in request.expect_status:
        expected = " or ".join(str(s) for s in request.expect_status)
        return {**out, "detail": f"HTTP {response.status_code} (expected {expected}): {response.text[:200]}"}
    if request.json_path is not None:
        try:
            found = json_path(response.json(), request.json_path)
        except ValueError:
            found = _MISSING
        if found is _MISSING:
            return {**out, "detail": f"HTTP {response.status_code}, but the answer has no {request.json_path!r}"}
    return {**out, "ok": True, "detail": f"HTTP {response.status_code}"}


def json_path(value: Any, path: str) -> Any:
    """`value` at a dotted path ("items.0.id"); _MISSING when a step does not exist."""
    for step in path.split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return _MISSING
    return value
