"""The admin API's /limits routes: list, read, create, change (PATCH, PUT), delete; refusals of
odd input and of config limits; every answer against the OpenAPI document."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.test_fuzz import violations
from spendgate.budgets import Attributes
from spendgate.gateway.admin import OPENAPI, create_admin_app
from spendgate.gateway.keys import KeyStore, open_keystore
from spendgate.ledger import Ledger, open_ledger
from spendgate.limits import Demand, Limit
from spendgate.money import Money

from .test_admin_api import AUTH, TOKEN, assert_error

_ids = itertools.count()
ID = "key=*/requests/10s"  # the default id of REQUESTS
REQUESTS = {"selector": {"key": "*"}, "requests": 10, "per": "10s"}


class Env:
    """The admin app over a real ledger; ``configured``: the ids the gateway's config defines."""

    def __init__(self, url: str, configured: frozenset[str] = frozenset()) -> None:
        self.ledger: Ledger = open_ledger(url)
        self.keys: KeyStore = open_keystore(url, cache_ttl=0)
        self.app = create_admin_app(
            keys=self.keys, ledger=self.ledger, admin_token=lambda: TOKEN, config_limits=lambda: configured
        )
        self.client = TestClient(self.app, headers=AUTH)

    def close(self) -> None:
        self.keys.close()
        self.ledger.close()

    def take(self, demand: Demand | None = None, **attrs: object) -> str:
        """One request reserved now (what it takes from each limit it matches), left open."""
        request_id = f"req-{next(_ids)}"
        held = self.ledger.reserve(request_id, Attributes.of(**attrs), Money(0), lease=60, demand=demand)
        assert held.admitted, held
        return request_id

    def one(self, limit_id: str) -> dict[str, Any]:
        r = self.client.get(f"/limits/{limit_id}")
        assert r.status_code == 200, r.text
        view: dict[str, Any] = check(r, "/limits/{id}", "get")
        return view


def check(r: Any, path: str, method: str) -> Any:
    """The answer, after checking that the document lists its status and its schema allows it."""
    documented = OPENAPI["paths"][path][method]["responses"].get(str(r.status_code))
    assert documented is not None, f"{method} {path}: undocumented {r.status_code}: {r.text}"
    body = r.json()
    assert violations(body, documented["content"]["application/json"]["schema"]) == [], body
    return body


@pytest.fixture(params=["sqlite", "memory"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    url = f"sqlite:///{tmp_path / 'spend.db'}" if request.param == "sqlite" else "memory://"
    e = Env(url)
    yield e
    e.close()


def test_create_list_and_read(env: Env) -> None:
    assert check(env.client.get("/limits"), "/limits", "get") == {"object": "list", "data": []}
    r = env.client.post("/limits", json=REQUESTS)
    assert r.status_code == 201, r.text
    created = check(r, "/limits", "post")
    assert created == {
        "id": ID, "name": None, "selector": {"key": "*"}, "kind": "requests", "amount": "10", "per": "10s",
        "on_exceed": "raise", "label": "key=*: 10 requests per 10s", "instances": [],
    }  # fmt: skip
    assert env.ledger.get_limit(ID) == Limit.from_config(REQUESTS)
    assert_error(env.client.post("/limits", json=REQUESTS), 409, "conflict", "exists")
    check(env.client.post("/limits", json=REQUESTS), "/limits", "post")

    for _ in range(3):
        env.take(key="k1")
    env.take(key="k2")
    view = env.one(ID)
    uses = {tuple(u["instance"].items()): u for u in view["instances"]}
    assert uses[(("key", "k1"),)] == {
        "id": ID, "instance": {"key": "k1"}, "selector": {"key": "k1"}, "label": "key=k1: 10 requests per 10s",
        "kind": "requests", "amount": "10", "used": "3", "remaining": "7", "percent": 30, "per": "10s",
    }  # fmt: skip
    assert uses[(("key", "k2"),)]["used"] == "1"
    # The id's "/" may come percent-encoded too.
    assert env.client.get("/limits/" + quote(ID, safe="")).json() == view

    # A limit without wildcards always has its one instance; USD is a decimal string.
    r = env.client.post("/limits", json={"id": "team-usd", "selector": {"team": "r"}, "usd": "1.5", "per": "1h",
                                         "on_exceed": "wait", "name": "team r"})  # fmt: skip
    assert r.status_code == 201, r.text
    env.take(Demand(cost=Money.usd("0.25").nanos), team="r")
    (use,) = env.one("team-usd")["instances"]
    assert (use["amount"], use["used"], use["remaining"], use["percent"]) == ("1.5", "0.25", "1.25", 16)
    assert env.one("team-usd")["label"] == "team r: team=r: $1.50 per 1h"

    # Concurrency counts what is in flight, and gives it back at the ending.
    assert env.client.post("/limits", json={"id": "flight", "concurrency": 2}).status_code == 201
    held = env.take(key="k3")
    assert env.one("flight")["instances"][0]["used"] == "1"
    env.ledger.release(held)
    assert env.one("flight")["instances"][0]["used"] == "0"

    listed = check(env.client.get("/limits"), "/limits", "get")["data"]
    assert [v["id"] for v in listed] == [ID, "team-usd", "flight"]
    assert listed[0] == env.one(ID)
    assert_error(env.client.get("/limits/nope"), 404, "not_found", "no limit 'nope'")
    assert_error(env.client.get("/limits/"), 404, "not_found")
    assert_error(env.client.post(f"/limits/{ID}"), 405, "method_not_allowed")
    assert_error(TestClient(env.app).get("/limits"), 401, "missing_admin_token")


def test_a_default_id_with_spaces_and_slashes(env: Env) -> None:
    body = {"selector": {"team": "research", "user": "*"}, "tokens": 2000, "per": "1m"}
    created = env.client.post("/limits", json=body).json()
    assert created["id"] == "user=*, team=research/tokens/1m"  # dimension order
    env.take(Demand(input_tokens=300, output_tokens=200), team="research", user="alice")
    (use,) = env.one(created["id"])["instances"]
    assert (use["instance"], use["used"]) == ({"user": "alice"}, "500")
    r = env.client.patch("/limits/" + quote(created["id"]), json={"amount": 3000})
    assert r.status_code == 200 and r.json()["instances"][0]["remaining"] == "2500", r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"usd": 1.5, "per": "1h"}, "usd"),  # a float cannot carry the exact amount
        ({"usd": "2000000000", "per": "1h"}, "usd"),
        ({"usd": "lots", "per": "1h"}, "usd"),
        ({"requests": 10**19, "per": "1m"}, "requests"),
        ({"requests": -1, "per": "1m"}, "requests"),
        ({"requests": "10", "per": "1m"}, "requests"),
        ({"requests": True, "per": "1m"}, "requests"),
        ({"requests": 10, "tokens": 5, "per": "1m"}, "body"),
        ({"per": "1m"}, "body"),
        ({}, "body"),
        ({"requests": 10}, "per"),
        ({"requests": 10, "per": "fortnight"}, "per"),
        ({"requests": 10, "per": "32d"}, "per"),
        ({"requests": 10, "per": 10**30}, "per"),
        ({"requests": 10, "per": "9" * 30 + "d"}, "per"),
        ({"requests": 10, "per": 0}, "per"),
        ({"concurrency": 2, "per": "1m"}, "per"),
        ({"prompt_tokens": 100, "on_exceed": "wait"}, "on_exceed"),
        ({"requests": 10, "per": "1m", "on_exceed": "clamp"}, "on_exceed"),
        ({"requests": 10, "per": "1m", "on_exceed": ["raise"]}, "on_exceed"),
        ({"requests": 10, "per": "1m", "selector": {"colour": "red"}}, "selector.colour"),
        ({"requests": 10, "per": "1m", "selector": {"key": ""}}, "selector.key"),
        ({"requests": 10, "per": "1m", "selector": ["key"]}, "selector"),
        ({"requests": 10, "per": "1m", "selector": "key=*"}, "selector"),
        ({"requests": 10, "per": "1m", "id": "a\nb"}, "id"),
        ({"requests": 10, "per": "1m", "id": 7}, "id"),
        ({"requests": 10, "per": "1m", "name": ""}, "name"),
        ({"requests": 10, "per": "1m", "colour": "red"}, "colour"),
    ],
)
def test_create_refuses_odd_input(env: Env, body: dict[str, object], field: str) -> None:
    r = env.client.post("/limits", json=body)
    assert_error(r, 400, "invalid_field", f"{field}:")
    assert r.json()["error"]["message"].startswith(f"{field}:")
    check(r, "/limits", "post")
    assert env.ledger.limits() == []


def test_bad_json(env: Env) -> None:
    assert_error(env.client.post("/limits", content=b"{nope"), 400, "invalid_json")
    assert_error(env.client.post("/limits", content=b'{"id": "\\ud800"}'), 400, "invalid_json")
    assert_error(env.client.post("/limits", json=[REQUESTS]), 400, "invalid_field", "body")
    env.client.post("/limits", json=REQUESTS)
    assert_error(env.client.patch(f"/limits/{ID}", content=b"[1"), 400, "invalid_json")
    assert_error(env.client.put(f"/limits/{ID}", json="x"), 400, "invalid_field", "body")


def test_patch_keeps_the_counts_while_per_stays(env: Env) -> None:
    env.client.post("/limits", json=REQUESTS)
    for _ in range(3):
        env.take(key="k1")
    r = env.client.patch(f"/limits/{ID}", json={"amount": 5})
    view = check(r, "/limits/{id}", "patch")
    assert (view["amount"], view["instances"][0]["used"], view["instances"][0]["remaining"]) == (
        "5",
        "3",
        "2",
    )
    assert env.ledger.get_limit(ID).amount == 5
    view = env.client.patch(f"/limits/{ID}", json={"amount": "4", "on_exceed": "wait"}).json()
    assert (view["amount"], view["on_exceed"], view["instances"][0]["used"]) == ("4", "wait", "3")
    # A new window starts over (the ledger drops what the old one counted).
    view = env.client.patch(f"/limits/{ID}", json={"per": "1m"}).json()
    assert (view["per"], view["instances"]) == ("1m", [])
    assert env.ledger.get_limit(ID) == Limit.from_config({**REQUESTS, "id": ID, "requests": 4, "per": "1m",
                                                          "on_exceed": "wait"})  # fmt: skip

    for body, field in [
        ({}, "body"),
        ({"amount": -1}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({"amount": 10**19}, "amount"),
        ({"amount": None}, "amount"),
        ({"per": "1y"}, "per"),
        ({"per": None}, "per"),
        ({"on_exceed": "clamp"}, "on_exceed"),
        ({"requests": 5}, "requests"),  # PATCH changes amount, per, on_exceed; PUT the rest
        ({"selector": {"key": "k1"}}, "selector"),
    ]:
        r = env.client.patch(f"/limits/{ID}", json=body)
        assert_error(r, 400, "invalid_field", f"{field}:")
        check(r, "/limits/{id}", "patch")
    assert env.ledger.get_limit(ID).amount == 4
    assert_error(env.client.patch("/limits/nope", json={"amount": 1}), 404, "not_found")

    env.client.post("/limits", json={"id": "usd", "usd": "1", "per": "1d"})
    assert env.client.patch("/limits/usd", json={"amount": "2.25"}).json()["amount"] == "2.25"
    assert_error(env.client.patch("/limits/usd", json={"amount": 2.5}), 400, "invalid_field", "never a float")
    env.client.post("/limits", json={"id": "flight", "concurrency": 2})
    assert_error(env.client.patch("/limits/flight", json={"per": "1m"}), 400, "invalid_field", "per:")
    assert env.client.patch("/limits/flight", json={"amount": 7}).json()["amount"] == "7"


def test_put_replaces_all_but_the_selector(env: Env) -> None:
    env.client.post("/limits", json=REQUESTS)
    env.take(key="k1")
    env.take(key="k1")
    r = env.client.put(
        f"/limits/{ID}", json={**REQUESTS, "requests": 20, "name": "per key", "on_exceed": "wait"}
    )
    view = check(r, "/limits/{id}", "put")
    assert (view["amount"], view["name"], view["on_exceed"]) == ("20", "per key", "wait")
    assert view["instances"][0]["used"] == "2"  # same kind and per: the counts stay
    # Without the name it has none: PUT is the whole definition. The id may be restated.
    view = env.client.put(f"/limits/{ID}", json={**REQUESTS, "id": ID}).json()
    assert (view["name"], view["amount"], view["instances"][0]["used"]) == (None, "10", "2")
    # Another kind counts from zero, under the same id.
    view = check(env.client.put(f"/limits/{ID}", json={"selector": {"key": "*"}, "concurrency": 3}),
                 "/limits/{id}", "put")  # fmt: skip
    assert (view["id"], view["kind"], view["per"], view["instances"]) == (ID, "concurrency", None, [])

    for body, field in [
        ({"selector": {"user": "*"}, "concurrency": 3}, "selector"),
        ({"concurrency": 3}, "selector"),
        ({**REQUESTS, "id": "other"}, "id"),
        ({"selector": {"key": "*"}}, "body"),
        ({**REQUESTS, "per": "1w"}, "per"),
    ]:
        r = env.client.put(f"/limits/{ID}", json=body)
        assert_error(r, 400, "invalid_field", f"{field}:")
        check(r, "/limits/{id}", "put")
    assert env.ledger.get_limit(ID).kind == "concurrency"
    r = env.client.put("/limits/nope", json=REQUESTS)
    assert_error(r, 404, "not_found")
    check(r, "/limits/{id}", "put")
    assert [limit.id for limit in env.ledger.limits()] == [ID]


def test_delete(env: Env) -> None:
    env.client.post("/limits", json={"id": "flight", "concurrency": 1})
    held = env.take(key="k1")
    r = env.client.delete("/limits/flight")
    assert check(r, "/limits/{id}", "delete") == {"id": "flight", "deleted": True}
    assert env.ledger.limits() == []
    assert env.take(key="k2")  # no longer enforced: a second request in flight is admitted
    assert env.ledger.settle(held, Money(0)).status == "settled"  # what was in flight ends as usual
    r = env.client.delete("/limits/flight")
    assert_error(r, 404, "not_found")
    check(r, "/limits/{id}", "delete")
    assert_error(env.client.get("/limits/flight"), 404, "not_found")
    # Created again, it counts from zero.
    env.client.post("/limits", json={"id": "flight", "concurrency": 1})
    assert env.one("flight")["instances"][0]["used"] == "0"


def test_a_limit_of_the_config_is_not_changed_or_deleted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    env = Env(url, configured=frozenset({"cfg"}))
    configured = Limit.from_config({"id": "cfg", "selector": {"key": "*"}, "requests": 10, "per": "1m"})
    env.ledger.put_limit(configured)
    try:
        for r, method in [
            (env.client.patch("/limits/cfg", json={"amount": 20}), "patch"),
            (
                env.client.put("/limits/cfg", json={"selector": {"key": "*"}, "requests": 20, "per": "1m"}),
                "put",
            ),
            (env.client.delete("/limits/cfg"), "delete"),
        ]:
            assert_error(r, 409, "conflict", "defined in the gateway's config (limits:)")
            check(r, "/limits/{id}", method)
        r = env.client.post("/limits", json={"id": "cfg", "requests": 1, "per": "1s"})
        assert_error(r, 409, "conflict", "exists")
        assert env.ledger.limits() == [configured]
        assert env.one("cfg")["amount"] == "10"  # read as any other
        # One the API made next to it is the API's to change.
        env.client.post("/limits", json={"id": "mine", "requests": 1, "per": "1s"})
        assert env.client.patch("/limits/mine", json={"amount": 2}).status_code == 200
        assert env.client.delete("/limits/mine").status_code == 200
    finally:
        env.close()


def test_the_document_has_the_limit_routes(env: Env) -> None:
    routes = {
        (method.lower(), route.path)
        for route in env.app.routes
        if isinstance(route, Route) and route.path.startswith("/limits")
        for method in (route.methods or ())
        if method != "HEAD"
    }
    documented = {(m, p) for p, ops in OPENAPI["paths"].items() if p.startswith("/limits") for m in ops}
    assert routes == documented == {
        ("get", "/limits"), ("post", "/limits"), ("get", "/limits/{id}"), ("patch", "/limits/{id}"),
        ("put", "/limits/{id}"), ("delete", "/limits/{id}"),
    }  # fmt: skip
    for name in ("Limit", "LimitUse", "LimitConfig", "LimitChange", "LimitDeleted"):
        assert name in OPENAPI["components"]["schemas"]
    # Every kind's config entry the document describes is one the API takes.
    for option in OPENAPI["components"]["schemas"]["LimitConfig"]["oneOf"]:
        (kind,) = (name for name in option["required"] if name != "per")
        body: dict[str, object] = {"id": f"doc-{kind}", kind: "1" if kind == "usd" else 1}
        if "per" in option["required"]:
            body["per"] = "1m"
        r = env.client.post("/limits", json=body)
        assert r.status_code == 201, r.text
        assert violations(body, option) == []
        check(r, "/limits", "post")
    check(env.client.get("/limits"), "/limits", "get")
