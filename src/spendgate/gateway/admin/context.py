"""What the admin handlers work on, kept in the admin app's state (``app.state.admin``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.requests import Request

from spendgate.forecasting import ForecastCache
from spendgate.gateway.keys import KeyStore
from spendgate.ledger import Ledger

__all__ = ["AdminContext", "context", "nothing_to_flush"]


def nothing_to_flush() -> None:
    """No guard of this process holds refusal counts (an admin app built alone)."""


@dataclass(frozen=True)
class AdminContext:
    keys: KeyStore
    ledger: Ledger
    #: Asked on every request: a config reload may change or remove the token.
    admin_token: Callable[[], str | None]
    #: Ids of the budgets the gateway's config defines: they come back at every start and
    #: reload, so the API refuses to delete them.
    config_budgets: Callable[[], frozenset[str]] = field(default=frozenset)
    #: Ids of the rate limits the gateway's config defines (``limits:``): put back as written
    #: there at every start and reload, so the API refuses to change or delete them.
    config_limits: Callable[[], frozenset[str]] = field(default=frozenset)
    #: Writes the refusal counts this process holds to the ledger (``RefusalTally.flush``,
    #: blocking): the overview calls it before it reads every process's counts.
    flush_refusals: Callable[[], None] = field(default=nothing_to_flush)
    #: The overview's forecasts, each kept a minute (the dashboard asks on every load); its
    #: ``history`` (the hourly series read) serves the forecast and advice routes too.
    forecasts: ForecastCache = field(default_factory=ForecastCache)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


def context(request: Request) -> AdminContext:
    """The context of the admin app serving ``request`` (Starlette sets ``scope["app"]``)."""
    ctx = request.app.state.admin
    assert isinstance(ctx, AdminContext)
    return ctx
