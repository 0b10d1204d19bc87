"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spendgate.testing import FakeUpstream


@pytest.fixture(scope="session")
def up() -> Iterator[FakeUpstream]:
    """The fake upstream as a real process, one for the whole session (tests that read its stats
    reset them first)."""
    with FakeUpstream.start() as upstream:
        yield upstream
