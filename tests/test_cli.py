from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from spendgate.cli import EXIT_BAD_INPUT, EXIT_UNKNOWN_MODEL, main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_price_shows_rates_and_resolution() -> None:
    code, out, _ = run("price", "openai/gpt-4o")
    assert code == 0
    assert "gpt-4o  (resolved from 'openai/gpt-4o')" in out
    assert "input           $2.5" in out
    assert "output          $10" in out
    assert "cache_read      $1.25" in out


def test_price_json() -> None:
    code, out, _ = run("price", "gpt-5.4", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["model"] == "gpt-5.4"
    assert data["prices"]["tiers"][0]["above"] == 272000


def test_cost_with_cached_tokens() -> None:
    # 600*2.50 + 400*1.25 + 200*10 per 1M = $0.004
    code, out, _ = run("cost", "--model", "gpt-4o", "--input", "1000", "--output", "200", "--cached", "400")
    assert code == 0, out
    assert "cache_read   $0.0005" in out
    assert "total        $0.004" in out


def test_cost_json_is_decimal_strings() -> None:
    code, out, _ = run(
        "cost", "-m", "claude-haiku-4-5", "--input", "1000000", "--output", "1000000", "--json"
    )
    assert code == 0
    assert json.loads(out)["total"] == "6"


def test_cost_with_tool_calls() -> None:
    # claude-sonnet-4-5: 1000*3 + 500*15 per 1M + 3 web searches at $0.01
    args = ("cost", "-m", "claude-sonnet-4-5", "--input", "1000", "--output", "500")
    code, out, _ = run(*args, "--tool-calls", "web_search=3")
    assert code == 0, out
    assert "web_search   $0.03  (3 uses)" in out and "total        $0.0405" in out
    code, out, _ = run(*args, "--tool-calls", "web_search=3", "--json")
    assert json.loads(out)["web_search"] == "0.03" and json.loads(out)["usage"]["web_search_calls"] == 3
    code, _, err = run(*args, "--tool-calls", "web_search=three")
    assert code == EXIT_BAD_INPUT and "TOOL=N" in err
    # no fee for the model nor any other of its provider: refused, not free
    code, _, err = run("cost", "-m", "mistral/mistral-large-latest", "--tool-calls", "web_search=1")
    assert code == EXIT_BAD_INPUT and "no web_search fee" in err


def test_unknown_model_exit_code_and_hint() -> None:
    code, _, err = run("cost", "--model", "gpt-4q", "--input", "1")
    assert code == EXIT_UNKNOWN_MODEL
    assert "gpt-4q" in err
    assert "Nearest known models" in err


def test_bad_counts() -> None:
    code, _, err = run("cost", "--model", "gpt-4o", "--input", "10", "--cached", "11")
    assert code == EXIT_BAD_INPUT
    assert "--input" in err
    code, _, err = run("cost", "--model", "gpt-4o", "--input", "-1")
    assert code == 2
    assert ">= 0" in err


def test_models_by_provider() -> None:
    code, out, _ = run("models", "--provider", "anthropic")
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("claude-sonnet-4-5 ") for line in lines)
    assert all("anthropic" in line for line in lines)
    code, _, err = run("models", "--provider", "nosuchprovider")
    assert code == EXIT_BAD_INPUT
    assert "providers include" in err


def test_bad_catalog_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("[]")
    code, _, err = run("price", "gpt-4o", "--catalog", str(bad))
    assert code == EXIT_BAD_INPUT
    assert "not a spendgate price catalog" in err


def test_console_script_runs_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "cost", "--model", "nope-model", "--input", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_UNKNOWN_MODEL
    assert "nope-model" in proc.stderr


def test_prices_update_from_a_community_file(tmp_path: Path, monkeypatch: object) -> None:
    community = {
        "sample_spec": {"input_cost_per_token": 0.0},
        "my-new-model": {
            "litellm_provider": "openai",
            "mode": "chat",
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 4e-06,
            "max_output_tokens": 1000,
        },
    }
    src = tmp_path / "model_prices_and_context_window.json"
    src.write_text(json.dumps(community))
    out = tmp_path / "store" / "prices.json"
    code, text, err = run("prices", "update", "--from", str(src), "--out", str(out), "--replace")
    assert code == 0, err
    assert "stored 1 models" in text
    code, text, _ = run(
        "cost", "--model", "my-new-model", "--input", "1000", "--output", "1000", "--catalog", str(out)
    )
    assert code == 0
    assert "total        $0.005" in text  # 1000*1 + 1000*4 per 1M
    code, text, _ = run("prices", "info", "--catalog", str(out))
    assert "models:    1 across 1 providers" in text


def test_prices_update_bad_source_keeps_the_old_catalog(tmp_path: Path) -> None:
    out = tmp_path / "prices.json"
    out.write_text("keep me")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    code, _, err = run("prices", "update", "--from", str(bad), "--out", str(out))
    assert code == EXIT_BAD_INPUT
    assert "bad.json" in err
    assert out.read_text() == "keep me"


def _community_file(tmp_path: Path, models: dict[str, dict[str, object]]) -> Path:
    src = tmp_path / "small.json"
    src.write_text(json.dumps({"sample_spec": {"input_cost_per_token": 0.0}, **models}))
    return src


SMALL = {
    "my-new-model": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 4e-06,
        "max_output_tokens": 1000,
    },
    # gpt-4o at a price of its own: a change to an existing model.
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 2e-06,
        "output_cost_per_token": 8e-06,
        "max_output_tokens": 16384,
        "max_input_tokens": 128000,
    },
}


def _models_in(path: Path) -> dict[str, object]:
    models: dict[str, object] = json.loads(path.read_text())["models"]
    return models


def test_prices_update_merges_a_small_file_over_the_catalog(tmp_path: Path) -> None:
    from spendgate.pricing.update import builtin_document

    builtin = builtin_document()["models"]
    out = tmp_path / "prices.json"
    code, text, err = run(
        "prices", "update", "--from", str(_community_file(tmp_path, SMALL)), "--out", str(out)
    )
    assert code == 0, err
    assert f"1 added, 1 changed, 0 removed, {len(builtin) - 1} unchanged" in text
    assert "added: my-new-model" in text
    assert "changed: gpt-4o (" in text and "prices.input" in text
    assert f"stored {len(builtin) + 1} models" in text and "merged over the built-in catalog" in text
    models = _models_in(out)
    assert len(models) == len(builtin) + 1
    assert "claude-sonnet-4-5" in models  # what the small file does not mention stays
    code, text, _ = run(
        "cost", "--model", "gpt-4o", "--input", "1000", "--output", "1000", "--catalog", str(out)
    )
    assert code == 0 and "total        $0.01" in text  # 1000*2 + 1000*8 per 1M

    # A second update starts from the stored file, not from the built-in data.
    again = {"other-model": {**SMALL["my-new-model"]}}
    code, text, err = run(
        "prices", "update", "--from", str(_community_file(tmp_path, again)), "--out", str(out)
    )
    assert code == 0, err
    assert f"merged over {out}" in text
    assert {"my-new-model", "other-model"} <= set(_models_in(out))


def test_prices_update_replace_says_what_it_removed(tmp_path: Path) -> None:
    from spendgate.pricing.update import builtin_document

    builtin = builtin_document()["models"]
    out = tmp_path / "prices.json"
    code, text, err = run(
        "prices", "update", "--from", str(_community_file(tmp_path, SMALL)), "--out", str(out), "--replace"
    )
    assert code == 0, err
    assert f"1 added, 1 changed, {len(builtin) - 1} removed, 0 unchanged" in text
    assert "removed: " in text and "more" in text
    assert set(_models_in(out)) == {"my-new-model", "gpt-4o"}
    # Aliases pointing at removed models go with them.
    aliases = json.loads(out.read_text())["aliases"]
    assert all(target in {"my-new-model", "gpt-4o"} for target in aliases.values())


def test_prices_update_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "prices.json"
    code, text, err = run(
        "prices", "update", "--from", str(_community_file(tmp_path, SMALL)), "--out", str(out), "--dry-run"
    )
    assert code == 0, err
    assert "1 added, 1 changed" in text and "dry run: nothing written" in text
    assert not out.exists()


def test_prices_update_refuses_to_merge_into_a_file_that_is_no_catalog(tmp_path: Path) -> None:
    out = tmp_path / "prices.json"
    out.write_text("keep me")
    code, _, err = run("prices", "update", "--from", str(_community_file(tmp_path, SMALL)), "--out", str(out))
    assert code == EXIT_BAD_INPUT
    assert "--replace" in err
    assert out.read_text() == "keep me"


def test_an_unchanged_model_in_an_older_schema_is_not_a_change() -> None:
    from spendgate.pricing.update import combine

    current = {
        "schema_version": 1,
        "models": {"m": {"provider": "x", "mode": "chat", "prices": {"input": "1.0"}}},
    }
    incoming = {
        "schema_version": 2,
        "models": {"m": {"provider": "x", "mode": "chat", "prices": {"input": "1"}}},
    }
    _, changes = combine(current, incoming)
    assert changes.unchanged == 1 and not changes.any
