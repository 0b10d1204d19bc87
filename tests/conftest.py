"""Fixtures shared by every test directory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from spendgate.testing import FakeUpstream


@pytest.fixture(scope="session")
def up() -> Iterator[FakeUpstream]:
    """The fake upstream as a real process, one for the whole session (tests that read its stats
    reset them first)."""
    with FakeUpstream.start() as upstream:
        yield upstream


class _Overshoots(logging.Handler):
    """Collects the guard's overshoot warnings (a provider billed above the reservation)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "above the reservation" in message:
            self.messages.append(message)


@pytest.fixture(autouse=True)
def no_unexpected_overshoot(request: pytest.FixtureRequest) -> Iterator[None]:
    """Suite-wide guard of the bound: no request settled in this process may cost more than its
    reservation unless the test says it expects that (``@pytest.mark.overshoot``)."""
    handler = _Overshoots()
    logger = logging.getLogger("spendgate.requests")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.messages and request.node.get_closest_marker("overshoot") is None:
        pytest.fail(f"a request settled above its reservation: {handler.messages[0]}", pytrace=False)


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Worker processes a test starts: killed if still alive at its end."""
    started: list[Any] = []
    yield started
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(10)
