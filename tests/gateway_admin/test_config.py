from __future__ import annotations

import logging
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.errors import ConfigError
from spendgate.gateway.config import GatewayConfigError, load_settings, parse_settings, read_ledger_url

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "OPENAI_API_KEY": "sk-test-openai",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "SPENDGATE_ADMIN_TOKEN": "t" * 32,
}

VALID = """\
listen: {host: 0.0.0.0, port: 4100, workers: 3}
ledger: sqlite:////var/lib/spendgate/x.db
upstreams:
  openai: {kind: openai, base_url: "https://api.openai.com/v1/", api_key_env: OPENAI_API_KEY, timeout: 60}
  local: {kind: openai, base_url: "http://127.0.0.1:8000/v1"}
routes:
  - {model: "gpt-*", upstream: openai}
  - {model: my-alias, upstream: local, upstream_model: llama3}
budgets:
  - {id: org, limit: "1000", window: month}
  - {selector: {user: "*"}, limit: 5.5, window: day}
prices:
  my-finetune: {input: "0.3", output: 1.2}
defaults: {on_exceed: wait, max_wait: 12.5, unknown_model: refuse, max_body_bytes: 1000, request_timeout: 30, lease: 60}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spendgate.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> GatewayConfigError:
    with pytest.raises(GatewayConfigError) as info:
        load_settings(write(tmp_path, text), environ=ENV if env is None else env)
    return info.value


def test_valid_config_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID), environ=ENV)
    assert (s.host, s.port, s.workers, s.ledger) == ("0.0.0.0", 4100, 3, "sqlite:////var/lib/spendgate/x.db")
    assert s.upstreams["openai"].base_url == "https://api.openai.com/v1"
    assert s.upstreams["openai"].api_key == "sk-test-openai"
    assert s.upstreams["openai"].timeout == 60.0
    assert s.upstreams["local"].api_key is None  # local: no key needed
    assert s.route("gpt-4o") == (s.upstreams["openai"], "gpt-4o")
    assert s.route("my-alias") == (s.upstreams["local"], "llama3")
    assert s.route("claude-3") is None
    assert [b.id for b in s.budgets] == ["org", "user=*/daily"]
    assert str(s.budgets[1].limit.to_decimal().normalize()) == "5.5"  # YAML float read exactly
    assert s.prices["my-finetune"]["output"] == Decimal("1.2")
    assert (s.on_exceed, s.max_wait, s.max_body_bytes, s.request_timeout, s.lease) == (
        "wait",
        12.5,
        1000,
        30,
        60,
    )
    assert s.admin_token == "t" * 32
    assert "sk-test-openai" not in repr(s) and "t" * 32 not in repr(s)


def test_the_documented_example_loads(tmp_path: Path) -> None:
    """The complete example in docs/gateway-config.md (vLLM, Ollama, Azure's v1 API and all)."""
    text = (ROOT / "docs" / "gateway-config.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    env = {**ENV, "VLLM_API_KEY": "v", "AZURE_OPENAI_API_KEY": "az"}
    s = load_settings(write(tmp_path, example), environ=env)
    azure = s.upstreams["azure"]
    assert (azure.kind, azure.base_url, azure.api_key) == (
        "openai",
        "https://my-resource.openai.azure.com/openai/v1",
        "az",
    )


def test_shipped_example_loads() -> None:
    s = load_settings(ROOT / "examples" / "spendgate.yaml", environ=ENV)
    for model, upstream in [
        ("gpt-4o", "openai"),
        ("o3-mini", "openai"),
        ("text-embedding-3-small", "openai"),
        ("claude-sonnet-4-5", "anthropic"),
    ]:
        found = s.route(model)
        assert found is not None and found[0].name == upstream
    assert s.upstreams["anthropic"].api_key == "sk-ant-test"


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("listen: {host: x, prot: 1}\nupstreams: {}\n", "listen.prot", 1, "did you mean 'port'"),
        ("upstream: {}\n", "upstream", 1, "did you mean 'upstreams'"),
        ("listen:\n  port: 70000\n", "listen.port", 2, "from 0 to 65535"),
        ("listen:\n  port: '80'\n", "listen.port", 2, "whole number"),
        ("listen:\n  port: 80\n  workers: 0\n", "listen.workers", 3, "from 1 to 256"),
        ("ledger: mysql://u:pw@db/x\n", "ledger", 1, "unknown ledger URL"),
        (
            "upstreams:\n  openai:\n    kind: openai\n    base_url: ftp://x\n    api_key_env: OPENAI_API_KEY\n",
            "upstreams.openai.base_url",
            4,
            "must be an http(s) URL",
        ),
        (
            "upstreams:\n  openai:\n    kind: azure\n",
            "upstreams.openai.kind",
            3,
            "one of openai, anthropic",
        ),
        (
            "upstreams:\n  openai: {kind: openai, base_url: 'https://a.b', api_key_env: NOPE_KEY}\n",
            "upstreams.openai.api_key_env",
            2,
            "NOPE_KEY is not set",
        ),
        (
            "upstreams:\n  openai: {kind: openai, base_url: 'https://a.b'}\n",
            "upstreams.openai.api_key_env",
            2,
            "missing",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1', timeout: -1}\n",
            "upstreams.o.timeout",
            2,
            "positive",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1', headers: {Authorization: x}}\n",
            "upstreams.o.headers.Authorization",
            2,
            "api_key_env",
        ),
        (
            "upstreams:\n  openai: {kind: openai, base_url: 'http://localhost:1'}\nroutes:\n  - {model: x, upstream: opena}\n",
            "routes[0].upstream",
            4,
            "did you mean 'openai'",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: [{model: x}]\n",
            "routes[0].upstream",
            3,
            "missing",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: []\n"
            "budgets:\n  - {limit: 1}\n  - {limit: 1, window: day}\n  - {id: x,\n     limit: lots}\n",
            "budgets[2].limit",
            8,
            "cannot read",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: []\n"
            "budgets:\n  - {id: a, limit: 1}\n  - {id: a, limit: 2}\n",
            "budgets[1].id",
            6,
            "also used by budgets[0]",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: []\n"
            "prices:\n  my-model:\n    input: cheap\n",
            "prices['my-model']",
            5,
            "",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: []\n"
            "defaults:\n  unknown_model: default_price\n",
            "defaults.default_price",
            4,
            "required",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: []\n"
            "defaults:\n  on_exceed: explode\n",
            "defaults.on_exceed",
            5,
            "raise, wait, clamp",
        ),
        (
            "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: []\n"
            "defaults:\n  max_body_bytes: 0\n",
            "defaults.max_body_bytes",
            5,
            ">= 1",
        ),
        ("admin_token_env: MY_ADMIN\n", "admin_token_env", 1, "MY_ADMIN is not set"),
        ("listen: {}\nlisten: {}\n", "listen", 2, "listed twice"),
    ],
)
def test_errors_name_key_and_line(tmp_path: Path, text: str, key: str, line: int, words: str) -> None:
    exc = error_of(tmp_path, text)
    assert isinstance(exc, ConfigError)
    assert exc.key == key, str(exc)
    assert exc.line == line, str(exc)
    assert str(exc).startswith(f"{tmp_path / 'spendgate.yaml'}:{line}: {key}: "), str(exc)
    assert words in str(exc)


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "listen:\n  host: [1,\n")
    assert exc.line is not None and "not valid YAML" in str(exc)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_api_key_optional_and_env_resolution() -> None:
    data = {
        "upstreams": {
            "remote": {
                "kind": "openai",
                "base_url": "https://vllm.internal/v1",
                "api_key_env": "X",
                "api_key_optional": True,
            },
            "ollama": {"kind": "openai", "base_url": "http://[::1]:11434/v1"},
        },
        "routes": [{"model": "*", "upstream": "remote"}],
    }
    s = parse_settings(data, source="inline", environ={})
    assert s.upstreams["remote"].api_key is None
    s = parse_settings(data, source="inline", environ={"X": "secret"})
    assert s.upstreams["remote"].api_key == "secret"


def test_admin_token_sources(caplog: pytest.LogCaptureFixture) -> None:
    base = {"upstreams": {"o": {"kind": "openai", "base_url": "http://localhost:1"}}, "routes": []}
    assert parse_settings(base, environ={}).admin_token is None  # admin API disabled
    assert parse_settings(base, environ={"SPENDGATE_ADMIN_TOKEN": "a" * 20}).admin_token == "a" * 20
    named = {**base, "admin_token_env": "OTHER"}
    assert parse_settings(named, environ={"OTHER": "b" * 20}).admin_token == "b" * 20
    with caplog.at_level(logging.WARNING):
        s = parse_settings({**base, "admin_token": "c" * 20}, environ={})
    assert s.admin_token == "c" * 20
    assert "admin_token is written in the config file" in caplog.text
    assert "c" * 20 not in caplog.text


def test_glob_route_cannot_rename() -> None:
    data = {
        "upstreams": {"o": {"kind": "openai", "base_url": "http://localhost:1"}},
        "routes": [{"model": "gpt-*", "upstream": "o", "upstream_model": "x"}],
    }
    with pytest.raises(ConfigError) as info:
        parse_settings(data, source="inline", environ={})
    assert info.value.key == "routes[0].upstream_model"
    assert str(info.value).startswith("inline: routes[0].upstream_model")


def test_missing_upstreams() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({}, environ={})
    assert info.value.key == "upstreams"


def test_a_relative_ledger_is_the_file_next_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    local = "upstreams:\n  local: {kind: openai, base_url: 'http://127.0.0.1:8000/v1'}\nroutes: []\n"
    named, unnamed = folder / "named.yaml", folder / "unnamed.yaml"
    named.write_text("ledger: sqlite:///x.db\n" + local)
    unnamed.write_text(local)
    monkeypatch.chdir(tmp_path)  # not the config's folder: the result must not depend on it
    for config, file in ((named, "x.db"), (unnamed, "spendgate.db")):
        want = f"sqlite:///{folder / file}"
        assert load_settings(config.relative_to(tmp_path), environ=ENV).ledger == want
        assert read_ledger_url(config.relative_to(tmp_path)) == want


# -- rate limits and pacing ---------------------------------------------------------------------

LIMITS_BASE = "upstreams:\n  o: {kind: openai, base_url: 'http://localhost:1'}\nroutes: []\n"


def test_limits_and_paced_budgets_load(tmp_path: Path) -> None:
    from datetime import timedelta

    from spendgate.budgets import Pace

    s = load_settings(
        write(
            tmp_path,
            LIMITS_BASE
            + textwrap.dedent(
                """\
            budgets:
              - {id: even, limit: 300, window: month, pace: even}
              - {id: stepped, limit: 50, window: week, pace: {step: 6h, burst: 10%}}
            limits:
              - {id: key-rpm, selector: {key: "*"}, requests: 60, per: 1m}
              - {selector: {team: research}, tokens: 200000, per: 1h, on_exceed: wait}
              - {selector: {user: "*"}, usd: "0.50", per: 1h, name: hourly spend rate}
              - {id: in-flight, concurrency: 20}
              - {id: prompt-size, selector: {model: gpt-4o}, prompt_tokens: 30000}
            """
            ),
        ),
        environ=ENV,
    )
    assert [b.pace for b in s.budgets] == [Pace.parse("even"), Pace.parse({"step": "6h", "burst": "10%"})]
    ids = [limit.id for limit in s.limits]
    assert ids == ["key-rpm", "team=research/tokens/1h", "user=*/usd/1h", "in-flight", "prompt-size"]
    rpm, tokens, usd, flight, prompt = s.limits
    assert (rpm.kind, rpm.amount, rpm.per, rpm.wildcards) == ("requests", 60, timedelta(minutes=1), ("key",))
    assert (tokens.kind, tokens.on_exceed, tokens.per) == ("tokens", "wait", timedelta(hours=1))
    assert (usd.kind, usd.amount, usd.name) == ("usd", 500_000_000, "hourly spend rate")
    assert (flight.kind, flight.amount, flight.per) == ("concurrency", 20, None)
    assert (prompt.kind, dict(prompt.selector)) == ("prompt_tokens", {"model": "gpt-4o"})
    assert parse_settings({**_minimal(), "limits": None}).limits == ()


def _minimal() -> dict[str, object]:
    return {"upstreams": {"o": {"kind": "openai", "base_url": "http://localhost:1"}}, "routes": []}


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("limits: {requests: 1}\n", "limits", 4, "must be a list of limits, got a mapping"),
        ("limits:\n  - 5\n", "limits[0]", 5, "a limit is a mapping"),
        ("limits:\n  - {requests: 10}\n", "limits[0].per", 5, "missing: a requests limit counts per window"),
        (
            "limits:\n  - {requests: 1, per: 1s}\n  - {requets: 10, per: 10s}\n",
            "limits[1].requets",
            6,
            "did you mean 'requests'",
        ),
        ("limits:\n  - {requests: 10, per: 10s, tokens: 5}\n", "limits[0]", 5, "exactly one of requests"),
        ("limits:\n  - {per: 10s}\n", "limits[0]", 5, "exactly one of requests"),
        ("limits:\n  - {requests: 1.5, per: 1s}\n", "limits[0].requests", 5, "whole number >= 0, got 1.5"),
        ("limits:\n  - {tokens: -1, per: 1s}\n", "limits[0].tokens", 5, "whole number >= 0"),
        ("limits:\n  - usd: lots\n    per: 1m\n", "limits[0].usd", 5, "cannot read 'lots'"),
        ("limits:\n  - {requests: 1, per: 40d}\n", "limits[0].per", 5, "at most 31 days"),
        ("limits:\n  - {requests: 1, per: soon}\n", "limits[0].per", 5, "a window like '10s'"),
        ("limits:\n  - {concurrency: 2, per: 1s}\n", "limits[0].per", 5, "has no window"),
        ("limits:\n  - {prompt_tokens: 2, on_exceed: wait}\n", "limits[0].on_exceed", 5, "cannot wait"),
        ("limits:\n  - {requests: 1, per: 1s, on_exceed: clamp}\n", "limits[0].on_exceed", 5, "raise, wait"),
        (
            "limits:\n  - {selector: {colour: x}, requests: 1, per: 1s}\n",
            "limits[0].selector.colour",
            5,
            "unknown dimension",
        ),
        (
            "limits:\n  - {selector: {key: ''}, requests: 1, per: 1s}\n",
            "limits[0].selector.key",
            5,
            "non-empty",
        ),
        ("limits:\n  - {id: '', requests: 1, per: 1s}\n", "limits[0].id", 5, "non-empty string"),
        (
            "limits:\n  - {id: a, requests: 1, per: 1s}\n  - {id: a, tokens: 1, per: 1s}\n",
            "limits[1].id",
            6,
            "also used by limits[0]",
        ),
        (
            "limits:\n  - {requests: 1, per: 1s}\n  - {requests: 2, per: 1s}\n",
            "limits[1].id",
            6,
            "'global/requests/1s' is also used by limits[0]",
        ),
        (
            "budgets:\n  - {limit: 1, window: month, pace: fast}\n",
            "budgets[0].pace",
            5,
            "'even' or a mapping",
        ),
        ("budgets:\n  - {limit: 1, pace: even}\n", "budgets[0].pace", 5, "a window that resets"),
    ],
)
def test_limit_errors_name_key_and_line(tmp_path: Path, text: str, key: str, line: int, words: str) -> None:
    exc = error_of(tmp_path, LIMITS_BASE + text)
    assert (exc.key, exc.line) == (key, line), str(exc)
    assert str(exc).startswith(f"{tmp_path / 'spendgate.yaml'}:{line}: {key}: "), str(exc)
    assert words in str(exc), str(exc)


def test_the_ledger_url_may_come_from_the_environment(tmp_path: Path) -> None:
    url = "redis://:s3cret@cache:6379/0?prefix=sg&durable=postgresql%3A%2F%2Fdb%2Fspend"
    base = {
        "upstreams": {"local": {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1"}},
        "routes": [{"model": "*", "upstream": "local"}],
    }
    s = parse_settings({**base, "ledger_env": "SG_LEDGER"}, source="inline", environ={"SG_LEDGER": url})
    assert s.ledger == url
    with pytest.raises(GatewayConfigError, match="SG_LEDGER is not set"):
        parse_settings({**base, "ledger_env": "SG_LEDGER"}, source="inline", environ={})
    with pytest.raises(GatewayConfigError, match="not both"):
        parse_settings(
            {"ledger": "memory://", "ledger_env": "SG_LEDGER"}, source="inline", environ={"SG_LEDGER": url}
        )
    with pytest.raises(GatewayConfigError) as info:
        parse_settings(
            {"ledger_env": "SG_LEDGER"}, source="inline", environ={"SG_LEDGER": "mysql://u:s3cret@x/y"}
        )
    assert "s3cret" not in str(info.value)
