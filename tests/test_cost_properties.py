"""Property tests: cost never falls when any independent token count rises.

Counts are drawn in the independent form (uncached input, cache reads, default,
1-hour and 12-hour cache writes, plain output, reasoning, image output), since in OpenAI's form a
rise in cached tokens at a fixed prompt *moves* tokens to a cheaper rate.
Prices are drawn from the shipped catalog, so a tier priced below its base
would be caught here.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.cost import cost_of
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import ModelPrice
from spendgate.usage import Usage

CATALOG = Catalog.builtin()
MODELS = [p for p in CATALOG.models() if p.mode != "embedding"]
KINDS = ("uncached", "read", "write", "write_1h", "write_12h", "plain_out", "reasoning", "image_out")

counts = st.integers(min_value=0, max_value=2_000_000)


def build(c: dict[str, int]) -> Usage:
    return Usage(
        input_tokens=c["uncached"] + c["read"] + c["write"] + c["write_1h"] + c["write_12h"],
        cache_read_tokens=c["read"],
        cache_write_tokens=c["write"],
        cache_write_1h_tokens=c["write_1h"],
        cache_write_12h_tokens=c["write_12h"],
        output_tokens=c["plain_out"] + c["reasoning"] + c["image_out"],
        reasoning_tokens=c["reasoning"],
        image_output_tokens=c["image_out"],
    )


@settings(max_examples=400, deadline=None)
@given(
    price=st.sampled_from(MODELS),
    base=st.fixed_dictionaries({k: counts for k in KINDS}),
    kind=st.sampled_from(KINDS),
    extra=st.integers(min_value=1, max_value=500_000),
    tier=st.sampled_from(["standard", "batch", "flex", "priority"]),
)
def test_cost_never_falls_when_a_count_rises(
    price: ModelPrice, base: dict[str, int], kind: str, extra: int, tier: str
) -> None:
    more = dict(base)
    more[kind] += extra
    before = cost_of(build(base), price, service_tier=tier)
    after = cost_of(build(more), price, service_tier=tier)
    assert after.exact_femto >= before.exact_femto, (price.name, kind, before.as_dict(), after.as_dict())
    assert after.total >= before.total


@settings(max_examples=200, deadline=None)
@given(
    price=st.sampled_from(MODELS),
    base=st.fixed_dictionaries({k: counts for k in KINDS}),
    residency=st.sampled_from([None, "eu", "us", "fedramp"]),
    geo=st.sampled_from(["", "us", "global"]),
    speed=st.sampled_from(["", "fast"]),
)
def test_total_is_exact_sum_rounded_up(
    price: ModelPrice, base: dict[str, int], residency: str | None, geo: str, speed: str
) -> None:
    cost = cost_of(build(base), price, data_residency=residency, inference_geo=geo, speed=speed)
    plain = cost_of(build(base), price)
    assert cost.exact_femto >= plain.exact_femto  # a multiplier is an uplift, never a discount
    assert sum(v for k, v in cost.breakdown().items() if k != "total") <= cost.total.to_decimal()
    assert (
        cost.total.nanos * 10**6 >= cost.exact_femto > (cost.total.nanos - 1) * 10**6 or cost.exact_femto == 0
    )


def test_long_context_tiers_never_cheaper_than_below_them() -> None:
    # Crossing a threshold reprices the whole request; a cheaper tier would make cost fall as a prompt grows.
    bad = []
    for price in CATALOG.models():
        for name, table in {"standard": price.standard, **price.service_tiers}.items():
            below = table.base.effective
            for tier in table.tiers:
                if any(t < b for t, b in zip(tier.rates.effective, below, strict=True)):
                    bad.append(f"{price.name} {name} above {tier.above}")
                below = tier.rates.effective
    assert not bad, bad
