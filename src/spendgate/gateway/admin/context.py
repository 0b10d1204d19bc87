"""What the admin handlers work on, kept in the admin app's state (``app.state.admin``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.requests import Request

from spendgate.gateway.keys import KeyStore
from spendgate.ledger import Ledger

__all__ = ["AdminContext", "context"]


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

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


def context(request: Request) -> AdminContext:
    """The context of the admin app serving ``request`` (Starlette sets ``scope["app"]``)."""
    ctx = request.app.state.admin
    assert isinstance(ctx, AdminContext)
    return ctx
