"""Where alerts go: a signed JSON webhook, a Slack-compatible incoming webhook, the log.

A destination sends one event and says how it went (``Sent``); the dispatcher decides what
that means for the outbox (delivered, retried later, given up). Sends are blocking (the
dispatcher runs them in its own thread), each bounded by the destination's ``timeout``.

The webhook follows the Standard Webhooks signature scheme (standardwebhooks.com), so its
libraries verify it: headers ``webhook-id`` (the event id: deduplicate on it),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: ``v1,`` + base64 of
HMAC-SHA256(secret, ``"{id}.{timestamp}.{body}"``). A secret written ``whsec_<base64>`` is
used as those bytes, any other as its UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, Protocol

import httpx

from spendgate.alerts.events import ALERT_KINDS, AlertEvent, AlertKind

__all__ = [
    "Destination",
    "LogDestination",
    "Sent",
    "SlackDestination",
    "WebhookDestination",
    "sign",
]

alert_log = logging.getLogger("spendgate.alerts")

USER_AGENT: Final = "spendgate-alerts/1"


@dataclass(frozen=True, slots=True)
class Sent:
    """How one send went: ``ok``, or an error worth retrying (``retry``) or not."""

    ok: bool
    error: str | None = None
    retry: bool = True  # on failure: try again later (False: this can never succeed as sent)


class Destination(Protocol):
    name: str
    kinds: frozenset[AlertKind]
    budgets: frozenset[str] | None  # None: every budget

    def send(self, event: AlertEvent, now: datetime) -> Sent: ...


def wants(destination: Destination, event: AlertEvent) -> bool:
    """Whether ``destination`` takes this event (its kinds and budgets filters)."""
    if event.kind not in destination.kinds:
        return False
    return destination.budgets is None or event.budget_id in destination.budgets


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for one body (Standard Webhooks, v1)."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Sent:
    try:
        response = client.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Sent(False, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= response.status_code < 300:
        return Sent(True)
    text = response.text[:200].strip()
    # 410 Gone: the receiver says this URL will never take anything again.
    return Sent(
        False, f"HTTP {response.status_code}" + (f": {text}" if text else ""), response.status_code != 410
    )


@dataclass(slots=True)
class WebhookDestination:
    """POST the event's JSON body (docs/alerts.md), signed when a secret is given."""

    name: str
    url: str
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    kinds: frozenset[AlertKind] = frozenset(ALERT_KINDS)
    budgets: frozenset[str] | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(follow_redirects=False), repr=False)

    def send(self, event: AlertEvent, now: datetime) -> Sent:
        body = event.to_json().encode()
        timestamp = int(now.timestamp())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
        }
        if self.secret:
            headers["webhook-signature"] = sign(self.secret, event.id, timestamp, body)
        return _post(self.client, self.url, body, headers, self.timeout)


@dataclass(slots=True)
class SlackDestination:
    """A Slack (or Mattermost, Discord's /slack, Teams' compatible) incoming webhook: one line."""

    name: str
    url: str = field(repr=False)  # the URL is the credential
    timeout: float = 5.0
    kinds: frozenset[AlertKind] = frozenset(ALERT_KINDS)
    budgets: frozenset[str] | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(follow_redirects=False), repr=False)

    def send(self, event: AlertEvent, now: datetime) -> Sent:
        icon = {"threshold": ":warning:", "forecast": ":crystal_ball:", "refusing": ":no_entry:",
                "reset": ":arrows_counterclockwise:"}[event.kind]  # fmt: skip
        body = json.dumps({"text": f"{icon} spendgate: {event.summary}"}).encode()
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        return _post(self.client, self.url, body, headers, self.timeout)


@dataclass(slots=True)
class LogDestination:
    """A WARNING line on the ``spendgate.alerts`` logger (``spendgate serve`` writes it as JSON)."""

    name: str = "log"
    kinds: frozenset[AlertKind] = frozenset(ALERT_KINDS)
    budgets: frozenset[str] | None = None
    level: Literal["warning", "info"] = "warning"

    def send(self, event: AlertEvent, now: datetime) -> Sent:
        alert_log.log(
            logging.WARNING if self.level == "warning" else logging.INFO,
            "spendgate alert: %s",
            event.summary,
            extra={"alert": event.body()},
        )
        return Sent(True)


def kinds_of(values: Collection[str] | None) -> frozenset[AlertKind]:
    """Checked alert kinds (None: all)."""
    if values is None:
        return frozenset(ALERT_KINDS)
    out: set[AlertKind] = set()
    for value in values:
        if value not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {value!r}; known: {', '.join(ALERT_KINDS)}")
        out.add(value)  # type: ignore[arg-type]  # checked above
    return frozenset(out)
