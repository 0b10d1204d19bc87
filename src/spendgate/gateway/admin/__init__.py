"""The admin API, mounted by the gateway at ``/admin``: keys, budgets, limits, usage, the request log.

Every route needs ``Authorization: Bearer <admin token>`` (``auth``). Errors use OpenAI's shape
``{"error": {"message", "type", "code"}}`` (``errors``); money is a decimal string in USD, never a
float. The handlers (``handlers.keys``, ``handlers.budgets``, ``handlers.limits``,
``handlers.usage``) are plain functions of the request: the key store, ledger and token getter
are the app's ``AdminContext`` (``app.state.admin``). ``OPENAPI`` is the document served at
``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from spendgate.gateway.admin.auth import Handler, admin_only
from spendgate.gateway.admin.context import AdminContext
from spendgate.gateway.admin.errors import unmatched
from spendgate.gateway.admin.handlers import alerts, budgets, forecast, keys, limits, usage
from spendgate.gateway.admin.openapi import OPENAPI, openapi
from spendgate.gateway.keys import KeyStore
from spendgate.ledger import Ledger

__all__ = ["OPENAPI", "ROUTES", "AdminContext", "create_admin_app"]


class _AnyIdRoute(Route):
    """A route whose ``{id}`` takes the rest of the path, ``/`` included (a limit's default id is
    ``key=*/requests/1m``). ``path`` stays the template the OpenAPI document names."""

    def __init__(self, path: str, endpoint: Handler, *, methods: list[str]) -> None:
        super().__init__(path.replace("{id}", "{id:path}"), endpoint, methods=methods)
        self.path = path


#: Every admin route; each handler is behind the admin token check.
ROUTES = [
    Route("/keys", admin_only(keys.create_key), methods=["POST"]),
    Route("/keys", admin_only(keys.list_keys), methods=["GET"]),
    Route("/keys/{id}", admin_only(keys.get_key), methods=["GET"]),
    Route("/keys/{id}", admin_only(keys.delete_key), methods=["DELETE"]),
    Route("/keys/{id}/disable", admin_only(keys.disable_key), methods=["POST"]),
    Route("/keys/{id}/enable", admin_only(keys.enable_key), methods=["POST"]),
    Route("/keys/{id}/rotate", admin_only(keys.rotate_key), methods=["POST"]),
    Route("/budgets", admin_only(budgets.list_budgets), methods=["GET"]),
    Route("/budgets", admin_only(budgets.create_budget), methods=["POST"]),
    Route("/budgets/{id}", admin_only(budgets.patch_budget), methods=["PATCH"]),
    Route("/budgets/{id}", admin_only(budgets.delete_budget), methods=["DELETE"]),
    Route("/budgets/{id}/reset", admin_only(budgets.reset_budget), methods=["POST"]),
    _AnyIdRoute("/budgets/{id}/forecast", admin_only(forecast.budget_forecast), methods=["GET"]),
    _AnyIdRoute("/budgets/{id}/advice", admin_only(forecast.budget_advice), methods=["GET"]),
    Route("/limits", admin_only(limits.list_limits), methods=["GET"]),
    Route("/limits", admin_only(limits.create_limit), methods=["POST"]),
    _AnyIdRoute("/limits/{id}", admin_only(limits.get_limit), methods=["GET"]),
    _AnyIdRoute("/limits/{id}", admin_only(limits.patch_limit), methods=["PATCH"]),
    _AnyIdRoute("/limits/{id}", admin_only(limits.put_limit), methods=["PUT"]),
    _AnyIdRoute("/limits/{id}", admin_only(limits.delete_limit), methods=["DELETE"]),
    Route("/usage", admin_only(usage.usage), methods=["GET"]),
    Route("/usage/timeseries", admin_only(usage.usage_timeseries), methods=["GET"]),
    Route("/requests", admin_only(usage.requests_log), methods=["GET"]),
    Route("/alerts", admin_only(alerts.list_alerts), methods=["GET"]),
    Route("/alerts/retry", admin_only(alerts.retry_alert), methods=["POST"]),
    Route("/openapi.json", admin_only(openapi), methods=["GET"]),
]


def create_admin_app(
    *,
    keys: KeyStore,
    ledger: Ledger,
    admin_token: Callable[[], str | None],
    config_budgets: Callable[[], frozenset[str]] = frozenset,
    config_limits: Callable[[], frozenset[str]] = frozenset,
) -> Starlette:
    """The admin API as its own Starlette app. ``admin_token`` is asked on every request (config
    reloads); ``config_budgets`` gives the ids of the budgets the config defines (not deletable),
    ``config_limits`` those of its rate limits (not changed or deleted)."""
    app = Starlette(routes=list(ROUTES), exception_handlers={HTTPException: unmatched})
    app.state.admin = AdminContext(
        keys=keys,
        ledger=ledger,
        admin_token=admin_token,
        config_budgets=config_budgets,
        config_limits=config_limits,
    )
    return app
