"""The gateway's request log (issue 10, section 6): one line per /v1 request, admitted or refused,
JSON when stderr is no terminal, and never a secret, a header or the prompt; also under --workers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.gateway.keys import open_keystore
from spendgate.testing import FakeUpstream

from .conftest import SRC, Gateway, _stop, _wait_ready, base_config
from .inprocess import InProcessGateway

PROMPT = "the-prompt-text-5c1f0e"  # must never reach the log
UPSTREAM_KEY = "sk-upstream-secret-8d2b71a4"
UPSTREAM_KEY_ENV = "SPENDGATE_TEST_UPSTREAM_KEY"
WRONG_KEY = "sg-wrong-secret-1e9a3c77"
CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": f"say hi {PROMPT}"}],
    "max_tokens": 5,
}


def start_logged(
    tmp: Path, up: FakeUpstream, args: list[str], env: dict[str, str] | None = None
) -> tuple[Gateway, dict[str, str], Path]:
    """A gateway process whose stderr goes to a file (``Gateway.start`` leaves it to pytest), with
    an upstream key and two virtual keys; returns it, the keys' secrets and the log's path."""
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    store = open_keystore(ledger_url)
    secrets = {
        name: store.create(name=name, user=name)[1] for name in ("alice", "tiny")
    }  # fmt: skip
    close = getattr(store, "close", None)
    if callable(close):
        close()
    config = base_config(
        up,
        ledger_url,
        budgets=[
            {"id": "global", "limit": "100", "window": "day"},
            {"id": "tiny", "selector": {"user": "tiny"}, "limit": "0.001", "window": "day"},
        ],
    )
    config["upstreams"]["fake"]["api_key_env"] = UPSTREAM_KEY_ENV
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(config))
    log = tmp / "stderr.log"
    child_env = {**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, child_env.get("PYTHONPATH", "")) if p)
    for name in ("SPENDGATE_LOG_LEVEL", "SPENDGATE_LOG_FORMAT"):
        if env is None or name not in env:
            child_env.pop(name, None)
    argv = [sys.executable, "-m", "spendgate.gateway.server", "--config", str(path), "--port", "0", *args]
    with log.open("w") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=child_env)
    try:
        url = _wait_ready(proc, 30.0)
    except BaseException:
        _stop(proc)
        raise
    return Gateway(proc, url, ledger_url), secrets, log


def request_lines(text: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [d for d in docs if d["logger"] == "spendgate.requests" and d["level"] == "INFO"]


def test_one_json_line_per_request_and_never_a_secret(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, secrets, log = start_logged(tmp_path, up, ["--log-level", "debug"])
    alice = {"authorization": f"Bearer {secrets['alice']}"}
    sent: list[tuple[int, str]] = []
    try:
        with httpx.Client(base_url=gateway.base_url, timeout=30) as http:

            def post(body: Any, headers: dict[str, str], path: str = "/chat/completions") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                r = http.post(path, content=data, headers={"content-type": "application/json", **headers})
                sent.append((r.status_code, r.headers.get("x-spendgate-request-id", "")))

            post(CHAT, alice)
            post({**CHAT, "stream": True}, alice)
            post({**CHAT, "max_tokens": 4000}, {"authorization": f"Bearer {secrets['tiny']}"})
            post(CHAT, {"authorization": f"Bearer {WRONG_KEY}"})
            post(CHAT, {})
            post(f'{{"model": "gpt-4o", "messages": "{PROMPT}'.encode(), alice)  # not JSON
            post({"messages": CHAT["messages"]}, alice)  # no model
            post({**CHAT, "model": "no-such-model"}, alice)
            post(CHAT, {**alice, "x-fake-error": "500"})
            post(CHAT, {"x-api-key": secrets["alice"]}, path="/nope")
    finally:
        assert gateway.stop() == 0
    text = log.read_text()
    for secret in (*secrets.values(), UPSTREAM_KEY, WRONG_KEY, PROMPT):
        assert secret not in text
    assert "Bearer" not in text and "authorization" not in text.lower()

    lines = request_lines(text)  # every line of stderr is JSON (stderr is a file)
    assert [d["status"] for d in lines] == [status for status, _ in sent]
    assert [d["status"] for d in lines] == [200, 200, 429, 401, 401, 400, 400, 404, 500, 404]
    for (_, rid), d in zip(sent, lines, strict=True):
        assert d["request_id"] == rid or not rid  # the answer's x-spendgate-request-id, where it has one
    for d in lines:
        assert d["request_id"].startswith("sg-") and d["method"] == "POST"
        assert isinstance(d["latency_ms"], float | int) and d["latency_ms"] >= 0
    ok, stream, refused, wrong, missing, bad_json, no_model, unrouted, failed, nope = lines
    for d in (ok, stream):
        assert d["path"] == "/v1/chat/completions" and d["endpoint"] == "chat" and d["model"] == "gpt-4o"
        assert d["key_id"] == d["attributes"]["key"] and d["key_id"].startswith("key_")
        assert d["upstream"] == "fake" and d["upstream_status"] == 200
        assert d["decision"] == "ok" and d["action"] == "settle" and d["ledger_status"] == "settled"
        assert d["budgets"] == ["global"] and d["budget_remaining_usd"].startswith("99.99")
        assert d["charged_usd"] == d["cost_usd"]["total"] and isinstance(d["reserved_usd"], str)
        assert d["tokens"]["output_tokens"] > 0
    assert refused["error"] == "budget" and refused["decision"] == "refused"
    assert refused["reason"] == "budget_exceeded" and refused["budgets"] == ["tiny"]
    assert refused["budget_remaining_usd"] == "0.001" and "estimate_usd" in refused
    assert "upstream_status" not in refused and "charged_usd" not in refused
    assert (wrong["error"], wrong["key_id"]) == ("invalid_api_key", None)
    assert (missing["error"], missing["key_id"]) == ("missing_api_key", None)
    assert bad_json["error"] == "invalid_request" and "model" not in bad_json
    assert no_model["error"] == "invalid_request"
    assert (unrouted["error"], unrouted["model"]) == ("model_not_found", "no-such-model")
    assert failed["upstream_status"] == 500 and failed["decision"] == "released"
    assert failed["reason"] == "upstream_500" and failed["charged_usd"] == "0"
    assert (nope["path"], nope["error"]) == ("/v1/nope", "not_found")


def test_workers_log_each_request_once_from_the_environment(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, secrets, log = start_logged(
        tmp_path,
        up,
        ["--workers", "2"],
        env={"SPENDGATE_LOG_FORMAT": "text", "SPENDGATE_LOG_LEVEL": "info"},
    )
    try:
        with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
            answers = [
                http.post("/chat/completions", json=CHAT, headers={"x-api-key": secrets["alice"]})
                for _ in range(6)
            ]
    finally:
        assert gateway.stop() == 0
    assert [r.status_code for r in answers] == [200] * 6
    text = log.read_text()
    lines = [line for line in text.splitlines() if " INFO spendgate.requests: " in line]
    assert len(lines) == 6, text
    for answer in answers:
        rid = answer.headers["x-spendgate-request-id"]
        assert sum(rid in line for line in lines) == 1
    assert all("POST /v1/chat/completions 200 gpt-4o ok charged " in line for line in lines)
    assert PROMPT not in text and secrets["alice"] not in text


@pytest.mark.anyio
async def test_streams_and_upstream_failures_have_one_line_each(
    gw: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    http = gw.http("alice")
    with caplog.at_level(logging.INFO, logger="spendgate.requests"):
        streamed = await http.post("/chat/completions", json={**CHAT, "stream": True})
        cut = await http.post(
            "/chat/completions", json={**CHAT, "stream": True}, headers={"x-fake-stream-cut-after": "1"}
        )
        down = await http.post("/chat/completions", json={**CHAT, "model": "down-gpt"})
    lines = [r.spendgate for r in caplog.records if r.levelno == logging.INFO]  # type: ignore[attr-defined]
    assert [d["status"] for d in lines] == [streamed.status_code, cut.status_code, down.status_code]
    assert [d["request_id"] for d in lines[:2]] == [
        streamed.headers["x-spendgate-request-id"],
        cut.headers["x-spendgate-request-id"],
    ]
    assert lines[0]["decision"] == "ok" and lines[1]["decision"] == "cut"
    assert lines[2]["status"] == 502 and lines[2]["error"] == "upstream_unreachable"
    assert lines[2]["decision"] == "released" and "upstream_status" not in lines[2]
