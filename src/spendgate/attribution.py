"""Who a request is for, set around the calls it covers.

    with spendgate.attribute(user="alice", team="research"):
        client.chat.completions.create(...)

Contexts nest (an inner value wins; tags add up) and follow asyncio tasks and
threads started with ``contextvars.copy_context()``, as any ContextVar does.

The most one request may cost is set the same way:

    with spendgate.max_cost(0.10):
        client.chat.completions.create(...)  # a worst case above 0.10 USD: refused or clamped

Caps nest too, and the smallest in effect applies.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from spendgate.budgets import Attributes
from spendgate.money import Money

_DIMENSIONS = ("key", "user", "team", "project", "customer", "model")
_NONE = Attributes()
# Attributes is frozen, so sharing one empty default is safe.
_current: ContextVar[Attributes] = ContextVar("spendgate_attributes", default=_NONE)
_max_cost: ContextVar[Money | None] = ContextVar("spendgate_max_cost", default=None)


@contextmanager
def attribute(**values: Any) -> Iterator[Attributes]:
    """Attribute every guarded call inside the block: ``user``, ``team``, ``project``,
    ``customer``, ``key``, ``tags`` (a list) or ``tag`` (one)."""
    merged = merge(_current.get(), Attributes.of(**values))
    token = _current.set(merged)
    try:
        yield merged
    finally:
        _current.reset(token)


def current() -> Attributes:
    """The attributes set by the enclosing ``attribute()`` blocks."""
    return _current.get()


def merge(outer: Attributes, inner: Attributes) -> Attributes:
    """``inner``'s dimensions over ``outer``'s; tags are the union."""
    values: dict[str, Any] = {name: getattr(inner, name) or getattr(outer, name) for name in _DIMENSIONS}
    return Attributes(**values, tags=outer.tags | inner.tags)


def resolve(model: str, explicit: Mapping[str, Any] | None = None, user: object = None) -> Attributes:
    """A request's attributes: the context, then the request's ``user`` field, then ``explicit``."""
    attrs = _current.get()
    if isinstance(user, str) and user and attrs.user is None:
        attrs = merge(attrs, Attributes(user=user))
    if explicit:
        attrs = merge(attrs, Attributes.of(**explicit))
    # The model is always the one the request names, whatever a context said.
    return merge(attrs, Attributes(model=model))


@contextmanager
def max_cost(usd: object) -> Iterator[Money]:
    """Cap what each guarded call inside the block may cost at its worst (USD: ``0.10``,
    ``"0.10"``, a Decimal or Money). A call whose worst case is above it raises
    ``CostCapExceededError`` before anything is sent, or with ``on_exceed="clamp"`` has its
    output cap lowered to fit. Nested blocks keep the smallest cap."""
    cap = Money.parse(usd, what="max_cost")
    outer = _max_cost.get()
    if outer is not None and outer < cap:
        cap = outer  # an inner block cannot loosen an outer cap
    token = _max_cost.set(cap)
    try:
        yield cap
    finally:
        _max_cost.reset(token)


def current_max_cost() -> Money | None:
    """The cap set by the enclosing ``max_cost()`` blocks (None: no cap)."""
    return _max_cost.get()


def tightest(*caps: Money | None) -> Money | None:
    """The smallest of the caps given (None when none is)."""
    given = [cap for cap in caps if cap is not None]
    return min(given) if given else None
