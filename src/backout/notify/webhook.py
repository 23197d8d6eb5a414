"""Generic JSON webhooks: the message as JSON, with `"source": "backout"` and secret headers."""

from __future__ import annotations

from typing import Any

import httpx

from backout.config import WebhookChannel
from backout.notify.http import HttpOutcome, deliver, post_json
from backout.notify.message import Delivery, Message

__all__ = ["send_webhook", "webhook_label", "webhook_payload"]


def webhook_label(channel: WebhookChannel) -> str:
    """How the channel is named in plans and deliveries, e.g. "webhook 'pager'"."""
    return f"webhook {channel.name!r}"


def webhook_payload(message: Message) -> dict[str, Any]:
    """The JSON body a generic webhook receives for `message`."""
    return {**message.to_dict(), "source": "backout"}


def send_webhook(client: httpx.Client, channel: WebhookChannel, message: Message,
                 retries: int) -> Delivery:
    """POST the message to the channel's URL with its headers (values read from their secrets)."""
    payload = webhook_payload(message)

    def attempt() -> HttpOutcome:
        headers = {name: source.value() for name, source in channel.headers.items()}
        return post_json(client, "POST", channel.url.value(), payload, headers, retries)

    return deliver(webhook_label(channel), attempt)[0]
