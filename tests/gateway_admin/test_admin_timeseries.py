"""``GET /admin/usage/timeseries``: points per bucket and group, paged by an opaque cursor."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from spendgate.budgets import Attributes
from spendgate.clock import ManualClock
from spendgate.gateway.admin import create_admin_app
from spendgate.gateway.keys import KeyStore, open_keystore
from spendgate.ledger import Ledger, RequestRecord, UsagePoint, open_ledger
from spendgate.ledger.memory import MemoryLedger
from spendgate.money import Money

from .test_admin_api import assert_error

TOKEN = "admin-" + "y" * 26
T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
SPAN = {"start": "2026-03-10", "end": "2026-03-11"}


class Env:
    def __init__(self, url: str) -> None:
        self.clock = ManualClock(T0)
        self.ledger: Ledger = open_ledger(url, clock=self.clock)
        self.keys: KeyStore = open_keystore(url, cache_ttl=0)
        app = create_admin_app(keys=self.keys, ledger=self.ledger, admin_token=lambda: TOKEN)
        self.client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
        self.n = 0

    def spend(self, at_hours: float, cost: str, tokens: tuple[int, int] = (10, 5), **attrs: Any) -> None:
        """A settled request reserved ``at_hours`` after T0 (the ledger's clock)."""
        self.clock.set(T0 + timedelta(hours=at_hours))
        self.n += 1
        rid, who, amount = f"r{self.n}", Attributes.of(**attrs), Money.usd(cost)
        assert self.ledger.reserve(rid, who, amount, 60).admitted
        usage = {"input_tokens": tokens[0], "output_tokens": tokens[1]}
        self.ledger.settle(
            rid, amount, RequestRecord(rid, who, amount, self.clock.now(), self.clock.now(), usage=usage)
        )

    def get(self, **params: Any) -> Any:
        return self.client.get("/usage/timeseries", params=params)


@pytest.fixture(params=["memory", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    e = Env("memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}")
    e.spend(0, "0.25", user="alice", model="gpt-4o", tags=["batch"])
    e.spend(0.5, "1.000000001", (300, 70), user="bob", model="gpt-4o", tags=["batch", "eval"])
    e.spend(2, "0.5", user="alice", model="gpt-4o-mini")
    e.spend(2.1, "2", (0, 0), model="gpt-4o")  # no user
    e.spend(26, "3", user="carol", model="gpt-4o")  # the next day
    e.clock.set(T0 + 30 * HOUR)
    yield e
    e.keys.close()
    e.ledger.close()


def test_points_are_the_ledger_s(env: Env) -> None:
    body = env.get(**SPAN, bucket="hour").json()
    assert (body["object"], body["bucket"], body["bucket_seconds"], body["by"]) == (
        "list",
        "hour",
        3600,
        None,
    )
    assert (body["start"], body["end"]) == ("2026-03-10T00:00:00Z", "2026-03-11T00:00:00Z")
    assert body["data"] == [
        {"start": "2026-03-10T09:00:00Z", "end": "2026-03-10T10:00:00Z", "group": None, "cost": "1.250000001",
         "requests": 2, "input_tokens": 310, "output_tokens": 75},
        {"start": "2026-03-10T11:00:00Z", "end": "2026-03-10T12:00:00Z", "group": None, "cost": "2.5",
         "requests": 2, "input_tokens": 10, "output_tokens": 5},
    ]  # fmt: skip
    assert (body["has_more"], body["next_cursor"]) == (False, None)
    by_user = env.get(**SPAN, by="user").json()["data"]
    assert [(p["group"], p["cost"]) for p in by_user] == [
        (None, "2"),
        ("alice", "0.75"),
        ("bob", "1.000000001"),
    ]
    tagged = env.get(**SPAN, by="tag", model="gpt-4o").json()["data"]
    assert [(p["group"], p["requests"]) for p in tagged] == [(None, 1), ("batch", 2), ("eval", 1)]
    assert env.get(**SPAN, user="nobody").json()["data"] == []


def test_defaults_end_now_and_a_week_of_days(env: Env) -> None:
    body = env.get().json()
    assert (body["bucket"], body["end"]) == ("day", "2026-03-11T15:00:00Z")  # the ledger's clock
    assert body["start"] == "2026-03-04T00:00:00Z"
    assert [(p["start"], p["cost"]) for p in body["data"]] == [
        ("2026-03-10T00:00:00Z", "3.750000001"),
        ("2026-03-11T00:00:00Z", "3"),
    ]
    # A span before now starts at its bucket's start.
    assert env.get(start="3h", bucket="hour").json()["start"] == "2026-03-11T12:00:00Z"


def test_pages_follow_the_cursor(env: Env) -> None:
    for i in range(12):  # many groups in one bucket and across buckets
        env.spend(3 + i % 3, "0.01", user=f"u{i:02d}")
    env.clock.set(T0 + 30 * HOUR)
    params = {**SPAN, "bucket": "hour", "by": "user"}
    everything = env.get(**params).json()["data"]
    assert len(everything) == 16
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    for _ in range(20):  # bounded
        page = env.get(**params, limit=4, **({"cursor": cursor} if cursor else {})).json()
        pages.append(page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
        assert isinstance(cursor, str) and "u0" not in cursor  # opaque
    assert [len(p) for p in pages] == [4, 4, 4, 4]  # the last page knows nothing follows
    assert [p for page in pages for p in page] == everything
    # A cursor belongs to its query: another span, grouping or filter is refused.
    first = env.get(**params, limit=4).json()["next_cursor"]
    assert_error(env.get(**{**params, "by": "team"}, cursor=first), 400, "invalid_field", "cursor:")
    assert_error(env.get(**params, cursor="not-a-cursor"), 400, "invalid_field", "cursor:")
    assert_error(env.get(**params, cursor="W10"), 400, "invalid_field", "cursor:")  # base64 of []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucket": "week"}, "bucket:"),
        ({"by": "colour"}, "by:"),
        ({"colour": "red"}, "colour:"),
        ({"start": "yesterday"}, "start:"),
        ({"start": "2026-03-11", "end": "2026-03-10"}, "end:"),
        ({"start": "2026-03-10", "end": "2026-03-10"}, "end:"),
        ({"start": "2000-01-01", "bucket": "hour"}, "bucket:"),  # more than 100,000 buckets
        ({"limit": "0"}, "limit:"),
        ({"limit": "10001"}, "limit:"),
        ({"limit": "²"}, "limit:"),
        ({"limit": "9" * 5000}, "limit:"),
        ({"end": "0001-01-02"}, "end:"),
        ({"start": "999999999w"}, "start:"),
        ({"user": "a\x00b"}, "user:"),
    ],
)
def test_bad_input_is_a_400(env: Env, params: dict[str, str], field: str) -> None:
    assert_error(env.get(**params), 400, "invalid_field", field)


def test_the_ledger_is_read_off_the_event_loop() -> None:
    calls: list[bool] = []  # for each read: whether it ran on the event loop's thread

    class Watched(MemoryLedger):
        def usage_timeseries(self, *args: Any, **kwargs: Any) -> list[UsagePoint]:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            calls.append(on_loop)
            return super().usage_timeseries(*args, **kwargs)

    ledger = Watched(clock=ManualClock(T0))
    keys = open_keystore("memory://")
    app = create_admin_app(keys=keys, ledger=ledger, admin_token=lambda: TOKEN)
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.get("/usage/timeseries").status_code == 200
    assert calls == [False]
