"""Filing the postmortem as a ticket: a GitHub issue, or a POST to a generic webhook.

Never raises: every outcome is a TicketResult whose detail names what went wrong and what to do,
and never holds the token or the webhook URL (retries and scrubbing come from notify.http).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from backout.config import ConfigError, TrackerSettings
from backout.evidence.redact import Redactor
from backout.notify.http import HttpOutcome, make_client, post_json

__all__ = ["TicketResult", "file_ticket"]

GITHUB_ACCEPT = "application/vnd.github+json"


@dataclass(frozen=True)
class TicketResult:
    """Whether the ticket was filed, its URL when the tracker gave one, and what happened."""

    ok: bool
    url: str | None
    detail: str


def file_ticket(settings: TrackerSettings, title: str, body: str, timeout: float = 10,
                retries: int = 2) -> TicketResult:
    """File a ticket with the configured tracker; failures are an ok=False result, never a raise."""
    where = _where(settings)
    secrets: list[str] = []
    try:
        url, headers, payload = _request(settings, title, body, secrets)
        with make_client(timeout) as client:
            outcome = post_json(client, "POST", url, payload, headers=headers, retries=retries)
        result = _result(settings, outcome, where)
    except ConfigError as exc:
        result = TicketResult(False, None, f"{where}: not filed: {exc}")
    except Exception as exc:  # noqa: BLE001 -- a tracker problem must never break a rollback
        result = TicketResult(False, None, f"{where}: not filed: {type(exc).__name__}: {exc}")
    link = None if result.url in secrets else result.url  # a webhook echoing its own URL
    return TicketResult(result.ok, link, Redactor(secrets).text(result.detail))


def _where(settings: TrackerSettings) -> str:
    """How the tracker is named in details: the repo for GitHub, never a URL."""
    return f"GitHub issue in {settings.repo}" if settings.kind == "github" else "ticket webhook"


def _request(settings: TrackerSettings, title: str, body: str,
             secrets: list[str]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, JSON body); the secrets read are added to `secrets` for scrubbing."""
    labels = list(settings.labels)
    if settings.kind == "github":
        assert settings.token is not None and settings.repo  # the config model guarantees both
        token = settings.token.value()
        secrets.append(token)
        url = f"{settings.api_base.rstrip('/')}/repos/{settings.repo}/issues"
        headers = {"Authorization": f"Bearer {token}", "Accept": GITHUB_ACCEPT,
                   "X-GitHub-Api-Version": "2022-11-28"}
        return url, headers, {"title": title, "body": body, "labels": labels}
    assert settings.url is not None
    url = settings.url.value()
    secrets.append(url)
    return url, {}, {"title": title, "body": body, "labels": labels, "source": "backout"}


def _result(settings: TrackerSettings, outcome: HttpOutcome, where: str) -> TicketResult:
    response = outcome.response
    if outcome.error or response is None:
        return TicketResult(False, None, f"{where}: not filed: {outcome.error}"
                                         + _advice(settings, response))
    link = _link(response)
    if settings.kind == "github" and response.status_code != 201:
        return TicketResult(False, link, f"{where}: unexpected answer HTTP {response.status_code} "
                                         "(GitHub answers 201 Created); check api_base")
    tries = f"{outcome.attempts} attempt" + ("" if outcome.attempts == 1 else "s")
    return TicketResult(True, link, f"{where}: filed (HTTP {response.status_code}, {tries})"
                        + ("" if link else "; the answer named no URL"))


def _link(response: httpx.Response) -> str | None:
    """The ticket's page: `html_url` (GitHub), else a `url` the webhook answered with."""
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("html_url", "url"):
        value = data.get(key)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value
    return None


def _advice(settings: TrackerSettings, response: httpx.Response | None) -> str:
    if response is None:
        return ""
    if settings.kind == "webhook":
        return "; check the webhook URL and what its receiver expects" \
            if response.status_code < 500 else ""
    if response.status_code in (401, 403):
        return "; check the token and that it may create issues in this repository"
    if response.status_code == 404:
        return "; check the repository name (owner/name) and that the token can see it"
    if response.status_code == 422:
        return "; the tracker refused the ticket's fields (labels must exist or be creatable)"
    return ""
