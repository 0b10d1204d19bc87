"""What an exception from either SDK says happened (integrations/common.py), by its kind."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pydantic
import pytest

from spendgate import Guard, wrap
from spendgate.integrations.common import Attempts, failure_report
from spendgate.lifecycle import Happened
from spendgate.money import Money
from spendgate.testing import FakeUpstream

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
    module: Any = openai if sdk is openai else anthropic
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


def _attempts(sent: int, answered: int) -> Attempts:
    counted = Attempts()
    counted.sent, counted.answered = sent, answered
    return counted


def test_counted_attempts_decide_over_the_error_type() -> None:
    response: Any = httpx.Response(503, request=REQUEST)  # the SDKs ride on httpx2; any response will do
    refused = openai.InternalServerError("busy", response=response, body=None)
    connect = _connection_error(openai.APIConnectionError, httpx.ConnectError("refused"))
    cases: list[tuple[BaseException, Attempts, Happened]] = [
        (connect, _attempts(0, 0), Happened.NOT_SENT),  # nothing went on the wire
        (refused, _attempts(3, 3), Happened.REFUSED),  # every retry answered, and refused
        (refused, _attempts(2, 1), Happened.LOST),  # an earlier retry timed out: maybe billed
        (connect, _attempts(2, 1), Happened.LOST),  # the last retry could not connect; one was sent
        (TypeError("a validator failed"), _attempts(1, 1), Happened.LOST),  # after a billed answer
        (TypeError("bad argument"), _attempts(0, 0), Happened.NOT_SENT),
    ]
    for exc, counted, happened in cases:
        assert failure_report(exc, openai, "chat", counted).happened is happened, (exc, counted.sent)


def test_timed_out_retries_are_charged_and_counted_on_the_wire(up: FakeUpstream) -> None:
    guard = Guard(budgets=[{"id": "g", "limit": "5"}])
    client = wrap(openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=1, timeout=0.2), guard=guard)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "slow"}],
            max_tokens=5,
            extra_headers={"x-fake-latency-ms": "1000"},
        )
    [record] = guard.ledger.query_requests()
    assert record.status == "lost" and record.cost > Money(0)
    assert guard.ledger.usage("g").reserved == Money(0)
