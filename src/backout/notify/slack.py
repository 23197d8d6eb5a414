"""Slack incoming webhooks: the message text plus a fields section (deployment, incident, fields)."""

from __future__ import annotations

from typing import Any

import httpx

from backout.config import SlackChannel
from backout.notify.http import deliver, post_json
from backout.notify.message import Delivery, Message

__all__ = ["send_slack", "slack_label", "slack_payload"]

_MAX_TEXT = 3000  # Slack's limit for a section's text
_MAX_FIELDS = 10  # Slack's limit for a section's fields
_MAX_FIELD = 2000  # ... and for each field's text


def slack_label(channel: SlackChannel) -> str:
    """How the channel is named in plans and deliveries, e.g. "slack 'incident'"."""
    return f"slack {channel.name!r}"


def slack_payload(message: Message) -> dict[str, Any]:
    """The JSON body Slack's webhook receives for `message`."""
    text = _clip(_escape(message.text), _MAX_TEXT)
    facts = [("deployment", message.deployment)]
    if message.incident_id:
        facts.append(("incident", message.incident_id))
    facts.extend(message.fields.items())
    fields = [{"type": "mrkdwn", "text": _clip(f"*{_escape(k)}*\n{_escape(v)}", _MAX_FIELD)}
              for k, v in facts[:_MAX_FIELDS]]
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "fields": fields},
    ]}


def send_slack(client: httpx.Client, channel: SlackChannel, message: Message,
               retries: int) -> Delivery:
    """POST the message to the channel's webhook (Slack answers 200 "ok")."""
    payload = slack_payload(message)
    return deliver(slack_label(channel), lambda: post_json(
        client, "POST", channel.webhook.value(), payload, retries=retries))[0]


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: &, < and > would otherwise make links, mentions or nothing."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
