"""What OpenTelemetry costs the gateway: ``spendgate serve`` with telemetry off, then on.

    .venv/bin/python -m bench.telemetry [--seconds 5] [--requests 1000] [--rounds 2] [--log-level info]
                                        [--variants off,on,metrics,sampled]

Figures and the command that produced them: docs/telemetry.md, "What it costs".

One fake upstream process and one OTLP/HTTP receiver (``spendgate.testing.otel.OtlpReceiver``,
a thread of this process that decodes each export and counts its spans), measured in the same
run. The gateway (SQLite ledger in a temporary directory, a virtual key, one budget too big to
refuse anything, one process) runs each variant in turn, ``--rounds`` times, so that drift on
the machine falls on all of them:

- off: no ``telemetry:`` section (nothing of OpenTelemetry is imported);
- on: ``telemetry: {endpoint: <receiver>, export_interval: 5}``: a span per request through
  the batch span processor and the metrics, exported over OTLP/HTTP while the load runs;
- metrics: the same with ``traces: false``;
- sampled: ``on`` with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ``_ARG=0.1``.

Each run: ``bench.gateway.measure`` (concurrency 1 for p50, then concurrency 32 for requests/s,
by the same load generator as bench/gateway.py, non-streaming ``max_tokens: 16``). Reported:
the median over rounds of each figure, its share of off's, and the spans the receiver got
against the requests the gateway answered (its Prometheus ``spendgate_requests_total``; the
batch processor drops spans past its queue of 2048 rather than slow requests down: a drop
shows here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench._util import python_version
from bench.gateway import (
    READY_PREFIX,
    UPSTREAM_KEY_ENV,
    BenchError,
    Figures,
    Server,
    check_once,
    child_env,
    create_key,
    free_port,
    measure,
    ready_base,
    spendgate_cli,
    write_yaml,
)
from spendgate.testing.otel import OtlpReceiver
from spendgate.testing.process import FakeUpstream


def answered(base: str) -> int:
    """The requests the gateway answered, by its Prometheus ``spendgate_requests_total``."""
    root = base.removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("spendgate_requests_total{")]
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in lines))


#: The variants: the ``telemetry:`` section (None: none) and the environment they add.
VARIANTS: dict[str, tuple[dict[str, Any] | None, dict[str, str]]] = {
    "off": (None, {}),
    "on": ({"export_interval": 5}, {}),
    "metrics": ({"export_interval": 5, "traces": False}, {}),
    "sampled": (
        {"export_interval": 5},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    ),
}


def run(
    upstream: FakeUpstream,
    otlp: OtlpReceiver,
    tmp: Path,
    args: argparse.Namespace,
    variant: str,
    name: str,
) -> tuple[Figures, int, int]:
    """One gateway run: its figures, the requests it answered, and the spans the receiver got."""
    from spendgate.ledger import open_ledger

    ledger = f"sqlite:///{tmp / (name + '.db')}"
    open_ledger(ledger).close()
    key = create_key(ledger)
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "ledger": ledger,
        "upstreams": {
            "fake": {"kind": "openai", "base_url": upstream.base_url, "api_key_env": UPSTREAM_KEY_ENV}
        },
        "routes": [{"model": "*", "upstream": "fake"}],
        "budgets": [{"id": "all", "limit": "1000000"}],
    }
    section, env = VARIANTS[variant]
    if section is not None:
        config["telemetry"] = {"endpoint": otlp.url, **section}
    path = tmp / f"{name}.yaml"
    write_yaml(path, config)
    argv = [*spendgate_cli(), "serve", "--config", str(path), "--log-level", args.log_level]
    server = Server(argv, child_env({UPSTREAM_KEY_ENV: "bench", **env}), READY_PREFIX)
    before = otlp.span_count
    try:
        server.wait_line(30.0)
        base = ready_base(server)
        check_once(base, key)
        figures = measure(base + "/chat/completions", key, args.requests, args.seconds)
        requests = answered(base)
    finally:
        server.stop()  # SIGTERM: the gateway exports what is queued before it exits
    if variant != "on":
        return figures, requests, otlp.span_count - before
    with contextlib.suppress(AssertionError):  # fewer: the batch processor dropped some
        otlp.wait(lambda: otlp.span_count - before >= requests, timeout=10)
    return figures, requests, otlp.span_count - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="timed run at concurrency 32, per run")
    parser.add_argument("--requests", type=int, default=1000, help="timed sequential requests per run")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs (the median is reported)")
    parser.add_argument(
        "--log-level", default="info", help="the gateway's --log-level (info: request lines on)"
    )
    parser.add_argument(
        "--variants",
        default="off,on",
        help="comma list of: off, on, metrics (traces: false), sampled (10%% of traces, by OTEL_TRACES_SAMPLER)",
    )
    parser.add_argument("--json", action="store_true", help="the figures as JSON too")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "off" not in variants:
        parser.error(f"--variants: off and some of {', '.join(VARIANTS)}; unknown: {unknown}")

    results: dict[str, list[Figures]] = {variant: [] for variant in variants}
    spans: list[tuple[str, int, int]] = []
    with (
        tempfile.TemporaryDirectory() as tmp_dir,
        FakeUpstream.start() as upstream,
        OtlpReceiver(keep=False) as otlp,
    ):
        tmp = Path(tmp_dir)
        for index in range(args.rounds):
            for variant in variants:
                try:
                    figures, requests, got = run(upstream, otlp, tmp, args, variant, f"{variant}{index}")
                except BenchError as exc:
                    print(f"{variant}: {exc}", file=sys.stderr)
                    return 1
                results[variant].append(figures)
                if variant != "off":
                    spans.append((variant, got, requests))
                print(
                    f"round {index + 1} {variant:>3}: {figures.rps:8.0f} req/s at c32 "
                    f"(p50 {figures.p50_c32:.2f} ms), p50 {figures.p50:.3f} ms at c1, {figures.errors} errors, "
                    f"{requests} requests answered" + (f", {got} spans received" if variant != "off" else ""),
                    flush=True,
                )

    def median(variant: str, name: str) -> float:
        return float(statistics.median(float(getattr(f, name)) for f in results[variant]))

    print(f"\n{python_version()}; {args.rounds} rounds, median; log level {args.log_level}")
    print("| telemetry | req/s c32 | of off | p50 c32 ms | p99 c32 ms | p50 c1 ms | added p50 c1 ms |")
    print("|---|---|---|---|---|---|---|")
    figures_out: dict[str, dict[str, float]] = {}
    for variant in variants:
        row = {name: median(variant, name) for name in ("rps", "p50_c32", "p99_c32", "p50")}
        row["ratio"] = row["rps"] / median("off", "rps")
        row["added_p50_ms"] = row["p50"] - median("off", "p50")
        figures_out[variant] = row
        print(
            f"| {variant} | {row['rps']:.0f} | {row['ratio']:.0%} | {row['p50_c32']:.2f} | {row['p99_c32']:.2f} "
            f"| {row['p50']:.3f} | {row['added_p50_ms']:+.3f} |"
        )
    print("spans received / requests answered: " + ", ".join(f"{v} {g}/{r}" for v, g, r in spans))
    if args.json:
        print(json.dumps({"figures": figures_out, "spans": spans}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
