"""Convert the community price catalog (litellm's ``model_prices_and_context_window.json``).

The community file prices tokens in USD per token as JSON numbers
(``2.5e-06``). It is parsed with ``parse_float=Decimal`` so every price keeps
its exact decimal text, and converted to USD per 1M tokens by decimal
arithmetic only (``2.5e-06`` -> ``"2.5"``); no price ever goes through a float.

What is read, per entry:

* ``input_cost_per_token``, ``output_cost_per_token``, ``cache_read_input_token_cost``,
  ``cache_creation_input_token_cost`` (default-TTL write: Anthropic's 5 minutes, OpenAI's
  30), ``..._above_1hr`` (1-hour write), ``..._above_12hr`` (12-hour write),
  ``output_cost_per_reasoning_token``, ``input_cost_per_audio_token``,
  ``output_cost_per_audio_token``, ``output_cost_per_image_token``;
* multipliers (uplifts on the whole price): ``provider_specific_entry`` numbers
  (``{"us": 1.1}`` -> ``inference_geo``, ``{"fast": 2}`` -> ``speed``),
  ``regional_processing_uplift_multiplier_<eu|us>`` and ``fedramp_uplift_multiplier``
  (-> ``data_residency``), ``regional_endpoint_uplift_multiplier`` (-> ``endpoint_location``);
* long-context tiers: those keys with ``_above_<N>k_tokens`` (a prompt above N*1000
  tokens prices the whole request at the tier's rates) and ``tiered_pricing`` ranges
  (``[start, end]``: a prompt above ``start`` tokens; a range from 0 is the base);
* service tiers: the ``_batches``, ``_flex`` and ``_priority`` suffixes, also after a
  long-context part (``input_cost_per_token_above_200k_tokens_batches``);
* ``alias_of`` entries, ``litellm_provider``, ``mode``, ``max_output_tokens``,
  ``max_input_tokens`` and the legacy ``max_tokens``;
* per-use tool fees (``tool_fees``), as the community cost code reads them:
  ``search_context_cost_per_query`` (USD per web search by ``search_context_size``; counted per
  grounded prompt for Gemini unless ``web_search_billing_unit`` is ``per_query``, once per
  request for OpenAI's search models and Perplexity, whose every request searches),
  ``input_cost_per_request`` (Perplexity's older online models: a search fee on every request),
  ``google_maps_grounding_cost_per_query`` (Gemini, same unit as its search),
  ``file_search_cost_per_1k_calls``, ``code_interpreter_cost_per_session`` (the default 1g
  container; the ``<provider>/container`` entry prices it for every chat and responses model of
  the provider). ``search_free_requests`` (a free daily or monthly allowance shared across an
  organisation) is not read: list price is the bound.

Kept: modes chat, completion, responses and embedding, and entries with token prices
but no mode (as chat, or embedding for an embedding provider). An entry priced per query
(``input_cost_per_query``) without an input token price is skipped: it would cost $0 here.
Everything else is skipped and counted; :meth:`ConvertResult.summary` reports the counts in a few lines.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any, Final

from spendgate.errors import SpendgateError
from spendgate.pricing.schema import (
    MODES,
    RATE_FIELDS,
    SCHEMA_VERSION,
    ModelPrice,
    Rates,
    RateTable,
    Tier,
    tool_fees_from_data,
)

#: The community file's name, recorded in the data document.
SOURCE_NAME: Final = "model_prices_and_context_window.json"
#: Where a litellm wheel carries the catalog (the first that exists is used).
WHEEL_MEMBERS: Final = (
    "litellm/model_prices_and_context_window_backup.json",
    "litellm/model_prices_and_context_window.json",
)
#: The corrections file shipped next to the generated data file.
CORRECTIONS_PATH: Final = Path(__file__).parent / "data" / "corrections.json"
DOWNLOAD_TIMEOUT_SECONDS: Final = 60.0

#: Community base key -> our rate field. Longest first where one is a prefix of another.
_PRICE_KEYS: Final = {
    "cache_creation_input_token_cost_above_12hr": "cache_write_12h",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "cache_creation_input_token_cost": "cache_write",
    "cache_read_input_token_cost": "cache_read",
    "input_cost_per_audio_token": "audio_input",
    "output_cost_per_audio_token": "audio_output",
    "output_cost_per_reasoning_token": "reasoning",
    "output_cost_per_image_token": "image_output",
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
}
_SERVICE_SUFFIXES: Final = {"batches": "batch", "flex": "flex", "priority": "priority"}
_KEY: Final = re.compile(
    rf"^(?P<field>{'|'.join(map(re.escape, _PRICE_KEYS))})"
    r"(?:_above_(?P<n>\d+)(?P<k>k?)_tokens)?"
    rf"(?:_(?P<service>{'|'.join(_SERVICE_SUFFIXES)}))?$"
)
#: Providers whose long-context threshold is inclusive (a prompt of exactly N tokens is
#: already "above N"), as the community cost calculator treats them.
INCLUSIVE_THRESHOLD_PROVIDERS: Final = frozenset({"xai"})
_DOC_ENTRIES: Final = frozenset({"sample_spec"})
_IGNORED: Final = "ignored price key "
#: Community fields of per-use tool fees: read by _tool_fees, so never "ignored price keys".
_FEE_KEYS: Final = frozenset(
    {
        "search_context_cost_per_query",
        "input_cost_per_request",
        "google_maps_grounding_cost_per_query",
        "file_search_cost_per_1k_calls",
        "code_interpreter_cost_per_session",
    }
)
_SEARCH_SIZE: Final = re.compile(r"^search_context_size_(?P<size>[a-z]+)$")
#: Providers whose Gemini models' grounding fee counts once per grounded prompt unless the entry
#: says ``per_query`` (the community cost code's default for Gemini, on AI Studio and Vertex AI).
_PER_PROMPT_PROVIDERS: Final = frozenset({"gemini", "vertex_ai", "vertex_ai-language-models"})
_BILLING_UNITS: Final = {"per_query": "call", "per_prompt": "prompt"}
#: OpenAI's chat search models (gpt-4o-search-preview, gpt-5-search-api) search on every request.
_SEARCH_MODEL: Final = re.compile(r"-search-(?:preview|api)(?:-|$)")
_SEARCH_MODEL_PROVIDERS: Final = frozenset({"openai", "azure"})
#: Perplexity bills a search ("request") fee on every request of its search models.
_SEARCHES_EVERY_REQUEST: Final = frozenset({"perplexity"})
#: Modes whose requests can use hosted tools (a provider-wide fee is given to these only).
_TOOL_MODES: Final = frozenset({"chat", "responses"})
#: A price with this many significant digits is a binary float's decimal expansion
#: (``1.0000000000000001e-07``); it is rounded to 15 digits, the most a float carries.
_FLOAT_ARTIFACT_DIGITS: Final = 16
_MILLION: Final = Decimal(1_000_000)
_WHEEL_NAME: Final = re.compile(r"^(?P<dist>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.*\.whl$")


class CommunityCatalogError(SpendgateError, ValueError):
    """The community catalog, a corrections file or a source cannot be used as given."""


@dataclass
class ConvertResult:
    """What :func:`convert_catalog` made of a community catalog."""

    #: Model name -> price, every kept entry.
    models: dict[str, ModelPrice] = field(default_factory=dict)
    #: Alias -> model name (always a key of ``models``).
    aliases: dict[str, str] = field(default_factory=dict)
    #: Why entries were left out -> how many.
    skipped: Counter[str] = field(default_factory=Counter)
    #: Odd but handled things (ignored price keys, cleaned float digits...) -> how many.
    notes: Counter[str] = field(default_factory=Counter)
    #: A few entry names per skip reason or note, for the summary.
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: How many corrections :func:`apply_corrections` changed something with.
    corrections_applied: int = 0

    def skip(self, reason: str, entry: str) -> None:
        self.skipped[reason] += 1
        self._example(reason, entry)

    def note(self, what: str, entry: str) -> None:
        self.notes[what] += 1
        self._example(what, entry)

    def _example(self, key: str, entry: str) -> None:
        shown = self.examples.setdefault(key, [])
        if len(shown) < 3:
            shown.append(entry)

    def providers(self) -> Counter[str]:
        return Counter(price.provider or "(none)" for price in self.models.values())

    def summary(self, *, top: int = 15) -> list[str]:
        """A few lines for people: kept, per provider, aliases, skipped and notes, with counts."""
        lines = [f"models kept: {len(self.models)} across {len(self.providers())} providers"]
        lines += [f"  {provider}: {count}" for provider, count in self.providers().most_common(top)]
        lines.append(f"aliases: {len(self.aliases)}")
        lines.append(f"skipped: {sum(self.skipped.values())}")
        lines += [self._line(reason, count) for reason, count in sorted(self.skipped.items())]
        if self.notes:
            lines.append(f"notes: {sum(self.notes.values())}")
            ignored = Counter(
                {
                    what.removeprefix(_IGNORED): n
                    for what, n in self.notes.items()
                    if what.startswith(_IGNORED)
                }
            )
            if ignored:
                most = ", ".join(f"{key} x{n}" for key, n in ignored.most_common(6))
                lines.append(
                    f"  ignored price keys (no such rate in the schema): {ignored.total()} in {len(ignored)} keys "
                    f"({most}{', ...' if len(ignored) > 6 else ''})"
                )
            lines += [
                self._line(what, count)
                for what, count in self.notes.most_common()
                if not what.startswith(_IGNORED)
            ]
        lines.append(f"corrections applied: {self.corrections_applied}")
        return lines

    def _line(self, key: str, count: int) -> str:
        shown = self.examples.get(key, [])
        more = ", ..." if count > len(shown) else ""
        return f"  {key}: {count}" + (f" (e.g. {', '.join(shown)}{more})" if shown else "")


# -- reading values ----------------------------------------------------------
def _decimal(value: object, *, where: str) -> Decimal:
    if isinstance(value, bool):
        raise CommunityCatalogError(f"{where}: expected a price in USD per token, got a boolean")
    if isinstance(value, float):
        raise CommunityCatalogError(
            f"{where}: {value!r} is a float; parse the community JSON with parse_float=Decimal "
            "so prices stay exact"
        )
    if isinstance(value, Decimal | int):
        dec = Decimal(value)
    elif isinstance(value, str):
        try:
            dec = Decimal(value.strip())
        except InvalidOperation:
            raise CommunityCatalogError(
                f"{where}: cannot read {value!r} as a price in USD per token"
            ) from None
    else:
        raise CommunityCatalogError(f"{where}: expected a price in USD per token, got {type(value).__name__}")
    if not dec.is_finite():
        raise CommunityCatalogError(f"{where}: must be a finite number, got {value}")
    if dec < 0:
        raise CommunityCatalogError(f"{where}: must not be negative, got {value}")
    return dec


def per_million(value: object, *, where: str) -> tuple[str, bool]:
    """A price in USD per token as USD per 1M tokens, decimal text: ``2.5e-06`` -> ``"2.5"``.

    Also says whether the value carried a float's spurious digits (then rounded to 15
    significant digits: ``1.0000000000000001e-07`` -> ``"0.1"``).
    """
    dec = _decimal(value, where=where)
    cleaned = False
    if dec and len(dec.normalize().as_tuple().digits) >= _FLOAT_ARTIFACT_DIGITS:
        dec = Decimal(f"{dec:.14e}")
        cleaned = True
    return _text(dec * _MILLION), cleaned


def _text(dec: Decimal) -> str:
    if not dec:
        return "0"
    return f"{dec.normalize():f}"


def _tokens(value: object) -> int | None:
    """A positive whole number of tokens, or None (absent, zero, not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value() and value > 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return None


# -- one entry ---------------------------------------------------------------
#: (service tier, long-context threshold or None) -> {our rate field: USD per 1M text}
_Buckets = dict[tuple[str, int | None], dict[str, str]]


def _threshold(n: str, k: str, *, inclusive: bool) -> int:
    tokens = int(n) * (1000 if k else 1)
    return max(tokens - 1, 0) if inclusive else tokens


def _collect_keys(name: str, entry: Mapping[str, Any], result: ConvertResult, *, inclusive: bool) -> _Buckets:
    buckets: _Buckets = {}
    for key, value in entry.items():
        match = _KEY.match(key)
        if match is None:
            if "cost" in key and value not in (None, 0) and key not in _FEE_KEYS:
                result.note(f"{_IGNORED}{key}", name)
            continue
        if value is None:
            continue
        text, cleaned = per_million(value, where=f"{name}.{key}")
        if cleaned:
            result.note("float digits rounded to 15 significant", f"{name}.{key}")
        above = _threshold(match["n"], match["k"], inclusive=inclusive) if match["n"] else None
        service = _SERVICE_SUFFIXES[match["service"]] if match["service"] else "standard"
        buckets.setdefault((service, above), {})[_PRICE_KEYS[match["field"]]] = text
    return buckets


def _collect_tiered(name: str, tiers: object, buckets: _Buckets, result: ConvertResult) -> None:
    """Merge ``tiered_pricing`` ranges into the standard buckets."""
    if not isinstance(tiers, list):
        raise CommunityCatalogError(
            f"{name}.tiered_pricing: expected a list of ranges, got {type(tiers).__name__}"
        )
    ranged: list[tuple[int, dict[str, str]]] = []
    for i, tier in enumerate(tiers):
        where = f"{name}.tiered_pricing[{i}]"
        if not isinstance(tier, Mapping):
            raise CommunityCatalogError(f"{where}: expected a mapping, got {type(tier).__name__}")
        bounds = tier.get("range")
        if bounds is None:
            result.note("tiered_pricing range without a token range", name)
            continue
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise CommunityCatalogError(f"{where}.range: expected [start, end] in tokens, got {bounds!r}")
        start = _tokens(bounds[0]) if bounds[0] not in (0, Decimal(0)) else 0
        if start is None:
            raise CommunityCatalogError(
                f"{where}.range: start must be a whole number of tokens, got {bounds[0]!r}"
            )
        rates: dict[str, str] = {}
        for key, value in tier.items():
            match = _KEY.match(key)
            if match is None or match["n"] or match["service"]:
                if "cost" in key:
                    result.note(f"ignored tiered_pricing key {key}", name)
                continue
            if value is not None:
                text, cleaned = per_million(value, where=f"{where}.{key}")
                if cleaned:
                    result.note("float digits rounded to 15 significant", f"{where}.{key}")
                rates[_PRICE_KEYS[match["field"]]] = text
        if rates:
            ranged.append((start, rates))
    ranged.sort(key=lambda r: r[0])
    for position, (start, rates) in enumerate(ranged):
        above: int | None = None if start == 0 or position == 0 else start
        if start and position == 0:
            result.note("tiered_pricing without a range from 0 (lowest range used as base)", name)
        bucket = buckets.setdefault(("standard", above), {})
        for rate, text in rates.items():
            if rate in bucket and Decimal(bucket[rate]) != Decimal(text):
                result.note("tiered_pricing disagrees with flat price (tiered_pricing used)", name)
            bucket[rate] = text
    # A range is all-or-nothing: a rate it does not give falls back to the range's own
    # rates (cache reads to its input, reasoning to its output), never to the base range's.
    base_text = buckets.get(("standard", None), {})
    base = Rates.from_data(base_text, where=f"{name}.tiered_pricing")
    for start, rates in ranged[1:]:
        bucket = buckets[("standard", start)]
        for rate, parent in _PARENT.items():  # parents first
            if rate not in rates and rate in base_text:
                own = Rates.from_data(bucket, where=f"{name}.tiered_pricing").over(base)
                bucket[rate] = Rates(**{rate: _effective(own, parent)}).to_data()[rate]


def _mode(entry: Mapping[str, Any], provider: str) -> str | None:
    mode = entry.get("mode")
    if mode is None:
        return "embedding" if "embedding" in provider else "chat"
    return mode if isinstance(mode, str) and mode in MODES else None


#: A rate that is not priced apart falls back to this one (see Rates.*_rate()).
_PARENT: Final = {
    "cache_read": "input",
    "cache_write": "input",
    "cache_write_1h": "cache_write",
    "cache_write_12h": "cache_write_1h",
    "reasoning": "output",
    "audio_input": "input",
    "audio_output": "output",
    "image_output": "output",
}

#: Community multiplier keys -> (our kind, condition).
_MULTIPLIER_KEYS: Final = {
    "regional_processing_uplift_multiplier_eu": ("data_residency", "eu"),
    "regional_processing_uplift_multiplier_us": ("data_residency", "us"),
    "fedramp_uplift_multiplier": ("data_residency", "fedramp"),
    "regional_endpoint_uplift_multiplier": ("endpoint_location", "regional"),
}
#: A ``provider_specific_entry`` key that names an inference geo ("us", "eu"); other keys
#: there are flags (``realtime_ga_only``), not prices.
_GEO: Final = re.compile(r"^[a-z]{2,8}$")


def _multipliers(name: str, entry: Mapping[str, Any], result: ConvertResult) -> dict[str, dict[str, str]]:
    """The entry's uplifts in our shape; an unreadable one is noted, never silently dropped."""
    found: dict[str, dict[str, str]] = {}

    def add(kind: str, condition: str, value: object, key: str) -> None:
        if isinstance(value, bool) or not isinstance(value, Decimal | int) or not value >= 1:
            result.note(f"ignored multiplier {key} that is not a number >= 1", name)
            return
        found.setdefault(kind, {})[condition] = _text(Decimal(value))

    for key, (kind, condition) in _MULTIPLIER_KEYS.items():
        if entry.get(key) is not None:
            add(kind, condition, entry[key], key)
    specific = entry.get("provider_specific_entry")
    if isinstance(specific, Mapping):
        for key, value in specific.items():
            if key == "fast":
                add("speed", "fast", value, f"provider_specific_entry.{key}")
            elif isinstance(key, str) and _GEO.match(key) and not isinstance(value, Mapping | str):
                add("inference_geo", key, value, f"provider_specific_entry.{key}")
    return found


def _usd(value: object, *, where: str) -> str:
    """A fee in USD (per use), exact decimal text."""
    return _text(_decimal(value, where=where))


def _fee(sizes: Mapping[str, str], per: str) -> str | dict[str, str]:
    """A tool fee in the data shape: one fee where every size costs the same."""
    if len({Decimal(v) for v in sizes.values()}) == 1:
        fee = next(iter(sizes.values()))
        return fee if per == "call" else {"fee": fee, "per": per}
    return {**sizes, "per": per} if per != "call" else dict(sizes)


def _tool_fees(
    name: str,
    entry: Mapping[str, Any],
    provider: str,
    mode: str,
    shared: Mapping[str, Mapping[str, Any]],
    result: ConvertResult,
) -> dict[str, Any]:
    """The entry's per-use tool fees in our shape (see the module docstring)."""
    fees: dict[str, Any] = {}
    unit = entry.get("web_search_billing_unit")
    if unit is not None and unit not in _BILLING_UNITS:
        result.note(f"ignored web_search_billing_unit {unit!r}", name)
        unit = None
    grounding = _BILLING_UNITS[unit] if unit is not None else "call"
    if unit is None and provider in _PER_PROMPT_PROVIDERS and "gemini" in name:
        grounding = "prompt"
    every_request = provider in _SEARCHES_EVERY_REQUEST or (
        provider in _SEARCH_MODEL_PROVIDERS and _SEARCH_MODEL.search(name) is not None
    )
    search = entry.get("search_context_cost_per_query")
    if isinstance(search, Mapping):
        sizes: dict[str, str] = {}
        for key, value in search.items():
            match = _SEARCH_SIZE.match(key)
            if match is None or value is None:
                result.note(f"ignored search_context_cost_per_query key {key}", name)
                continue
            sizes[match["size"]] = _usd(value, where=f"{name}.search_context_cost_per_query.{key}")
        if sizes:
            fees["web_search"] = _fee(sizes, "request" if every_request else grounding)
    elif search is not None:
        result.note("ignored search_context_cost_per_query that is not a mapping", name)
    if entry.get("input_cost_per_request") is not None and "web_search" not in fees:
        # Perplexity's older online models: a fee on every request, for the search each makes.
        fee = _usd(entry["input_cost_per_request"], where=f"{name}.input_cost_per_request")
        fees["web_search"] = {"fee": fee, "per": "request"}
    if entry.get("google_maps_grounding_cost_per_query") is not None:
        fee = _usd(
            entry["google_maps_grounding_cost_per_query"],
            where=f"{name}.google_maps_grounding_cost_per_query",
        )
        fees["google_maps"] = _fee({"": fee}, grounding)
    if entry.get("file_search_cost_per_1k_calls") is not None:
        per_1k = _decimal(
            entry["file_search_cost_per_1k_calls"], where=f"{name}.file_search_cost_per_1k_calls"
        )
        fees["file_search"] = _text(per_1k / 1000)
    session = entry.get("code_interpreter_cost_per_session")
    if session is None and mode in _TOOL_MODES:
        session = shared.get(provider, {}).get("code_interpreter_cost_per_session")
    if session is not None:
        # The session fee is the default (1g) container's; a larger one is not priced.
        fees["code_interpreter"] = {"1g": _usd(session, where=f"{name}.code_interpreter_cost_per_session")}
    return fees


def _shared_tool_fees(raw: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Provider-wide fees, from the ``<provider>/container`` entries (as the community cost code
    prices code-interpreter sessions for any model of the provider)."""
    shared: dict[str, Mapping[str, Any]] = {}
    for name, entry in raw.items():
        provider, _, rest = name.partition("/")
        if rest == "container" and isinstance(entry, Mapping) and entry.get("litellm_provider") == provider:
            shared[provider] = entry
    return shared


def _effective(rates: Rates, rate: str) -> int:
    """What a token of this kind costs under ``rates`` once fallbacks apply."""
    value: int = getattr(rates, f"{rate}_rate")()
    return value


def _derive(given: Rates, ref: Rates) -> Rates:
    """``given`` completed from ``ref`` (the rates it falls back to), where a rate that
    ``ref`` prices the same as its parent follows ``given``'s parent instead: a batch
    table whose reasoning is not given pays its own (discounted) output rate, not the
    standard reasoning rate; a long-context tier's audio follows the tier's input."""
    values: dict[str, int | None] = {}
    for rate in RATE_FIELDS:  # parents come before the rates that fall back to them
        mine = getattr(given, rate)
        inherited = getattr(ref, rate)
        parent = _PARENT.get(rate)
        if mine is None and inherited is not None and parent is not None:
            so_far = Rates(**values)
            if inherited == _effective(ref, parent) and _effective(so_far, parent) != inherited:
                mine = _effective(so_far, parent)
        values[rate] = mine if mine is not None else inherited
    return Rates(**values)


def _rates(text: Mapping[str, str], *, where: str) -> Rates:
    return Rates.from_data(text, where=where)


def _table(
    tier: str, buckets: _Buckets, standard: RateTable | None, name: str, result: ConvertResult
) -> RateTable:
    """The standard table (``standard`` None) or a service tier's, complete.

    A service tier's long-context rate the source does not give, where the standard
    table raises that rate above the threshold, is never understated: it is the higher
    of this tier's base rate and the standard long-context rate.
    """
    where = f"{name}.{tier}"
    given_base = _rates(buckets.get((tier, None), {}), where=where)
    base = given_base if standard is None else _derive(given_base, standard.base)
    thresholds = {above for (svc, above) in buckets if svc == tier and above is not None}
    if standard is not None:
        thresholds |= {t.above for t in standard.tiers}
    tiers: list[Tier] = []
    for above in sorted(thresholds):
        given = _rates(buckets.get((tier, above), {}), where=f"{where}.above_{above}")
        if standard is not None:
            uplift = standard.for_prompt(above + 1)
            raised: dict[str, int] = {}
            for rate in RATE_FIELDS:
                high = getattr(uplift, rate)
                if getattr(given, rate) is not None or high is None or high == getattr(standard.base, rate):
                    continue  # given here, or not raised above the threshold by the standard table
                parent = _PARENT.get(rate)
                if parent is not None and high == _effective(uplift, parent):
                    continue  # priced as its parent: follows this tier's parent (see _derive)
                if high > _effective(base, rate):
                    raised[rate] = high
            if raised:
                given = Rates(**{**{rate: getattr(given, rate) for rate in RATE_FIELDS}, **raised})
                result.note(f"{tier} long-context rate missing, standard long-context rate used", name)
        rates = _derive(given, base)
        if rates != base:  # a tier that changes nothing is left out
            tiers.append(Tier(above, rates))
    return RateTable(base, tuple(tiers))


def _convert_entry(
    name: str,
    entry: Mapping[str, Any],
    result: ConvertResult,
    shared: Mapping[str, Mapping[str, Any]] | None = None,
) -> ModelPrice | None:
    provider = entry.get("litellm_provider")
    provider = provider if isinstance(provider, str) else ""
    mode = _mode(entry, provider)
    if mode is None:
        result.skip(f"mode {entry.get('mode')!s}", name)
        return None
    buckets = _collect_keys(name, entry, result, inclusive=provider in INCLUSIVE_THRESHOLD_PROVIDERS)
    if entry.get("tiered_pricing") is not None:
        _collect_tiered(name, entry["tiered_pricing"], buckets, result)
    base = buckets.get(("standard", None), {})
    if "input" not in base and "output" not in base:
        result.skip("no standard input or output token price", name)
        return None
    if "input" not in base and entry.get("input_cost_per_query") is not None:
        # Billed per query (and per image or second), none of which the schema prices: kept,
        # it would cost $0; left out, it is refused as unknown.
        result.skip("priced per query, not per input token", name)
        return None

    data: dict[str, Any] = {"provider": provider, "mode": mode}
    max_input = _tokens(entry.get("max_input_tokens"))
    max_output = _tokens(entry.get("max_output_tokens"))
    max_tokens = _tokens(entry.get("max_tokens"))
    for key in ("max_input_tokens", "max_output_tokens", "max_tokens"):
        if entry.get(key) is not None and _tokens(entry.get(key)) is None:
            result.note(f"ignored {key} that is not a positive number", name)
    if max_output is None and max_tokens is not None and max_input is not None and max_tokens < max_input:
        max_output = max_tokens  # legacy max_tokens is the output cap when it differs from the input cap
    context = max_input if max_input is not None else max_tokens
    if max_output is not None:
        data["max_output_tokens"] = max_output
    if context is not None:
        data["context_window"] = context
    standard = _table("standard", buckets, None, name, result)
    data["prices"] = standard.to_data()
    for tier in ("batch", "flex", "priority"):
        if any(svc == tier for svc, _ in buckets):
            data[tier] = _table(tier, buckets, standard, name, result).to_data()
    multipliers = _multipliers(name, entry, result)
    if multipliers:
        data["multipliers"] = multipliers
    fees = _tool_fees(name, entry, provider, mode, shared or {}, result)
    if fees:
        data["tool_fees"] = fees
    # Through the data shape, so the result is exactly what the data file will load as.
    return ModelPrice.from_data(name, data, where=f"{name} (converted)")


# -- the whole catalog -------------------------------------------------------
def parse_community_json(data: bytes | str, *, origin: str = "community catalog") -> dict[str, Any]:
    """The community JSON with every number that has a fraction or exponent as a Decimal."""

    def refuse(constant: str) -> Any:
        raise CommunityCatalogError(f"{origin}: {constant} is not a price")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        raw = json.loads(text, parse_float=Decimal, parse_constant=refuse)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommunityCatalogError(f"{origin}: not a JSON document: {exc}") from None
    if not isinstance(raw, dict):
        raise CommunityCatalogError(f"{origin}: expected a JSON object of models, got {type(raw).__name__}")
    return raw


def convert_catalog(raw: Mapping[str, Any], *, strict: bool = False) -> ConvertResult:
    """Turn a parsed community catalog into our prices.

    An entry whose prices cannot be read is skipped and counted (``strict=True``
    raises :class:`CommunityCatalogError` instead, naming the entry and the field).
    """
    result = ConvertResult()
    alias_of: dict[str, str] = {}
    shared = _shared_tool_fees(raw)
    for name, entry in raw.items():
        if name in _DOC_ENTRIES:
            result.skip("documentation entry", name)
            continue
        if not isinstance(entry, Mapping):
            result.skip("not a model entry", name)
            continue
        if "alias_of" in entry:
            target = entry["alias_of"]
            if not isinstance(target, str) or not target:
                if strict:
                    raise CommunityCatalogError(f"{name}.alias_of: expected a model name, got {target!r}")
                result.skip("invalid entry", name)
            else:
                alias_of[name] = target
            continue
        try:
            price = _convert_entry(name, entry, result, shared)
        except (CommunityCatalogError, ValueError) as exc:
            if strict:
                raise CommunityCatalogError(str(exc)) from exc
            result.skip("invalid entry", f"{name}: {exc}")
            continue
        if price is not None:
            result.models[name] = price
    for alias, target in alias_of.items():
        resolved = _resolve_alias(target, alias_of)
        if resolved is not None and resolved in result.models:
            result.aliases[alias] = resolved
        else:
            result.skip("alias of a model not kept", alias)
    return result


def _resolve_alias(target: str, alias_of: Mapping[str, str]) -> str | None:
    seen: set[str] = set()
    while target in alias_of:
        if target in seen:
            return None
        seen.add(target)
        target = alias_of[target]
    return target


# -- corrections -------------------------------------------------------------
def load_corrections(path: str | Path | None = None) -> dict[str, Any]:
    """Read a corrections file (the shipped one by default)."""
    path = Path(path) if path is not None else CORRECTIONS_PATH
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommunityCatalogError(f"{path}: cannot read corrections: {exc}") from None
    if not isinstance(data, dict):
        raise CommunityCatalogError(f"{path}: expected a JSON object with models and aliases")
    return data


def _merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _why(where: str, patch: Mapping[str, Any]) -> None:
    why = patch.get("why")
    if not isinstance(why, str) or not why.strip():
        raise CommunityCatalogError(f"{where}.why: every correction says why (a sentence with its source)")


def apply_corrections(result: ConvertResult, corrections: Mapping[str, Any]) -> int:
    """Apply reviewed corrections to ``result`` in place; returns how many changed something.

    ``corrections``: ``{"models": {name: partial model data | null}, "aliases": {alias:
    {"target": name, "why": ...} | null}, "tool_fees": {provider: {tool: fee, "why": ...}}}``
    (``tool_fees``: see :func:`_provider_tool_fees`). A model's partial data is merged into its
    converted data (mappings merged key by key, ``null`` deletes a key); it creates a model
    the catalog lacks only as a full entry (with ``provider`` and ``prices``), else it is
    stale; ``null`` deletes the model and its
    aliases. An alias target may be a model or an alias (followed). Every entry carries a
    ``why``, which is not model data. A correction that no longer applies (the data already
    says so, the model is gone, the alias became a model) is skipped as a note, so stale
    corrections show up in the summary instead of breaking an update.
    """
    if not isinstance(corrections, Mapping):
        raise CommunityCatalogError("corrections: expected a mapping with models and aliases")
    unknown = {k for k in corrections if not k.startswith("_")} - {"models", "aliases", "tool_fees"}
    if unknown:
        raise CommunityCatalogError(
            f"corrections: unknown key(s) {sorted(unknown)}; known: models, aliases, tool_fees"
        )
    applied = 0
    models = corrections.get("models") or {}
    if not isinstance(models, Mapping):
        raise CommunityCatalogError("corrections.models: expected a mapping of model name -> correction")
    for name, patch in models.items():
        where = f"corrections.models[{name!r}]"
        if name.startswith("_"):
            continue
        if patch is None:
            if result.models.pop(name, None) is None:
                result.note("stale correction: model not in the catalog", name)
                continue
            for alias in [a for a, t in result.aliases.items() if t == name]:
                del result.aliases[alias]
            applied += 1
            continue
        if not isinstance(patch, Mapping):
            raise CommunityCatalogError(
                f"{where}: expected partial model data or null, got {type(patch).__name__}"
            )
        _why(where, patch)
        changes = {k: v for k, v in patch.items() if k != "why"}
        old = result.models.get(name)
        if old is None and not {"provider", "prices"} <= set(changes):
            result.note("stale correction: model not in the catalog", name)
            continue
        data = _merge(old.to_data(), changes) if old is not None else changes
        try:
            new = ModelPrice.from_data(name, data, where=where)
        except ValueError as exc:
            raise CommunityCatalogError(str(exc)) from None
        if new == old:
            result.note("stale correction: already in the community data", name)
            continue
        result.models[name] = new
        applied += 1
    aliases = corrections.get("aliases") or {}
    if not isinstance(aliases, Mapping):
        raise CommunityCatalogError("corrections.aliases: expected a mapping of alias -> {target, why}")
    for alias, spec in aliases.items():
        where = f"corrections.aliases[{alias!r}]"
        if alias.startswith("_"):
            continue
        if spec is None:
            if result.aliases.pop(alias, None) is not None:
                applied += 1
            else:
                result.note("stale correction: alias not in the catalog", alias)
            continue
        if not isinstance(spec, Mapping) or set(spec) - {"target", "why"}:
            raise CommunityCatalogError(f'{where}: expected {{"target": model name, "why": ...}} or null')
        _why(where, spec)
        target = spec.get("target")
        if not isinstance(target, str) or not target:
            raise CommunityCatalogError(f"{where}.target: expected a model name, got {target!r}")
        target = result.aliases.get(target, target) if target not in result.models else target
        if target not in result.models:
            result.note("stale correction: alias target not in the catalog", alias)
            continue
        if alias in result.models:
            result.note("stale correction: alias is a model now", alias)
            continue
        if result.aliases.get(alias) == target:
            result.note("stale correction: already in the community data", alias)
            continue
        result.aliases[alias] = target
        applied += 1
    applied += _provider_tool_fees(result, corrections.get("tool_fees") or {})
    result.corrections_applied += applied
    return applied


def _provider_tool_fees(result: ConvertResult, corrections: object) -> int:
    """``tool_fees``: provider -> {tool: fee, why}: a fee the provider publishes for every model
    (OpenAI's file search), given to each of its chat and responses models that has none of its
    own. A correction that gives no model anything is stale (a note)."""
    if not isinstance(corrections, Mapping):
        raise CommunityCatalogError(
            "corrections.tool_fees: expected a mapping of provider -> {tool: fee, why}"
        )
    applied = 0
    for provider, spec in corrections.items():
        where = f"corrections.tool_fees[{provider!r}]"
        if provider.startswith("_"):
            continue
        if not isinstance(spec, Mapping):
            raise CommunityCatalogError(f"{where}: expected {{tool: fee, why: ...}}")
        _why(where, spec)
        try:
            fees = tool_fees_from_data({k: v for k, v in spec.items() if k != "why"}, where=where)
        except ValueError as exc:
            raise CommunityCatalogError(str(exc)) from None
        changed = 0
        for name, price in result.models.items():
            if price.provider != provider or price.mode not in _TOOL_MODES:
                continue
            missing = {tool: fee for tool, fee in fees.items() if tool not in price.tool_fees}
            if missing:
                result.models[name] = price.with_tool_fees(missing)
                changed += 1
        if changed:
            applied += 1
        else:
            result.note("stale correction: no model of the provider lacks the fee", provider)
    return applied


# -- the data document -------------------------------------------------------
def build_document(
    result: ConvertResult, *, origin: str, version: str, sha256: str, date: str
) -> dict[str, Any]:
    """The data file's content: source metadata, then models and aliases sorted by name."""
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {"name": SOURCE_NAME, "origin": origin, "version": version, "sha256": sha256, "date": date},
        "corrections": result.corrections_applied,
        "models": {name: result.models[name].to_data() for name in sorted(result.models)},
        "aliases": {alias: result.aliases[alias] for alias in sorted(result.aliases)},
    }


def dump_document(document: Mapping[str, Any]) -> str:
    """JSON with one model (and one alias) per line: small, and a price change is a one-line diff."""

    def block(items: Mapping[str, Any]) -> str:
        if not items:
            return "{}"
        rows = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in items.items()]
        return "{\n" + ",\n".join(rows) + "\n }"

    parts = []
    for key, value in document.items():
        if key in ("models", "aliases") and isinstance(value, Mapping):
            parts.append(f" {json.dumps(key)}: {block(value)}")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- sources -----------------------------------------------------------------
def wheel_version(file_name: str) -> str:
    """``litellm-1.110.2-cp310-abi3-...whl`` -> ``"litellm 1.110.2"``; else ``"unknown"``."""
    match = _WHEEL_NAME.match(PurePosixPath(file_name).name)
    return f"{match['dist']} {match['version']}" if match else "unknown"


def _from_wheel(data: bytes, origin: str) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            names = set(wheel.namelist())
            for member in WHEEL_MEMBERS:
                if member in names:
                    return wheel.read(member)
    except zipfile.BadZipFile as exc:
        raise CommunityCatalogError(f"{origin}: not a readable wheel (zip): {exc}") from None
    raise CommunityCatalogError(f"{origin}: the wheel has none of {list(WHEEL_MEMBERS)}")


def _is_wheel(name: str, data: bytes) -> bool:
    return name.endswith(".whl") or data[:4] == b"PK\x03\x04"


def load_community_source(source: str) -> tuple[bytes, str, str]:
    """The community JSON bytes, where they came from, and the version when known.

    ``source``: a path to the JSON, a path to a litellm wheel (``.whl``), or an
    http(s) URL of either.
    """
    if urllib.parse.urlsplit(source).scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
                data: bytes = response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise CommunityCatalogError(f"{source}: cannot download the community catalog: {exc}") from None
        file_name = PurePosixPath(urllib.parse.urlsplit(source).path).name
        if _is_wheel(file_name, data):
            return _from_wheel(data, source), source, wheel_version(file_name)
        return data, source, "unknown"
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommunityCatalogError(f"{source}: cannot read the community catalog: {exc}") from None
    if _is_wheel(path.name, data):
        return _from_wheel(data, source), path.name, wheel_version(path.name)
    return data, source, "unknown"


def convert_source(
    source: str,
    *,
    corrections: Mapping[str, Any] | None = None,
    date: str | None = None,
) -> tuple[dict[str, Any], ConvertResult]:
    """Load, convert, correct and build the data document in one call."""
    data, origin, version = load_community_source(source)
    result = convert_catalog(parse_community_json(data, origin=origin))
    apply_corrections(result, corrections if corrections is not None else load_corrections())
    document = build_document(
        result, origin=origin, version=version, sha256=sha256_hex(data), date=date or today()
    )
    return document, result


__all__ = [
    "CORRECTIONS_PATH",
    "SOURCE_NAME",
    "CommunityCatalogError",
    "ConvertResult",
    "apply_corrections",
    "build_document",
    "convert_catalog",
    "convert_source",
    "dump_document",
    "load_community_source",
    "load_corrections",
    "parse_community_json",
    "per_million",
    "sha256_hex",
    "today",
    "wheel_version",
]
