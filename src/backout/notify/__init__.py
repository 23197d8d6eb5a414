"""Messages to people during a rollback: Slack, generic webhooks, a status page, a local file.

Nothing here raises at the caller: every channel's outcome, good or bad, is a Delivery, and one
channel failing never stops the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from backout.config import NotifySettings, SlackChannel, WebhookChannel
from backout.notify.file import append_message, file_label
from backout.notify.http import HttpOutcome, deliver, make_client, post_json
from backout.notify.message import Delivery, Message, MessageKind
from backout.notify.slack import send_slack, slack_label, slack_payload
from backout.notify.statuspage import ComponentStatus, IncidentStatus, Statuspage, statuspage_label
from backout.notify.webhook import send_webhook, webhook_label, webhook_payload

__all__ = [
    "ComponentStatus",
    "Delivery",
    "HttpOutcome",
    "IncidentStatus",
    "Message",
    "MessageKind",
    "Notifier",
    "Statuspage",
    "append_message",
    "customer_impact",
    "deliver",
    "make_client",
    "post_json",
    "send_slack",
    "send_webhook",
    "slack_payload",
    "webhook_payload",
]

log = logging.getLogger("backout.notify")
Channel = Callable[[httpx.Client, Message], Delivery]


class Notifier:
    """Every configured channel of one deployment; no method raises."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    @property
    def configured(self) -> list[str]:
        """The broadcast channels, named for plans: ["slack 'incident'", "webhook 'pager'", ...]."""
        return [label for label, _ in self._channels()]

    @property
    def status_page(self) -> str | None:
        """The status page's name for plans (e.g. "statuspage 'abc'"), or None when there is none."""
        page = self.settings.statuspage
        return statuspage_label(page) if page is not None else None

    def broadcast(self, message: Message) -> list[Delivery]:
        """Send `message` to every slack, webhook and file channel at once; one Delivery each, in order."""
        channels = self._channels()
        if not channels:
            return []
        # At once: a channel that hangs until its timeout must not hold back the others.
        with make_client(self.settings.timeout) as client, \
                ThreadPoolExecutor(max_workers=min(8, len(channels)),
                                   thread_name_prefix="backout-notify") as pool:
            deliveries = list(pool.map(
                lambda channel: _guarded(channel[0], lambda: channel[1](client, message)), channels))
        for delivery in deliveries:
            _log(delivery)
        return deliveries

    def status_page_open(self, name: str, body: str, component_status: ComponentStatus = "major_outage",
                         ) -> tuple[Delivery, str | None]:
        """Open a status page incident; the Delivery and the incident id (None when it failed)."""
        result: list[str | None] = [None]

        def run(page: Statuspage) -> Delivery:
            delivery, result[0] = page.open_incident(name, body, component_status)
            return delivery

        return self._on_page(run), result[0]

    def status_page_update(self, incident_id: str, body: str,
                           status: IncidentStatus = "monitoring") -> Delivery:
        """Post an update to a status page incident."""
        return self._on_page(lambda page: page.update_incident(incident_id, body, status))

    def status_page_resolve(self, incident_id: str, body: str) -> Delivery:
        """Resolve a status page incident and set the component back to operational."""
        return self._on_page(lambda page: page.resolve_incident(incident_id, body))

    def status_page_component(self, status: ComponentStatus) -> Delivery:
        """Set the status page component's status."""
        return self._on_page(lambda page: page.set_component(status))

    def _on_page(self, action: Callable[[Statuspage], Delivery]) -> Delivery:
        settings = self.settings.statuspage
        if settings is None:
            return Delivery("statuspage", False, "statuspage: none configured; add a "
                            "[deployments.NAME.notify.statuspage] table", 0, 0.0)
        label = statuspage_label(settings)
        with make_client(self.settings.timeout) as client:
            page = Statuspage(settings, client, self.settings.retries)
            delivery = _guarded(label, lambda: action(page))
        _log(delivery)
        return delivery

    def _channels(self) -> list[tuple[str, Channel]]:
        """(label, send) for every broadcast channel, in the order of the settings."""
        retries = self.settings.retries
        channels = [(slack_label(s), _slack_sender(s, retries)) for s in self.settings.slack]
        channels += [(webhook_label(w), _webhook_sender(w, retries)) for w in self.settings.webhook]
        if self.settings.file is not None:
            channels.append((file_label(self.settings.file), _file_sender(self.settings.file)))
        return channels


def _slack_sender(channel: SlackChannel, retries: int) -> Channel:
    return lambda client, message: send_slack(client, channel, message, retries)


def _webhook_sender(channel: WebhookChannel, retries: int) -> Channel:
    return lambda client, message: send_webhook(client, channel, message, retries)


def _file_sender(path: Path) -> Channel:
    return lambda _client, message: append_message(path, message)


def customer_impact(bad_error_rate: float | None, bad_p95_ms: float | None, base_p95_ms: float | None,
                    customer_reports: int, settings: NotifySettings) -> tuple[bool, str]:
    """Whether customers really felt the bad window (reports, error rate, latency), and why, in words."""
    reasons, below = [], []
    if customer_reports > 0:
        reasons.append(f"{customer_reports} customer report(s)")
    if bad_error_rate is None:
        below.append("error rate not measured")
    elif bad_error_rate >= settings.impact_error_rate:
        reasons.append(f"error rate {bad_error_rate:.1%} >= {settings.impact_error_rate:.1%}")
    else:
        below.append(f"error rate {bad_error_rate:.1%} < {settings.impact_error_rate:.1%}")
    ratio = _latency_ratio(bad_p95_ms, base_p95_ms)
    if ratio is None:
        below.append("p95 latency not compared (no baseline or no measurement)")
    elif ratio >= settings.impact_latency_ratio:
        reasons.append(f"p95 latency {ratio:.1f}x the baseline >= {settings.impact_latency_ratio:g}x")
    else:
        below.append(f"p95 latency {ratio:.1f}x the baseline < {settings.impact_latency_ratio:g}x")
    if reasons:
        return True, "customer impact: " + "; ".join(reasons)
    return False, "no customer impact: " + "; ".join([*below, "no customer reports"])


def _latency_ratio(bad_p95_ms: float | None, base_p95_ms: float | None) -> float | None:
    if bad_p95_ms is None or base_p95_ms is None or base_p95_ms <= 0:
        return None
    return bad_p95_ms / base_p95_ms


def _guarded(label: str, send: Callable[[], Delivery]) -> Delivery:
    """Run one channel; an unexpected error is that channel's failed Delivery (its text may hold a secret)."""
    try:
        return send()
    except Exception as exc:  # noqa: BLE001 - a notification must never break a rollback
        return Delivery(label, False, f"{label}: failed unexpectedly ({type(exc).__name__}); "
                        "please report this as a bug in backout", 0, 0.0)


def _log(delivery: Delivery) -> None:
    if delivery.ok:
        log.info("%s", delivery.detail)
    else:
        log.warning("%s", delivery.detail)
