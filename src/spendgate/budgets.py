"""Budgets: who a request is charged to (selectors), for how long (windows), how much (limits).

A budget is ``selector + limit + window + thresholds + on_exceed``. A selector
maps dimensions to an exact value or ``"*"``; ``"*"`` makes one *instance* of
the budget per distinct value (``user: "*"`` with $5/day gives every user $5 a
day). An instance is named by its *instance key*, the wildcard values in
dimension order: ``""`` for a budget without wildcards, ``"user=alice"``,
``"team=ml,tag=batch"``. ``%``, ``,`` and ``=`` inside values are
percent-escaped so a key always splits back into its values.

Windows reset on calendar boundaries in an IANA time zone (hour, day, week
from Monday, month) or every N minutes/hours/days from an anchor instant:

    "month"                                         calendar month, UTC
    {"calendar": "day", "timezone": "Europe/Berlin"}
    {"every": "30m", "anchor": "2026-01-01T00:00:00Z"}
    "none"                                          never resets
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from spendgate.clock import as_utc
from spendgate.errors import ConfigError
from spendgate.money import Money, MoneyError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DIMENSIONS",
    "Attributes",
    "Budget",
    "ChargedLine",
    "OnExceed",
    "Window",
    "charged_lines",
    "format_instance",
    "instance_key",
    "parse_instance_key",
]

DIMENSIONS: Final = ("key", "user", "team", "project", "customer", "model", "tag")
#: Attributes field per selector dimension (a request has many tags, a budget selects one).
_FIELD: Final = {"key": "key", "user": "user", "team": "team", "project": "project",
                 "customer": "customer", "model": "model", "tag": "tags"}  # fmt: skip
DEFAULT_THRESHOLDS: Final = (50, 80, 90, 100)
#: ``alert``: a soft budget. It counts and alerts like any other but never refuses.
OnExceed = Literal["raise", "wait", "clamp", "alert"]
_ON_EXCEED: Final = get_args(OnExceed)
#: A soft budget's allowance: what no window's spend reaches (2^53 - 1 nano-USD, about $9M, the
#: most every backend compares exactly; Redis's Lua numbers are doubles).
SOFT_CAP: Final = 2**53 - 1
WILDCARD: Final = "*"
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# -- attributes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a request is, for budgets: its key, user, team, project, customer, model and tags.

    The constructor does not validate (it is on the hot path); ``Attributes.of``
    does, for values that come from outside.
    """

    key: str | None = None
    user: str | None = None
    team: str | None = None
    project: str | None = None
    customer: str | None = None
    model: str | None = None
    tags: frozenset[str] = frozenset()

    @classmethod
    def of(cls, **values: object) -> Attributes:
        """``Attributes.of(user="alice", tags=["batch"])``, refusing unknown names and non-strings."""
        known = ("key", "user", "team", "project", "customer", "model", "tags")
        clean: dict[str, Any] = {}
        for name, value in values.items():
            if name == "tag":  # one tag, for symmetry with selectors
                name, value = "tags", [value]  # noqa: PLW2901
            if name not in known:
                raise ValueError(f"unknown request attribute {name!r}; known: {', '.join(known)}")
            if value is None:
                continue
            if name == "tags":
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, Iterable):
                    raise ValueError(f"tags: expected strings, got {type(value).__name__}")
                tags = frozenset(items)
                for tag in tags:
                    if not isinstance(tag, str) or not tag:
                        raise ValueError(f"tags: each tag must be a non-empty string, got {tag!r}")
                clean["tags"] = tags | clean.get("tags", frozenset())
            else:
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{name}: must be a non-empty string or None, got {value!r}")
                clean[name] = value
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        """The set dimensions, tags as a sorted list (for JSON and logs)."""
        out: dict[str, Any] = {}
        for name in ("key", "user", "team", "project", "customer", "model"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.tags:
            out["tags"] = sorted(self.tags)
        return out


# -- instance keys --------------------------------------------------------------


def _escape(value: str) -> str:
    if "%" in value or "," in value or "=" in value:
        return value.replace("%", "%25").replace(",", "%2C").replace("=", "%3D")
    return value


def _unescape(value: str) -> str:
    if "%" not in value:
        return value
    return value.replace("%2C", ",").replace("%3D", "=").replace("%25", "%")


def instance_key(values: Mapping[str, str]) -> str:
    """``{"user": "alice"}`` -> ``"user=alice"`` (dimension order, escaped)."""
    return ",".join(f"{dim}={_escape(values[dim])}" for dim in DIMENSIONS if dim in values)


def parse_instance_key(key: str) -> dict[str, str]:
    """The inverse of ``instance_key``."""
    if not key:
        return {}
    out: dict[str, str] = {}
    for part in key.split(","):
        dim, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"not an instance key: {key!r}")
        out[dim] = _unescape(value)
    return out


def format_instance(selector: Mapping[str, str], instance: Mapping[str, str] | None = None) -> str:
    """``team=research, user=alice`` (wildcards filled in from ``instance`` where given)."""
    if not selector:
        return "global"
    values = dict(selector)
    if instance:
        values.update(instance)
    return ", ".join(f"{dim}={values[dim]}" for dim in DIMENSIONS if dim in values)


# -- selectors ------------------------------------------------------------------


class Selector:
    """Which requests something applies to (a budget, a rate limit), and the instance keys
    a request is counted under. ``{"team": "ml", "user": "*"}``: requests of team ml, one
    instance per user. Matching is precomputed: it runs for every budget and limit on every
    request."""

    __slots__ = ("_exact", "_tag", "_wild", "_wild_tag", "values")

    def __init__(self, selector: Mapping[str, str]) -> None:
        for dim, value in selector.items():
            if dim not in DIMENSIONS:
                raise ValueError(f"unknown dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
            if not isinstance(value, str) or not value:
                raise ValueError(f"selector {dim}: expected a non-empty string or '*', got {value!r}")
        ordered: dict[str, str] = {dim: selector[dim] for dim in DIMENSIONS if dim in selector}
        self.values: Mapping[str, str] = _FrozenDict(ordered)
        # (attribute, value) pairs that must be equal, a tag that must be present, the
        # wildcard attributes in key order, and whether "tag" is one.
        self._exact = tuple((_FIELD[d], v) for d, v in ordered.items() if v != WILDCARD and d != "tag")
        tag = ordered.get("tag")
        self._tag = tag if tag != WILDCARD else None
        self._wild = tuple((_FIELD[d], d) for d, v in ordered.items() if v == WILDCARD and d != "tag")
        self._wild_tag = tag == WILDCARD

    @classmethod
    def from_config(cls, raw: object, where: str) -> Selector:
        """Read a selector from config; ConfigError names the key path and the problem."""
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(where, "must be a mapping of dimension to value or '*'")
        for dim, value in raw.items():
            if dim not in DIMENSIONS:
                raise ConfigError(f"{where}.{dim}", f"unknown dimension; known: {', '.join(DIMENSIONS)}")
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}.{dim}", f"must be a non-empty string or '*', got {value!r}")
        return cls(raw)

    @property
    def wildcards(self) -> tuple[str, ...]:
        """The dimensions that make one instance per value, in key order."""
        return tuple(dim for dim, value in self.values.items() if value == WILDCARD)

    def matches(self, attrs: Attributes) -> tuple[str, ...]:
        """The instance keys a request is counted under: ``()`` if it does not match,
        ``("",)`` for a selector without wildcards, one key per tag under ``tag: "*"``."""
        for name, value in self._exact:
            if getattr(attrs, name) != value:
                return ()
        if self._tag is not None and self._tag not in attrs.tags:
            return ()
        if not self._wild:
            if not self._wild_tag:
                return ("",)
            return tuple(sorted("tag=" + _escape(tag) for tag in attrs.tags))
        parts = []
        for name, dim in self._wild:
            value = getattr(attrs, name)
            if value is None:
                return ()
            parts.append(f"{dim}={_escape(value)}")
        base = ",".join(parts)
        if not self._wild_tag:
            return (base,)
        return tuple(sorted(f"{base},tag={_escape(tag)}" for tag in attrs.tags))

    def instance_key(self, instance: Mapping[str, str] | str | None, owner: str) -> str:
        """Check an instance (values for the wildcard dimensions) and return its key."""
        wild = self.wildcards
        if isinstance(instance, str):
            instance = parse_instance_key(instance)
        instance = dict(instance or {})
        for dim, value in list(instance.items()):
            if dim in wild:
                continue
            if self.values.get(dim) == value:
                del instance[dim]  # restating an exact dimension is harmless
            else:
                raise ValueError(f"{owner} has no wildcard dimension {dim!r}")
        missing = [dim for dim in wild if dim not in instance]
        if missing:
            raise ValueError(
                f"{owner} has one instance per {', '.join(missing)}; "
                f"pass instance={{{', '.join(repr(d) + ': ...' for d in missing)}}}"
            )
        return instance_key(instance)

    def concrete(self, instance: Mapping[str, str] | str | None = None) -> dict[str, str]:
        """The selector with an instance's values in place of its wildcards."""
        values = parse_instance_key(instance) if isinstance(instance, str) else instance
        out = dict(self.values)
        if values:
            out.update(values)
        return out

    def describe(self, instance: Mapping[str, str] | str | None = None) -> str:
        """``team=research, user=alice`` (``global`` when it selects every request)."""
        values = parse_instance_key(instance) if isinstance(instance, str) else instance
        return format_instance(self.values, values)


# -- windows --------------------------------------------------------------------

WindowKind = Literal["none", "calendar", "every"]
CalendarUnit = Literal["hour", "day", "week", "month"]
_UNITS: Final = get_args(CalendarUnit)
_ADJECTIVE: Final = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly"}
_ALIASES: Final = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}
_EVERY = re.compile(
    r"^\s*(?P<n>[0-9]+)\s*(?P<unit>m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)\s*$", re.IGNORECASE
)
_EVERY_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400}
_HOUR: Final = timedelta(hours=1)
_TICK: Final = timedelta(microseconds=1)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')") from None


class Window:
    """When a budget's spend starts again at zero. Immutable; compare by ``to_config()``.

    ``bounds(now)`` is the current window ``[start, end)`` in UTC (``end`` is
    None for a window that never resets). The last result is cached, so the
    ledger's hot path pays one comparison while ``now`` stays inside it.
    """

    __slots__ = ("_cache", "anchor", "every", "kind", "timezone", "unit", "zone")

    kind: WindowKind
    unit: CalendarUnit | None
    timezone: str
    zone: ZoneInfo | None
    every: timedelta | None
    anchor: datetime
    _cache: tuple[datetime, datetime | None]

    def __init__(
        self,
        kind: WindowKind = "none",
        *,
        unit: CalendarUnit | None = None,
        timezone: str = "UTC",
        every: timedelta | None = None,
        anchor: datetime = EPOCH,
    ) -> None:
        self.kind = kind
        self.unit = unit
        self.timezone = timezone
        self.zone = None
        self.every = every
        self.anchor = as_utc(anchor)
        if kind == "calendar":
            if unit not in _UNITS:
                raise ValueError(f"calendar unit must be one of {', '.join(_UNITS)}, got {unit!r}")
            self.zone = _zone(timezone)
        elif kind == "every":
            if every is None or every <= timedelta(0):
                raise ValueError("an 'every' window needs a positive period")
        elif kind != "none":
            raise ValueError(f"window kind must be none, calendar or every, got {kind!r}")
        self._cache = (EPOCH, EPOCH)  # empty: never contains now

    # -- constructors ----------------------------------------------------------
    @classmethod
    def none(cls) -> Window:
        return cls("none")

    @classmethod
    def calendar(cls, unit: CalendarUnit, timezone: str = "UTC") -> Window:
        return cls("calendar", unit=unit, timezone=timezone)

    @classmethod
    def periodic(cls, period: timedelta, anchor: datetime = EPOCH) -> Window:
        return cls("every", every=period, anchor=anchor)

    @classmethod
    def parse(cls, value: object, *, timezone: str | None = None) -> Window:
        """From config: ``"month"``, ``"none"``, ``{"calendar": "day", "timezone": "..."}``,
        ``{"every": "30m", "anchor": "2026-01-01T00:00:00Z"}``. Raises ValueError.

        ``timezone`` is a default for calendar windows (a budget-level setting).
        """
        if isinstance(value, Window):
            return value
        if value is None:
            return cls.none()
        if isinstance(value, str):
            text = value.strip().lower()
            text = _ALIASES.get(text, text)
            if text == "none":
                return cls.none()
            if text in _UNITS:
                return cls.calendar(text, timezone or "UTC")  # type: ignore[arg-type]
            if _EVERY.match(text):
                return cls.periodic(_parse_period(text))
            raise ValueError(
                f"unknown window {value!r}; use none, hour, day, week, month, "
                '{"calendar": "day", "timezone": "Europe/Berlin"} or {"every": "30m"}'
            )
        if not isinstance(value, Mapping):
            raise ValueError(f"a window is a string or a mapping, got {type(value).__name__}")
        keys = set(value)
        zone = value.get("timezone", timezone)
        if zone is not None and not isinstance(zone, str):
            raise ValueError(f"timezone must be a string, got {zone!r}")
        if "calendar" in value:
            unknown = keys - {"calendar", "timezone"}
            if unknown:
                raise ValueError(f"unknown window key(s) {', '.join(sorted(map(str, unknown)))}")
            unit = value["calendar"]
            unit = _ALIASES.get(unit, unit) if isinstance(unit, str) else unit
            if unit not in _UNITS:
                raise ValueError(f"calendar must be one of {', '.join(_UNITS)}, got {unit!r}")
            return cls.calendar(unit, zone or "UTC")  # type: ignore[arg-type]  # checked just above
        if "every" in value:
            unknown = keys - {"every", "anchor", "timezone"}
            if unknown:
                raise ValueError(f"unknown window key(s) {', '.join(sorted(map(str, unknown)))}")
            period = value["every"]
            if not isinstance(period, str):
                raise ValueError(f"every must be a string like '30m', '2h' or '1d', got {period!r}")
            anchor = _parse_anchor(value.get("anchor"), zone)
            return cls.periodic(_parse_period(period), anchor)
        raise ValueError('a window mapping needs "calendar" (hour/day/week/month) or "every" ("30m")')

    # -- the window containing now -----------------------------------------------
    def bounds(self, now: datetime) -> tuple[datetime, datetime | None]:
        cache = self._cache
        end = cache[1]
        if end is not None and cache[0] <= now < end:
            return cache
        if self.kind == "none":
            return (EPOCH, None)
        result = self._compute(now)
        self._cache = result
        return result

    def _compute(self, now: datetime) -> tuple[datetime, datetime]:
        if self.kind == "every":
            assert self.every is not None
            periods = (now - self.anchor) // self.every
            start = self.anchor + periods * self.every
            return start, start + self.every
        zone = self.zone
        assert zone is not None
        if self.unit == "hour":
            return _hour_bounds(now, zone)
        unit = self.unit
        assert unit is not None
        start, end = _calendar_bounds(now.astimezone(zone).date(), unit, zone)
        # Where a zone repeats or skips local midnight, the local date can disagree with
        # the boundaries (which take the first occurrence); step to the window holding now.
        while now >= end:
            start, end = end, _calendar_bounds(end.astimezone(zone).date() + timedelta(days=1), unit, zone)[0]
        while now < start:
            start, end = (
                _calendar_bounds(start.astimezone(zone).date() - timedelta(days=1), unit, zone)[0],
                start,
            )
        return start, end

    # -- describing -------------------------------------------------------------
    @property
    def resets(self) -> bool:
        return self.kind != "none"

    def label(self) -> str:
        """``monthly``, ``daily (America/New_York)``, ``every 30m``, ``total``."""
        if self.kind == "none":
            return "total"
        if self.kind == "every":
            assert self.every is not None
            text = f"every {_format_period(self.every)}"
            return text if self.anchor == EPOCH else f"{text} from {self.anchor:%Y-%m-%dT%H:%M:%SZ}"
        assert self.unit is not None
        adjective = _ADJECTIVE[self.unit]
        return adjective if self.timezone == "UTC" else f"{adjective} ({self.timezone})"

    def to_config(self) -> str | dict[str, str]:
        """What ``Window.parse`` reads back."""
        if self.kind == "none":
            return "none"
        if self.kind == "every":
            assert self.every is not None
            out = {"every": _format_period(self.every)}
            if self.anchor != EPOCH:
                out["anchor"] = self.anchor.strftime("%Y-%m-%dT%H:%M:%SZ")
            return out
        assert self.unit is not None
        if self.timezone == "UTC":
            return self.unit
        return {"calendar": self.unit, "timezone": self.timezone}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(repr(self.to_config()))

    def __repr__(self) -> str:
        return f"Window.parse({self.to_config()!r})"


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    # fold=0: a midnight skipped by DST maps to the transition instant, a repeated one to
    # its first occurrence; both sides of every boundary use the same rule, so windows tile.
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _calendar_bounds(day: date, unit: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The day, week (from Monday) or month holding local date ``day``."""
    if unit == "day":
        first, after = day, day + timedelta(days=1)
    elif unit == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    return _local_midnight(first, zone), _local_midnight(after, zone)


def _hour_bounds(now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The local clock hour holding ``now``, in elapsed time.

    Boundaries are the instants the local clock reads hh:00, plus every UTC offset
    change: a repeated hour (fall back) is two windows, and a 30-minute shift
    (Lord Howe) cuts an hour short instead of overlapping the next one.
    """
    local = now.astimezone(zone)
    start = now - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
    if start.astimezone(zone).utcoffset() != local.utcoffset():
        start = _offset_change(start, now, zone)
    start_local = start.astimezone(zone)
    into = timedelta(
        minutes=start_local.minute, seconds=start_local.second, microseconds=start_local.microsecond
    )
    end = start + _HOUR - into
    if (end - _TICK).astimezone(zone).utcoffset() != start_local.utcoffset():
        end = _offset_change(start, end - _TICK, zone)
    return start, end


def _offset_change(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in (before, after] with ``after``'s UTC offset (offsets differ at the ends)."""
    target = after.astimezone(zone).utcoffset()
    # Offsets change on whole seconds: bisect over seconds, lo keeping before's offset, hi after's.
    lo = before - timedelta(microseconds=before.microsecond)
    hi = after + (timedelta(seconds=1) - timedelta(microseconds=after.microsecond)) % timedelta(seconds=1)
    while hi - lo > timedelta(seconds=1):
        mid = lo + timedelta(seconds=(hi - lo).total_seconds() // 2)
        if mid.astimezone(zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return hi


def _parse_period(text: str) -> timedelta:
    match = _EVERY.match(text)
    if match is None:
        raise ValueError(f"cannot read period {text!r}; use e.g. '30m', '2h' or '1d'")
    count = int(match["n"])
    if count <= 0:
        raise ValueError(f"period must be positive, got {text!r}")
    return timedelta(seconds=count * _EVERY_SECONDS[match["unit"][0].lower()])


def _format_period(period: timedelta) -> str:
    seconds = int(period.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"  # pragma: no cover - periods are whole minutes


def _parse_anchor(value: object, zone: str | None) -> datetime:
    if value is None:
        return EPOCH
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"anchor: cannot read {value!r} as an ISO 8601 instant") from None
    else:
        raise ValueError(f"anchor must be an ISO 8601 string, got {value!r}")
    if when.tzinfo is None:
        # A naive anchor is local to the window's time zone (UTC unless given).
        when = when.replace(tzinfo=_zone(zone) if zone else UTC)
    return when.astimezone(UTC)


# -- pacing ---------------------------------------------------------------------

#: ``pace: even`` splits a window into this many steps (a month: one step a day).
EVEN_STEPS: Final = 30


@dataclass(frozen=True, slots=True)
class Pace:
    """Spread a budget over its window: by any moment, at most the share of the limit for the
    steps begun so far may be spent (plus ``burst_percent`` of the limit ahead of that).

    ``step`` None is ``pace: even``: the window's own length over ``EVEN_STEPS`` (a calendar
    month is 28 to 31 days, so its steps are too). What a step leaves unspent carries forward:
    the allowance is cumulative, and the whole limit is allowed in the last step.
    """

    step: timedelta | None = None
    burst_percent: int = 0

    def __post_init__(self) -> None:
        if self.step is not None and self.step < timedelta(seconds=1):
            raise ValueError(f"pace step must be at least 1 s, got {self.step}")
        if isinstance(self.burst_percent, bool) or not 0 <= self.burst_percent <= 100:
            raise ValueError(f"pace burst is a whole percent from 0 to 100, got {self.burst_percent!r}")

    def _steps(self, start: datetime, end: datetime) -> tuple[timedelta, int]:
        length = end - start
        if self.step is None:
            return length / EVEN_STEPS, EVEN_STEPS
        return self.step, max(-(-length // self.step), 1)  # ceil: a partial last step counts

    def allowance(self, limit: int, start: datetime, end: datetime, now: datetime) -> int:
        """What may be spent (and reserved) by ``now`` in the window ``[start, end)``, in nanos."""
        step, steps = self._steps(start, end)
        begun = min(int((now - start) // step) + 1, steps)
        share = limit * begun // steps + limit * self.burst_percent // 100
        return min(share, limit)

    def seconds_until(
        self, need: int, limit: int, start: datetime, end: datetime, now: datetime
    ) -> float | None:
        """How long until the allowance reaches ``need`` (None: not in this window)."""
        if need > limit:
            return None
        step, steps = self._steps(start, end)
        for begun in range(1, steps + 1):
            if min(limit * begun // steps + limit * self.burst_percent // 100, limit) >= need:
                at = start + step * (begun - 1)
                return max((at - now).total_seconds(), 0.0)
        return None  # pragma: no cover - the last step allows the whole limit

    @classmethod
    def parse(cls, value: object) -> Pace:
        """``"even"``, or ``{"step": "1d", "burst": "10%"}`` (both optional)."""
        if value == "even":
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"pace is 'even' or a mapping with step and burst, got {value!r}")
        unknown = [str(k) for k in value if k not in ("step", "burst")]
        if unknown:
            raise ValueError(f"unknown pace key {unknown[0]!r}; known: step, burst")
        step = value.get("step")
        burst = value.get("burst", 0)
        if isinstance(burst, str) and burst.strip().endswith("%") and burst.strip()[:-1].strip().isdigit():
            burst = int(burst.strip()[:-1])
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise ValueError(f"pace burst is a whole percent like '10%', got {value.get('burst')!r}")
        if step is None:
            return cls(None, burst)
        if not isinstance(step, str):
            raise ValueError(f"pace step is a duration like '1d' or '6h', got {step!r}")
        from spendgate.limits import parse_per  # the same durations as limit windows

        return cls(parse_per(step), burst)

    def to_config(self) -> str | dict[str, str]:
        if self.step is None and not self.burst_percent:
            return "even"
        out: dict[str, str] = {"burst": f"{self.burst_percent}%"}
        if self.step is not None:
            from spendgate.limits import format_per

            out["step"] = format_per(self.step)
        return out


# -- budgets --------------------------------------------------------------------

_BUDGET_KEYS: Final = (
    "id", "name", "selector", "limit", "window", "timezone", "thresholds", "on_exceed", "pace"
)  # fmt: skip
_ID = re.compile(r"^[^\s\x00-\x1f][^\x00-\x1f]{0,199}$")


def config_id_and_name(config: Mapping[str, Any], where: str, default_id: str) -> tuple[str, str | None]:
    """The ``id`` (``default_id`` when absent) and ``name`` of a budget's or a limit's config,
    checked alike: an id holds no control character (wait lines and instance keys rely on it)."""
    name = config.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{where}.name", f"must be a non-empty string, got {name!r}")
    given = config.get("id")
    if given is None:
        return default_id, name
    if not isinstance(given, str) or not _ID.match(given):
        raise ConfigError(
            f"{where}.id", f"must be a non-empty string without control characters, got {given!r}"
        )
    return given, name


@dataclass(frozen=True, slots=True)
class Budget:
    """A limit on what matching requests may spend per window.

    ``selector`` maps dimensions (``DIMENSIONS``) to an exact value or ``"*"``;
    an empty selector is the global budget. ``thresholds`` are percents of the
    limit at which subscribers hear about the spend, each once per window.
    """

    id: str
    selector: Mapping[str, str]
    limit: Money
    window: Window = field(default_factory=Window.none)
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    on_exceed: OnExceed = "raise"
    name: str | None = None
    #: Spread the limit over the window (None: the whole limit may go at any time).
    pace: Pace | None = None
    _selector: Selector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        selector = Selector(self.selector)
        if not isinstance(self.limit, Money) or self.limit.nanos < 0:
            raise ValueError(f"limit must be a non-negative Money, got {self.limit!r}")
        if self.on_exceed not in _ON_EXCEED:
            raise ValueError(f"on_exceed must be one of {', '.join(_ON_EXCEED)}, got {self.on_exceed!r}")
        if self.pace is not None and self.on_exceed == "alert":
            raise ValueError("a soft budget (on_exceed: alert) is not paced: it never refuses")
        if self.pace is not None and not self.window.resets:
            raise ValueError("a paced budget needs a window that resets (pacing spreads the limit over it)")
        set_ = object.__setattr__
        set_(self, "selector", selector.values)
        set_(self, "_selector", selector)
        set_(self, "thresholds", _check_thresholds(self.thresholds))
        if self.on_exceed != "alert" and self.thresholds and self.thresholds[-1] > 100:
            raise ValueError(
                f"each threshold is a whole percent from 1 to 100 (up to 1000 for a soft budget, "
                f"on_exceed: alert), got {self.thresholds[-1]}"
            )

    # -- config -----------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "budgets[0]") -> Budget:
        """Read one budget from config; ConfigError names the key path and the problem.

        ``{"id": "research", "selector": {"team": "research"}, "limit": "100",
        "window": "month", "timezone": "Europe/Berlin", "thresholds": [50, 80, 90, 100],
        "on_exceed": "raise", "name": "Research team"}``; only ``limit`` is required.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(where, f"a budget is a mapping, got {type(config).__name__}")
        unknown = [str(k) for k in config if k not in _BUDGET_KEYS]
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]}", f"unknown budget key; known: {', '.join(_BUDGET_KEYS)}"
            )
        selector = dict(Selector.from_config(config.get("selector"), f"{where}.selector").values)
        if "limit" not in config:
            raise ConfigError(f"{where}.limit", "missing: every budget needs a limit in USD")
        raw_limit = config["limit"]
        try:
            limit = Money.parse(raw_limit, what="limit")
        except MoneyError as exc:
            raise ConfigError(f"{where}.limit", str(exc).removeprefix("limit: ")) from None
        timezone = config.get("timezone")
        if timezone is not None:
            if not isinstance(timezone, str):
                raise ConfigError(f"{where}.timezone", f"must be an IANA zone name, got {timezone!r}")
            try:
                _zone(timezone)
            except ValueError as exc:
                raise ConfigError(f"{where}.timezone", str(exc)) from None
        raw_window = config.get("window", "none")
        if (
            isinstance(raw_window, Mapping)
            and timezone
            and raw_window.get("timezone") not in (None, timezone)
        ):
            raise ConfigError(f"{where}.timezone", "differs from window.timezone; give one of them")
        if isinstance(raw_window, Mapping) and "timezone" in raw_window:
            try:
                _zone(raw_window["timezone"])
            except ValueError as exc:
                raise ConfigError(f"{where}.window.timezone", str(exc)) from None
        try:
            window = Window.parse(raw_window, timezone=timezone)
        except ValueError as exc:
            raise ConfigError(f"{where}.window", str(exc)) from None
        try:
            thresholds = _check_thresholds(config.get("thresholds", DEFAULT_THRESHOLDS))
        except ValueError as exc:
            raise ConfigError(f"{where}.thresholds", str(exc)) from None
        on_exceed = config.get("on_exceed", "raise")
        if on_exceed not in _ON_EXCEED:
            raise ConfigError(
                f"{where}.on_exceed", f"must be one of {', '.join(_ON_EXCEED)}, got {on_exceed!r}"
            )
        if on_exceed != "alert" and thresholds and thresholds[-1] > 100:
            raise ConfigError(
                f"{where}.thresholds",
                f"each threshold is a whole percent from 1 to 100 (up to 1000 for a soft budget, "
                f"on_exceed: alert), got {thresholds[-1]}",
            )
        pace: Pace | None = None
        if config.get("pace") is not None:
            try:
                pace = Pace.parse(config["pace"])
            except ValueError as exc:
                raise ConfigError(f"{where}.pace", str(exc)) from None
            if not window.resets:
                raise ConfigError(f"{where}.pace", "a paced budget needs a window that resets (e.g. month)")
            if on_exceed == "alert":
                raise ConfigError(
                    f"{where}.pace", "a soft budget (on_exceed: alert) is not paced: it never refuses"
                )
        budget_id, name = config_id_and_name(config, where, default_id(selector, window))
        return cls(
            id=budget_id,
            selector=selector,
            limit=limit,
            window=window,
            thresholds=thresholds,
            on_exceed=on_exceed,
            name=name,
            pace=pace,
        )

    def to_config(self) -> dict[str, Any]:
        """A mapping that ``from_config`` reads back to an equal budget (limit as a decimal string)."""
        out: dict[str, Any] = {
            "id": self.id,
            "selector": dict(self.selector),
            "limit": self.limit.decimal_str(),
            "window": self.window.to_config(),
            "thresholds": list(self.thresholds),
            "on_exceed": self.on_exceed,
        }
        if self.name is not None:
            out["name"] = self.name
        if self.pace is not None:
            out["pace"] = self.pace.to_config()
        return out

    def allowance(self, now: datetime, start: datetime, end: datetime | None) -> int:
        """What may be spent and reserved in the current window by ``now``: the limit, or
        for a paced budget the share of the steps begun so far (nanos)."""
        if self.on_exceed == "alert":
            return SOFT_CAP  # soft: counted and alerted, never refused
        limit = self.limit.nanos
        if self.pace is None or end is None:
            return limit
        return self.pace.allowance(limit, start, end, now)

    @property
    def soft(self) -> bool:
        """Alert-only (``on_exceed: alert``): never refuses a request."""
        return self.on_exceed == "alert"

    # -- matching ---------------------------------------------------------------
    @property
    def wildcards(self) -> tuple[str, ...]:
        """The dimensions that make one instance per value, in key order."""
        return self._selector.wildcards

    def matches(self, attrs: Attributes) -> tuple[str, ...]:
        """The instance keys this request is charged to: ``()`` if it does not match,
        ``("",)`` for a budget without wildcards, one key per tag under ``tag: "*"``."""
        return self._selector.matches(attrs)

    def instance_key(self, instance: Mapping[str, str] | str | None) -> str:
        """Check an instance (values for the wildcard dimensions) and return its key."""
        return self._selector.instance_key(instance, f"budget {self.id!r}")

    # -- describing -------------------------------------------------------------
    def label(self, instance: Mapping[str, str] | str | None = None) -> str:
        """For people: ``team=research, monthly``; ``user=alice, daily`` for an instance."""
        text = f"{self._selector.describe(instance)}, {self.window.label()}"
        return f"{self.name}: {text}" if self.name else text

    def concrete_selector(self, instance: Mapping[str, str] | str | None = None) -> dict[str, str]:
        """The selector with an instance's values in place of its wildcards."""
        return self._selector.concrete(instance)


#: A budget instance a request is charged to: the budget, its instance key, its current window.
ChargedLine = tuple["Budget", str, tuple[datetime, "datetime | None"]]


def charged_lines(budgets: Iterable[Budget], attributes: Attributes, now: datetime) -> list[ChargedLine]:
    """Every budget instance a request made at ``now`` is charged to, with its window, in the
    order of ``budgets``: what each ledger backend reserves (and the order it reports in)."""
    lines: list[ChargedLine] = []
    for budget in budgets:
        keys = budget.matches(attributes)
        if keys:
            window = budget.window.bounds(now)
            lines.extend((budget, key, window) for key in keys)
    return lines


def default_id(selector: Mapping[str, str], window: Window) -> str:
    """An id for a budget config without one: ``team=research/monthly``."""
    return f"{format_instance(selector)}/{window.label()}"


def _check_thresholds(value: object) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"thresholds is a list of whole percents like [50, 80, 100], got {value!r}")
    out: list[int] = []
    for item in value:
        number: object = item
        if isinstance(item, str) and item.strip().rstrip("%").strip().isdigit():
            number = int(item.strip().rstrip("%"))
        elif isinstance(item, Decimal) and item == item.to_integral_value():
            number = int(item)
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"each threshold is a whole percent from 1 to 100, got {item!r}")
        if not 1 <= number <= 1000:
            raise ValueError(
                f"each threshold is a whole percent from 1 to 100 (up to 1000 for a soft budget, "
                f"on_exceed: alert), got {item!r}"
            )
        if number in out:
            raise ValueError(f"threshold {number} is listed twice")
        out.append(number)
    return tuple(sorted(out))


class _FrozenDict(dict[str, str]):
    """A selector that cannot change under a frozen Budget (and still hashes)."""

    def _readonly(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a budget's selector cannot be changed; build a new Budget")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))
