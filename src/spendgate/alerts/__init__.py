"""Alerts, delivered once: budget thresholds, forecasts of a budget running out, refusals
starting, resets (docs/alerts.md).

``events`` says what an alert is (and its stable id); the ledger keeps them in its outbox
(``AlertOutbox``); ``dispatcher`` notices, records and delivers them to ``destinations``
(a signed webhook, Slack, the log); ``config`` reads the gateway's ``alerts:`` section.
"""

from spendgate.alerts.destinations import LogDestination, SlackDestination, WebhookDestination, sign
from spendgate.alerts.dispatcher import AlertDispatcher, RetryPolicy
from spendgate.alerts.events import AlertEvent, Delivery, DeliveryRecord

__all__ = [
    "AlertDispatcher",
    "AlertEvent",
    "Delivery",
    "DeliveryRecord",
    "LogDestination",
    "RetryPolicy",
    "SlackDestination",
    "WebhookDestination",
    "sign",
]
