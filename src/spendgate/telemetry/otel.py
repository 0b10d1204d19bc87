"""The part of telemetry that imports OpenTelemetry: imported by ``spendgate.telemetry.start`` only.

``Recorder.observe`` is ``spendgate.logs.observer`` while telemetry is on: each finished request
line becomes one span (ended at once, with the request's own start time) and a few metric
points. Spans leave through a ``BatchSpanProcessor`` and metrics through a
``PeriodicExportingMetricReader``: exports run on their threads, never on the caller's (or the
gateway's event loop); ``shutdown`` exports what is left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from opentelemetry import propagate
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from spendgate.telemetry import TelemetrySettings
from spendgate.telemetry.conventions import KEY_ID, TOKEN_TYPE, describe

#: The conventions' advice for GenAI durations, in seconds.
DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
SCOPE: Final = "spendgate"
#: The headers of a gateway request that may carry the client's trace (W3C Trace Context, Baggage).
_TRACE_HEADERS: Final = frozenset({b"traceparent", b"tracestate", b"baggage"})


def _version() -> str:
    from spendgate import __version__

    return __version__


class Recorder:
    """Spans and metrics from request lines, on the given providers or OTLP/HTTP ones of its own."""

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        self._owned: list[Any] = []
        version = _version()
        self._tracer = None
        if settings.traces:
            tracer_provider = tracer_provider or self._own_tracer_provider()
            self._tracer = tracer_provider.get_tracer(SCOPE, version)
            self._tracer_provider: Any = tracer_provider
        self._metrics_on = settings.metrics
        if settings.metrics:
            meter_provider = meter_provider or self._own_meter_provider()
            self._meter_provider: Any = meter_provider
            meter = meter_provider.get_meter(SCOPE, version)
            # The counters sum here (a dict add under a lock) and are read at each export:
            # an SDK counter's add costs ~10 us a call, and a request makes up to four.
            self._requests = _Sums()
            self._cost = _Sums()
            self._tokens = _Sums()
            meter.create_observable_counter(
                "spendgate.requests",
                [self._requests.observe],
                unit="{request}",
                description="Requests ended or refused",
            )
            meter.create_observable_counter(
                "spendgate.cost",
                [self._cost.observe],
                unit="USD",
                description="Cost charged in USD (a double; the ledger holds exact amounts)",
            )
            meter.create_observable_counter(
                "spendgate.tokens",
                [self._tokens.observe],
                unit="{token}",
                description="Tokens the provider reported",
            )
            self.server_duration: Histogram = meter.create_histogram(
                "gen_ai.server.request.duration",
                unit="s",
                description="Gateway requests, from the request to the end of the answer",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            self.client_duration: Histogram = meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="SDK calls through spendgate, from admission to the end",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )

    # -- providers of its own ---------------------------------------------------------------

    def _resource(self) -> Any:
        from opentelemetry.sdk.resources import Resource

        return Resource.create({"service.name": self.settings.service_name})

    def _url(self, signal: str) -> str | None:
        base = self.settings.endpoint
        return None if base is None else base.rstrip("/") + f"/v1/{signal}"

    def _own_tracer_provider(self) -> TracerProvider:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = SdkTracerProvider(resource=self._resource())
        exporter = OTLPSpanExporter(endpoint=self._url("traces"), headers=self.settings.headers)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self._owned.append(provider)
        return provider

    def _own_meter_provider(self) -> MeterProvider:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        exporter = OTLPMetricExporter(endpoint=self._url("metrics"), headers=self.settings.headers)
        reader = PeriodicExportingMetricReader(
            exporter, export_interval_millis=self.settings.export_interval * 1000
        )
        provider = SdkMeterProvider(resource=self._resource(), metric_readers=[reader])
        self._owned.append(provider)
        return provider

    # -- per request --------------------------------------------------------------------------

    def observe(self, fields: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] | None = None) -> None:
        """One finished request line: its span and its metric points."""
        view = describe(fields, capture_user=self.settings.capture_user)
        if view is None:
            return
        if self._tracer is not None:
            end = time.time_ns()
            parent = _parent(headers) if headers else None
            span = self._tracer.start_span(
                view.name,
                context=parent,
                kind=SpanKind.SERVER if view.server else SpanKind.CLIENT,
                attributes=view.attributes,
                start_time=end - int(view.seconds * 1e9),
            )
            if view.error_type is not None:
                span.set_status(Status(StatusCode.ERROR, view.error_type))
            span.end(end_time=end)
        if self._metrics_on:
            attrs = view.metric_attributes
            group = tuple(attrs.items())
            self._requests.add(group, 1)
            if view.cost_usd:
                self._cost.add((*group, (KEY_ID, view.key_id)) if view.key_id else group, view.cost_usd)
            if view.input_tokens:
                self._tokens.add((*group, (TOKEN_TYPE, "input")), view.input_tokens)
            if view.output_tokens:
                self._tokens.add((*group, (TOKEN_TYPE, "output")), view.output_tokens)
            (self.server_duration if view.server else self.client_duration).record(view.seconds, attrs)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Export what is queued; shut down the providers this recorder made (only flush others)."""
        millis = int(timeout * 1000)
        tracing = getattr(self, "_tracer_provider", None)
        if tracing is not None:
            if hasattr(tracing, "force_flush"):
                tracing.force_flush(millis)  # the batch processor's queue, exported now
            if tracing in self._owned:
                tracing.shutdown()
        metering = getattr(self, "_meter_provider", None)
        if metering is not None:
            if metering in self._owned:
                metering.shutdown(timeout_millis=millis)  # a last collection, exported
            elif hasattr(metering, "force_flush"):
                metering.force_flush(millis)


class _Sums:
    """Cumulative sums by attribute set, for an observable counter's callback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[tuple[tuple[str, str], ...], float] = {}

    def add(self, group: tuple[tuple[str, str], ...], amount: float) -> None:
        with self._lock:
            self._sums[group] = self._sums.get(group, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            sums = list(self._sums.items())
        return [Observation(total, dict(group)) for group, total in sums]


def _parent(headers: Sequence[tuple[bytes, bytes]]) -> Any:
    """The client's trace context from a gateway request's headers, or None (a new trace)."""
    carrier: Mapping[str, str] = {
        name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS
    }
    return propagate.extract(carrier) if carrier else None
