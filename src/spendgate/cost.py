"""The cost of a usage under a model's price: exact, in femto-USD, rounded up once.

Tokens at their rates, plus each hosted tool's uses at its per-use fee (``tool_fees``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from spendgate.errors import SpendgateError
from spendgate.money import Money
from spendgate.pricing.schema import ModelPrice, Rates
from spendgate.usage import TOOL_CALL_FIELDS, Usage

#: Breakdown parts of the tokens, in display order; tool fees follow, by tool, where charged.
PARTS: Final = ("input", "cache_read", "cache_write", "output", "reasoning")

_FEMTO_PER_USD: Final = Decimal(10) ** 15
#: Tool fees are nano-USD per use; parts are femto-USD.
FEMTO_PER_NANO: Final = 10**6


class ToolFeeError(SpendgateError, ValueError):
    """A usage reports uses of a hosted tool whose fee the model's price lacks: refused rather
    than counted as $0."""

    def __init__(self, model: str, tool: str) -> None:
        self.model = model
        self.tool = tool
        super().__init__(
            f"the usage reports {tool} uses but the price of {model!r} has no {tool} fee; spendgate "
            f"will not count them as free. Add one: prices: {model}: tool_fees: {tool}: <USD per use>"
        )


@dataclass(frozen=True, slots=True)
class Cost:
    """What a request cost: the total (rounded up to a nano-USD) and its exact parts.

    Parts are exact (femto-USD: rates are nano-USD per 1M tokens), before any
    multiplier; ``exact_femto`` is their sum times the multiplier (an exact
    fraction, rounded up to a femto-USD) and ``total`` that rounded up to a
    nano-USD, once (ceil of a ceil over whole divisors is the exact ceil).
    """

    model: str
    usage: Usage
    input_femto: int
    cache_read_femto: int
    cache_write_femto: int
    output_femto: int
    reasoning_femto: int
    tier_above: int | None = None
    service_tier: str = "standard"
    #: The uplift the request's conditions selected (ModelPrice.multiplier), numerator/denominator.
    multiplier_num: int = 1
    multiplier_den: int = 1
    #: Hosted tool fees charged: (tool, femto-USD) pairs, before the multiplier (an uplift is
    #: applied to the whole bill: never under-counted where a provider applies it to tools too).
    tools_femto: tuple[tuple[str, int], ...] = ()

    @property
    def exact_femto(self) -> int:
        parts = (
            self.input_femto
            + self.cache_read_femto
            + self.cache_write_femto
            + self.output_femto
            + self.reasoning_femto
        )
        for _tool, femto in self.tools_femto:
            parts += femto
        if self.multiplier_den == 1:
            return parts * self.multiplier_num
        return -(-parts * self.multiplier_num // self.multiplier_den)

    @property
    def total(self) -> Money:
        return Money.from_femto_ceil(self.exact_femto)

    def breakdown(self) -> dict[str, Decimal]:
        """Each part in exact USD (Decimal, multiplier applied): the token parts (PARTS), each
        tool charged (``web_search``...), and ``total`` (rounded up to a nano-USD)."""
        # The denominator comes from a decimal factor, so each quotient is a finite decimal.
        scale = _FEMTO_PER_USD * self.multiplier_den
        parts = {
            name: Decimal(getattr(self, f"{name}_femto") * self.multiplier_num) / scale for name in PARTS
        }
        for tool, femto in self.tools_femto:
            parts[tool] = Decimal(femto * self.multiplier_num) / scale
        parts["total"] = self.total.to_decimal()
        return parts

    def as_dict(self) -> dict[str, str]:
        """For logs and JSON: decimal strings, never floats."""
        return {name: f"{value.normalize():f}" for name, value in self.breakdown().items()}


def cost_of(
    usage: Usage,
    price: ModelPrice,
    *,
    service_tier: str | None = None,
    data_residency: str | None = None,
    endpoint_location: str | None = None,
    inference_geo: str | None = None,
    speed: str | None = None,
) -> Cost:
    """Price ``usage`` with ``price``.

    - cache reads, cache writes (default TTL, 1-hour and 12-hour) and audio tokens
      at their own rates, each taken out of the input once, never priced twice;
    - reasoning, audio and image output tokens at their own rates, taken out of
      the output once (each falls back to the output rate unless priced apart);
    - a long-context tier, chosen by the request's whole prompt (cached tokens
      included), prices the whole request;
    - the model's multipliers for the conditions given: ``inference_geo`` and
      ``speed`` default to what the usage reports (Anthropic); ``data_residency``
      (``eu``/``us``/``fedramp``: the OpenAI host called) and ``endpoint_location``
      (a Vertex location) are known only to the caller;
    - hosted tool uses at the model's ``tool_fees`` (at the default size where a fee depends
      on one): a ``call`` fee per use, a ``prompt`` fee once if the tool was used, a
      ``request`` fee once whatever the usage says. Uses of a tool the price has no fee for
      raise :class:`ToolFeeError`.
    """
    tier_name = service_tier if service_tier and service_tier in price.service_tiers else "standard"
    table = price.service_tiers.get(tier_name, price.standard)
    prompt = usage.input_tokens
    rates: Rates = table.base
    tier_above = None
    for tier in table.tiers:  # sorted by threshold: the last one passed wins
        if prompt > tier.above:
            rates = tier.rates
            tier_above = tier.above
    inp, out, read, write, write_1h, write_12h, reasoning, audio_in, audio_out, image_out = rates.effective

    audio_input = usage.audio_input_tokens
    audio_output = usage.audio_output_tokens
    text_input = (
        prompt
        - usage.cache_read_tokens
        - usage.cache_write_tokens
        - usage.cache_write_1h_tokens
        - usage.cache_write_12h_tokens
        - audio_input
    )
    image_output = usage.image_output_tokens
    text_output = usage.output_tokens - usage.reasoning_tokens - audio_output - image_output
    num, den = price.multiplier(
        inference_geo=usage.inference_geo if inference_geo is None else inference_geo,
        speed=usage.speed if speed is None else speed,
        data_residency=data_residency,
        endpoint_location=endpoint_location,
    )
    return Cost(
        model=price.name,
        usage=usage,
        input_femto=(text_input if text_input > 0 else 0) * inp + audio_input * audio_in,
        cache_read_femto=usage.cache_read_tokens * read,
        cache_write_femto=usage.cache_write_tokens * write
        + usage.cache_write_1h_tokens * write_1h
        + usage.cache_write_12h_tokens * write_12h,
        output_femto=(text_output if text_output > 0 else 0) * out
        + audio_output * audio_out
        + image_output * image_out,
        reasoning_femto=usage.reasoning_tokens * reasoning,
        tier_above=tier_above,
        service_tier=tier_name,
        multiplier_num=num,
        multiplier_den=den,
        tools_femto=_tool_parts(usage, price) if price.tool_fees or usage.tool_calls() else (),
    )


def _tool_parts(usage: Usage, price: ModelPrice) -> tuple[tuple[str, int], ...]:
    """(tool, femto-USD) for each hosted tool fee the usage incurs under ``price``."""
    parts: list[tuple[str, int]] = []
    for tool, fee in price.tool_fees.items():
        field = TOOL_CALL_FIELDS.get(tool)
        calls: int = getattr(usage, field) if field is not None else 0
        uses = 1 if fee.per == "request" else min(calls, 1) if fee.per == "prompt" else calls
        if uses:
            parts.append((tool, uses * fee.at(None, tool) * FEMTO_PER_NANO))
    for tool in usage.tool_calls():
        if tool not in price.tool_fees:
            raise ToolFeeError(price.name, tool)
    return tuple(parts)
