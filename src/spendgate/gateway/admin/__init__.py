"""The admin API, mounted by the gateway at ``/admin``: keys, budgets, limits, usage, the request log.

Every route needs ``Authorization: Bearer <admin token>`` (``auth``). Errors use OpenAI's shape
``{"error": {"message", "type", "code"}}`` (``errors``); money is a decimal string in USD, never a
float. The handlers (``handlers.keys``, ``handlers.budgets``, ``handlers.limits``,
``handlers.usage``, ``handlers.overview``) are plain functions of the request: the key store, ledger and token getter
are the app's ``AdminContext`` (``app.state.admin``). ``OPENAPI`` is the document served at
``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from spendgate.forecasting import ForecastCache
from spendgate.gateway.admin.auth import Check, Handler, guarded, token_check
from spendgate.gateway.admin.context import AdminContext, nothing_to_flush
from spendgate.gateway.admin.errors import unmatched
from spendgate.gateway.admin.handlers import (
    alerts,
    budgets,
    forecast,
    keys,
    limits,
    overview,
    refusals,
    usage,
)
from spendgate.gateway.admin.openapi import OPENAPI, openapi
from spendgate.gateway.keys import KeyStore
from spendgate.ledger import Ledger

__all__ = ["OPENAPI", "ROUTES", "TABLE", "AdminContext", "admin_context", "create_admin_app", "routes"]


class _AnyIdRoute(Route):
    """A route whose ``{id}`` takes the rest of the path, ``/`` included (a limit's default id is
    ``key=*/requests/1m``). ``path`` stays the template the OpenAPI document names."""

    def __init__(self, path: str, endpoint: Handler, *, methods: list[str]) -> None:
        super().__init__(path.replace("{id}", "{id:path}"), endpoint, methods=methods)
        self.path = path


#: Every admin route as (path, handler, methods): the handlers before any check.
TABLE: list[tuple[str, Handler, list[str]]] = [
    ("/keys", keys.create_key, ["POST"]),
    ("/keys", keys.list_keys, ["GET"]),
    ("/keys/{id}", keys.get_key, ["GET"]),
    ("/keys/{id}", keys.delete_key, ["DELETE"]),
    ("/keys/{id}/disable", keys.disable_key, ["POST"]),
    ("/keys/{id}/enable", keys.enable_key, ["POST"]),
    ("/keys/{id}/rotate", keys.rotate_key, ["POST"]),
    ("/budgets", budgets.list_budgets, ["GET"]),
    ("/budgets", budgets.create_budget, ["POST"]),
    ("/budgets/{id}", budgets.patch_budget, ["PATCH"]),
    ("/budgets/{id}", budgets.delete_budget, ["DELETE"]),
    ("/budgets/{id}/reset", budgets.reset_budget, ["POST"]),
    ("/budgets/{id}/forecast", forecast.budget_forecast, ["GET"]),
    ("/budgets/{id}/advice", forecast.budget_advice, ["GET"]),
    ("/limits", limits.list_limits, ["GET"]),
    ("/limits", limits.create_limit, ["POST"]),
    ("/limits/{id}", limits.get_limit, ["GET"]),
    ("/limits/{id}", limits.patch_limit, ["PATCH"]),
    ("/limits/{id}", limits.put_limit, ["PUT"]),
    ("/limits/{id}", limits.delete_limit, ["DELETE"]),
    ("/usage", usage.usage, ["GET"]),
    ("/usage/timeseries", usage.usage_timeseries, ["GET"]),
    ("/requests", usage.requests_log, ["GET"]),
    ("/alerts", alerts.list_alerts, ["GET"]),
    ("/alerts/retry", alerts.retry_alert, ["POST"]),
    ("/overview", overview.overview, ["GET"]),
    ("/refusals", refusals.refusals, ["GET"]),
    ("/openapi.json", openapi, ["GET"]),
]
#: Routes whose ``{id}`` takes the rest of the path (a limit's id has slashes).
_ANY_ID = frozenset({"/budgets/{id}/forecast", "/budgets/{id}/advice", "/limits/{id}"})


def routes(check: Check) -> list[Route]:
    """Every admin route, each handler behind ``check`` (``token_check`` for ``/admin``; the
    dashboard's session check for ``/ui/api``)."""
    out: list[Route] = []
    for path, handler, methods in TABLE:
        kind = _AnyIdRoute if path in _ANY_ID else Route
        out.append(kind(path, guarded(handler, check), methods=methods))
    return out


#: Every admin route; each handler is behind the admin token check.
ROUTES = routes(token_check)


def create_admin_app(
    *,
    keys: KeyStore,
    ledger: Ledger,
    admin_token: Callable[[], str | None],
    config_budgets: Callable[[], frozenset[str]] = frozenset,
    config_limits: Callable[[], frozenset[str]] = frozenset,
    flush_refusals: Callable[[], None] = nothing_to_flush,
    forecasts: ForecastCache | None = None,
) -> Starlette:
    """The admin API as its own Starlette app. ``admin_token`` is asked on every request (config
    reloads); ``config_budgets`` gives the ids of the budgets the config defines (not deletable),
    ``config_limits`` those of its rate limits (not changed or deleted); ``flush_refusals``
    writes the refusal counts this process holds (``/overview`` calls it before it reads)."""
    app = Starlette(routes=list(ROUTES), exception_handlers={HTTPException: unmatched})
    app.state.admin = admin_context(
        keys=keys,
        ledger=ledger,
        admin_token=admin_token,
        config_budgets=config_budgets,
        config_limits=config_limits,
        flush_refusals=flush_refusals,
        forecasts=forecasts,
    )
    return app


def admin_context(
    *,
    keys: KeyStore,
    ledger: Ledger,
    admin_token: Callable[[], str | None],
    config_budgets: Callable[[], frozenset[str]],
    config_limits: Callable[[], frozenset[str]],
    flush_refusals: Callable[[], None],
    forecasts: ForecastCache | None,
) -> AdminContext:
    """What the admin handlers work on, for ``/admin`` and the dashboard's ``/ui/api`` alike."""
    return AdminContext(
        keys=keys,
        ledger=ledger,
        admin_token=admin_token,
        config_budgets=config_budgets,
        config_limits=config_limits,
        flush_refusals=flush_refusals,
        # The gateway passes one over its process's hourly series (shared by every consumer).
        forecasts=forecasts if forecasts is not None else ForecastCache(),
    )
