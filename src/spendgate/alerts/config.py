"""The alerts' settings (the gateway config's ``alerts:`` section, docs/gateway-config.md), and
the dispatcher they make. Parsing lives with the rest of the config (gateway/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from spendgate.alerts.destinations import (
    Destination,
    LogDestination,
    SlackDestination,
    WebhookDestination,
)
from spendgate.alerts.dispatcher import AlertDispatcher, Forecaster, RetryPolicy
from spendgate.alerts.events import ALERT_KINDS, AlertKind

if TYPE_CHECKING:
    from spendgate.ledger.base import Ledger

__all__ = ["DESTINATION_TYPES", "AlertSettings", "DestinationSettings"]

DestinationType = Literal["webhook", "slack", "log"]
DESTINATION_TYPES: Final = ("webhook", "slack", "log")


@dataclass(frozen=True, slots=True)
class DestinationSettings:
    name: str
    type: DestinationType
    url: str | None = field(default=None, repr=False)  # Slack's URL is its credential
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    kinds: frozenset[AlertKind] = frozenset(ALERT_KINDS)
    budgets: frozenset[str] | None = None

    def build(self) -> Destination:
        if self.type == "log":
            return LogDestination(self.name, self.kinds, self.budgets)
        assert self.url is not None
        if self.type == "slack":
            return SlackDestination(self.name, self.url, self.timeout, self.kinds, self.budgets)
        return WebhookDestination(self.name, self.url, self.secret, self.timeout, self.kinds, self.budgets)


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Alerts are on by default, to the log only; ``enabled: false`` turns off the dispatcher."""

    enabled: bool = True
    destinations: tuple[DestinationSettings, ...] = (DestinationSettings("log", "log"),)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval: float = 2.0
    forecast_interval: float | None = 900.0  # None: no forecast alerts
    lease: float | None = None  # how long a sender holds a delivery; None: max(30, 2 x timeout + 10) s

    def dispatcher(self, ledger: Ledger, forecaster: Forecaster | None = None) -> AlertDispatcher | None:
        """The dispatcher these settings describe (None when alerts are off)."""
        if not self.enabled:
            return None
        return AlertDispatcher(
            ledger,
            [d.build() for d in self.destinations],
            retry=self.retry,
            poll_interval=self.poll_interval,
            forecaster=forecaster if self.forecast_interval is not None else None,
            forecast_interval=self.forecast_interval or 900.0,
            lease=self.lease,
        )
