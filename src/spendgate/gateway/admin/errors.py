"""The admin API's error answers, in OpenAI's shape ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["ApiError", "bad", "error_response", "not_found", "unmatched"]


class ApiError(Exception):
    """Raised by a handler; ``auth.admin_only`` turns it into its JSON answer."""

    def __init__(self, status: int, message: str, type_: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.code)


def error_response(status: int, message: str, type_: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status)


def bad(field: str, problem: str) -> ApiError:
    """A 400 that names the field (or query parameter) at fault."""
    return ApiError(400, f"{field}: {problem}", "invalid_request_error", "invalid_field")


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"no {what} {ident!r}", "not_found_error", "not_found")


async def unmatched(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 for a path or method no route serves, in the admin API's shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        return error_response(
            405, f"{request.method} not allowed here", "invalid_request_error", "method_not_allowed"
        )
    return error_response(status, f"no admin route {request.url.path}", "not_found_error", "not_found")
