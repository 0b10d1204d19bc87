"""Exact amounts of money: integer nano-USD (1e-9 USD), never float.

Prices are kept per 1M tokens in nano-USD; a token count times such a rate is
an amount in femto-USD (1e-15 USD), so a whole request is summed exactly and
rounded up once, to the next nano-USD.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from functools import total_ordering
from typing import Final

NANO_PER_USD: Final = 1_000_000_000
#: nano-USD per 1M tokens times tokens gives this many units per nano-USD.
FEMTO_PER_NANO: Final = 1_000_000

_AMOUNT = re.compile(
    r"""^\s*
    (?P<sign>-)?\s*
    (?P<dollar>\$)?\s*
    (?P<number>[0-9][0-9_,]*(?:\.[0-9]*)?|\.[0-9]+)
    \s*(?P<unit>usd)?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


class MoneyError(ValueError):
    """An amount that cannot be money: not a number, NaN, infinite or negative."""


def decimal_from_float(value: float, *, what: str = "amount") -> Decimal:
    """A float a person typed (``0.1``) as the decimal they wrote: its shortest representation.

    ``repr(0.1)`` is ``"0.1"``, so the amount is exactly 0.1, not the binary float's
    0.1000000000000000055...; this is the one place floats become money, and nothing
    past it ever holds one. NaN and infinities are refused.
    """
    if not math.isfinite(value):
        raise MoneyError(f"{what}: must be a finite number, got {value!r}")
    return Decimal(repr(value))


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def femto_to_nano_ceil(femto: int) -> int:
    """Round an exact femto-USD amount up to whole nano-USD."""
    return _ceil_div(femto, FEMTO_PER_NANO)


@total_ordering
class Money:
    """A non-negative-or-signed exact amount of USD held as integer nano-USD.

    Arithmetic between Money values is exact. Construction from text, Decimal or
    a float (read as its shortest decimal, ``0.1`` -> 0.1) refuses NaN, infinity
    and (unless ``allow_negative``) negatives; the amount itself is never a float.
    """

    __slots__ = ("nanos",)
    nanos: int

    def __init__(self, nanos: int = 0) -> None:
        if isinstance(nanos, bool) or not isinstance(nanos, int):
            raise MoneyError(f"Money holds integer nano-USD, got {type(nanos).__name__}")
        object.__setattr__(self, "nanos", nanos)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Money is immutable")

    # -- construction -----------------------------------------------------
    @classmethod
    def parse(cls, value: object, *, allow_negative: bool = False, what: str = "amount") -> Money:
        """Parse ``100``, ``0.5``, ``"100 USD"``, ``"$0.50"``, ``Decimal("1.5")`` or a Money.

        Amounts finer than a nano-USD are rounded up, so a limit or a price is
        never understated. ``what`` names the value in error messages.
        """
        if isinstance(value, Money):
            money = value
        elif isinstance(value, bool):
            raise MoneyError(f"{what}: expected an amount in USD, got a boolean")
        elif isinstance(value, int):
            money = cls(value * NANO_PER_USD)
        elif isinstance(value, float):
            money = cls.from_decimal(decimal_from_float(value, what=what), what=what)
        elif isinstance(value, Decimal):
            money = cls.from_decimal(value, what=what)
        elif isinstance(value, str):
            match = _AMOUNT.match(value)
            if match is None:
                raise MoneyError(
                    f'{what}: cannot read {value!r} as an amount in USD (examples: 100, "100 USD", "$0.50")'
                )
            number = match["number"].replace("_", "").replace(",", "")
            if number.endswith("."):
                number += "0"
            decimal = Decimal(number)
            if match["sign"]:
                decimal = -decimal
            money = cls.from_decimal(decimal, what=what)
        else:
            raise MoneyError(f"{what}: expected an amount in USD, got {type(value).__name__}")
        if money.nanos < 0 and not allow_negative:
            raise MoneyError(f"{what}: must not be negative, got {money}")
        return money

    @classmethod
    def from_decimal(cls, value: Decimal, *, what: str = "amount") -> Money:
        if not value.is_finite():
            raise MoneyError(f"{what}: must be a finite number, got {value}")
        try:
            scaled = (value * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING)
        except InvalidOperation as exc:  # pragma: no cover - finite Decimals scale
            raise MoneyError(f"{what}: cannot use {value}") from exc
        return cls(int(scaled))

    @classmethod
    def usd(cls, value: str | int | float | Decimal) -> Money:
        """Shorthand for tests and examples: ``Money.usd("0.50")``."""
        return cls.parse(value, allow_negative=True)

    @classmethod
    def from_femto_ceil(cls, femto: int) -> Money:
        return cls(femto_to_nano_ceil(femto))

    # -- views ------------------------------------------------------------
    def to_decimal(self) -> Decimal:
        return Decimal(self.nanos).scaleb(-9)

    def decimal_str(self) -> str:
        """The amount in USD as a plain decimal string for JSON and headers: ``"0.03002"``, ``"1"``, ``"0"``."""
        return f"{self.to_decimal().normalize():f}"

    def format(self, places: int = 2) -> str:
        """For people: ``$1.50``; amounts below a cent keep their significant digits."""
        dec = self.to_decimal()
        sign = "-" if dec < 0 else ""
        dec = abs(dec)
        shown = dec.quantize(Decimal(1).scaleb(-places))
        if shown != dec:
            # Never show a nonzero amount as $0.00, nor round a price to a lie.
            shown = dec.normalize()
            if shown == shown.to_integral_value():
                shown = shown.quantize(Decimal(1))
        text = f"{shown:,f}"
        return f"{sign}${text}"

    def __str__(self) -> str:
        return f"{self.to_decimal().normalize():f} USD" if self.nanos else "0 USD"

    def __repr__(self) -> str:
        return f"Money({self.nanos})"

    # -- arithmetic -------------------------------------------------------
    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.nanos + other.nanos)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.nanos - other.nanos)

    def __mul__(self, factor: int) -> Money:
        if isinstance(factor, bool) or not isinstance(factor, int):
            return NotImplemented
        return Money(self.nanos * factor)

    __rmul__ = __mul__

    def __neg__(self) -> Money:
        return Money(-self.nanos)

    def __bool__(self) -> bool:
        return self.nanos != 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.nanos == other.nanos

    def __lt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.nanos < other.nanos

    def __hash__(self) -> int:
        return hash(("Money", self.nanos))

    def __reduce__(self) -> tuple[type[Money], tuple[int]]:
        return (Money, (self.nanos,))


ZERO: Final = Money(0)


def rate_to_nanos_per_million(value: object, *, what: str = "price") -> int:
    """A price in USD per 1M tokens (decimal string, Decimal, int, or a float read as its
    shortest decimal) as nano-USD per 1M.

    Rounded up if finer than that (below 1e-15 USD a token): a price is never understated.
    """
    if isinstance(value, bool):
        raise MoneyError(f"{what}: expected a price per 1M tokens, got a boolean")
    if isinstance(value, float):
        value = decimal_from_float(value, what=what)
    try:
        dec = Decimal(str(value).strip().lstrip("$")) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise MoneyError(f"{what}: cannot read {value!r} as a price in USD per 1M tokens") from None
    if not dec.is_finite():
        raise MoneyError(f"{what}: must be a finite number, got {value}")
    if dec < 0:
        raise MoneyError(f"{what}: must not be negative, got {value}")
    return int((dec * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def nanos_per_million_to_decimal(rate: int) -> Decimal:
    """Back to USD per 1M tokens, for display and data files."""
    return Decimal(rate).scaleb(-9).normalize()
