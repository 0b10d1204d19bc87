"""The cost of a usage under a model's price: exact, in femto-USD, rounded up once."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from spendgate.money import Money
from spendgate.pricing.schema import ModelPrice, Rates
from spendgate.usage import Usage

#: Breakdown parts, in display order.
PARTS: Final = ("input", "cache_read", "cache_write", "output", "reasoning")

_FEMTO_PER_USD: Final = Decimal(10) ** 15


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

    @property
    def exact_femto(self) -> int:
        parts = (
            self.input_femto
            + self.cache_read_femto
            + self.cache_write_femto
            + self.output_femto
            + self.reasoning_femto
        )
        if self.multiplier_den == 1:
            return parts * self.multiplier_num
        return -(-parts * self.multiplier_num // self.multiplier_den)

    @property
    def total(self) -> Money:
        return Money.from_femto_ceil(self.exact_femto)

    def breakdown(self) -> dict[str, Decimal]:
        """Each part in exact USD (Decimal, multiplier applied), plus ``total`` (rounded up to a nano-USD)."""
        # The denominator comes from a decimal factor, so each quotient is a finite decimal.
        scale = _FEMTO_PER_USD * self.multiplier_den
        parts = {
            name: Decimal(getattr(self, f"{name}_femto") * self.multiplier_num) / scale for name in PARTS
        }
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
      (a Vertex location) are known only to the caller.
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
    )
