"""The replay (``spendgate.replay``): a recorded request log against proposed budgets and limits.

Unit cases build a log by hand (instants, estimates, costs) and replay it on the real memory
ledger; ``test_replay_equals_live*`` record a log through the real gateway process in front of
the fake upstream process, replay it, and send the same requests live under the proposed budget.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from gateway.conftest import Gateway, start_env, wait_until
from spendgate.budgets import Attributes, Budget, Pace, Window
from spendgate.cli import main
from spendgate.clock import ManualClock
from spendgate.commands import simulate
from spendgate.commands.simulate import read_log
from spendgate.ledger import open_ledger
from spendgate.ledger.base import RequestRecord
from spendgate.limits import Limit
from spendgate.money import Money
from spendgate.replay import Replay, ReplayError, replay
from spendgate.testing import FakeUpstream

T0 = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
ALICE = Attributes(key="k1", user="alice", team="ml", model="gpt-4o")
BOB = Attributes(key="k2", user="bob", team="web", model="gpt-4o")


def usd(text: str) -> Money:
    return Money.usd(text)


def rec(
    rid: str,
    start: float,
    duration: float,
    cost: str,
    estimate: str | None,
    attrs: Attributes = ALICE,
    status: str = "ok",
) -> RequestRecord:
    started = T0 + timedelta(seconds=start)
    return RequestRecord(
        request_id=rid,
        attributes=attrs,
        cost=usd(cost),
        started_at=started,
        finished_at=started + timedelta(seconds=duration),
        model=attrs.model,
        status=status,
        estimate=None if estimate is None else usd(estimate),
    )


def budget(limit: str, on_exceed: str = "raise", window: str = "none", **selector: str) -> Budget:
    return Budget.from_config(
        {"id": "b", "limit": limit, "window": window, "on_exceed": on_exceed, "selector": selector}
    )


def statuses(result: Replay) -> dict[str, str]:
    return {o.record.request_id: o.status for o in result.outcomes}


# -- raise ----------------------------------------------------------------------------------------


def test_no_budget_admits_everything_at_its_logged_cost() -> None:
    log = [rec("r1", 0, 1, "0.3", "1"), rec("r2", 2, 1, "0.4", "1")]
    result = replay(log, [])
    assert statuses(result) == {"r1": "admitted", "r2": "admitted"}
    assert result.spent == result.logged == usd("0.7")
    assert result.avoided == Money(0)


def test_raise_refuses_what_does_not_fit_and_a_refused_request_frees_nothing() -> None:
    # Sequential: spent 0.3, then 0.6; r3's 0.5 estimate would pass 1.0; r4's 0.2 still fits.
    log = [
        rec("r1", 0, 1, "0.3", "0.5"),
        rec("r2", 2, 1, "0.3", "0.5"),
        rec("r3", 4, 1, "0.35", "0.5"),
        rec("r4", 6, 1, "0.1", "0.2"),
        rec("r5", 8, 1, "0.1", "0.4"),
    ]
    result = replay(reversed(log), [budget("1")])  # any order in: replayed in time order
    assert [o.record.request_id for o in result.outcomes] == ["r1", "r2", "r3", "r4", "r5"]
    assert statuses(result) == {
        "r1": "admitted",
        "r2": "admitted",
        "r3": "refused",
        "r4": "admitted",
        "r5": "refused",
    }
    assert result.spent == usd("0.7")
    assert result.avoided == usd("0.45")
    assert result.spent + result.avoided == result.logged
    (totals,) = result.budgets
    assert (totals.matched, totals.admitted, totals.refused) == (5, 3, 2)
    assert (totals.spent, totals.avoided) == (usd("0.7"), usd("0.45"))
    refused = result.outcomes[2]
    assert refused.by == "b" and refused.cost == Money(0) and refused.finished_at is None
    assert "needed 0.5 > limit 1" in (refused.reason or "")


def test_a_reservation_in_flight_refuses_an_overlapping_request() -> None:
    # r1 holds 0.8 from t=0 to t=10; r2 at t=5 needs 0.5: refused although r1 costs only 0.1.
    log = [rec("r1", 0, 10, "0.1", "0.8"), rec("r2", 5, 1, "0.1", "0.5"), rec("r3", 10, 1, "0.1", "0.5")]
    result = replay(log, [budget("1")])
    assert statuses(result) == {"r1": "admitted", "r2": "refused", "r3": "admitted"}


def test_an_ending_at_the_same_instant_frees_room_first() -> None:
    log = [rec("r1", 0, 5, "0.1", "0.8"), rec("r2", 5, 1, "0.1", "0.5")]
    assert statuses(replay(log, [budget("1")])) == {"r1": "admitted", "r2": "admitted"}


def test_only_matching_requests_count_and_wildcards_give_each_their_own() -> None:
    log = [
        rec("a1", 0, 1, "0.6", "0.6"),
        rec("b1", 2, 1, "0.6", "0.6", BOB),
        rec("a2", 4, 1, "0.6", "0.6"),
        rec("b2", 6, 1, "0.3", "0.3", BOB),
    ]
    assert statuses(replay(log, [budget("1", team="ml")])) == {
        "a1": "admitted",
        "b1": "admitted",
        "a2": "refused",
        "b2": "admitted",
    }
    per_user = replay(log, [budget("1", user="*")])
    assert statuses(per_user) == {"a1": "admitted", "b1": "admitted", "a2": "refused", "b2": "admitted"}
    assert per_user.budgets[0].matched == 4


def test_every_budget_must_admit() -> None:
    team = Budget.from_config({"id": "team", "limit": "10", "selector": {"team": "ml"}})
    user = Budget.from_config({"id": "user", "limit": "0.5", "selector": {"user": "alice"}})
    log = [rec("r1", 0, 1, "0.4", "0.4"), rec("r2", 2, 1, "0.4", "0.4")]
    result = replay(log, [team, user])
    assert statuses(result) == {"r1": "admitted", "r2": "refused"}
    assert result.outcomes[0].budgets == ("team", "user")
    assert result.outcomes[1].by == "user"
    by_id = {t.budget_id: t for t in result.budgets}
    assert (by_id["team"].refused, by_id["user"].refused) == (0, 1)
    assert by_id["team"].spent == by_id["user"].spent == usd("0.4")


def test_monthly_window_resets_across_the_month_boundary() -> None:
    # T0 is 2026-11-30T23:00Z: two requests in November, two in December.
    log = [
        rec("nov1", 0, 1, "0.7", "0.7"),
        rec("nov2", 60, 1, "0.7", "0.7"),
        rec("dec1", 3600, 1, "0.7", "0.7"),
        rec("dec2", 3700, 1, "0.7", "0.7"),
    ]
    result = replay(log, [budget("1", window="month")])
    assert statuses(result) == {"nov1": "admitted", "nov2": "refused", "dec1": "admitted", "dec2": "refused"}
    assert result.budgets[0].windows == {
        datetime(2026, 11, 1, tzinfo=UTC): usd("0.7"),
        datetime(2026, 12, 1, tzinfo=UTC): usd("0.7"),
    }
    never = replay(log, [budget("1", window="none")])
    assert statuses(never) == {"nov1": "admitted", "nov2": "refused", "dec1": "refused", "dec2": "refused"}


def test_a_proposed_time_zone_moves_the_reset() -> None:
    # In Berlin (UTC+1) the month turns at 23:00Z on Nov 30: both requests are in December.
    log = [rec("r1", 1, 1, "0.7", "0.7"), rec("r2", 60, 1, "0.7", "0.7")]
    berlin = Budget("b", {}, usd("1"), Window.calendar("month", "Europe/Berlin"))
    assert statuses(replay(log, [berlin])) == {"r1": "admitted", "r2": "refused"}
    shifted = [rec("r0", -60, 1, "0.7", "0.7"), *log]
    assert statuses(replay(shifted, [berlin])) == {"r0": "admitted", "r1": "admitted", "r2": "refused"}


def test_a_paced_budget_refuses_ahead_of_its_pace() -> None:
    # A day in 24 steps of 1 h: by the first hour 1/24 of 24 USD = 1 USD may go.
    day = Budget("b", {}, usd("24"), Window.calendar("day"), pace=Pace(timedelta(hours=1)))
    log = [
        rec("r1", 3600, 1, "0.8", "0.8"),
        rec("r2", 3700, 1, "0.8", "0.8"),
        rec("r3", 7200, 1, "0.8", "0.8"),
    ]
    result = replay(log, [day])
    assert statuses(result) == {"r1": "admitted", "r2": "refused", "r3": "admitted"}
    assert "paced" in (result.outcomes[1].reason or "")


# -- wait ------------------------------------------------------------------------------------------


def test_wait_is_admitted_when_an_ending_frees_room_and_starts_late() -> None:
    # r1 holds 0.8 until t=10; r2 (t=4) waits 6 s, then runs its logged 3 s: ends at t=13.
    log = [rec("r1", 0, 10, "0.5", "0.8"), rec("r2", 4, 3, "0.2", "0.5")]
    result = replay(log, [budget("1", "wait")], max_wait=timedelta(seconds=30))
    r2 = result.outcomes[1]
    assert r2.status == "delayed" and r2.delay == timedelta(seconds=6)
    assert r2.started_at == T0 + timedelta(seconds=10)
    assert r2.finished_at == T0 + timedelta(seconds=13)
    assert r2.by == "b" and r2.cost == usd("0.2")
    assert result.budgets[0].delayed == 1
    assert result.spent == usd("0.7")


def test_wait_gives_up_after_max_wait() -> None:
    log = [rec("r1", 0, 10, "0.5", "0.8"), rec("r2", 4, 3, "0.2", "0.5")]
    result = replay(log, [budget("1", "wait")], max_wait=timedelta(seconds=5))
    r2 = result.outcomes[1]
    assert r2.status == "refused" and r2.delay == timedelta(seconds=5)
    assert "max_wait" in (r2.reason or "")
    # A max_wait of 0 refuses at once, as the guard does.
    at_once = replay(log, [budget("1", "wait")], max_wait=timedelta(0))
    assert at_once.outcomes[1].status == "refused" and at_once.outcomes[1].delay == timedelta(0)


def test_waiting_is_first_come_first_served() -> None:
    # r2 (0.5) waits for r1; r3 (0.1) would fit now but the line is busy: it waits behind r2.
    log = [
        rec("r1", 0, 10, "0.5", "0.6"),
        rec("r2", 2, 5, "0.3", "0.5"),
        rec("r3", 3, 5, "0.1", "0.1"),
    ]
    result = replay(log, [budget("1", "wait")], max_wait=timedelta(seconds=60))
    r2, r3 = result.outcomes[1], result.outcomes[2]
    assert r2.status == r3.status == "delayed"
    # r1 ends at 10 (room 0.5): r2 goes, room 0; r2 ends at 15 (spent 0.8): r3 goes.
    assert r2.started_at == T0 + timedelta(seconds=10)
    assert r3.started_at == T0 + timedelta(seconds=15)
    # Under raise r3 would simply have been admitted at t=3.
    assert statuses(replay(log, [budget("1")])) == {"r1": "admitted", "r2": "refused", "r3": "admitted"}


def test_a_request_over_the_limit_never_waits() -> None:
    log = [rec("r1", 0, 1, "2", "2")]
    result = replay(log, [budget("1", "wait")], max_wait=timedelta(seconds=60))
    assert result.outcomes[0].status == "refused" and result.outcomes[0].delay == timedelta(0)


def test_wait_across_a_window_reset() -> None:
    # The daily budget is spent at 23:59:50; r2 waits 10 s for midnight.
    start = (datetime(2026, 12, 1, tzinfo=UTC) - T0).total_seconds() - 20
    log = [rec("r1", start, 1, "1", "1"), rec("r2", start + 10, 1, "0.5", "0.5")]
    result = replay(log, [budget("1", "wait", window="day")], max_wait=timedelta(seconds=30))
    r2 = result.outcomes[1]
    assert r2.status == "delayed" and r2.delay == timedelta(seconds=10)
    assert r2.started_at == datetime(2026, 12, 1, tzinfo=UTC)
    short = replay(log, [budget("1", "wait", window="day")], max_wait=timedelta(seconds=5))
    assert short.outcomes[1].status == "refused"


def test_on_exceed_override_applies_to_every_budget() -> None:
    log = [rec("r1", 0, 10, "0.5", "0.8"), rec("r2", 4, 3, "0.2", "0.5")]
    result = replay(log, [budget("1", "raise")], on_exceed="wait", max_wait=timedelta(seconds=30))
    assert result.outcomes[1].status == "delayed"


# -- clamp -----------------------------------------------------------------------------------------


def test_clamp_admits_with_the_room_left_when_it_covers_the_logged_cost() -> None:
    log = [
        rec("r1", 0, 1, "0.7", "0.7"),
        rec("r2", 2, 1, "0.2", "0.5"),  # room 0.3 >= its cost 0.2: clamped, reserves 0.3
        rec("r3", 4, 1, "0.2", "0.5"),  # room 0.1 < its cost 0.2: refused
    ]
    result = replay(log, [budget("1", "clamp")])
    r2, r3 = result.outcomes[1], result.outcomes[2]
    assert r2.status == "clamped" and r2.reserved == usd("0.3") and r2.cost == usd("0.2")
    assert r3.status == "refused" and "below its logged cost" in (r3.reason or "")
    assert result.budgets[0].clamped == 1
    assert result.spent == usd("0.9")


def test_clamp_takes_the_smallest_room_of_several_budgets() -> None:
    wide = Budget.from_config({"id": "a", "limit": "1", "on_exceed": "clamp"})
    narrow = Budget.from_config(
        {"id": "b", "limit": "0.6", "on_exceed": "clamp", "selector": {"user": "alice"}}
    )
    log = [rec("r1", 0, 1, "0.5", "0.5"), rec("r2", 2, 1, "0.05", "0.9")]
    r2 = replay(log, [wide, narrow]).outcomes[1]
    assert r2.status == "clamped" and r2.reserved == usd("0.1")


# -- rate limits -----------------------------------------------------------------------------------


def test_requests_limit_over_a_sliding_window() -> None:
    per_minute = Limit.from_config({"id": "rpm", "requests": 2, "per": "1m"})
    log = [rec(f"r{i}", i * 10, 1, "0.01", "0.01") for i in range(4)]  # t = 0, 10, 20, 30
    log.append(rec("late", 200, 1, "0.01", "0.01"))
    result = replay(log, [], [per_minute])
    assert statuses(result) == {
        "r0": "admitted",
        "r1": "admitted",
        "r2": "refused",
        "r3": "refused",
        "late": "admitted",
    }
    assert result.limit_refusals == {"rpm": 2}
    assert result.outcomes[2].by == "rpm"


def test_usd_and_concurrency_limits() -> None:
    rate = Limit.from_config({"id": "usd", "usd": "1", "per": "1h"})
    log = [rec("r1", 0, 1, "0.6", "0.9"), rec("r2", 10, 1, "0.3", "0.4"), rec("r3", 20, 1, "0.3", "0.4")]
    # The usd window takes the settled cost: 0.6 + 0.4 fits, then 0.9 + 0.4 does not.
    assert statuses(replay(log, [], [rate])) == {"r1": "admitted", "r2": "admitted", "r3": "refused"}
    one = Limit.from_config({"id": "one", "concurrency": 1})
    overlap = [rec("r1", 0, 10, "0.1", "0.1"), rec("r2", 5, 1, "0.1", "0.1"), rec("r3", 10, 1, "0.1", "0.1")]
    assert statuses(replay(overlap, [], [one])) == {"r1": "admitted", "r2": "refused", "r3": "admitted"}
    waits = Limit.from_config({"id": "one", "concurrency": 1, "on_exceed": "wait"})
    waited = replay(overlap, [], [waits], max_wait=timedelta(seconds=30))
    assert waited.outcomes[1].status == "delayed" and waited.outcomes[1].delay == timedelta(seconds=5)


def test_waiting_for_a_rate_limit_window() -> None:
    # One request per 10 s (buckets of 0.5 s): r1 at t=2 waits until r0's bucket leaves the
    # window, 10 to 10.5 s after r0; a budget and a limit may share an id.
    one = Limit.from_config({"id": "b", "requests": 1, "per": "10s", "on_exceed": "wait"})
    log = [rec("r0", 0, 1, "0.1", "0.1"), rec("r1", 2, 1, "0.1", "0.1")]
    result = replay(log, [budget("5")], [one], max_wait=timedelta(seconds=30))
    r1 = result.outcomes[1]
    assert r1.status == "delayed" and r1.by == "b" and r1.by_limit
    assert timedelta(seconds=8) <= r1.delay <= timedelta(seconds=8.5)
    assert result.budgets[0].delayed == 0  # the budget did not delay it
    short = replay(log, [budget("5")], [one], max_wait=timedelta(seconds=5))
    assert short.outcomes[1].status == "refused" and short.limit_refusals == {"b": 1}
    assert short.budgets[0].refused == 0


def test_token_limits_are_not_replayable() -> None:
    tokens = Limit.from_config({"id": "tpm", "tokens": 1000, "per": "1m"})
    with pytest.raises(ReplayError, match="does not keep"):
        replay([], [], [tokens])


# -- what the log lacks ----------------------------------------------------------------------------


def test_a_record_without_its_estimate_reserves_its_cost() -> None:
    log = [rec("r1", 0, 10, "0.5", None), rec("r2", 5, 1, "0.5", None)]
    result = replay(log, [budget("1")])
    assert statuses(result) == {"r1": "admitted", "r2": "admitted"}
    assert result.without_estimate == 2


def test_a_released_request_holds_its_reservation_and_spends_nothing() -> None:
    log = [rec("r1", 0, 10, "0", "0.8", status="released"), rec("r2", 5, 1, "0.1", "0.5")]
    result = replay(log, [budget("1")])
    assert statuses(result) == {"r1": "admitted", "r2": "refused"}
    assert result.spent == Money(0)


def test_the_same_request_id_twice_is_refused() -> None:
    with pytest.raises(ReplayError, match="twice"):
        replay([rec("r1", 0, 1, "0.1", "0.1"), rec("r1", 2, 1, "0.1", "0.1")], [])


# -- the replay equals the ledger live ---------------------------------------------------------------

KEYS = {"alice": {"user": "alice", "team": "ml"}, "bob": {"user": "bob", "team": "web"}}


@dataclass(frozen=True)
class Step:
    """One request of a scenario: who sends it, its prompt's size, its output cap, and whether
    the fake upstream holds it (in flight, its reservation held) while the next ones are sent."""

    key: str
    words: int
    max_tokens: int
    hold: bool = False

    def body(self) -> dict[str, Any]:
        content = " ".join(f"w{i}" for i in range(self.words))
        return {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
        }


SEQUENTIAL = [
    Step("alice", 20, 400),
    Step("bob", 200, 50),
    Step("alice", 50, 1500),
    Step("bob", 10, 30),
    Step("alice", 400, 800),
    Step("bob", 30, 2000),
    Step("alice", 5, 20),
    Step("bob", 120, 300),
    Step("alice", 60, 1200),
    Step("bob", 15, 40),
    Step("alice", 8, 25),
    Step("bob", 300, 900),
]
#: The first request stays in flight (held at the fake upstream) while the others are sent one
#: after another: they meet its reservation, as they do in the replay.
CONCURRENT = [
    Step("alice", 40, 3000, hold=True),
    Step("bob", 30, 500),
    Step("alice", 10, 100),
    Step("bob", 200, 1500),
    Step("alice", 5, 30),
    Step("bob", 20, 60),
]


def reached(up: FakeUpstream, hold: str, count: int, thread: threading.Thread) -> bool:
    """The held request waits at the fake upstream (or was answered: refused by a budget)."""
    return up.held(hold) >= count or not thread.is_alive()


def send_all(gateway: Gateway, secrets: dict[str, str], steps: list[Step], up: FakeUpstream) -> list[int]:
    """Send ``steps`` in order (a held one in a thread, the next only once it waits at the fake
    upstream, released after the last); the HTTP status of each."""
    hold = f"replay-{uuid.uuid4().hex}"
    statuses: dict[int, int] = {}
    threads: list[threading.Thread] = []
    with httpx.Client(base_url=gateway.base_url, timeout=30.0) as client:

        def send(index: int, step: Step) -> None:
            headers = {"authorization": f"Bearer {secrets[step.key]}"}
            if step.hold:
                headers["x-fake-hold"] = hold
            statuses[index] = client.post("/chat/completions", json=step.body(), headers=headers).status_code

        for index, step in enumerate(steps):
            if not step.hold:
                send(index, step)
                continue
            thread = threading.Thread(target=send, args=(index, step), daemon=True)
            thread.start()
            threads.append(thread)
            held = len(threads)  # the name is this run's own: each held request adds one
            came = functools.partial(reached, up, hold, held, thread)
            assert wait_until(came, 20.0), "a held request never reached the fake upstream"
        up.release(hold)
        for thread in threads:
            thread.join(30.0)
    return [statuses[i] for i in range(len(steps))]


def run_gateway(
    tmp: Path, up: FakeUpstream, steps: list[Step], budgets: list[dict[str, Any]]
) -> tuple[list[int], str]:
    """A fresh gateway and SQLite ledger with ``budgets``: send ``steps``; the statuses and the
    ledger's URL (read after the gateway stopped)."""
    tmp.mkdir()
    gateway, made = start_env(tmp, up, keys=KEYS, budgets=budgets, args=("--log-level", "warning"))
    try:
        codes = send_all(gateway, {name: secret for name, (_, secret) in made.items()}, steps, up)
    finally:
        gateway.stop()
    return codes, gateway.ledger_url


def logged(url: str) -> list[RequestRecord]:
    ledger = open_ledger(url, create=False)
    try:
        return read_log(ledger, None, None, {})
    finally:
        ledger.close()


def proposal(records: list[RequestRecord], concurrent: bool) -> list[dict[str, Any]]:
    """Budgets that refuse some of the recorded requests. Sequential: 55% of the recorded cost
    in all, and 35% of it per user (a wildcard budget). Concurrent: room for the held request's
    reservation and half the largest of the others' (which the held one then crowds out)."""
    if concurrent:
        held, *others = records
        assert held.estimate is not None
        largest = max(r.estimate.nanos for r in others if r.estimate is not None)
        return [{"id": "all", "limit": Money(held.estimate.nanos + largest // 2).decimal_str()}]
    total = sum(r.cost.nanos for r in records)
    return [
        {"id": "all", "limit": Money(total * 55 // 100).decimal_str(), "window": "none"},
        {"id": "per-user", "selector": {"user": "*"}, "limit": Money(total * 35 // 100).decimal_str()},
    ]


def simulate_json(monkeypatch: pytest.MonkeyPatch, url: str, budgets: list[dict[str, Any]]) -> dict[str, Any]:
    """``spendgate simulate --json --show all`` on the recorded ledger, read in pages of 5."""
    monkeypatch.setattr(simulate, "PAGE", 5)
    args = ["simulate", "--ledger", url, "--json", "--show", "all"]
    for item in budgets:
        args += ["--budget", json.dumps(item)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


@pytest.mark.parametrize("steps", [SEQUENTIAL, CONCURRENT], ids=["sequential", "concurrent"])
def test_replay_equals_the_ledger_live(
    steps: list[Step], tmp_path: Path, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Record: no budget, every request admitted and logged with its estimate and cost.
    codes, recorded_url = run_gateway(tmp_path / "record", up, steps, budgets=[])
    assert codes == [200] * len(steps)
    records = logged(recorded_url)
    assert len(records) == len(steps)
    assert all(r.estimate is not None and r.estimate >= r.cost for r in records)
    if steps is CONCURRENT:  # the held request spans the others
        first = records[0]
        assert all(first.started_at < r.started_at and r.finished_at < first.finished_at for r in records[1:])

    # Replay with the proposed budgets (through the CLI, as a user would).
    budgets = proposal(records, concurrent=steps is CONCURRENT)
    data = simulate_json(monkeypatch, recorded_url, budgets)
    outcomes = data["requests"]
    replay_refused = [o["index"] for o in outcomes if o["outcome"] == "refused"]
    assert replay_refused, "the proposal should refuse something"
    assert any(o["outcome"] == "admitted" and o["index"] > replay_refused[0] for o in outcomes), (
        "and admit something after a refusal (a refused request frees nothing)"
    )
    direct = replay(records, [Budget.from_config(b) for b in budgets])
    if steps is CONCURRENT:  # what is refused is refused by the reservation in flight
        assert replay(records[1:], [Budget.from_config(b) for b in budgets]).count("refused") == 0
    assert [o.status for o in direct.outcomes] == [o["outcome"] for o in outcomes]
    assert data["totals"]["spent"] == direct.spent.decimal_str()

    # Live: the same requests, in the same order, to a fresh gateway with those budgets.
    live_codes, live_url = run_gateway(tmp_path / "live", up, steps, budgets=budgets)
    live_refused = [i for i, code in enumerate(live_codes) if code == 429]
    assert all(code in (200, 429) for code in live_codes)
    assert live_refused == replay_refused
    live = logged(live_url)  # ids differ from the recording's: compare in time order
    admitted = [o for o in direct.outcomes if o.status == "admitted"]
    assert [r.cost for r in live] == [o.cost for o in admitted]
    assert Money(sum(r.cost.nanos for r in live)).decimal_str() == data["totals"]["spent"]
    assert [r.estimate for r in live] == [o.reserved for o in admitted]


# -- the command line ----------------------------------------------------------------------------


def write_log(url: str, records: list[RequestRecord]) -> None:
    """Log ``records`` in a real SQLite ledger as requests do: reserved at their start (the
    ledger's manual clock set there), settled at their end."""
    events = sorted(
        [(r.started_at, 1, r) for r in records] + [(r.finished_at, 0, r) for r in records],
        key=lambda e: (e[0], e[1], e[2].request_id),
    )
    clock = ManualClock(events[0][0])
    ledger = open_ledger(url, clock=clock)
    try:
        for when, kind, record in events:
            clock.set(when)
            if kind == 1:
                assert record.estimate is not None
                ledger.reserve(record.request_id, record.attributes, record.estimate, 3600)
            else:
                ledger.settle(record.request_id, record.cost, record)
    finally:
        ledger.close()


@pytest.fixture
def recorded(tmp_path: Path) -> str:
    """A SQLite ledger whose log holds six requests of the last hour (alice's and bob's)."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    records = [
        replace(r, started_at=base + (r.started_at - T0), finished_at=base + (r.finished_at - T0))
        for r in [
            rec("r1", 0, 1, "0.4", "0.5"),
            rec("r2", 10, 1, "0.3", "0.5", BOB),
            rec("r3", 20, 1, "0.3", "0.5"),
            rec("r4", 30, 1, "0.2", "0.3", BOB),
            rec("r5", 40, 1, "0.1", "0.2"),
            rec("r6", 50, 1, "0.1", "0.1", BOB),
        ]
    ]
    url = f"sqlite:///{tmp_path / 'recorded.db'}"
    write_log(url, records)
    return url


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["simulate", *args])
    return result.exit_code, result.output


def cli_json(*args: str) -> dict[str, Any]:
    code, output = cli(*args, "--json")
    assert code == 0, output
    data: dict[str, Any] = json.loads(output)
    return data


def outcomes(data: dict[str, Any]) -> dict[str, str]:
    return {o["request_id"]: o["outcome"] for o in data["requests"]}


def test_cli_budget_limit_and_window_options(recorded: str) -> None:
    data = cli_json("--ledger", recorded, "--budget", "{id: all, limit: 1}", "--show", "all")
    # Spent 0.4, 0.7; r3's 0.5 passes 1; r4's 0.3 fits (0.9); r5's 0.2 does not; r6's 0.1 does.
    assert outcomes(data) == {"r1": "admitted", "r2": "admitted", "r3": "refused",
                              "r4": "admitted", "r5": "refused", "r6": "admitted"}  # fmt: skip
    assert data["totals"] == {
        "requests": 6,
        "admitted": 4,
        "delayed": 0,
        "clamped": 0,
        "refused": 2,
        "logged_cost": "1.4",
        "spent": "1",
        "avoided": "0.4",
    }
    # --limit: every budget, or one by id; with no budget at all, a global one.
    raised = cli_json("--ledger", recorded, "--budget", "{id: all, limit: 1}", "--limit", "all=2")
    assert raised["totals"]["refused"] == 0 and raised["budgets"][0]["limit"] == "2"
    bare = cli_json("--ledger", recorded, "--limit", "1")
    assert bare["proposal"]["budgets"][0]["id"] == "global" and bare["totals"]["refused"] == 2
    # --window: every budget gets it.
    windowed = cli_json("--ledger", recorded, "--limit", "1", "--window", "{every: 1d}")
    assert windowed["proposal"]["budgets"][0]["window"] == {"every": "1d"}
    # Filters: only bob's requests (0.3 + 0.2 + 0.1 fit 1 USD with their estimates).
    bob = cli_json("--ledger", recorded, "--limit", "1", "--user", "bob", "--show", "all")
    assert set(outcomes(bob)) == {"r2", "r4", "r6"} and bob["totals"]["refused"] == 0
    # The human form: the summary table and the refused requests.
    code, text = cli("--ledger", recorded, "--budget", "{id: all, limit: 1}", "--show", "refused")
    assert code == 0, text
    assert "simulated" in text and "budget all (1 USD, raise)" in text
    assert "r3" in text and "r5" in text and "r4 " not in text


def test_cli_reads_the_proposal_from_a_config_file(recorded: str, tmp_path: Path) -> None:
    config = tmp_path / "spendgate.yaml"
    config.write_text(
        json.dumps(
            {
                "ledger": recorded,
                "upstreams": {"openai": {"kind": "openai", "api_key_env": "UNSET_IN_THIS_TEST"}},
                "budgets": [{"id": "all", "limit": "1", "on_exceed": "wait"}],
                "limits": [
                    {"id": "rpm", "requests": 3, "per": "1m"},
                    {"id": "tpm", "tokens": 1000, "per": "1m"},
                ],
                "defaults": {"max_wait": 5},
            }
        )
    )
    data = cli_json("--config", str(config), "--show", "all")
    assert data["proposal"]["source"] == str(config)
    assert [lim["id"] for lim in data["proposal"]["limits"]] == ["rpm"]
    assert "tpm" in data["proposal"]["not_replayed"][0]
    # r3 and r5 wait 5 s for room in the budget, which nothing frees: refused. The requests
    # limit (3 a minute: r1, r2, r4) refuses r6; it raises (a limit's own on_exceed).
    assert outcomes(data) == {"r1": "admitted", "r2": "admitted", "r3": "refused",
                              "r4": "admitted", "r5": "refused", "r6": "refused"}  # fmt: skip
    r3, r6 = data["requests"][2], data["requests"][5]
    assert r3["by"] == "all" and r3["delay_seconds"] == "5" and "max_wait" in r3["reason"]
    assert r6["by"] == "rpm" and r6["delay_seconds"] == "0"
    assert data["limits"] == [{"id": "rpm", "refused": 1}]
    waited = cli_json("--config", str(config), "--max-wait", "0", "--on-exceed", "raise")
    assert waited["proposal"]["on_exceed"] == "raise"


def test_cli_errors(recorded: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    code, text = cli("--ledger", f"sqlite:///{missing}", "--limit", "1")
    assert code == 1 and not missing.exists()
    code, text = cli("--ledger", recorded, "--budget", "{limit: -1}")
    assert code == 4 and "limit" in text
    code, text = cli("--ledger", recorded, "--limit", "1", "--rate-limit", "{tokens: 10, per: 1m}")
    assert code == 4 and "does not keep" in text
    code, text = cli("--ledger", recorded, "--budget", "{id: a, limit: 1}", "--limit", "b=2")
    assert code == 4 and "no budget 'b'" in text
    code, text = cli("--ledger", recorded, "--since", "2026-12-02", "--until", "2026-12-01")
    assert code == 4
