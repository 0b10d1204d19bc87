"""Spend reports over time: the request log's ``usage_timeseries`` points made into a report.

- ``span``: what a report covers: ``--since``/``--until`` (ISO dates or times, or ``7d``,
  ``24h`` before now) and the bucket names (``hour``, ``day``).
- ``pivot``: points -> ``Report``: bucket x group cells, totals per group, per bucket and in
  all, and every bucket of the span (the empty ones too) for display.
- ``export``: CSV (exact decimal USD, ISO-8601 UTC instants) and JSON.
- ``table``: the terminal view (rich): a table per group with a sparkline each, a table per
  bucket with a bar each. Not imported here, so the gateway (which serves the same points as
  JSON) does not load rich.

docs/reports.md describes the command (``spendgate report``) and the admin API
(``GET /admin/usage/timeseries``) built on them.
"""

from __future__ import annotations

from spendgate.reports.export import CSV_COLUMNS, point_json, report_json, write_csv
from spendgate.reports.pivot import Cell, Report, pivot
from spendgate.reports.span import BUCKETS, bucket_name, parse_bucket, parse_instant

__all__ = [
    "BUCKETS",
    "CSV_COLUMNS",
    "Cell",
    "Report",
    "bucket_name",
    "parse_bucket",
    "parse_instant",
    "pivot",
    "point_json",
    "report_json",
    "write_csv",
]
