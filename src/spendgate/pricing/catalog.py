"""The pricing catalog: model name -> ModelPrice, with overrides and name resolution.

Resolution order for a name (first hit wins, so an explicitly priced snapshot
or provider entry beats its family):

1. a user override, then the catalog, by exact name, then case-insensitively;
2. an alias (``alias_of`` in the community catalog, or our corrections);
3. the name without its provider prefix (``openai/gpt-4o`` -> ``gpt-4o``,
   ``bedrock/us.anthropic.claude...`` -> the bare model), one prefix at a time;
4. the name without a dated-snapshot suffix (``gpt-4o-2024-08-06``,
   ``claude-3-5-sonnet@20240620``, ``...-20240620-v1:0``).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from spendgate.errors import ConfigError, UnknownModelPriceError
from spendgate.pricing.schema import RATE_FIELDS, SCHEMA_VERSION, TOOLS, ModelPrice, Rates, RateTable, ToolFee

log = logging.getLogger("spendgate.pricing")

UnknownModelPolicy = Literal["refuse", "default_price", "free"]
UNKNOWN_MODEL_POLICIES: Final = ("refuse", "default_price", "free")

#: Where `spendgate prices update` puts a newer catalog, and where it is looked for.
ENV_PRICES_FILE: Final = "SPENDGATE_PRICES_FILE"

_SNAPSHOT_SUFFIXES: Final = (
    re.compile(r"-v\d+(?::\d+)?$"),  # bedrock: ...-20240620-v1:0
    re.compile(r"[-@](?:\d{4}-\d{2}-\d{2}|\d{8})$"),  # -2024-08-06, -20240620, @20240620
    re.compile(r"-(?:\d{4})$"),  # gpt-4-0613, mistral-large-2407
    re.compile(r"-latest$"),  # previews are left alone: they are often priced apart
)


def user_catalog_path() -> Path:
    """Where a catalog loaded with ``spendgate prices update`` lives by default."""
    explicit = os.environ.get(ENV_PRICES_FILE)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "spendgate" / "prices.json"


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """Where a catalog's data came from (recorded in the data file)."""

    name: str = ""
    origin: str = ""
    version: str = "unknown"
    sha256: str = ""
    date: str = ""

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> CatalogSource:
        data = data or {}
        return cls(**{k: str(data.get(k) or "") for k in ("name", "origin", "version", "sha256", "date")})


#: Resolved names remembered per catalog; past it the memory starts over (a miss costs ~2 us).
LOOKUP_CACHE_SIZE: Final = 4096


class Catalog:
    """Model prices with user overrides on top. Thread-safe for lookups and overrides."""

    def __init__(
        self,
        models: Mapping[str, ModelPrice],
        aliases: Mapping[str, str] | None = None,
        *,
        source: CatalogSource | None = None,
        unknown_model: UnknownModelPolicy = "refuse",
        default_price: ModelPrice | None = None,
    ) -> None:
        if unknown_model not in UNKNOWN_MODEL_POLICIES:
            raise ConfigError(
                "unknown_model", f"must be one of {', '.join(UNKNOWN_MODEL_POLICIES)}, got {unknown_model!r}"
            )
        if unknown_model == "default_price" and default_price is None:
            raise ConfigError("default_price", "required when unknown_model is 'default_price'")
        self._models: dict[str, ModelPrice] = dict(models)
        self._lower: dict[str, str] = {name.lower(): name for name in self._models}
        self._aliases: dict[str, str] = {k.lower(): v for k, v in (aliases or {}).items()}
        self._overrides: dict[str, ModelPrice] = {}
        self._cache: dict[str, ModelPrice | None] = {}
        self._tool_fees: dict[tuple[str, str], ToolFee | None] = {}
        self._lock = threading.Lock()
        self.source = source or CatalogSource()
        self.unknown_model: UnknownModelPolicy = unknown_model
        self.default_price = default_price

    # -- loading ----------------------------------------------------------
    @classmethod
    def from_document(cls, doc: Mapping[str, Any], *, where: str = "catalog", **options: Any) -> Catalog:
        """Build from spendgate's data-file shape (see docs/pricing.md)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), Mapping):
            raise ConfigError(where, "not a spendgate price catalog (no 'models' mapping)")
        version = doc.get("schema_version", 1)
        # Older formats are subsets of this one; a newer one may price what this version cannot.
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise ConfigError(
                where,
                f"price catalog schema_version {version!r} is not one this spendgate reads "
                f"(1 to {SCHEMA_VERSION}); upgrade spendgate or regenerate the file",
            )
        models: dict[str, ModelPrice] = {}
        for name, data in doc["models"].items():
            key = f"{where}.models[{name!r}]"
            try:
                models[name] = ModelPrice.from_data(name, data, where=key)
            except ValueError as exc:
                raise ConfigError(key, str(exc).removeprefix(key).lstrip(".: ")) from None
        aliases = {str(k): str(v) for k, v in (doc.get("aliases") or {}).items()}
        return cls(models, aliases, source=CatalogSource.from_data(doc.get("source")), **options)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **options: Any) -> Catalog:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read price catalog: {exc.strerror or exc}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(str(path), f"not valid JSON: {exc}") from None
        return cls.from_document(doc, where=str(path), **options)

    @classmethod
    def builtin(cls, **options: Any) -> Catalog:
        """The catalog shipped in the package; each call gets its own overrides."""
        models, aliases, source = _builtin_parsed()
        return cls(models, aliases, source=source, **options)

    @classmethod
    def default(cls, **options: Any) -> Catalog:
        """A catalog loaded with ``spendgate prices update`` if there is one, else the built-in one."""
        path = user_catalog_path()
        if path.is_file():
            return cls.load(path, **options)
        return cls.builtin(**options)

    # -- overrides --------------------------------------------------------
    def set_price(self, name: str, price: ModelPrice | Mapping[str, Any]) -> ModelPrice:
        """Add or replace a model's price (config ``prices:`` and the admin API use this)."""
        if not isinstance(price, ModelPrice):
            where = f"prices[{name!r}]"
            try:
                price = ModelPrice.from_data(name, _with_prices_key(price), where=where)
            except ValueError as exc:
                raise ConfigError(where, str(exc).removeprefix(where).lstrip(".: ")) from None
        price = price.with_name(name)
        with self._lock:
            self._overrides[name.lower()] = price
            self._cache.clear()
            self._tool_fees.clear()
        return price

    def remove_price(self, name: str) -> bool:
        with self._lock:
            removed = self._overrides.pop(name.lower(), None) is not None
            self._cache.clear()
            self._tool_fees.clear()
        return removed

    def apply_overrides(self, prices: Mapping[str, Any]) -> None:
        for name, data in prices.items():
            self.set_price(str(name), data)

    # -- lookup -----------------------------------------------------------
    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model`` after resolution, or None when unknown."""
        cached = self._cache.get(model, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        found = self._resolve(model)
        with self._lock:
            # Names come from clients: made-up ones must not grow the cache without end.
            if len(self._cache) >= LOOKUP_CACHE_SIZE:
                self._cache.clear()
            self._cache[model] = found
        return found

    def price(self, model: str) -> ModelPrice:
        """The price of ``model``, applying the unknown-model policy when there is none."""
        found = self.lookup(model)
        if found is not None:
            return found
        if self.unknown_model == "default_price" and self.default_price is not None:
            log.warning("no price for model %r; using the configured default price", model)
            return self.default_price.with_name(model)
        if self.unknown_model == "free":
            log.warning("no price for model %r; counting it as FREE (unknown_model: free)", model)
            return ModelPrice(
                name=model,
                standard=RateTable(Rates(input=0, output=0)),
                tool_fees={tool: ToolFee(fee=0) for tool in TOOLS},  # free means its tools too
            )
        raise UnknownModelPriceError(model, self.suggest(model))

    def highest_tool_fee(self, provider: str, tool: str) -> ToolFee | None:
        """The highest fee of ``tool`` among ``provider``'s models, as one flat fee per use: how a
        model whose own fee the catalog lacks is priced (a bound, never $0). None when no model
        of the provider has one."""
        key = (provider, tool)
        if key in self._tool_fees:
            return self._tool_fees[key]
        fees = [
            fee.highest
            for price in self.models()
            if price.provider == provider and (fee := price.tool_fees.get(tool)) is not None
        ]
        found = ToolFee(fee=max(fees)) if fees else None
        with self._lock:
            self._tool_fees[key] = found
        return found

    def suggest(self, model: str, n: int = 3) -> list[str]:
        """The nearest known names, for error messages."""
        bare = _strip_prefixes(model.lower())
        pool = list(self._lower) + list(self._overrides)
        close = difflib.get_close_matches(bare, [p for p in pool if "/" not in p], n=n, cutoff=0.6)
        if len(close) < n:
            close += [
                c for c in difflib.get_close_matches(model.lower(), pool, n=n, cutoff=0.6) if c not in close
            ]
        return [self._display(c) for c in close[:n]]

    def _display(self, lowered: str) -> str:
        if lowered in self._overrides:
            return self._overrides[lowered].name
        return self._lower.get(lowered, lowered)

    def _direct(self, name: str) -> ModelPrice | None:
        low = name.lower()
        override = self._overrides.get(low)
        if override is not None:
            return override
        exact = self._models.get(name)
        if exact is not None:
            return exact
        canonical = self._lower.get(low)
        if canonical is not None:
            return self._models[canonical]
        target = self._aliases.get(low)
        if target is not None and target.lower() != low:
            return self._direct(target)
        return None

    def _resolve(self, model: str) -> ModelPrice | None:
        name = model.strip()
        for candidate in _candidates(name):
            found = self._direct(candidate)
            if found is not None:
                return found
        return None

    # -- listing ----------------------------------------------------------
    def __len__(self) -> int:
        return len(set(self._lower) | set(self._overrides))

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def models(self, provider: str | None = None) -> Iterator[ModelPrice]:
        """Every model, overrides included, sorted by name; optionally of one provider."""
        merged: dict[str, ModelPrice] = {name.lower(): price for name, price in self._models.items()}
        merged.update(self._overrides)
        for key in sorted(merged):
            price = merged[key]
            if provider is None or _provider_matches(price, provider):
                yield price

    def providers(self) -> list[str]:
        return sorted({p.provider for p in self.models() if p.provider})


_MISSING: Final = object()


def _provider_matches(price: ModelPrice, provider: str) -> bool:
    want = provider.lower()
    have = price.provider.lower()
    return have == want or have.startswith(want + "_") or have.startswith(want + "-")


def _strip_prefixes(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _without_snapshot(name: str) -> str | None:
    for pattern in _SNAPSHOT_SUFFIXES:
        stripped = pattern.sub("", name)
        if stripped != name:
            return stripped
    return None


def _candidates(name: str) -> Iterator[str]:
    """The names to try for ``name``, most specific first."""
    seen: set[str] = set()
    prefixed = [name]
    rest = name
    while "/" in rest:
        rest = rest.split("/", 1)[1]
        prefixed.append(rest)
    for base in prefixed:
        current: str | None = base
        while current and current not in seen:
            seen.add(current)
            yield current
            current = _without_snapshot(current)


def _with_prices_key(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Config may give rates at the top level (``{input: "2.5", output: "10"}``)."""
    if "prices" in data:
        return data
    rate_keys = {*RATE_FIELDS, "tiers"}
    prices = {k: v for k, v in data.items() if k in rate_keys}
    rest = {k: v for k, v in data.items() if k not in rate_keys}
    return {**rest, "prices": prices}


_BUILTIN_LOCK = threading.Lock()
_BUILTIN: tuple[dict[str, ModelPrice], dict[str, str], CatalogSource] | None = None


def _builtin_parsed() -> tuple[dict[str, ModelPrice], dict[str, str], CatalogSource]:
    """Parse the shipped data once per process; ModelPrice is immutable, so catalogs share it."""
    global _BUILTIN  # noqa: PLW0603 - parsed once per process, read-only afterwards
    with _BUILTIN_LOCK:
        if _BUILTIN is None:
            text = resources.files("spendgate.pricing").joinpath("data/prices.json").read_text("utf-8")
            parsed = Catalog.from_document(json.loads(text), where="builtin catalog")
            _BUILTIN = (parsed._models, dict(parsed._aliases), parsed.source)
        return _BUILTIN
