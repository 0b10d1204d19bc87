"""Rate limits: how much matching requests may take per sliding window, or at once.

A limit is ``selector + kind + amount (+ per)``, with the same selectors as budgets
(``key: "*"`` gives every key its own limit). Kinds:

    requests        requests started per window
    input_tokens    prompt tokens per window (reserved as the prompt's bound)
    output_tokens   output tokens per window (reserved as the output cap)
    tokens          input plus output tokens per window
    usd             cost per window (a rate; a budget caps the total)
    concurrency     requests in flight at once
    prompt_tokens   input tokens of one request (no window: waiting cannot help)

A limit is reserved with the request's budgets, in the same atomic step, as the
request's worst case (a ``Demand``), and what the request did not use is given
back at its ending. Concurrency is given back at every ending: settle, release,
lease expiry.

The window is a sliding window counted in ``BUCKETS`` buckets of ``per / BUCKETS``.
A request is admitted only if what the buckets from ``per`` ago up to now hold,
plus the request's demand, is within the amount. Every admission in the last
``per`` lies in those buckets, so **no span of length ``per`` ever holds more than
the amount** (no burst beyond the stated limit, unlike a token bucket, which
admits up to twice its amount in one period). The oldest bucket is counted
whole, so the window may look up to one bucket longer than ``per``: steady use
reaches at least ``BUCKETS / (BUCKETS + 1)`` (95%) of the amount.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, Literal, TypeVar, get_args

from spendgate.budgets import EPOCH, Attributes, Selector, config_id_and_name
from spendgate.errors import ConfigError, PromptTooLargeError, RateLimitExceededError
from spendgate.money import Money, MoneyError

__all__ = [
    "BUCKETS",
    "KINDS",
    "Demand",
    "Limit",
    "LimitEnding",
    "LimitKind",
    "LimitRefusal",
    "LimitUsage",
    "SlidingWindow",
    "bucket_of",
    "takes_of",
    "window_change",
    "window_sum",
]

E = TypeVar("E")

LimitKind = Literal[
    "requests", "input_tokens", "output_tokens", "tokens", "usd", "concurrency", "prompt_tokens"
]
KINDS: Final = get_args(LimitKind)
#: Kinds counted over a sliding window (``per`` required).
WINDOWED: Final = frozenset({"requests", "input_tokens", "output_tokens", "tokens", "usd"})
#: Buckets per window: the window's resolution, and so the share of the amount steady use reaches.
BUCKETS: Final = 20
LimitOnExceed = Literal["raise", "wait"]
_ON_EXCEED: Final = get_args(LimitOnExceed)
_KEYS: Final = ("id", "name", "selector", "per", "on_exceed", *KINDS)
_PER = re.compile(
    r"^\s*(?P<n>[0-9]+)\s*(?P<unit>s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MIN_PER: Final = timedelta(seconds=1)
_MAX_PER: Final = timedelta(days=31)
_US: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Demand:
    """What one request takes from rate limits, as its worst case (at admission) or as used
    (at its ending). ``cost`` is in nano-USD, like the ledger's amounts."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: int = 0
    requests: int = 1

    def of(self, kind: str) -> int:
        """The amount a limit of ``kind`` counts for this demand."""
        if kind in {"requests", "concurrency"}:
            return self.requests
        if kind in {"input_tokens", "prompt_tokens"}:
            return self.input_tokens
        if kind == "output_tokens":
            return self.output_tokens
        if kind == "tokens":
            return self.input_tokens + self.output_tokens
        if kind == "usd":
            return self.cost
        raise ValueError(f"unknown limit kind {kind!r}")

    def to_data(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
        }


def parse_per(value: object) -> timedelta:
    """``"10s"``, ``"1m"``, ``"2h"``, ``"1d"`` (or seconds as a number) -> a window length."""
    if isinstance(value, bool):
        raise ValueError(f"per: a window like '10s', '1m', '1h' or '1d', got {value!r}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _PER.match(value)):
        seconds = int(match["n"]) * _UNIT_SECONDS[match["unit"][0].lower()]
    else:
        raise ValueError(f"per: a window like '10s', '1m', '1h' or '1d', got {value!r}")
    if seconds <= 0:
        raise ValueError(f"per must be positive, got {value!r}")
    if seconds > _MAX_PER.total_seconds():  # also before timedelta, which overflows on huge counts
        raise ValueError(f"per is at most 31 days (a budget caps longer periods), got {value!r}")
    per = timedelta(seconds=seconds)
    if per > _MAX_PER:
        raise ValueError(f"per is at most 31 days (a budget caps longer periods), got {value!r}")
    return per


def format_per(per: timedelta) -> str:
    seconds = int(per.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def bucket_width(per: timedelta) -> int:
    """A bucket's width in whole microseconds (a window of ``per`` is ``BUCKETS`` of them)."""
    return max(per // _US // BUCKETS, 1)


def bucket_of(now: datetime, width_us: int) -> int:
    """The bucket ``now`` falls in: whole bucket widths since the epoch."""
    return ((now - EPOCH) // _US) // width_us


def window_sum(buckets: Mapping[int, int], current: int) -> int:
    """What the window ending in bucket ``current`` holds: the buckets ``current - BUCKETS``
    to ``current`` (the oldest may reach up to one bucket before the window: counted whole,
    so the sum is never below what the last ``per`` holds)."""
    oldest = current - BUCKETS
    return sum(amount for index, amount in buckets.items() if index >= oldest)


def seconds_until_fits(
    buckets: Mapping[int, int], current: int, width_us: int, now: datetime, amount: int, need: int
) -> float | None:
    """How long until ``need`` fits under ``amount`` as old buckets leave the window (None:
    it never fits, the demand alone is over the amount)."""
    if need > amount:
        return None
    held = window_sum(buckets, current)
    if held + need <= amount:
        return 0.0
    now_us = (now - EPOCH) // _US
    for index in sorted(i for i in buckets if i >= current - BUCKETS):
        held -= buckets[index]
        if held + need <= amount:
            # Bucket ``index`` stops counting when the current bucket is index + BUCKETS + 1.
            leaves_us = (index + BUCKETS + 1) * width_us
            return max(leaves_us - now_us, 0) / 1_000_000
    return None  # pragma: no cover - the loop empties the window, and need <= amount


class SlidingWindow:
    """One limit instance's buckets (bucket index -> amount). Not thread-safe: its ledger's
    lock guards it."""

    __slots__ = ("buckets", "width_us")

    def __init__(self, width_us: int) -> None:
        self.width_us = width_us
        self.buckets: dict[int, int] = {}

    def used(self, now: datetime) -> int:
        current = bucket_of(now, self.width_us)
        buckets = self.buckets
        oldest = current - BUCKETS
        if len(buckets) > BUCKETS + 1:  # forget what left the window, so the dict stays small
            for index in [i for i in buckets if i < oldest]:
                del buckets[index]
        return window_sum(buckets, current)

    def add(self, bucket: int, amount: int) -> None:
        self.buckets[bucket] = self.buckets.get(bucket, 0) + amount

    def give_back(self, bucket: int, amount: int) -> None:
        """Return part of what was taken in ``bucket`` (a bucket that left the window is gone)."""
        held = self.buckets.get(bucket)
        if held is not None:
            self.buckets[bucket] = max(held - amount, 0)

    def seconds_until_fits(self, now: datetime, amount: int, need: int) -> float | None:
        return seconds_until_fits(
            self.buckets, bucket_of(now, self.width_us), self.width_us, now, amount, need
        )


@dataclass(frozen=True, slots=True)
class Limit:
    """How much matching requests may take: per sliding window (``per``), or at once
    (``concurrency``), or per request (``prompt_tokens``). ``amount`` is a count, in
    nano-USD for ``usd``."""

    id: str
    selector: Mapping[str, str]
    kind: LimitKind
    amount: int
    per: timedelta | None = None
    on_exceed: LimitOnExceed = "raise"
    name: str | None = None
    _selector: Selector = field(init=False, repr=False, compare=False)
    _width: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        selector = Selector(self.selector)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount < 0:
            raise ValueError(f"amount must be a whole number >= 0, got {self.amount!r}")
        if self.kind in WINDOWED:
            if not isinstance(self.per, timedelta) or not _MIN_PER <= self.per <= _MAX_PER:
                raise ValueError(f"a {self.kind} limit needs per: a window from 1 s to 31 days")
        elif self.per is not None:
            raise ValueError(f"a {self.kind} limit has no window (per)")
        if self.on_exceed not in _ON_EXCEED:
            raise ValueError(f"on_exceed must be one of {', '.join(_ON_EXCEED)}, got {self.on_exceed!r}")
        if self.kind == "prompt_tokens" and self.on_exceed == "wait":
            raise ValueError("a prompt_tokens limit cannot wait: the same prompt never fits later")
        set_ = object.__setattr__
        set_(self, "selector", selector.values)
        set_(self, "_selector", selector)
        set_(self, "_width", bucket_width(self.per) if self.per is not None else 0)

    @property
    def windowed(self) -> bool:
        return self.per is not None

    @property
    def width_us(self) -> int:
        """The width of one bucket of the window, in microseconds (0: no window)."""
        return self._width

    @property
    def wildcards(self) -> tuple[str, ...]:
        return self._selector.wildcards

    def matches(self, attrs: Attributes) -> tuple[str, ...]:
        """The instance keys the request is counted under (``()``: it does not match)."""
        return self._selector.matches(attrs)

    def instance_key(self, instance: Mapping[str, str] | str | None) -> str:
        return self._selector.instance_key(instance, f"limit {self.id!r}")

    def concrete_selector(self, instance: Mapping[str, str] | str | None = None) -> dict[str, str]:
        return self._selector.concrete(instance)

    def amount_text(self, amount: int | None = None) -> str:
        """``"10 requests"``, ``"2,000 tokens"``, ``"1.50 USD"``."""
        value = self.amount if amount is None else amount
        if self.kind == "usd":
            return f"{Money(value).format()}"
        unit = {"concurrency": "requests in flight", "prompt_tokens": "prompt tokens"}.get(
            self.kind, self.kind.replace("_", " ")
        )
        return f"{value:,} {unit}"

    def label(self, instance: Mapping[str, str] | str | None = None) -> str:
        """For people: ``key=k1: 10 requests per 10s``."""
        if self.per is not None:
            what = f"{self.amount_text()} per {format_per(self.per)}"
        elif self.kind == "concurrency":
            what = f"{self.amount:,} requests in flight"
        else:
            what = f"{self.amount:,} prompt tokens per request"
        text = f"{self._selector.describe(instance)}: {what}"
        return f"{self.name}: {text}" if self.name else text

    # -- config -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "limits[0]") -> Limit:
        """One limit from config: ``{"selector": {"key": "*"}, "requests": 10, "per": "10s"}``;
        exactly one kind key with its amount; ConfigError names the key path and the problem."""
        if not isinstance(config, Mapping):
            raise ConfigError(where, f"a limit is a mapping, got {type(config).__name__}")
        unknown = [str(k) for k in config if k not in _KEYS]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", f"unknown limit key; known: {', '.join(_KEYS)}")
        selector = dict(Selector.from_config(config.get("selector"), f"{where}.selector").values)
        kinds = [k for k in KINDS if k in config]
        if len(kinds) != 1:
            raise ConfigError(
                where,
                f"give exactly one of {', '.join(KINDS)} with its amount"
                + (f" (got {', '.join(kinds)})" if kinds else ""),
            )
        kind: LimitKind = kinds[0]
        raw = config[kind]
        if kind == "usd":
            try:
                amount = Money.parse(raw, what=kind).nanos
            except MoneyError as exc:
                raise ConfigError(f"{where}.{kind}", str(exc).removeprefix(f"{kind}: ")) from None
        elif isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise ConfigError(f"{where}.{kind}", f"must be a whole number >= 0, got {raw!r}")
        else:
            amount = raw
        per: timedelta | None = None
        if kind in WINDOWED:
            if "per" not in config:
                raise ConfigError(f"{where}.per", f"missing: a {kind} limit counts per window, e.g. per: 1m")
            try:
                per = parse_per(config["per"])
            except ValueError as exc:
                raise ConfigError(f"{where}.per", str(exc).removeprefix("per: ")) from None
        elif "per" in config:
            raise ConfigError(f"{where}.per", f"a {kind} limit has no window")
        on_exceed = config.get("on_exceed", "raise")
        if on_exceed not in _ON_EXCEED:
            raise ConfigError(
                f"{where}.on_exceed", f"must be one of {', '.join(_ON_EXCEED)}, got {on_exceed!r}"
            )
        if kind == "prompt_tokens" and on_exceed == "wait":
            raise ConfigError(
                f"{where}.on_exceed", "a prompt_tokens limit cannot wait: the prompt never fits"
            )
        scope = Selector(selector).describe()
        default = f"{scope}/{kind}" + (f"/{format_per(per)}" if per is not None else "")
        limit_id, name = config_id_and_name(config, where, default)
        return cls(
            id=limit_id,
            selector=selector,
            kind=kind,
            amount=amount,
            per=per,
            on_exceed=on_exceed,
            name=name,
        )

    def to_config(self) -> dict[str, Any]:
        """A mapping that ``from_config`` reads back to an equal limit."""
        out: dict[str, Any] = {"id": self.id, "selector": dict(self.selector)}
        out[self.kind] = Money(self.amount).decimal_str() if self.kind == "usd" else self.amount
        if self.per is not None:
            out["per"] = format_per(self.per)
        out["on_exceed"] = self.on_exceed
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    """Not admitted by a rate limit (the ledger's answer, like a budget's ``Refusal``)."""

    request_id: str
    limit: Limit
    instance: str
    used: int  # held in the window now (in flight, for concurrency; 0 for prompt_tokens)
    requested: int
    retry_after: float | None  # None: the request alone is over the limit
    admitted: ClassVar[bool] = False

    def to_error(self) -> RateLimitExceededError:
        limit = self.limit
        cls = PromptTooLargeError if limit.kind == "prompt_tokens" else RateLimitExceededError
        return cls(
            limit_id=limit.id,
            kind=limit.kind,
            selector=limit.concrete_selector(self.instance),
            amount=limit.amount,
            used=self.used,
            requested=self.requested,
            per_seconds=int(limit.per.total_seconds()) if limit.per is not None else None,
            retry_after=self.retry_after,
            label=limit.label(self.instance),
            amount_text=limit.amount_text(),
            used_text=limit.amount_text(self.used),
            requested_text=limit.amount_text(self.requested),
        )


def takes_of(
    entries: Iterable[E],
    limit_of: Callable[[E], Limit],
    request_id: str,
    attributes: Attributes,
    demand: Demand,
) -> list[tuple[E, str, int] | LimitRefusal]:
    """What a request takes from limits, in the limits' order, for a backend to check and count:
    ``(entry, instance key, amount)`` per matching limit instance. A ``prompt_tokens`` limit
    holds no count: the request is over it or not, decided here, and the list stops at that
    refusal (a backend reports the first refusal in this order)."""
    out: list[tuple[E, str, int] | LimitRefusal] = []
    for entry in entries:
        limit = limit_of(entry)
        keys = limit.matches(attributes)
        if not keys:
            continue
        need = demand.of(limit.kind)
        for key in keys:
            if limit.kind != "prompt_tokens":
                out.append((entry, key, need))
            elif need > limit.amount:
                out.append(LimitRefusal(request_id, limit, key, 0, need, None))
                return out
    return out


#: How a reservation ended, for what its limits get back.
LimitEnding = Literal["settled", "released", "expired"]


def window_change(kind: str, taken: int, how: LimitEnding, used: Demand | None, cost: int) -> int:
    """What a windowed limit's bucket gets at a request's ending, as an amount to add (negative:
    given back), for a take of ``taken``: settled, the use reported (``usd``: the settled
    ``cost``) in place of the take, a use above it counted too; settled without a report of
    use, nothing (the worst case stays); released, all but the request itself, which was made;
    expired, nothing (the reservation is what it cost). Concurrency is given back whole at
    every ending, by the backend."""
    if how == "expired":
        return 0
    if how == "released":
        return 0 if kind == "requests" else -taken
    if kind == "usd":
        return cost - taken
    if used is None:
        return 0
    return used.of(kind) - taken


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """One limit instance now: what its window holds (or what is in flight) against its amount."""

    limit: Limit
    instance: str
    used: int

    @property
    def remaining(self) -> int:
        return max(self.limit.amount - self.used, 0)

    def to_dict(self) -> dict[str, object]:
        limit = self.limit
        return {
            "id": limit.id,
            "instance": self.instance,
            "kind": limit.kind,
            "selector": limit.concrete_selector(self.instance),
            "label": limit.label(self.instance),
            "amount": str(limit.amount),
            "used": str(self.used),
            "remaining": str(self.remaining),
            "per": format_per(limit.per) if limit.per is not None else None,
        }
