"""Telemetry test tools (need ``spendgate[otel]`` and ``opentelemetry-proto``).

- ``OtlpReceiver``: a real OTLP/HTTP receiver on 127.0.0.1 (a thread): it decodes the
  protobuf exports of ``/v1/traces`` and ``/v1/metrics`` with opentelemetry-proto and keeps
  the spans and metric points, for a test to wait on.
- ``InMemoryTelemetry``: ``spendgate.telemetry`` enabled in this process on the SDK's
  in-memory span exporter and metric reader.

    with OtlpReceiver() as otlp:
        ...  # a gateway with telemetry: {endpoint: otlp.url}
        spans = otlp.wait_spans(lambda spans: len(spans) >= 2)
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from spendgate import telemetry


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    name: str
    kind: int  # the protobuf's SpanKind: 2 server, 3 client
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReceivedPoint:
    metric: str
    unit: str
    attributes: dict[str, Any]
    value: float  # a sum's value, or a histogram's sum
    count: int  # a histogram's count (1 for a sum point)
    resource: dict[str, Any] = field(default_factory=dict)


def value_of(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as Python (arrays as tuples)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


class OtlpReceiver:
    """An OTLP/HTTP (protobuf) receiver on an ephemeral port of 127.0.0.1."""

    def __init__(self, *, keep: bool = True) -> None:
        """``keep=False``: count spans and points only (a benchmark's receiver)."""
        self.keep = keep
        self.span_count = 0
        self.spans: list[ReceivedSpan] = []
        #: Every metric point of every export, in order (cumulative sums repeat: see ``latest``).
        self.points: list[ReceivedPoint] = []
        self.requests: list[tuple[str, Mapping[str, str]]] = []  # path, headers
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                encoding = (self.headers.get("content-encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                answer = receiver._take(self.path, body, dict(self.headers.items()))
                if answer is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def url(self) -> str:
        """The base URL to give an exporter (``/v1/traces`` and ``/v1/metrics`` are under it)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes | None:
        if path == "/v1/traces" and not self.keep:
            count = sum(
                len(ss.spans)
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for ss in rs.scope_spans
            )
            with self._changed:
                self.span_count += count
                self._changed.notify_all()
            done: bytes = ExportTraceServiceResponse().SerializeToString()
            return done
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            spans = [
                ReceivedSpan(
                    name=span.name,
                    kind=span.kind,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    attributes=attributes_of(span.attributes),
                    status_code=span.status.code,
                    status_message=span.status.message,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    resource=attributes_of(rs.resource.attributes),
                )
                for rs in traces.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]
            with self._changed:
                self.requests.append((path, headers))
                self.spans.extend(spans)
                self.span_count += len(spans)
                self._changed.notify_all()
            return ExportTraceServiceResponse().SerializeToString()  # type: ignore[no-any-return]
        if path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest.FromString(body)
            points: list[ReceivedPoint] = []
            for rm in metrics.resource_metrics:
                resource = attributes_of(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        if kind == "sum":
                            for p in metric.sum.data_points:
                                number = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                                points.append(
                                    ReceivedPoint(
                                        metric.name,
                                        metric.unit,
                                        attributes_of(p.attributes),
                                        number,
                                        1,
                                        resource,
                                    )
                                )
                        elif kind == "histogram":
                            for h in metric.histogram.data_points:
                                points.append(
                                    ReceivedPoint(
                                        metric.name,
                                        metric.unit,
                                        attributes_of(h.attributes),
                                        h.sum,
                                        h.count,
                                        resource,
                                    )
                                )
            with self._changed:
                self.requests.append((path, headers))
                self.points.extend(points)
                self._changed.notify_all()
            answer: bytes = ExportMetricsServiceResponse().SerializeToString()
            return answer
        return None

    def wait(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``ready()`` holds after an export came in (bounded: AssertionError past ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the OTLP receiver did not get what was expected within {timeout} s"
                    )
                self._changed.wait(left)

    def wait_spans(
        self, ready: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        self.wait(lambda: ready(self.spans), timeout)
        with self._changed:
            return list(self.spans)

    def latest(self, metric: str) -> dict[frozenset[tuple[str, Any]], ReceivedPoint]:
        """The last point received per attribute set of ``metric`` (cumulative: the totals)."""
        with self._changed:
            return {frozenset(p.attributes.items()): p for p in self.points if p.metric == metric}


class InMemoryTelemetry:
    """``spendgate.telemetry`` on the SDK's in-memory exporters, in this process (a context manager)."""

    def __init__(self, *, capture_user: bool = False) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.capture_user = capture_user

    def __enter__(self) -> Self:
        telemetry.enable(
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            capture_user=self.capture_user,
        )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        telemetry.shutdown()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def spans(self) -> list[Any]:
        """The finished spans (``ReadableSpan``), oldest first."""
        return list(self.exporter.get_finished_spans())

    def points(self) -> Iterator[tuple[str, dict[str, Any], float]]:
        """Each metric point now: (metric name, attributes, value: a sum, or a histogram's count)."""
        data = self.reader.get_metrics_data()
        if data is None:
            return
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        yield (
                            metric.name,
                            dict(point.attributes or {}),
                            (float(value) if value is not None else float(getattr(point, "count", 0))),
                        )

    def metric(self, name: str) -> dict[frozenset[tuple[str, Any]], float]:
        """``name``'s points by attribute set."""
        return {frozenset(attrs.items()): value for metric, attrs, value in self.points() if metric == name}
