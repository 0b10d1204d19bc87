"""spendgate.logs: the JSON formatter, the queued handler, ``configure``; and the guard's request
lines in the SDK (admitted and refused, one each) through ``spendgate.requests``."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from spendgate import BudgetExceededError, Guard, wrap
from spendgate.logs import (
    REQUESTS,
    JsonFormatter,
    QueuedStreamHandler,
    configure,
    format_for,
    held_line,
    request_line,
)
from spendgate.money import Money
from spendgate.testing import FakeUpstream
from spendgate.usage import Usage

BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "the prompt text, never logged"}],
    "max_tokens": 100,
}


def record(
    message: str = "m", fields: dict[str, Any] | None = None, exc_info: Any = None
) -> logging.LogRecord:
    rec = logging.LogRecord("spendgate.requests", logging.INFO, __file__, 1, message, (), exc_info)
    if fields is not None:
        rec.spendgate = fields
    return rec


# -- the formatter -------------------------------------------------------------------------------


def test_json_line_has_the_fields_at_top_level_and_money_as_strings() -> None:
    fields = {
        "request_id": "sg-1",
        "charged_usd": Money.usd("0.000123"),
        "exact": Decimal("1E-9"),
        "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "level": "not the record's level",  # a field never replaces the record's own keys
    }
    line = JsonFormatter().format(record("two\nlines é", fields))
    assert "\n" not in line and line.isascii()
    doc = json.loads(line)
    assert doc["level"] == "INFO" and doc["logger"] == "spendgate.requests"
    assert doc["message"] == "two\nlines é"
    assert doc["request_id"] == "sg-1"
    assert doc["charged_usd"] == "0.000123" and doc["exact"] == "0.000000001"
    assert doc["at"] == "2026-01-02T03:04:05+00:00"
    assert doc["time"].endswith("Z") and doc["pid"] > 0
    assert not any(isinstance(v, float) for v in doc.values())


def test_json_line_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record(exc_info=sys.exc_info())
    doc = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in doc["exc"]


# -- the handler ---------------------------------------------------------------------------------


def test_handler_writes_each_line_to_a_file_and_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("w") as stream:
        handler = QueuedStreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        for i in range(500):
            handler.handle(record(f"line {i}", {"i": i}))
        handler.close()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["i"] for d in docs] == list(range(500))


class _Stuck(io.StringIO):
    """A stream whose first write waits until released: a reader that does not keep up."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        assert self.release.wait(10)
        return super().write(s)


def test_a_stuck_stream_never_blocks_the_caller_and_drops_are_counted() -> None:
    stream = _Stuck()
    handler = QueuedStreamHandler(stream, capacity=1)
    handler.handle(record("first"))
    assert stream.entered.wait(10)  # the writer holds "first" and waits in write()
    handler.handle(record("second"))  # queued
    handler.handle(record("third"))  # the queue is full: dropped, the caller goes on
    assert handler.dropped == 1
    stream.release.set()
    handler.flush()
    handler.handle(record("fourth"))
    handler.close()
    assert stream.getvalue().splitlines() == [
        "first",
        "second",
        "1 log lines were dropped: the log output did not keep up",
        "fourth",
    ]


# -- configure -----------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_default_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert format_for(None, _Terminal()) == "text"
    assert format_for(None, io.StringIO()) == "json"
    assert format_for("json", _Terminal()) == "json"
    with pytest.raises(ValueError, match="json, text"):
        format_for("xml")


def test_configure_logs_from_its_level_on_and_undo_restores() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    stream = io.StringIO()
    undo = configure("warning", "json", stream)
    try:
        logging.getLogger("spendgate.gateway").warning("kept %d", 1)
        logging.getLogger("spendgate.gateway").info("not kept")
        logging.getLogger("uvicorn.error").warning("uvicorn's too")
    finally:
        undo()
    assert (root.level, root.handlers) == before
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["message"] for d in docs] == ["kept 1", "uvicorn's too"]
    with pytest.raises(ValueError, match="log level"):
        configure("verbose")


def test_text_format() -> None:
    stream = io.StringIO()
    undo = configure("info", "text", stream)
    try:
        logging.getLogger("spendgate.x").info("hello %s", "there")
    finally:
        undo()
    assert stream.getvalue().rstrip().endswith("INFO spendgate.x: hello there")


# -- the guard's request lines (the SDK) ---------------------------------------------------------


@pytest.fixture
def lines() -> Iterator[list[logging.LogRecord]]:
    """The INFO records of spendgate.requests (the request lines), level set as a user would."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.INFO:
                got.append(record)

    handler = Keep()
    level = REQUESTS.level
    REQUESTS.addHandler(handler)
    REQUESTS.setLevel(logging.INFO)
    try:
        yield got
    finally:
        REQUESTS.removeHandler(handler)
        REQUESTS.setLevel(level)


def fields_of(rec: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = rec.spendgate  # type: ignore[attr-defined]
    return fields


def test_guard_logs_one_line_for_an_admitted_request_and_one_for_a_refused_one(
    lines: list[logging.LogRecord],
) -> None:
    guard = Guard("memory://", budgets=[{"id": "small", "limit": "0.002", "window": "day"}])
    admission = guard.admit("chat", BODY, attributes={"user": "ann"})
    guard.settle(admission, Usage(input_tokens=10, output_tokens=20))
    with pytest.raises(BudgetExceededError):
        guard.admit("chat", {**BODY, "max_tokens": 1000})
    assert len(lines) == 2
    ok, refused = (fields_of(r) for r in lines)
    assert ok["request_id"] == admission.request_id and ok["decision"] == "ok"
    assert ok["budgets"] == ["small"] and ok["ledger_status"] == "settled"
    assert ok["charged_usd"] == ok["cost_usd"]["total"] == "0.000225"  # 10 x 2.5 + 20 x 10 per 1M
    assert ok["budget_remaining_usd"] == "0.001775"
    assert refused["decision"] == "refused" and refused["action"] == "refuse"
    assert refused["reason"] == "budget_exceeded" and refused["budgets"] == ["small"]
    assert refused["budget_remaining_usd"] == "0.001775"
    assert Money.usd(refused["estimate_usd"]) > Money.usd("0.001775")
    assert refused["attributes"] == {"model": "gpt-4o"}
    assert "refused by budget 'small'" in lines[1].getMessage()
    assert "never logged" not in repr([fields_of(r) for r in lines])
    guard.close()


def test_nothing_is_built_below_info(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request line was built with INFO off")

    monkeypatch.setattr("spendgate.guard.request_line", boom)
    assert not REQUESTS.isEnabledFor(logging.INFO)
    guard = Guard("memory://", budgets=[{"id": "small", "limit": "0.002", "window": "day"}])
    guard.settle(guard.admit("chat", BODY), Usage(input_tokens=10, output_tokens=20))
    with pytest.raises(BudgetExceededError):
        guard.admit("chat", {**BODY, "max_tokens": 1000})
    guard.close()


def test_a_held_line_takes_the_guards_fields_instead_of_a_record(lines: list[logging.LogRecord]) -> None:
    line: dict[str, Any] = {}
    token = held_line.set(line)
    try:
        request_line({"request_id": "sg-x", "decision": "ok"}, "not written")
    finally:
        held_line.reset(token)
    assert line == {"request_id": "sg-x", "decision": "ok"} and lines == []


def test_the_openai_wrapper_logs_its_requests_and_refusals(
    up: FakeUpstream, lines: list[logging.LogRecord]
) -> None:
    client = wrap(
        openai.OpenAI(base_url=up.base_url, api_key="sk-upstream-secret"),
        budgets=[{"id": "small", "limit": "0.002"}],
    )
    client.chat.completions.create(**BODY)
    with pytest.raises(BudgetExceededError):
        client.chat.completions.create(**{**BODY, "max_tokens": 1000})
    assert [fields_of(r)["decision"] for r in lines] == ["ok", "refused"]
    text = repr([(r.getMessage(), fields_of(r)) for r in lines])
    assert "sk-upstream-secret" not in text and "never logged" not in text
