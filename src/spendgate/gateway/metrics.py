"""Prometheus metrics of the gateway, in their own registry (never the process-global one).

``cost_usd_total`` is a float Counter because that is how Prometheus exports
money; it is for dashboards only. The ledger keeps the exact amounts (integer
nano-USD) and is the record to bill from.

With several worker processes (``spendgate serve --workers N``) the counters
and histograms live in prometheus_client's multiprocess files (the directory
in ``PROMETHEUS_MULTIPROC_DIR``, set before any worker imports the library),
and a scrape of any worker adds up all of them. The budget usage ratios are
read from the ledger at scrape time, which every worker shares.

Label values are bounded, whatever clients send: a model label is a name the
config routes exactly or the catalog lists (its catalog name), else ``other``;
a budget label is a budget's id, never an instance's value (a user or an end
user's id), the ratio being its most used instance's. A limit label is a rate limit's id
(from the config or the admin API, never from a request): its refusals are counted per id
and kind, and its use now is read at scrape time for limits without wildcards only (one
ledger read each: the scrape costs the number of limits, never the number of keys or users
a ``key: "*"`` limit has seen).

The upstream connection pools' waits (``PoolMetrics``) belong to the process,
as the pools do: the upstream client reports them to ``pool_metrics()``, and
every ``Metrics.render`` includes them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spendgate.gateway.forecast_gauges import ForecastGauges
from spendgate.money import NANO_PER_USD

if TYPE_CHECKING:
    from spendgate.ledger import Ledger
    from spendgate.pricing.catalog import Catalog
    from spendgate.usage import Usage

log = logging.getLogger("spendgate.gateway.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The model label of every name neither routed exactly nor in the catalog.
OTHER_MODEL = "other"

# Proxy latencies sit around a millisecond; provider calls around seconds.
_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A wait for a pooled connection lasts until another call ends: seconds to minutes.
_POOL_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class PoolMetrics:
    """Waits for a connection of an upstream's pool (label ``upstream``: a configured name).

    Only requests that found the pool full are observed, so the hot path pays nothing:
    ``spendgate_upstream_pool_wait_seconds_count`` is how many waited, against
    ``spendgate_upstream_duration_seconds_count`` for all of them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.wait = Histogram(
            "spendgate_upstream_pool_wait_seconds",
            "Time requests waited for a connection of the upstream's full pool (only those that waited)",
            ("upstream",),
            buckets=_POOL_WAIT_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(
            "spendgate_upstream_pool_waiting",
            "Requests waiting now for a connection of the upstream's pool",
            ("upstream",),
            registry=r,
            multiprocess_mode="livesum",  # --workers: the sum over live processes
        )
        self.timeouts = Counter(
            "spendgate_upstream_pool_timeouts",
            "Requests that gave up waiting for a pooled connection (pool_timeout; nothing was sent)",
            ("upstream",),
            registry=r,
        )


@functools.cache
def pool_metrics() -> PoolMetrics:
    """This process's ``PoolMetrics``, made on first use (with --workers, in the worker, after
    ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    return PoolMetrics()


class Metrics:
    """Every metric the gateway exports; shared by successive states across reloads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "spendgate_requests", "Requests answered", ("route", "model", "status"), registry=r
        )
        self.tokens = Counter("spendgate_tokens", "Tokens settled", ("model", "kind"), registry=r)
        self.cost = Counter(
            "spendgate_cost_usd",
            "Settled cost in USD (float, for dashboards; the ledger holds exact amounts)",
            ("model", "key"),
            registry=r,
        )
        self.refusals = Counter("spendgate_refusals", "Requests refused", ("reason",), registry=r)
        self.limit_refusals = Counter(
            "spendgate_limit_refusals",
            "Requests a rate limit refused (429, or 400 for prompt size), per limit id and kind",
            ("limit", "kind"),
            registry=r,
        )
        self.request_duration = Histogram(
            "spendgate_request_duration_seconds",
            "Time from request to the end of the response, as the gateway sees it",
            ("route",),
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "spendgate_upstream_duration_seconds",
            "Time from sending to the upstream to its response headers",
            ("upstream",),
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        # labels() validates and locks on every call; the hot path looks its children up here.
        # Bounded: label values are known model names, endpoints, statuses and key ids.
        self._children: dict[tuple[Any, ...], Any] = {}
        # lowercased name -> label; set by ``known_models`` for each state (reloads included).
        self._models: Mapping[str, str] = {}
        #: Budget forecasts (gateway/forecast_gauges.py): refreshed off the loop before a scrape.
        self.forecasts = ForecastGauges()

    def known_models(self, exact_routes: Iterable[str], catalog: Catalog | None) -> None:
        """The model names that become labels: routed by exact name, or listed in ``catalog``.
        A plain dict of the catalog's names, so a label lookup never grows the catalog's cache
        with names clients make up."""
        names: dict[str, str] = {}
        if catalog is not None:
            names.update((price.name.lower(), price.name) for price in catalog.models())
        names.update((name.lower(), name) for name in exact_routes)
        self._models = names

    def model_label(self, model: str) -> str:
        if model == "-":  # not routed (ctx default)
            return model
        return self._models.get(model.lower(), OTHER_MODEL)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def answered(self, route: str, model: str, status: int, seconds: float) -> None:
        self._child(self.requests, route, self.model_label(model), str(status)).inc()
        self._child(self.request_duration, route).observe(seconds)

    def upstream_answered(self, upstream: str, seconds: float) -> None:
        self._child(self.upstream_duration, upstream).observe(seconds)

    def refused(self, reason: str) -> None:
        """The gateway refused a request (``spendgate_refusals``)."""
        self._child(self.refusals, reason).inc()

    def limit_refused(self, limit_id: str, kind: str) -> None:
        """A rate limit refused a request (``limit_id``: the limit's id, never its instance)."""
        self._child(self.limit_refusals, limit_id, kind).inc()

    def settled(self, model: str, key: str | None, usage: Usage | None, cost_usd: float) -> None:
        model = self.model_label(model)
        if usage is not None:
            if usage.input_tokens:
                self._child(self.tokens, model, "input").inc(usage.input_tokens)
            if usage.output_tokens:
                self._child(self.tokens, model, "output").inc(usage.output_tokens)
            if usage.cache_read_tokens:
                self._child(self.tokens, model, "cache_read").inc(usage.cache_read_tokens)
        self._child(self.cost, model, key or "").inc(cost_usd)

    def render(self, ledger: Ledger | None) -> bytes:
        """The exposition text; budget ratios are read from the ledger now."""
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
        else:
            registry = CollectorRegistry()
            registry.register(_Registered(self.registry))
            registry.register(_Registered(pool_metrics().registry))
        if ledger is not None:
            registry.register(_BudgetRatios(ledger))
            registry.register(_LimitUse(ledger))
            registry.register(self.forecasts.collector())
        return generate_latest(registry)


class _Registered(Collector):
    """This process's own metrics, inside a registry made for one scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


class _BudgetRatios(Collector):
    """Spent plus reserved over the limit, per budget id (its most used instance), this window."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "spendgate_budget_usage_ratio",
            "Spent plus reserved over the limit, per budget (its most used instance), at scrape time",
            labels=("budget",),
        )
        try:
            usages = self._ledger.list_budgets()
        except Exception:
            log.warning("metrics: the ledger did not answer list_budgets", exc_info=True)
            usages = []
        # One series per budget id: an instance's key holds request values (a user, an end
        # user's email) that must not become labels; the most used instance is what alerts want.
        ratios: dict[str, float] = {}
        for u in usages:
            used = u.spent.nanos + u.reserved.nanos
            ratio = used / u.limit.nanos if u.limit.nanos > 0 else (1.0 if used else 0.0)
            ratios[u.budget_id] = max(ratio, ratios.get(u.budget_id, 0.0))
        for budget_id, ratio in ratios.items():
            family.add_metric((budget_id,), ratio)
        yield family


#: At most this many limits are read per scrape (each one ledger read); beyond, the rest are
#: left out and a warning logged: a scrape never costs more than this.
MAX_SCRAPED_LIMITS = 500


class _LimitUse(Collector):
    """What each rate limit without wildcards holds now (its window's sum, or its requests
    in flight) and that over its amount. A ``key: "*"`` limit has one instance per key (or
    user...): reading them all would make a scrape cost grow with the users, so they are left
    out (their refusals are counted; the admin API lists their instances)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        used_family = GaugeMetricFamily(
            "spendgate_limit_used",
            "What a rate limit holds now: requests or tokens in its window, USD for usd limits, "
            "requests in flight for concurrency (limits without wildcards, at scrape time)",
            labels=("limit", "kind"),
        )
        ratio_family = GaugeMetricFamily(
            "spendgate_limit_usage_ratio",
            "What a rate limit holds now over its amount (limits without wildcards, at scrape time)",
            labels=("limit", "kind"),
        )
        try:
            # A prompt_tokens limit holds nothing between requests: it has no use to show.
            limits = [
                each for each in self._ledger.limits() if not each.wildcards and each.kind != "prompt_tokens"
            ]
        except Exception:
            log.warning("metrics: the ledger did not answer limits()", exc_info=True)
            limits = []
        if len(limits) > MAX_SCRAPED_LIMITS:
            log.warning("metrics: %d limits; only the first %d are scraped", len(limits), MAX_SCRAPED_LIMITS)
            limits = limits[:MAX_SCRAPED_LIMITS]
        for limit in limits:
            try:
                usage = self._ledger.limit_usage(limit.id)
            except KeyError:
                continue  # removed since limits() answered
            except Exception:
                log.warning("metrics: the ledger did not answer limit_usage(%r)", limit.id, exc_info=True)
                break
            used = usage.used
            shown = used / NANO_PER_USD if limit.kind == "usd" else float(used)
            ratio = used / limit.amount if limit.amount > 0 else (1.0 if used else 0.0)
            used_family.add_metric((limit.id, limit.kind), shown)
            ratio_family.add_metric((limit.id, limit.kind), ratio)
        yield used_family
        yield ratio_family
