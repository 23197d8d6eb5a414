"""The one HTTP helper every channel uses: JSON request, timeouts, retries, secret-free errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, NamedTuple

import httpx

from backout.config import ConfigError
from backout.http_errors import describe_http_error
from backout.notify.message import Delivery

__all__ = ["HttpOutcome", "deliver", "make_client", "post_json"]

BACKOFF_SECONDS = 0.2  # first pause between attempts; doubles each time
MAX_RETRY_AFTER = 5.0  # a server's Retry-After is honoured up to this many seconds
_SNIPPET = 120  # characters of an error answer's body quoted in a detail
_RETRY_STATUS = {429} | set(range(500, 600))

# httpx logs every request's full URL at INFO; a Slack or webhook URL is itself the secret.
# The filter rewrites those records, only for requests made from post_json (a context variable).
_IN_POST_JSON: ContextVar[bool] = ContextVar("backout_notify_in_post_json", default=False)


class _RedactUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if _IN_POST_JSON.get() and isinstance(args, tuple) and len(args) > 1:
            record.args = (args[0], _redacted_url(args[1]), *args[2:])
        return True


_REDACT_FILTER = _RedactUrls()


class HttpOutcome(NamedTuple):
    """The last answer (None when none came), how many attempts were made, and the error ("" on 2xx)."""

    response: httpx.Response | None
    attempts: int
    error: str


def make_client(timeout: timedelta | float) -> httpx.Client:
    """A sync client whose connect, read, write and pool timeouts are all `timeout`."""
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    return httpx.Client(timeout=httpx.Timeout(seconds), follow_redirects=False)


def post_json(client: httpx.Client, method: str, url: str, json: Any,
              headers: Mapping[str, str] | None = None, retries: int = 3,
              backoff: float = BACKOFF_SECONDS) -> HttpOutcome:
    """Send JSON, retrying connection errors, timeouts, 429 and 5xx `retries` more times."""
    headers = dict(headers or {})
    problem = _url_problem(url)
    if problem:
        return HttpOutcome(None, 0, problem)
    logging.getLogger("httpx").addFilter(_REDACT_FILTER)  # idempotent: the same instance
    token = _IN_POST_JSON.set(True)
    try:
        response, attempts, error = _attempts(client, method, url, json, headers, retries, backoff)
    finally:
        _IN_POST_JSON.reset(token)
    if error:
        error = f"{error} after {_count(attempts)}{_answer_note(response)}"
    return HttpOutcome(response, attempts, _scrub(error, [url, *headers.values()]))


def deliver(channel: str, attempt: Callable[[], HttpOutcome],
            done: str = "delivered") -> tuple[Delivery, httpx.Response | None]:
    """Run one channel's request and report it; a missing secret is a failed delivery, not a raise."""
    started = time.monotonic()
    try:
        outcome = attempt()
    except ConfigError as exc:
        return Delivery(channel, False, f"{channel}: {exc}", 0, time.monotonic() - started), None
    seconds = time.monotonic() - started
    if outcome.error:
        detail = f"{channel}: {outcome.error}"
    else:
        assert outcome.response is not None
        detail = f"{channel}: {done} (HTTP {outcome.response.status_code}, {_count(outcome.attempts)})"
    return Delivery(channel, not outcome.error, detail, outcome.attempts, seconds), outcome.response


def _attempts(client: httpx.Client, method: str, url: str, json: Any, headers: dict[str, str],
              retries: int, backoff: float) -> tuple[httpx.Response | None, int, str]:
    response: httpx.Response | None = None
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(_pause(backoff, attempt, response))
        response, error, retryable = _attempt(client, method, url, json, headers)
        if not retryable:
            return response, attempt + 1, error
    return response, retries + 1, error


def _attempt(client: httpx.Client, method: str, url: str, json: Any,
             headers: dict[str, str]) -> tuple[httpx.Response | None, str, bool]:
    """One request: (answer, error or "", whether another attempt may help)."""
    try:
        response = client.request(method, url, json=json, headers=headers)
    except httpx.TimeoutException:
        return None, f"no answer within {client.timeout.read or 0:g} s", True
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        return None, f"cannot reach it: {describe_http_error(exc)}", True
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return None, f"request failed: {describe_http_error(exc)}", False
    if response.is_success:
        return response, "", False
    return response, f"HTTP {response.status_code}", response.status_code in _RETRY_STATUS


def _url_problem(url: str) -> str:
    """Why `url` cannot be sent to ("" when it can); the text never quotes the URL."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "the URL is malformed; check the secret that holds it"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "the URL is not an http:// or https:// URL; check the secret that holds it"
    return ""


def _answer_note(response: httpx.Response | None) -> str:
    """What a failed answer said, briefly: " (no_service)", or "" for none or an HTML page."""
    if response is None or response.is_success:
        return ""
    if response.is_redirect:
        return " (a redirect: configure the final URL)"
    if "html" in response.headers.get("content-type", ""):
        return ""
    body = " ".join(response.text.split())[:_SNIPPET]
    return f" ({body})" if body else ""


def _pause(backoff: float, attempt: int, response: httpx.Response | None) -> float:
    """Exponential backoff, or the server's Retry-After when it asks for longer (capped)."""
    pause = backoff * float(2 ** (attempt - 1))
    retry_after = response.headers.get("retry-after", "") if response is not None else ""
    try:
        return max(pause, min(float(retry_after), MAX_RETRY_AFTER))
    except ValueError:
        return pause


def _count(attempts: int) -> str:
    return f"{attempts} attempt" + ("" if attempts == 1 else "s")


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove secret values (and their long words, e.g. the key of 'OAuth <key>') from text."""
    words = {w for s in secrets for w in (s, *s.split(), *_url_parts(s)) if len(w) >= 6}
    for word in sorted(words, key=len, reverse=True):
        text = text.replace(word, "<redacted>")
    return text


def _url_parts(value: str) -> list[str]:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        return []
    return [url.raw_path.decode("ascii", "replace"), url.path, url.query.decode("ascii", "replace")]


def _redacted_url(url: object) -> str:
    try:
        parsed = httpx.URL(str(url))
    except httpx.InvalidURL:
        return "<redacted>"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}/<redacted>"
