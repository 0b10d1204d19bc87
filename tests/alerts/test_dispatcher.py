"""The alert dispatcher over a real ledger (memory and a SQLite file) and a real local webhook
receiver, with a manual clock: thresholds, refusals, resets and soft budgets, each delivered
once; retries with backoff while the receiver is down; a sender that died mid-delivery."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spendgate.alerts import AlertDispatcher, LogDestination, RetryPolicy, WebhookDestination
from spendgate.alerts.destinations import SlackDestination, kinds_of
from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.ledger import Ledger, Refusal, Reservation, open_ledger
from spendgate.money import Money
from spendgate.testing.webhooks import WebhookReceiver

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TEAM = Attributes(team="research")
SECRET = "whsec_" + "c3BlbmRnYXRlLXRlc3Qtc2VjcmV0"  # base64 of "spendgate-test-secret"


def budget(**kw: object) -> Budget:
    args: dict[str, object] = {
        "id": "research",
        "selector": {"team": "research"},
        "limit": Money.parse("1"),
        "window": Window.parse("day"),
        "thresholds": (50, 80, 100),
    }
    args.update(kw)
    return Budget(**args)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    yield hook
    hook.close()


def spend(ledger: Ledger, request_id: str, usd: str) -> None:
    held = ledger.reserve(request_id, TEAM, Money.parse(usd), 600)
    assert isinstance(held, Reservation), held
    ledger.settle(request_id, Money.parse(usd))


def dispatcher(ledger: Ledger, receiver: WebhookReceiver, **kw: object) -> AlertDispatcher:
    hook = WebhookDestination("ops", receiver.url, SECRET, timeout=2.0)
    d = AlertDispatcher(ledger, [hook], retry=RetryPolicy(max_attempts=3, backoff=10, max_backoff=60), **kw)  # type: ignore[arg-type]
    d.listen()
    return d


def test_each_threshold_is_delivered_once_signed(url: str, receiver: WebhookReceiver) -> None:
    clock = ManualClock(T0)
    ledger = open_ledger(url, [budget()], clock=clock)
    d = dispatcher(ledger, receiver)
    d.step()  # registers the destination before anything happens
    spend(ledger, "r1", "0.5")
    spend(ledger, "r2", "0.3")
    assert d.step() == 2
    spend(ledger, "r3", "0.2")
    assert d.step() == 1
    assert d.step() == 0  # nothing twice
    posts = receiver.accepted
    assert [p.json()["threshold"] for p in posts] == [50, 80, 100]
    first = posts[0]
    assert first.signature_ok(SECRET)
    assert not first.signature_ok("whsec_" + "d3Jvbmc=")
    body = first.json()
    assert body["type"] == "budget.threshold" and body["schema"] == 1
    assert body["budget_id"] == "research" and body["instance"] == {}
    assert body["spent"] == "0.5" and body["limit"] == "1" and body["request_id"] == "r1"
    assert body["window_start"] == "2026-03-10T00:00:00Z" and body["window_end"] == "2026-03-11T00:00:00Z"
    assert first.headers["webhook-id"] == body["id"]
    records = ledger.alert_deliveries()
    assert [r.state for r in records] == ["delivered"] * 3
    # The next window alerts again, once.
    clock.set(T0 + timedelta(days=1))
    spend(ledger, "r4", "0.6")
    d.step()
    assert [p.json()["threshold"] for p in receiver.accepted] == [50, 80, 100, 50]
    ledger.close()


def test_a_receiver_down_gets_everything_later_once(url: str, receiver: WebhookReceiver) -> None:
    clock = ManualClock(T0)
    ledger = open_ledger(url, [budget()], clock=clock)
    d = dispatcher(ledger, receiver)
    d.step()
    receiver.mode = "fail"
    spend(ledger, "r1", "0.9")  # 50 and 80 at once
    d.step()
    assert len(receiver.posts) == 2 and not receiver.accepted
    pending = ledger.alert_deliveries(state="pending")
    assert len(pending) == 2 and all(r.attempts == 1 and "HTTP 503" in (r.last_error or "") for r in pending)
    due = min(r.next_attempt_at for r in pending if r.next_attempt_at is not None)
    assert timedelta(seconds=10) <= due - T0 <= timedelta(seconds=11)  # backoff 10 s + <10% spread
    clock.advance(5)
    d.step()
    assert len(receiver.posts) == 2  # not due yet: nothing sent
    receiver.mode = "ok"
    clock.advance(10)
    d.step()
    assert sorted(p.json()["threshold"] for p in receiver.accepted) == [50, 80]
    assert receiver.accepted_ids == {p.headers["webhook-id"]: 1 for p in receiver.accepted}
    assert [r.state for r in ledger.alert_deliveries()] == ["delivered", "delivered"]
    ledger.close()


def test_giving_up_and_retrying_by_hand(url: str, receiver: WebhookReceiver) -> None:
    clock = ManualClock(T0)
    ledger = open_ledger(url, [budget()], clock=clock)
    d = dispatcher(ledger, receiver)
    d.step()
    receiver.mode = "fail"
    spend(ledger, "r1", "0.5")
    for _ in range(3):
        d.step()
        clock.advance(120)
    (failed,) = ledger.alert_deliveries(state="failed")
    assert failed.attempts == 3 and len(receiver.posts) == 3
    receiver.mode = "ok"
    d.step()
    assert not receiver.accepted  # given up: only a person brings it back
    assert ledger.retry_delivery(failed.event.id, "ops")
    assert not ledger.retry_delivery(failed.event.id, "ops")  # no longer failed
    d.step()
    assert len(receiver.accepted) == 1
    ledger.close()


def test_two_dispatchers_on_one_ledger_file_deliver_once(tmp_path: Path, receiver: WebhookReceiver) -> None:
    clock = ManualClock(T0)
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    a = open_ledger(url, [budget()], clock=clock)
    b = open_ledger(url, [budget()], clock=clock)
    da, db = dispatcher(a, receiver, owner="a"), dispatcher(b, receiver, owner="b")
    da.step()
    db.step()
    spend(a, "r1", "0.5")
    spend(b, "r2", "0.5")
    # Both noticed what they settled; both try to deliver everything.
    db.step()
    da.step()
    db.step()
    assert sorted(p.json()["threshold"] for p in receiver.accepted) == [50, 80, 100]
    assert set(receiver.accepted_ids.values()) == {1}
    a.close()
    b.close()


def test_a_sender_that_died_mid_delivery_is_taken_over_after_its_lease(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    clock = ManualClock(T0)
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    ledger = open_ledger(url, [budget()], clock=clock)
    d = dispatcher(ledger, receiver, owner="live", lease=30)
    d.step()
    spend(ledger, "r1", "0.5")
    dead = ledger.claim_deliveries(["ops"], "dead", timedelta(seconds=30))
    assert len(dead) == 1  # claimed, and then its process died before finishing
    d.step()
    assert not receiver.posts  # its lease holds: nobody else sends it
    clock.advance(31)
    d.step()
    assert len(receiver.accepted) == 1
    assert not ledger.finish_delivery(dead[0], "delivered")  # too late: the claim was taken over
    (record,) = ledger.alert_deliveries()
    assert record.state == "delivered" and record.attempts == 2
    ledger.close()


def test_refusals_starting_once_per_window(url: str, receiver: WebhookReceiver) -> None:
    clock = ManualClock(T0)
    ledger = open_ledger(url, [budget(thresholds=(100,))], clock=clock)
    d = dispatcher(ledger, receiver)
    d.step()
    spend(ledger, "r1", "0.9")
    for i in range(5):
        refused = ledger.reserve(f"x{i}", TEAM, Money.parse("0.2"), 600)
        assert isinstance(refused, Refusal)
    d.step()
    kinds = [p.json()["type"] for p in receiver.accepted]
    assert kinds == ["budget.refusing"]
    body = receiver.accepted[0].json()
    assert body["spent"] == "0.9" and body["needed"] == "0.2" and body["paced"] is False
    clock.set(T0 + timedelta(days=1))
    spend(ledger, "r2", "0.9")
    assert isinstance(ledger.reserve("y", TEAM, Money.parse("0.2"), 600), Refusal)
    d.step()
    assert [p.json()["type"] for p in receiver.accepted] == ["budget.refusing"] * 2
    ledger.close()


def test_a_reset_is_announced(url: str, receiver: WebhookReceiver) -> None:
    ledger = open_ledger(url, [budget()], clock=ManualClock(T0))
    d = dispatcher(ledger, receiver)
    d.step()
    ledger.reset("research")
    d.step()
    (post,) = receiver.accepted
    assert post.json()["type"] == "budget.reset" and post.json()["all_instances"] is True
    ledger.close()


def test_a_soft_budget_never_refuses_and_alerts_past_its_limit(url: str, receiver: WebhookReceiver) -> None:
    ledger = open_ledger(url, [budget(on_exceed="alert", thresholds=(100, 150))], clock=ManualClock(T0))
    d = dispatcher(ledger, receiver)
    d.step()
    for i in range(4):
        spend(ledger, f"r{i}", "0.4")  # 1.6 USD against a 1 USD soft limit: all admitted
    d.step()
    bodies = [p.json() for p in receiver.accepted]
    assert [b["threshold"] for b in bodies] == [100, 150]
    assert all(b["soft"] is True for b in bodies)
    assert "requests go on" in bodies[0]["summary"]
    (usage,) = ledger.list_budgets()
    assert usage.spent == Money.parse("1.6")
    ledger.close()


def test_a_destination_takes_only_its_kinds_and_budgets(
    url: str, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = open_ledger(
        url, [budget(), budget(id="other", selector={"team": "other"})], clock=ManualClock(T0)
    )
    only_refusals = WebhookDestination("ops", receiver.url, timeout=2.0, kinds=kinds_of(["refusing"]))
    only_other = LogDestination("log", budgets=frozenset({"other"}))
    d = AlertDispatcher(ledger, [only_refusals, only_other])
    d.listen()
    d.step()
    caplog.set_level(logging.WARNING, "spendgate.alerts")
    spend(ledger, "r1", "0.6")
    d.step()
    assert not receiver.posts
    assert not [r for r in caplog.records if r.name == "spendgate.alerts"]
    assert {r.state for r in ledger.alert_deliveries()} == {"skipped"}
    held = ledger.reserve("o1", Attributes(team="other"), Money.parse("0.5"), 600)
    assert isinstance(held, Reservation)
    ledger.settle("o1", Money.parse("0.5"))
    d.step()
    lines = [r.getMessage() for r in caplog.records if r.name == "spendgate.alerts"]
    assert lines == ["spendgate alert: Budget team=other, daily: 50% used (0.5 of 1 USD)"]
    ledger.close()


def test_slack_gets_one_readable_line(receiver: WebhookReceiver) -> None:
    ledger = open_ledger("memory://", [budget()], clock=ManualClock(T0))
    d = AlertDispatcher(ledger, [SlackDestination("slack", receiver.url, timeout=2.0)])
    d.listen()
    d.step()
    spend(ledger, "r1", "0.5")
    d.step()
    (post,) = receiver.accepted
    assert post.json() == {
        "text": ":warning: spendgate: Budget team=research, daily: 50% used (0.5 of 1 USD)"
    }
    assert "webhook-signature" not in post.headers


def test_an_unreachable_destination_is_retried(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    dead_url = receiver.url
    receiver.close()  # nothing listens there now: connection refused
    clock = ManualClock(T0)
    ledger = open_ledger(f"sqlite:///{tmp_path / 'spend.db'}", [budget()], clock=clock)
    d = AlertDispatcher(ledger, [WebhookDestination("ops", dead_url, timeout=1.0)])
    d.listen()
    d.step()
    spend(ledger, "r1", "0.5")
    d.step()
    (record,) = ledger.alert_deliveries()
    assert record.state == "pending" and "ConnectError" in (record.last_error or "")
    ledger.close()


def test_the_thread_shell_delivers_without_being_stepped(tmp_path: Path, receiver: WebhookReceiver) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'spend.db'}", [budget()])
    d = AlertDispatcher(ledger, [WebhookDestination("ops", receiver.url, timeout=2.0)], poll_interval=30)
    d.start()
    try:
        assert d.registered.wait(10)
        spend(ledger, "r1", "0.5")  # the crossing wakes the thread: no 30 s poll wait
        assert len(receiver.wait_for(1, timeout=10)) == 1
    finally:
        d.stop()
        ledger.close()
