"""OpenTelemetry for spendgate, optional (``pip install 'spendgate[otel]'``): docs/telemetry.md.

    import spendgate.telemetry
    spendgate.telemetry.enable(endpoint="http://127.0.0.1:4318")  # OTLP/HTTP
    ...
    spendgate.telemetry.shutdown()  # exports what is queued

When enabled, each request's one log line (``spendgate.logs``: the guard decides and builds
it once, ended or refused; under the gateway with the HTTP status and latency added) also
becomes one span, with the GenAI semantic conventions' attributes and spendgate's cost,
budgets and outcome (``conventions.describe``), and counts in a few OTLP metrics. The
gateway turns it on with the config's ``telemetry:`` section.

Off by default, and then free: this module imports no ``opentelemetry`` (``enable`` imports
``spendgate.telemetry.otel``), and the request path checks one attribute
(``spendgate.logs.observer``) before building a line at all.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from spendgate import logs
from spendgate.errors import SpendgateError

if TYPE_CHECKING:
    from spendgate.telemetry.otel import Recorder

__all__ = [
    "INSTALL_HINT",
    "TelemetrySettings",
    "TelemetryUnavailableError",
    "available",
    "enable",
    "enabled",
    "shutdown",
    "start",
]

INSTALL_HINT: Final = "pip install 'spendgate[otel]'"
log = logging.getLogger("spendgate.telemetry")


class TelemetryUnavailableError(SpendgateError, ImportError):
    """Telemetry was asked for, and OpenTelemetry's SDK is not installed."""

    def __init__(self) -> None:
        super().__init__(f"spendgate telemetry needs OpenTelemetry's SDK and OTLP exporter: {INSTALL_HINT}")


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What ``start`` sets up (the gateway's ``telemetry:`` section; docs/gateway-config.md)."""

    #: OTLP/HTTP base URL (``/v1/traces`` and ``/v1/metrics`` are appended); None: the standard
    #: ``OTEL_EXPORTER_OTLP_*`` variables, else ``http://localhost:4318``.
    endpoint: str | None = None
    #: Sent with every export (a collector's API key); None: ``OTEL_EXPORTER_OTLP_HEADERS``.
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    service_name: str = "spendgate"
    #: Put the user and end-user ids on spans (``user.id``, ``enduser.id``); never on metrics.
    capture_user: bool = False
    traces: bool = True
    metrics: bool = True
    #: Seconds between metric exports (and a last one at shutdown).
    export_interval: float = 60.0


def available() -> bool:
    """Whether the ``otel`` extra is installed (looked up, not imported)."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:
        return False


_lock = threading.Lock()
_recorder: Recorder | None = None


def enable(
    *,
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    service_name: str = "spendgate",
    capture_user: bool = False,
    traces: bool = True,
    metrics: bool = True,
    export_interval: float = 60.0,
    tracer_provider: Any = None,
    meter_provider: Any = None,
) -> None:
    """Turn telemetry on in this process, for every Guard, SDK wrapper and gateway request.

    Exports OTLP over HTTP to ``endpoint`` (or where the ``OTEL_EXPORTER_OTLP_*`` variables
    say), unless given providers: ``tracer_provider``/``meter_provider`` (an application's own,
    e.g. ``opentelemetry.trace.get_tracer_provider()``) are used as they are, and only flushed
    by ``shutdown``. Calling it again replaces the previous setup. Raises
    ``TelemetryUnavailableError`` without the ``otel`` extra."""
    start(
        TelemetrySettings(
            endpoint=endpoint,
            headers=headers,
            service_name=service_name,
            capture_user=capture_user,
            traces=traces,
            metrics=metrics,
            export_interval=export_interval,
        ),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )


def start(settings: TelemetrySettings, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """``enable`` with settings (what the gateway calls)."""
    global _recorder
    if not available():
        raise TelemetryUnavailableError()
    from spendgate.telemetry.otel import Recorder

    recorder = Recorder(settings, tracer_provider=tracer_provider, meter_provider=meter_provider)
    with _lock:
        old, _recorder = _recorder, recorder
        logs.observer = recorder.observe
    if old is not None:
        old.shutdown()


def enabled() -> bool:
    return _recorder is not None


def shutdown(timeout: float = 10.0) -> None:
    """Turn telemetry off: export what is queued (spans, a last metric export) and shut down
    the providers ``enable`` made, within about ``timeout`` seconds. Safe to call when off."""
    global _recorder
    with _lock:
        recorder, _recorder = _recorder, None
        if recorder is not None and logs.observer == recorder.observe:
            logs.observer = None
    if recorder is not None:
        recorder.shutdown(timeout)
