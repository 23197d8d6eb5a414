"""backout.notify against real HTTP receivers on 127.0.0.1 (Slack, generic webhook, Statuspage)."""

from __future__ import annotations

import json
import logging
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_proc import free_port
from http_receiver import API_KEY, COMPONENT, PAGE, Receiver, running_receiver

from backout.config import NotifySettings
from backout.notify import Delivery, Message, Notifier, customer_impact, slack_payload

SLACK_SECRET = "T0CANARY/B0CANARY/slack-canary-9f3e1a"
HOOK_SECRET = "hook-canary-7c2b55"
TOKEN_SECRET = "Bearer token-canary-41d0aa"
MESSAGE = Message("rollback-started", "Rolling back engine 2.4.0 -> 2.3.1", "engine",
                  incident_id="INC-7", fields={"from": "2.4.0", "to": "2.3.1"})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def settings(receiver: Receiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path | None = None,
             **overrides: Any) -> NotifySettings:
    """Slack + webhook (+ file) + statuspage at the receiver, secrets in the environment."""
    monkeypatch.setenv("SLACK_URL", f"{receiver.url}/services/{SLACK_SECRET}")
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hooks/{HOOK_SECRET}")
    monkeypatch.setenv("HOOK_TOKEN", TOKEN_SECRET)
    monkeypatch.setenv("STATUSPAGE_KEY", API_KEY)
    data: dict[str, Any] = {
        "slack": [{"name": "incident", "webhook": {"env": "SLACK_URL"}}],
        "webhook": [{"name": "pager", "url": {"env": "HOOK_URL"},
                     "headers": {"Authorization": {"env": "HOOK_TOKEN"}}}],
        "statuspage": {"api_base": receiver.url, "page_id": PAGE, "component_id": COMPONENT,
                       "api_key": {"env": "STATUSPAGE_KEY"}},
        "file": str(tmp_path / "notify" / "messages.jsonl") if tmp_path else None,
        "timeout": "2s", "retries": 2,
    }
    return NotifySettings.model_validate({**data, **overrides})


def only(name: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Notifier:
    """A Notifier with just the slack or just the webhook channel."""
    other = "webhook" if name == "slack" else "slack"
    return Notifier(settings(receiver, monkeypatch, **{other: [], **overrides}))


def assert_no_secret(text: str) -> None:
    for secret in (SLACK_SECRET, "slack-canary", HOOK_SECRET, TOKEN_SECRET, "token-canary", API_KEY):
        assert secret not in text


# -- payloads ----------------------------------------------------------------------------------


def test_slack_payload_reaches_the_webhook(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    [delivery] = only("slack", receiver, monkeypatch).broadcast(MESSAGE)
    assert delivery.ok and delivery.attempts == 1 and delivery.channel == "slack 'incident'"
    [req] = receiver.requests
    assert (req.method, req.path) == ("POST", f"/services/{SLACK_SECRET}")
    assert req.headers["content-type"] == "application/json"
    escaped = "Rolling back engine 2.4.0 -&gt; 2.3.1"  # Slack's mrkdwn escaping of <, > and &
    assert req.body["text"] == escaped
    section, facts = req.body["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": escaped}}
    assert [f["text"] for f in facts["fields"]] == ["*deployment*\nengine", "*incident*\nINC-7",
                                                     "*from*\n2.4.0", "*to*\n2.3.1"]


def test_slack_payload_escapes_and_limits() -> None:
    message = Message("info", "a <b> & c", "engine", fields={f"k{i}": "v" for i in range(20)})
    payload = slack_payload(message)
    assert payload["text"] == "a &lt;b&gt; &amp; c"
    assert len(payload["blocks"][1]["fields"]) == 10


def test_webhook_payload_and_secret_headers(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    [delivery] = only("webhook", receiver, monkeypatch).broadcast(MESSAGE)
    assert delivery.ok, delivery.detail
    [req] = receiver.requests
    assert (req.method, req.path) == ("POST", f"/hooks/{HOOK_SECRET}")
    assert req.headers["authorization"] == TOKEN_SECRET
    assert req.body == {"kind": "rollback-started", "text": MESSAGE.text, "deployment": "engine",
                        "incident_id": "INC-7", "fields": {"from": "2.4.0", "to": "2.3.1"},
                        "source": "backout"}


def test_message_and_delivery_to_dict() -> None:
    assert Message("info", "hi", "engine").to_dict() == {
        "kind": "info", "text": "hi", "deployment": "engine", "incident_id": None, "fields": {}}
    assert Delivery("file x", True, "ok", 1, 0.12345).to_dict()["seconds"] == 0.123


def test_configured_names_the_channels(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    notifier = Notifier(settings(receiver, monkeypatch, tmp_path))
    assert notifier.configured == ["slack 'incident'", "webhook 'pager'",
                                   f"file {tmp_path / 'notify' / 'messages.jsonl'}"]
    assert notifier.status_page == f"statuspage {PAGE!r}"
    assert Notifier(NotifySettings()).configured == []
    assert Notifier(NotifySettings()).broadcast(MESSAGE) == []


# -- retries, timeouts, failures ---------------------------------------------------------------


def test_retry_after_500_then_success(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.fail_next = 1
    [delivery] = only("slack", receiver, monkeypatch).broadcast(MESSAGE)
    assert delivery.ok and delivery.attempts == 2 and len(receiver.requests) == 2
    assert "2 attempts" in delivery.detail


def test_retry_on_429_honours_retry_after(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.fail_next, receiver.fail_status, receiver.retry_after = 1, 429, "0.5"
    started = time.monotonic()
    [delivery] = only("webhook", receiver, monkeypatch).broadcast(MESSAGE)
    assert delivery.ok and delivery.attempts == 2
    assert time.monotonic() - started >= 0.5


def test_500_every_time_gives_up_after_retries(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.fail_next = 99
    [delivery] = only("slack", receiver, monkeypatch).broadcast(MESSAGE)
    assert not delivery.ok and delivery.attempts == 3 and len(receiver.requests) == 3
    assert delivery.detail == "slack 'incident': HTTP 500 after 3 attempts (upstream trouble)"


def test_4xx_is_not_retried(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.status = 404
    [delivery] = only("slack", receiver, monkeypatch).broadcast(MESSAGE)
    assert not delivery.ok and delivery.attempts == 1 and len(receiver.requests) == 1
    assert delivery.detail == "slack 'incident': HTTP 404 after 1 attempt (no_service)"


def test_timeout_is_reported_not_raised(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.hang = True
    started = time.monotonic()
    [delivery] = only("webhook", receiver, monkeypatch, timeout="0.5s", retries=1).broadcast(MESSAGE)
    assert not delivery.ok and delivery.attempts == 2 and len(receiver.requests) == 2
    assert delivery.detail == "webhook 'pager': no answer within 0.5 s after 2 attempts"
    assert time.monotonic() - started < 3


def test_missing_secret_names_the_variable(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    notifier = Notifier(settings(receiver, monkeypatch, tmp_path))
    monkeypatch.delenv("HOOK_TOKEN")
    slack, hook, file = notifier.broadcast(MESSAGE)
    assert not hook.ok and hook.attempts == 0
    assert hook.detail.startswith("webhook 'pager': HOOK_TOKEN is not set")
    assert slack.ok and file.ok
    assert [r.path for r in receiver.requests] == [f"/services/{SLACK_SECRET}"]


def test_a_dead_channel_does_not_stop_the_others(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    overrides = {"slack": [{"name": "dead", "webhook": {"env": "DEAD_URL"}},
                           {"name": "incident", "webhook": {"env": "SLACK_URL"}},
                           {"name": "garbage", "webhook": {"env": "GARBAGE_URL"}}],
                 "retries": 1}
    notifier = Notifier(settings(receiver, monkeypatch, tmp_path, **overrides))
    monkeypatch.setenv("DEAD_URL", f"http://127.0.0.1:{free_port()}/services/{SLACK_SECRET}")
    monkeypatch.setenv("GARBAGE_URL", f"hooks.example/{SLACK_SECRET}")
    dead, good, garbage, hook, file = notifier.broadcast(MESSAGE)
    assert not dead.ok and dead.attempts == 2
    assert dead.detail.startswith("slack 'dead': cannot reach it: nothing listens on its address (connection refused)")
    assert not garbage.ok and garbage.attempts == 0
    assert garbage.detail == ("slack 'garbage': the URL is not an http:// or https:// URL; "
                              "check the secret that holds it")
    assert good.ok and hook.ok and file.ok
    for delivery in (dead, good, garbage, hook, file):
        assert_no_secret(delivery.detail)


def test_secrets_never_reach_details_or_logs(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = Notifier(settings(receiver, monkeypatch, retries=1))
    deliveries = notifier.broadcast(MESSAGE)
    receiver.fail_next, receiver.status = 2, 401
    deliveries += notifier.broadcast(MESSAGE)
    receiver.status = None
    monkeypatch.setenv("SLACK_URL", f"http://127.0.0.1:99999/services/{SLACK_SECRET}")  # bad port
    deliveries += notifier.broadcast(MESSAGE)
    opened, _ = notifier.status_page_open("Elevated errors", "We are rolling back.")
    monkeypatch.setenv("STATUSPAGE_KEY", "wrong-key-canary")
    refused, _ = notifier.status_page_open("Elevated errors", "We are rolling back.")
    assert [d.ok for d in deliveries] == [True, True, False, False, False, True]
    assert opened.ok and not refused.ok and "HTTP 401" in refused.detail
    assert "wrong-key-canary" not in refused.detail
    for delivery in [*deliveries, opened, refused]:
        assert_no_secret(json.dumps(delivery.to_dict()))
    assert "HTTP Request: POST" in caplog.text  # httpx did log the requests, redacted
    assert "/<redacted>" in caplog.text
    assert_no_secret(caplog.text)


# -- statuspage --------------------------------------------------------------------------------


def test_statuspage_open_update_resolve(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = Notifier(settings(receiver, monkeypatch))
    opened, incident = notifier.status_page_open("Elevated errors on the agent API",
                                                 "We identified a bad release and are rolling back.")
    assert opened.ok and incident == "inc1" and opened.detail.endswith("incident inc1 opened (HTTP 201, 1 attempt)")
    assert receiver.components[COMPONENT] == "major_outage"
    updated = notifier.status_page_update(incident, "Rolled back; watching error rates.")
    assert updated.ok and receiver.incidents["inc1"]["status"] == "monitoring"
    resolved = notifier.status_page_resolve(incident, "Error rates are back to normal.")
    assert resolved.ok and receiver.incidents["inc1"]["status"] == "resolved"
    assert receiver.components[COMPONENT] == "operational"
    post, patch1, patch2 = receiver.requests
    assert (post.method, post.path) == ("POST", f"/pages/{PAGE}/incidents")
    assert post.headers["authorization"] == f"OAuth {API_KEY}"
    assert post.body == {"incident": {
        "name": "Elevated errors on the agent API", "status": "identified",
        "body": "We identified a bad release and are rolling back.",
        "component_ids": [COMPONENT], "components": {COMPONENT: "major_outage"}}}
    assert (patch1.method, patch1.path) == ("PATCH", f"/pages/{PAGE}/incidents/inc1")
    assert patch1.body == {"incident": {"status": "monitoring", "body": "Rolled back; watching error rates."}}
    assert patch2.body == {"incident": {"status": "resolved", "body": "Error rates are back to normal.",
                                        "component_ids": [COMPONENT],
                                        "components": {COMPONENT: "operational"}}}


def test_statuspage_component_status(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = Notifier(settings(receiver, monkeypatch))
    delivery = notifier.status_page_component("degraded_performance")
    assert delivery.ok and receiver.components[COMPONENT] == "degraded_performance"
    [req] = receiver.requests
    assert (req.method, req.path, req.body) == (
        "PATCH", f"/pages/{PAGE}/components/{COMPONENT}", {"component": {"status": "degraded_performance"}})


def test_statuspage_failures_never_raise(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    delivery, incident = Notifier(NotifySettings()).status_page_open("x", "y")
    assert not delivery.ok and incident is None and "none configured" in delivery.detail
    notifier = Notifier(settings(receiver, monkeypatch))
    monkeypatch.delenv("STATUSPAGE_KEY")
    delivery, incident = notifier.status_page_open("x", "y")
    assert not delivery.ok and incident is None and "STATUSPAGE_KEY is not set" in delivery.detail
    monkeypatch.setenv("STATUSPAGE_KEY", API_KEY)
    missing = notifier.status_page_resolve("inc404", "done")
    assert not missing.ok and missing.attempts == 1 and "HTTP 404" in missing.detail
    no_component = Notifier(settings(receiver, monkeypatch, statuspage={
        "api_base": receiver.url, "page_id": PAGE, "api_key": {"env": "STATUSPAGE_KEY"}}))
    assert "no component_id" in no_component.status_page_component("operational").detail


# -- file --------------------------------------------------------------------------------------


def test_file_channel_appends_private_json_lines(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    notifier = Notifier(settings(receiver, monkeypatch, tmp_path, slack=[], webhook=[]))
    done = Message("rollback-succeeded", "Back on 2.3.1", "engine", incident_id="INC-7")
    assert [d.ok for d in notifier.broadcast(MESSAGE) + notifier.broadcast(done)] == [True, True]
    path = tmp_path / "notify" / "messages.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert {k: v for k, v in first.items() if k != "at"} == {**MESSAGE.to_dict(), "source": "backout"}
    assert second["kind"] == "rollback-succeeded" and second["at"] >= first["at"]


def test_file_channel_tightens_mode_and_reports_errors(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    path.write_text("")
    path.chmod(0o644)
    [ok] = Notifier(NotifySettings(file=path)).broadcast(MESSAGE)
    assert ok.ok and stat.S_IMODE(path.stat().st_mode) == 0o600
    [bad] = Notifier(NotifySettings(file=tmp_path)).broadcast(MESSAGE)  # a folder
    assert not bad.ok and bad.detail.startswith(f"file {tmp_path}: ")


# -- customer impact ---------------------------------------------------------------------------


@pytest.mark.parametrize(("error_rate", "bad_p95", "base_p95", "reports", "impact", "words"), [
    (0.01, 300.0, 250.0, 0, False, "no customer impact: error rate 1.0% < 5.0%; p95 latency 1.2x"),
    (0.05, 300.0, 250.0, 0, True, "customer impact: error rate 5.0% >= 5.0%"),
    (0.0, 600.0, 300.0, 0, True, "customer impact: p95 latency 2.0x the baseline >= 2x"),
    (0.0, 100.0, 100.0, 3, True, "customer impact: 3 customer report(s)"),
    (None, None, None, 0, False, "error rate not measured; p95 latency not compared"),
    (0.2, 900.0, 0.0, 1, True, "1 customer report(s); error rate 20.0% >= 5.0%"),
])
def test_customer_impact(error_rate: float | None, bad_p95: float | None, base_p95: float | None,
                         reports: int, impact: bool, words: str) -> None:
    real, why = customer_impact(error_rate, bad_p95, base_p95, reports, NotifySettings())
    assert real is impact and words in why


def test_customer_impact_uses_the_settings() -> None:
    strict = NotifySettings(impact_error_rate=0.01, impact_latency_ratio=1.2)
    assert customer_impact(0.01, 130.0, 100.0, 0, strict)[0]
    assert customer_impact(0.0, 130.0, 100.0, 0, strict) == (
        True, "customer impact: p95 latency 1.3x the baseline >= 1.2x")
