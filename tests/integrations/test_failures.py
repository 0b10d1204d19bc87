"""What an exception from either SDK says happened (integrations/common.py), by its kind."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pydantic
import pytest

from spendgate.integrations.common import failure_report
from spendgate.lifecycle import Happened

REQUEST = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")


def _validation_error() -> pydantic.ValidationError:
    class Answer(pydantic.BaseModel):
        text: str

    try:
        Answer.model_validate_json("tok tok")
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


def _connection_error(sdk: type[Exception], cause: Exception) -> Exception:
    try:
        try:
            raise cause
        except Exception as inner:
            raise sdk(request=REQUEST) from inner  # type: ignore[call-arg]
    except Exception as exc:
        return exc


@pytest.mark.parametrize("sdk", [openai, anthropic])
def test_what_each_failure_means(sdk: object) -> None:
    module = openai if sdk is openai else anthropic
    response = httpx.Response(500, request=REQUEST)
    refused = module.InternalServerError("boom", response=response, body=None)
    cases: list[tuple[BaseException, Happened]] = [
        (refused, Happened.REFUSED),
        (_connection_error(module.APIConnectionError, httpx.ConnectError("refused")), Happened.NOT_SENT),
        (_connection_error(module.APIConnectionError, httpx.ReadError("reset")), Happened.LOST),
        (module.APITimeoutError(request=REQUEST), Happened.LOST),
        (TypeError("create() got an unexpected keyword argument"), Happened.NOT_SENT),
        # Structured-output parsing fails after a whole, billed answer: never released.
        (_validation_error(), Happened.LOST),
        (KeyboardInterrupt(), Happened.LOST),
    ]
    for exc, happened in cases:
        assert failure_report(exc, module, "chat").happened is happened, exc
