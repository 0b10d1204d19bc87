"""Wrap the clients people already use so every call goes through a :class:`~spendgate.guard.Guard`.

    client = spendgate.wrap(openai.OpenAI(), budgets=[{"limit": "100", "window": "month"}])
    client.chat.completions.create(model="gpt-4o", messages=[...])  # reserved, then settled

Neither ``openai`` nor ``anthropic`` is imported here: a client of a library
is only handled once that library is already imported (it made the client).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

from spendgate.budgets import Budget
from spendgate.guard import Guard, OnExceed
from spendgate.ledger import Ledger
from spendgate.pricing.catalog import UnknownModelPolicy

__all__ = ["SUPPORTED_CLIENTS", "wrap"]

C = TypeVar("C")

SUPPORTED_CLIENTS = (
    "openai.OpenAI",
    "openai.AsyncOpenAI",
    "openai.AzureOpenAI",
    "openai.AsyncAzureOpenAI",
    "anthropic.Anthropic",
    "anthropic.AsyncAnthropic",
)


def wrap(
    client: C,
    *,
    budgets: Iterable[Budget | Mapping[str, Any]] = (),
    ledger: Ledger | str = "memory://",
    on_exceed: OnExceed | None = None,
    unknown_model: UnknownModelPolicy = "refuse",
    guard: Guard | None = None,
    **guard_options: Any,
) -> C:
    """A client of the same type whose model calls are priced, reserved and settled by a Guard.

    The caller's ``client`` is left untouched. Pass ``guard`` to share one Guard
    (and its ledger and budgets) between several wrapped clients; the other
    options then belong to that Guard and must not be given here.
    """
    budgets = tuple(budgets)
    if guard is None:
        guard = Guard(
            ledger,
            budgets=budgets,
            on_exceed=on_exceed,
            unknown_model=unknown_model,
            **guard_options,
        )
    elif (
        budgets
        or guard_options
        or on_exceed is not None
        or ledger != "memory://"
        or unknown_model != "refuse"
    ):
        # Silently ignoring them would enforce other budgets than the caller wrote.
        raise TypeError("wrap(): pass either guard= or the Guard's options (budgets, ledger, ...), not both")

    openai = sys.modules.get("openai")
    if openai is not None:
        from spendgate.integrations import openai as oai

        if isinstance(client, openai.AsyncOpenAI):
            return cast(C, oai.wrap_async_openai(client, guard))
        if isinstance(client, openai.OpenAI):
            return cast(C, oai.wrap_openai(client, guard))
    anthropic = sys.modules.get("anthropic")
    if anthropic is not None and isinstance(client, anthropic.Anthropic | anthropic.AsyncAnthropic):
        # By name: the module is another file's, and may be absent from a partial install.
        ant = importlib.import_module("spendgate.integrations.anthropic")
        if isinstance(client, anthropic.AsyncAnthropic):
            return cast(C, ant.wrap_async_anthropic(client, guard))
        return cast(C, ant.wrap_anthropic(client, guard))
    raise TypeError(
        f"spendgate.wrap() cannot guard a {type(client).__module__}.{type(client).__qualname__}; "
        f"supported clients: {', '.join(SUPPORTED_CLIENTS)}"
    )
