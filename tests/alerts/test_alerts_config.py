"""The gateway config's ``alerts:`` section and soft budgets: read right, or a clear error that
names the key."""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.alerts.config import AlertSettings
from spendgate.budgets import Budget
from spendgate.errors import ConfigError
from spendgate.gateway.config import GatewayConfigError, parse_settings

BASE: dict[str, Any] = {
    "upstreams": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "routes": [{"model": "gpt-*", "upstream": "fake"}],
}
ENV = {"HOOK_URL": "https://hooks.example.com/x", "HOOK_SECRET": "whsec_c2VjcmV0"}


def parse(alerts: object, **extra: Any) -> AlertSettings:
    return parse_settings({**BASE, "alerts": alerts, **extra}, environ=ENV).alerts


def test_absent_means_the_log() -> None:
    settings = parse_settings(BASE, environ={}).alerts
    assert settings == AlertSettings()
    assert [(d.name, d.type) for d in settings.destinations] == [("log", "log")]


def test_a_full_section() -> None:
    settings = parse(
        {
            "destinations": [
                {"name": "ops", "url_env": "HOOK_URL", "secret_env": "HOOK_SECRET", "timeout": 2,
                 "events": ["threshold", "refusing"], "budgets": ["research"]},
                {"name": "chat", "type": "slack", "url": "https://hooks.slack.com/services/T/B/X"},
                {"name": "log", "type": "log"},
            ],
            "retry": {"max_attempts": 5, "backoff": 1, "max_backoff": 60},
            "poll_interval": 0.5,
            "forecast_interval": False,
            "lease": 20,
        }
    )  # fmt: skip
    ops, chat, log = settings.destinations
    assert (ops.type, ops.url, ops.secret, ops.timeout) == ("webhook", ENV["HOOK_URL"], ENV["HOOK_SECRET"], 2)
    assert ops.kinds == frozenset({"threshold", "refusing"}) and ops.budgets == frozenset({"research"})
    assert chat.type == "slack" and chat.budgets is None and len(chat.kinds) == 4
    assert log.url is None
    assert (settings.retry.max_attempts, settings.retry.backoff, settings.retry.max_backoff) == (5, 1, 60)
    assert settings.forecast_interval is None and settings.lease == 20 and settings.poll_interval == 0.5
    assert "whsec" not in repr(settings) and "hooks.slack" not in repr(settings)  # credentials


@pytest.mark.parametrize(
    ("alerts", "key", "words"),
    [
        ({"colour": 1}, "alerts.colour", "unknown key"),
        ({"destinations": {"name": "x"}}, "alerts.destinations", "list"),
        ({"destinations": [{"url": "https://x.example"}]}, "alerts.destinations[0].name", "missing"),
        ({"destinations": [{"name": "a", "type": "log"}, {"name": "a", "type": "log"}]}, "alerts.destinations[1].name", "twice"),
        ({"destinations": [{"name": "a", "type": "pager"}]}, "alerts.destinations[0].type", "webhook, slack, log"),
        ({"destinations": [{"name": "a"}]}, "alerts.destinations[0].url", "one of url and url_env"),
        ({"destinations": [{"name": "a", "url": "https://x", "url_env": "HOOK_URL"}]}, "alerts.destinations[0].url", "one of"),
        ({"destinations": [{"name": "a", "url_env": "NOPE"}]}, "alerts.destinations[0].url_env", "not set"),
        ({"destinations": [{"name": "a", "url": "ftp://x"}]}, "alerts.destinations[0].url", "http"),
        ({"destinations": [{"name": "a", "url": "https://x", "secret_env": "NOPE"}]}, "alerts.destinations[0].secret_env", "not set"),
        ({"destinations": [{"name": "a", "type": "slack", "url": "https://x", "secret_env": "HOOK_SECRET"}]}, "alerts.destinations[0].secret_env", "only a webhook"),
        ({"destinations": [{"name": "a", "type": "log", "url": "https://x"}]}, "alerts.destinations[0].url", "no url"),
        ({"destinations": [{"name": "a", "type": "log", "events": ["spike"]}]}, "alerts.destinations[0].events", "unknown alert kind"),
        ({"destinations": [{"name": "a", "type": "log", "budgets": []}]}, "alerts.destinations[0].budgets", "non-empty"),
        ({"retry": {"max_attempts": 0}}, "alerts.retry.max_attempts", "from 1"),
        ({"retry": {"backoff": -1}}, "alerts.retry.backoff", "seconds"),
        ({"poll_interval": 0}, "alerts.poll_interval", "positive"),
        ({"enabled": "yes"}, "alerts.enabled", "true or false"),
    ],
)  # fmt: skip
def test_errors_name_the_key(alerts: object, key: str, words: str) -> None:
    with pytest.raises(GatewayConfigError) as caught:
        parse(alerts)
    assert caught.value.key == key and words in caught.value.problem, caught.value


def test_soft_budgets() -> None:
    soft = Budget.from_config(
        {"limit": "10", "window": "month", "on_exceed": "alert", "thresholds": [100, 150]}
    )
    assert soft.soft and soft.thresholds == (100, 150)
    with pytest.raises(ConfigError, match="up to 1000 for a soft budget"):
        Budget.from_config({"limit": "10", "thresholds": [120]})
    with pytest.raises(ConfigError, match="not paced"):
        Budget.from_config({"limit": "10", "window": "month", "on_exceed": "alert", "pace": "even"})
    with pytest.raises(ConfigError, match="1 to 100"):
        Budget.from_config({"limit": "10", "on_exceed": "alert", "thresholds": [1001]})
    assert Budget.from_config(soft.to_config()) == soft
