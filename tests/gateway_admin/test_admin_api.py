from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from spendgate.budgets import Attributes, Budget
from spendgate.gateway.admin import OPENAPI, create_admin_app
from spendgate.gateway.keys import KeyStore, open_keystore
from spendgate.ledger import Ledger, open_ledger
from spendgate.money import Money

from .support import spend

TOKEN = "admin-" + "x" * 26
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Env:
    def __init__(self, url: str) -> None:
        self.token: str | None = TOKEN
        self.ledger: Ledger = open_ledger(url)
        self.keys: KeyStore = open_keystore(url, cache_ttl=0)
        self.app = create_admin_app(keys=self.keys, ledger=self.ledger, admin_token=lambda: self.token)
        self.client = TestClient(self.app, headers=AUTH)


@pytest.fixture(params=["memory", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    e = Env(url)
    yield e
    e.keys.close()
    e.ledger.close()


def assert_error(response: Any, status: int, code: str, words: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["code"] == code, error
    assert words in error["message"], error


def test_auth(env: Env) -> None:
    anon = TestClient(env.app)
    assert_error(anon.get("/keys"), 401, "missing_admin_token")
    assert_error(anon.get("/keys", headers={"Authorization": "Bearer wrong"}), 401, "invalid_admin_token")
    assert_error(anon.get("/keys", headers={"Authorization": f"Basic {TOKEN}"}), 401, "missing_admin_token")
    _, secret = env.keys.create(user="alice")
    assert_error(
        anon.get("/keys", headers={"Authorization": f"Bearer {secret}"}),
        401,
        "invalid_admin_token",
        "virtual key",
    )
    assert env.client.get("/keys").status_code == 200
    env.token = None  # admin API disabled: every route, even with the old token
    for method, path in [("GET", "/keys"), ("POST", "/budgets"), ("GET", "/openapi.json")]:
        assert_error(env.client.request(method, path), 403, "admin_disabled", "SPENDGATE_ADMIN_TOKEN")


def test_key_lifecycle(env: Env) -> None:
    r = env.client.post(
        "/keys",
        json={"user": "alice", "team": "research", "tags": ["t"], "models": ["gpt-4o", "claude-*"],
              "budget": "50", "window": "month", "expires_at": "2099-01-01", "name": "laptop"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    body = r.json()
    secret, key_id = body["secret"], body["id"]
    assert re.fullmatch(r"sg-[A-Za-z0-9_-]{43}", secret)
    assert body["budget"]["id"] == f"key:{key_id}" and body["budget"]["limit"] == "50"
    assert body["expires_at"] == "2099-01-01T00:00:00Z" and body["state"] == "active"
    assert env.keys.authenticate(secret) is not None

    spend(env.ledger, "12.5", key=key_id, user="alice")
    listed = env.client.get("/keys").json()["data"]
    assert [k["id"] for k in listed] == [key_id]
    assert "secret" not in listed[0] and secret not in env.client.get("/keys").text
    assert listed[0]["budget"]["spent"] == "12.5" and listed[0]["budget"]["percent"] == 25
    assert env.client.get(f"/keys/{key_id}").json()["user"] == "alice"

    assert env.client.post(f"/keys/{key_id}/disable").json()["state"] == "disabled"
    assert env.keys.authenticate(secret) is None
    assert env.client.post(f"/keys/{key_id}/enable").json()["state"] == "active"
    rotated = env.client.post(f"/keys/{key_id}/rotate").json()
    assert rotated["id"] == key_id and rotated["secret"] != secret
    assert env.keys.authenticate(secret) is None and env.keys.authenticate(rotated["secret"]) is not None

    assert env.client.delete(f"/keys/{key_id}").json() == {"id": key_id, "deleted": True}
    for method, path in [("GET", f"/keys/{key_id}"), ("POST", f"/keys/{key_id}/disable"),
                         ("POST", f"/keys/{key_id}/rotate"), ("DELETE", f"/keys/{key_id}")]:  # fmt: skip
        assert_error(env.client.request(method, path), 404, "not_found", key_id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"usr": "x"}, "usr"),
        ({"user": 5}, "user"),
        ({"tags": "a"}, "tags"),
        ({"models": [1]}, "models"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"expires_at": "2001-01-01"}, "expires_at"),
        ({"budget": 12.5}, "budget"),
        ({"budget": "lots"}, "budget"),
        ({"budget": "5", "window": "fortnight"}, "window"),
        ({"window": "day"}, "window"),
    ],
)
def test_key_create_validation(env: Env, body: dict[str, object], field: str) -> None:
    r = env.client.post("/keys", json=body)
    assert_error(r, 400, "invalid_field")
    assert r.json()["error"]["message"].startswith(f"{field}:")
    assert env.keys.list() == []


def test_bad_json(env: Env) -> None:
    assert_error(env.client.post("/keys", content=b"{nope"), 400, "invalid_json")
    assert_error(env.client.post("/keys", json=[1]), 400, "invalid_field", "body")


def test_budgets(env: Env) -> None:
    r = env.client.post(
        "/budgets", json={"id": "team-r", "selector": {"team": "research"}, "limit": "100", "window": "month"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["current"]["limit"] == "100"
    assert_error(env.client.post("/budgets", json={"id": "team-r", "limit": "1"}), 409, "conflict")
    bad = env.client.post("/budgets", json={"id": "x", "limit": "1", "window": "fortnight"})
    assert_error(bad, 400, "invalid_field", "window:")
    assert_error(env.client.post("/budgets", json={"id": "x", "limit": 1.5}), 400, "invalid_field", "limit:")
    assert_error(env.client.post("/budgets", json={"id": "x"}), 400, "invalid_field", "limit:")
    assert_error(
        env.client.post("/budgets", json={"id": "x", "limit": "1", "colour": "red"}),
        400,
        "invalid_field",
        "colour:",
    )

    spend(env.ledger, "40", team="research", user="alice")
    rows = {b["id"]: b for b in env.client.get("/budgets").json()["data"]}
    row = rows["team-r"]
    assert (row["spent"], row["reserved"], row["limit"], row["percent"]) == ("40", "0", "100", 40)
    assert row["resets_at"].endswith("Z")

    r = env.client.patch("/budgets/team-r", json={"limit": "75"})
    assert r.status_code == 200 and r.json()["limit"] == "75" and r.json()["current"]["percent"] == 53
    assert_error(env.client.patch("/budgets/team-r", json={"limit": 75.0}), 400, "invalid_field", "limit:")
    assert_error(env.client.patch("/budgets/team-r", json={"limt": "1"}), 400, "invalid_field", "limt:")
    assert_error(env.client.patch("/budgets/nope", json={"limit": "1"}), 404, "not_found")

    r = env.client.post("/budgets/team-r/reset")
    assert r.status_code == 200 and r.json()["current"]["spent"] == "0"
    assert_error(env.client.post("/budgets/nope/reset"), 404, "not_found")
    assert_error(
        env.client.post("/budgets/team-r/reset", json={"instance": {"user": "a"}}),
        400,
        "invalid_field",
        "instance",
    )

    env.client.post(
        "/budgets", json={"id": "per-user", "selector": {"user": "*"}, "limit": "5", "window": "day"}
    )
    spend(env.ledger, "2", user="alice")
    spend(env.ledger, "3", user="bob")
    r = env.client.post("/budgets/per-user/reset", json={"instance": {"user": "alice"}})
    assert r.status_code == 200, r.text
    assert env.ledger.usage("per-user", {"user": "alice"}).spent.nanos == 0
    assert env.ledger.usage("per-user", {"user": "bob"}).spent.nanos > 0


def test_usage_and_requests(env: Env) -> None:
    spend(env.ledger, "1.25", user="alice", model="gpt-4o", tags=["a", "b"])
    spend(env.ledger, "0.5", user="bob", model="gpt-4o")
    spend(env.ledger, "2", user="alice", model="claude-x")
    r = env.client.get("/usage", params={"by": "user"}).json()
    assert r["data"] == [{"value": "alice", "cost": "3.25"}, {"value": "bob", "cost": "0.5"}]
    assert r["total"] == "3.75"
    assert env.client.get("/usage?by=tag").json()["data"] == [
        {"value": "a", "cost": "1.25"},
        {"value": "b", "cost": "1.25"},
    ]
    assert env.client.get("/usage?by=user&since=2099-01-01").json()["data"] == []
    assert_error(env.client.get("/usage?by=colour"), 400, "invalid_field", "by:")
    assert_error(env.client.get("/usage?since=yesterday"), 400, "invalid_field", "since:")

    data = env.client.get("/requests", params={"user": "alice"}).json()["data"]
    assert len(data) == 2 and {d["cost"] for d in data} == {"1.25", "2"}
    assert all(isinstance(d["cost"], str) for d in data)
    assert {d["estimate"] for d in data} == {"1.25", "2"}  # support.spend reserves what it costs
    assert len(env.client.get("/requests?limit=1").json()["data"]) == 1
    # Paging, OpenAI style: has_more, first_id, last_id, after=<last_id>.
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):  # bounded
        page = env.client.get("/requests", params={"limit": 2, **({"after": after} if after else {})}).json()
        ids = [d["request_id"] for d in page["data"]]
        assert (page["first_id"], page["last_id"]) == ((ids[0], ids[-1]) if ids else (None, None))
        seen += ids
        if not page["has_more"]:
            break
        after = page["last_id"]
    everything = [d["request_id"] for d in env.client.get("/requests").json()["data"]]
    assert seen == everything and len(seen) >= 3
    assert_error(env.client.get("/requests?after=sg-nope"), 400, "invalid_field", "after:")
    assert_error(env.client.get("/requests?limit=0"), 400, "invalid_field", "limit:")
    assert_error(env.client.get("/requests?colour=red"), 400, "invalid_field", "colour:")


def test_unknown_route_and_method(env: Env) -> None:
    assert_error(env.client.get("/nope"), 404, "not_found")
    assert_error(env.client.put("/keys"), 405, "method_not_allowed")


def test_openapi_matches_routes(env: Env) -> None:
    served = env.client.get("/openapi.json").json()
    assert served == OPENAPI and served["openapi"].startswith("3.1")
    in_app = {
        (method.lower(), route.path)
        for route in env.app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"
    }
    documented = {(method, path) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert in_app == documented
    # every $ref resolves
    text = str(OPENAPI)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in OPENAPI["components"]["schemas"]


def test_delete_budget(env: Env) -> None:
    env.client.post("/budgets", json={"id": "team-r", "selector": {"team": "research"}, "limit": "100"})
    spend(env.ledger, "40", team="research", user="alice")
    held = env.ledger.reserve("in-flight", Attributes(team="research"), Money.usd("2"), lease=60)
    assert held.admitted
    r = env.client.delete("/budgets/team-r")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "team-r", "deleted": True, "in_flight": 1, "reserved": "2"}
    assert "team-r" not in {b["id"] for b in env.client.get("/budgets").json()["data"]}
    assert env.ledger.settle("in-flight", Money.usd("1")).status == "settled"  # ends as usual
    assert_error(env.client.delete("/budgets/team-r"), 404, "not_found")
    assert_error(env.client.patch("/budgets/team-r", json={"limit": "1"}), 404, "not_found")


def test_a_live_key_keeps_its_own_budget(env: Env) -> None:
    created = env.client.post("/keys", json={"user": "alice", "budget": "5"}).json()
    budget_id = created["budget"]["id"]
    assert_error(env.client.delete(f"/budgets/{budget_id}"), 409, "conflict", "delete the key first")
    assert env.client.delete(f"/keys/{created['id']}").status_code == 200
    assert env.client.delete(f"/budgets/{budget_id}").json()["deleted"] is True


def test_a_budget_of_the_config_is_not_deleted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    ledger = open_ledger(url, [Budget.from_config({"id": "global", "limit": "100"})])
    keys = open_keystore(url)
    app = create_admin_app(
        keys=keys, ledger=ledger, admin_token=lambda: TOKEN, config_budgets=lambda: frozenset({"global"})
    )
    client = TestClient(app, headers=AUTH)
    assert_error(client.delete("/budgets/global"), 409, "conflict", "defined in the gateway's config")
    assert [b.id for b in ledger.budgets()] == ["global"]
    keys.close()
    ledger.close()
