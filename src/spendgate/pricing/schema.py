"""What a model's price is: rates per 1M tokens in integer nano-USD.

A rate of ``None`` means "not priced apart": it falls back to the rate that
covers it (cache reads and writes to input, a 1-hour write to the default write,
a 12-hour write to the 1-hour write, reasoning and image output to output, a
tier's missing rate to the base rate), so no token is ever priced at $0 by
omission.

A model may also carry *multipliers*: uplifts on its whole price that a
request's conditions select (Anthropic's US-only ``inference_geo``, fast
``speed``, OpenAI's regional and FedRAMP endpoints, Vertex's non-global
endpoints). See :meth:`ModelPrice.multiplier`.

And *tool fees*: what a hosted tool (web search, file search, a code-interpreter
container...) costs per use on top of the tokens its results add. See :class:`ToolFee`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from spendgate.money import Money, MoneyError, nanos_per_million_to_decimal, rate_to_nanos_per_million

#: Rate fields, in data-file order. Values are nano-USD per 1M tokens.
RATE_FIELDS: Final = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "cache_write_12h",
    "reasoning",
    "audio_input",
    "audio_output",
    "image_output",
)

#: The data file's format. 2 added ``cache_write_12h``, ``image_output`` and ``multipliers``;
#: 3 added ``tool_fees`` (a version-2 reader would bill those tools at $0, so it must refuse a
#: version-3 file). An older file is a valid newer one, so every version up to this one loads.
SCHEMA_VERSION: Final = 3

#: Hosted tools billed per use on top of their tokens: the keys of ``tool_fees``. OpenAI's
#: ``web_search``/``file_search``/``code_interpreter``, Anthropic's ``web_search``/``web_fetch``/
#: ``code_execution``, Gemini's grounding with Google Search (``web_search``) and Maps.
TOOLS: Final = ("web_search", "web_fetch", "file_search", "code_interpreter", "code_execution", "google_maps")
#: How a tool's fee is counted: ``call`` each use; ``prompt`` once for a request that used the
#: tool at all (Gemini 2.x grounding); ``request`` once for every request to the model, whether
#: or not it asked (search models and Perplexity search on every request).
FEE_UNITS: Final = ("call", "prompt", "request")
#: The size a tool's fee depends on where the request names none: OpenAI's default
#: ``search_context_size`` and code-interpreter ``memory_limit``.
DEFAULT_TOOL_SIZE: Final = {"web_search": "medium", "code_interpreter": "1g"}

#: Multiplier kinds -> what selects a value (see ModelPrice.multiplier). ``endpoint_location``
#: has one key, ``regional``: any location but ``global``.
MULTIPLIER_KINDS: Final = ("inference_geo", "speed", "data_residency", "endpoint_location")
#: Conditions that mean "no uplift" (Anthropic reports these when not pinned to a geo).
_UNPINNED: Final = frozenset({"", "global", "not_available"})

#: Pricing modes besides ``standard`` that a catalog may carry.
SERVICE_TIERS: Final = ("standard", "batch", "flex", "priority")

MODES: Final = ("chat", "completion", "responses", "embedding")


@dataclass(frozen=True, slots=True)
class Rates:
    """One set of per-token rates, nano-USD per 1M tokens; ``None`` = not priced apart."""

    input: int | None = None
    output: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    cache_write_1h: int | None = None
    reasoning: int | None = None
    audio_input: int | None = None
    audio_output: int | None = None
    cache_write_12h: int | None = None
    image_output: int | None = None
    #: The effective rates (fallbacks applied), in RATE_FIELDS order; derived, for the hot path.
    effective: tuple[int, int, int, int, int, int, int, int, int, int] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        inp = self.input or 0
        out = self.output or 0
        write = self.cache_write if self.cache_write is not None else inp
        write_1h = self.cache_write_1h if self.cache_write_1h is not None else write
        object.__setattr__(
            self,
            "effective",
            (
                inp,
                out,
                self.cache_read if self.cache_read is not None else inp,
                write,
                write_1h,
                # a longer-lived write is covered by the shorter one's rate, never by $0
                self.cache_write_12h if self.cache_write_12h is not None else write_1h,
                self.reasoning if self.reasoning is not None else out,
                self.audio_input if self.audio_input is not None else inp,
                self.audio_output if self.audio_output is not None else out,
                self.image_output if self.image_output is not None else out,
            ),
        )

    def over(self, base: Rates) -> Rates:
        """These rates, with the missing ones taken from ``base``."""
        return Rates(
            **{
                name: getattr(self, name) if getattr(self, name) is not None else getattr(base, name)
                for name in RATE_FIELDS
            }
        )

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in RATE_FIELDS)

    # Effective rates: what a token of each kind costs once fallbacks apply.
    def input_rate(self) -> int:
        return self.effective[0]

    def output_rate(self) -> int:
        return self.effective[1]

    def cache_read_rate(self) -> int:
        return self.effective[2]

    def cache_write_rate(self) -> int:
        return self.effective[3]

    def cache_write_1h_rate(self) -> int:
        return self.effective[4]

    def cache_write_12h_rate(self) -> int:
        return self.effective[5]

    def reasoning_rate(self) -> int:
        return self.effective[6]

    def audio_input_rate(self) -> int:
        return self.effective[7]

    def audio_output_rate(self) -> int:
        return self.effective[8]

    def image_output_rate(self) -> int:
        return self.effective[9]

    @classmethod
    def from_data(cls, data: Mapping[str, Any], *, where: str) -> Rates:
        unknown = set(data) - set(RATE_FIELDS) - {"tiers", "above"}
        if unknown:
            raise ValueError(f"{where}: unknown price field(s) {sorted(unknown)}; known: {list(RATE_FIELDS)}")
        return cls(
            **{
                name: rate_to_nanos_per_million(data[name], what=f"{where}.{name}")
                for name in RATE_FIELDS
                if data.get(name) is not None
            }
        )

    def to_data(self) -> dict[str, str]:
        return {
            name: f"{nanos_per_million_to_decimal(value):f}"
            for name in RATE_FIELDS
            if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True, slots=True)
class Tier:
    """Rates for a request whose prompt is above ``above`` tokens (the whole request)."""

    above: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class RateTable:
    """Base rates plus long-context tiers, for one service tier (standard, batch...)."""

    base: Rates
    tiers: tuple[Tier, ...] = ()

    def for_prompt(self, prompt_tokens: int) -> Rates:
        """The rates that price a request with this many prompt tokens."""
        chosen = self.base
        for tier in self.tiers:  # sorted by threshold
            if prompt_tokens > tier.above:
                chosen = tier.rates
        return chosen

    @classmethod
    def from_data(cls, data: Mapping[str, Any], *, where: str, fallback: Rates | None = None) -> RateTable:
        base = Rates.from_data(data, where=where)
        if fallback is not None:
            base = base.over(fallback)
        tiers: list[Tier] = []
        for i, tier in enumerate(data.get("tiers") or ()):
            twhere = f"{where}.tiers[{i}]"
            above = tier.get("above")
            if isinstance(above, bool) or not isinstance(above, int) or above < 0:
                raise ValueError(f"{twhere}.above: must be a whole number of tokens >= 0, got {above!r}")
            tiers.append(Tier(above, Rates.from_data(tier, where=twhere).over(base)))
        tiers.sort(key=lambda t: t.above)
        return cls(base, tuple(tiers))

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = self.base.to_data()
        if self.tiers:
            out["tiers"] = [{"above": t.above, **t.rates.to_data()} for t in self.tiers]
        return out


@dataclass(frozen=True, slots=True)
class ToolFee:
    """What one use of a hosted tool costs, in nano-USD: one fee for every size (``fee``), or
    one per size it depends on (``sizes``: a web search's ``search_context_size``, a
    code-interpreter container's ``memory_limit``), counted ``per`` a unit of FEE_UNITS."""

    fee: int | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)
    per: str = "call"

    @property
    def highest(self) -> int:
        """The most one use can cost, at any size priced."""
        return max((self.fee or 0, *self.sizes.values()))

    def knows(self, size: str | None) -> bool:
        """Whether the fee at ``size`` is priced (a flat fee prices every size)."""
        return self.fee is not None or size is None or size in self.sizes

    def at(self, size: str | None, tool: str = "") -> int:
        """The fee of one use at ``size`` (None: the tool's default size); the highest priced
        when that size is not (never below what the provider may bill)."""
        if self.fee is not None:
            return self.fee
        chosen = self.sizes.get(size or DEFAULT_TOOL_SIZE.get(tool, ""))
        return self.highest if chosen is None else chosen

    @classmethod
    def from_data(cls, data: object, *, where: str) -> ToolFee:
        """``"0.01"`` (USD per use, every size) or ``{"low": ..., "high": ..., "per": "prompt"}``
        / ``{"fee": ..., "per": "request"}``."""
        if not isinstance(data, Mapping):
            return cls(fee=_fee_nanos(data, where=where))
        per = data.get("per", "call")
        if per not in FEE_UNITS:
            raise ValueError(f"{where}.per: one of {list(FEE_UNITS)}, got {per!r}")
        sizes: dict[str, int] = {}
        for size in sorted(k for k in data if k not in ("fee", "per")):
            if not isinstance(size, str) or not size or size != size.lower():
                raise ValueError(
                    f"{where}: a size is a lowercase name (low, medium, high, 1g...), got {size!r}"
                )
            sizes[size] = _fee_nanos(data[size], where=f"{where}.{size}")
        fee = _fee_nanos(data["fee"], where=f"{where}.fee") if data.get("fee") is not None else None
        if (fee is None) == (not sizes):
            raise ValueError(f"{where}: give either one 'fee' or a fee per size, not both or neither")
        return cls(fee=fee, sizes=sizes, per=per)

    def to_data(self) -> str | dict[str, str]:
        if self.fee is not None and self.per == "call":
            return _fee_text(self.fee)
        out: dict[str, str] = {"fee": _fee_text(self.fee)} if self.fee is not None else {}
        out.update({size: _fee_text(nanos) for size, nanos in self.sizes.items()})
        if self.per != "call":
            out["per"] = self.per
        return out


def _fee_nanos(value: object, *, where: str) -> int:
    """A fee in USD per use (decimal text; a typed float is read as the decimal it shows)."""
    try:
        return Money.parse(value, what=where).nanos
    except MoneyError as exc:
        raise ValueError(str(exc)) from None


def _fee_text(nanos: int) -> str:
    return Money(nanos).decimal_str()


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Everything spendgate knows about pricing one model."""

    name: str
    standard: RateTable
    provider: str = ""
    mode: str = "chat"
    max_output_tokens: int | None = None
    context_window: int | None = None
    #: Other service tiers (batch, flex, priority); missing rates fall back to standard.
    service_tiers: Mapping[str, RateTable] = field(default_factory=dict)
    #: Uplifts on the whole price: kind (MULTIPLIER_KINDS) -> condition -> factor as decimal
    #: text (``{"inference_geo": {"us": "1.1"}}``); a condition not listed is list price.
    multipliers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Hosted tool (TOOLS) -> what one use costs; a tool not listed has no fee the catalog knows
    #: (never $0: see spendgate.estimate for how such a request is bounded).
    tool_fees: Mapping[str, ToolFee] = field(default_factory=dict)

    def multiplier(
        self,
        *,
        inference_geo: str | None = None,
        speed: str | None = None,
        data_residency: str | None = None,
        endpoint_location: str | None = None,
    ) -> tuple[int, int]:
        """The uplift these conditions select, as an exact fraction (numerator, denominator)."""
        if not self.multipliers:
            return 1, 1
        location = (endpoint_location or "").lower()
        chosen = {
            "inference_geo": (inference_geo or "").lower(),
            "speed": (speed or "").lower(),
            "data_residency": (data_residency or "").lower(),
            # Vertex prices every non-global endpoint (regional or multi-region) alike.
            "endpoint_location": "" if location in _UNPINNED else "regional",
        }
        num, den = 1, 1
        for kind, condition in chosen.items():
            factor = self.multipliers.get(kind, {}).get(condition) if condition not in _UNPINNED else None
            if factor is not None:
                n, d = Decimal(factor).as_integer_ratio()
                num, den = num * n, den * d
        return num, den

    def rates(self, prompt_tokens: int, service_tier: str | None = None) -> Rates:
        table = self.service_tiers.get(service_tier or "standard", self.standard)
        return table.for_prompt(prompt_tokens)

    def with_name(self, name: str) -> ModelPrice:
        return replace(self, name=name)

    def with_tool_fees(self, fees: Mapping[str, ToolFee]) -> ModelPrice:
        """This price with ``fees`` in place of (or beside) its own tool fees."""
        merged = {**self.tool_fees, **fees}
        return replace(self, tool_fees={tool: merged[tool] for tool in TOOLS if tool in merged})

    @classmethod
    def from_data(cls, name: str, data: Mapping[str, Any], *, where: str | None = None) -> ModelPrice:
        """Read one model from the data-file / config shape (see docs/pricing.md)."""
        where = where or f"models[{name!r}]"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping of prices, got {type(data).__name__}")
        known = {
            "provider",
            "mode",
            "max_output_tokens",
            "context_window",
            "prices",
            "multipliers",
            "tool_fees",
            *SERVICE_TIERS[1:],
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        prices = data.get("prices")
        if not isinstance(prices, Mapping):
            raise ValueError(f"{where}.prices: required, a mapping like {{input: '2.50', output: '10'}}")
        standard = RateTable.from_data(prices, where=f"{where}.prices")
        if standard.base.input is None and standard.base.output is None:
            raise ValueError(f"{where}.prices: needs at least an input or an output price")
        tiers = {
            tier: RateTable.from_data(data[tier], where=f"{where}.{tier}", fallback=standard.base)
            for tier in SERVICE_TIERS[1:]
            if data.get(tier) is not None
        }
        for key in ("max_output_tokens", "context_window"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{where}.{key}: must be a positive whole number, got {value!r}")
        return cls(
            name=name,
            standard=standard,
            provider=str(data.get("provider") or ""),
            mode=str(data.get("mode") or "chat"),
            max_output_tokens=data.get("max_output_tokens"),
            context_window=data.get("context_window"),
            service_tiers=tiers,
            multipliers=_multipliers(data.get("multipliers"), where=f"{where}.multipliers"),
            tool_fees=tool_fees_from_data(data.get("tool_fees"), where=f"{where}.tool_fees"),
        )

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.provider:
            out["provider"] = self.provider
        out["mode"] = self.mode
        if self.max_output_tokens is not None:
            out["max_output_tokens"] = self.max_output_tokens
        if self.context_window is not None:
            out["context_window"] = self.context_window
        out["prices"] = self.standard.to_data()
        for tier, table in self.service_tiers.items():
            out[tier] = table.to_data()
        if self.multipliers:
            out["multipliers"] = {kind: dict(values) for kind, values in self.multipliers.items()}
        if self.tool_fees:
            out["tool_fees"] = {tool: fee.to_data() for tool, fee in self.tool_fees.items()}
        return out


def tool_fees_from_data(data: object, *, where: str) -> dict[str, ToolFee]:
    """Read ``tool_fees``: tool (TOOLS) -> ToolFee data."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping like {{web_search: '0.01'}}")
    unknown = set(data) - set(TOOLS)
    if unknown:
        raise ValueError(f"{where}: unknown tool(s) {sorted(map(str, unknown))}; known: {list(TOOLS)}")
    # In TOOLS order, so a price reads and writes the same whatever order it was given in.
    return {tool: ToolFee.from_data(data[tool], where=f"{where}.{tool}") for tool in TOOLS if tool in data}


def _multipliers(data: object, *, where: str) -> dict[str, dict[str, str]]:
    """Read ``multipliers``: factors >= 1 as decimal text (an uplift, never a silent discount)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping like {{inference_geo: {{us: '1.1'}}}}")
    out: dict[str, dict[str, str]] = {}
    for kind in sorted(data, key=str):
        values = data[kind]
        if kind not in MULTIPLIER_KINDS:
            raise ValueError(f"{where}: unknown kind {kind!r}; known: {list(MULTIPLIER_KINDS)}")
        if not isinstance(values, Mapping) or not values:
            raise ValueError(f"{where}.{kind}: expected a mapping of condition -> factor")
        table: dict[str, str] = {}
        for condition in sorted(values, key=str):
            factor = values[condition]
            if not isinstance(condition, str) or not condition or condition != condition.lower():
                raise ValueError(f"{where}.{kind}: a condition is a lowercase name, got {condition!r}")
            if isinstance(factor, bool) or not isinstance(factor, str | int | Decimal):
                raise ValueError(f"{where}.{kind}.{condition}: write the factor as a decimal string")
            try:
                dec = Decimal(str(factor).strip())
            except InvalidOperation:
                raise ValueError(f"{where}.{kind}.{condition}: cannot read {factor!r} as a factor") from None
            if not dec.is_finite() or dec < 1:
                raise ValueError(f"{where}.{kind}.{condition}: a factor is a number >= 1, got {factor}")
            table[condition] = f"{dec.normalize():f}"
        out[kind] = table
    return out
