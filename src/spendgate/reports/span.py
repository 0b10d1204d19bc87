"""What a report covers: its instants (ISO 8601, or a span before now) and its bucket width."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from spendgate.budgets import EPOCH
from spendgate.gateway.views import parse_time

__all__ = ["BUCKETS", "bucket_name", "floor", "is_relative", "parse_bucket", "parse_instant"]

#: The bucket widths a report offers by name (``usage_timeseries`` takes any whole seconds).
BUCKETS: Final = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_RELATIVE: Final = re.compile(r"\s*(\d{1,9})\s*([mhdw])\s*")
_UNITS: Final = {
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_bucket(text: str) -> timedelta:
    """``hour`` or ``day`` (ValueError naming both otherwise)."""
    bucket = BUCKETS.get(text.strip().lower())
    if bucket is None:
        raise ValueError(f"bucket: must be one of {', '.join(BUCKETS)}, got {text!r}")
    return bucket


def bucket_name(bucket: timedelta) -> str:
    """``hour``, ``day``, or the width in seconds (``900s``)."""
    for name, width in BUCKETS.items():
        if width == bucket:
            return name
    return f"{bucket // timedelta(seconds=1)}s"


def is_relative(text: str) -> bool:
    """``7d``, ``24h``, ``30m``, ``2w``: a span before now."""
    return _RELATIVE.fullmatch(text) is not None


def parse_instant(text: str, what: str, now: datetime) -> datetime:
    """An ISO 8601 date or time (UTC when it has no offset: ``2026-03-01`` is midnight UTC), or
    a span before ``now`` (``7d``, ``24h``, ``30m``, ``2w``); in UTC. ValueError naming ``what``."""
    match = _RELATIVE.fullmatch(text)
    if match is None:
        return parse_time(text, what)
    try:
        return (now - int(match[1]) * _UNITS[match[2]]).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{what}: {text!r} reaches before the year 1") from None


def floor(when: datetime, bucket: timedelta) -> datetime:
    """The start of the bucket ``when`` is in (buckets counted from the Unix epoch, UTC)."""
    return when - (when - EPOCH) % bucket
