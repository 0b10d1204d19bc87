"""The admin token check every admin route goes through, and the mapping of handler errors.

``guarded(handler, check)`` puts any check in front of a handler with the same error mapping:
``admin_only`` is the bearer token's; the dashboard (``spendgate.gateway.ui``) mounts the same
handlers behind its session cookie and CSRF check. The token is compared in constant time. Without a configured token every route answers 403, so an
unset variable never leaves the API open. Virtual keys (``sg-...``) are refused by name.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from spendgate.gateway.admin.context import context
from spendgate.gateway.admin.errors import ApiError, error_response
from spendgate.gateway.keys import SECRET_PREFIX
from spendgate.ledger import LedgerUnavailableError

__all__ = ["Check", "Handler", "admin_only", "guarded", "refusal", "token_check"]

log = logging.getLogger("spendgate.gateway.admin")

Handler = Callable[[Request], Awaitable[Response]]
#: A request's refusal (its answer), or None when it may go on to the handler.
Check = Callable[[Request], Response | None]


def refusal(request: Request, expected: str | None) -> Response | None:
    """The answer to a request without the admin token ``expected``; None when it has it."""
    if not expected:
        return error_response(
            403, "admin API disabled: set SPENDGATE_ADMIN_TOKEN", "permission_error", "admin_disabled"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return error_response(
            401,
            "admin API: send Authorization: Bearer <admin token>",
            "authentication_error",
            "missing_admin_token",
        )
    if hmac.compare_digest(given.encode(), expected.encode()):
        return None
    if given.startswith(SECRET_PREFIX):
        message = "admin API: a virtual key cannot use the admin API; use the admin token"
    else:
        message = "admin API: invalid admin token"
    return error_response(401, message, "authentication_error", "invalid_admin_token")


def token_check(request: Request) -> Response | None:
    """The admin API's check: ``Authorization: Bearer <admin token>``."""
    return refusal(request, context(request).admin_token())


def admin_only(handler: Handler) -> Handler:
    """``handler`` behind the token check, its ``ApiError``s and ledger outages as JSON errors."""
    return guarded(handler, token_check)


def guarded(handler: Handler, check: Check) -> Handler:
    """``handler`` behind ``check``, its ``ApiError``s and ledger outages as JSON errors."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        refused = check(request)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except LedgerUnavailableError as exc:
            log.error("spendgate admin: ledger unavailable: %s", exc)
            return error_response(503, str(exc), "service_unavailable", "ledger_unavailable")

    return endpoint
