"""A failed HTTP request in words a person can act on: what did not answer, and how.

"nothing listens on 127.0.0.1:8000 (connection refused)" rather than "ConnectError: [Errno 111]": an
exception's class name never shows. Without a URL (when the URL is a secret, like a webhook's) the words
name no host."""

from __future__ import annotations

import errno
import os
import socket
import ssl

import httpx

__all__ = ["describe_http_error"]

_UNREACHABLE = (errno.ENETUNREACH, errno.EHOSTUNREACH)


def describe_http_error(exc: BaseException, url: str | None = None) -> str:
    """Why a request to `url` got no answer, in one phrase starting in lower case."""
    where = _where(url)
    timeout = _describe_timeout(exc, where)
    if timeout:
        return timeout
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "the URL does not start with http:// or https://"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"{where} redirects too many times"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the connection to {where} closed without an HTTP answer"
    return _describe_cause(_root(exc), exc, url, where)


def _describe_timeout(exc: BaseException, where: str) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection to {where} within {_seconds(exc, 'connect')} (timed out)"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no answer from {where} within {_seconds(exc, 'read')} (it accepted the connection)"
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} took too long (timed out)"
    return ""


def _describe_cause(cause: BaseException, exc: BaseException, url: str | None, where: str) -> str:
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"the TLS certificate of {where} is not trusted ({cause.verify_message or 'verification failed'})"
    if isinstance(cause, ssl.SSLError):
        reason = str(cause.reason or cause).replace("_", " ").lower()
        return f"the TLS handshake with {where} failed ({reason})"
    if isinstance(cause, socket.gaierror):
        name = f"the name {httpx.URL(url).host}" if url else "its host name"
        return f"{name} does not resolve (DNS: {str(cause.strerror or cause).lower()})"
    if isinstance(cause, ConnectionRefusedError):
        return f"nothing listens on {where} (connection refused)"
    if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
        return f"cannot reach {where} ({os.strerror(cause.errno).lower()})"
    if isinstance(cause, OSError) and cause.strerror:
        return f"the connection to {where} failed ({cause.strerror.lower()})"
    said = str(exc).strip() if url else ""  # without the URL the message may quote it: it stays out
    return f"the request to {where} failed" + (f" ({said})" if said else "")


def _where(url: str | None) -> str:
    """'127.0.0.1:8000' (the port the scheme implies when the URL has none), or 'its address'."""
    if not url:
        return "its address"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "its address"
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return f"{parsed.host}:{port}" if port else parsed.host or "its address"


def _root(exc: BaseException) -> BaseException:
    """The innermost cause (httpx wraps httpcore, which wraps the socket's OSError or ssl.SSLError)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _seconds(exc: BaseException, which: str) -> str:
    """The timeout the request had ('5 s'), or 'the time allowed' when it cannot be told."""
    try:
        value = exc.request.extensions.get("timeout", {}).get(which)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # RuntimeError: an httpx error raised without its request
        value = None
    return f"{value:g} s" if isinstance(value, (int, float)) else "the time allowed"
