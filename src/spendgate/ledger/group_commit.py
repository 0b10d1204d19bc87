"""Moved to ``spendgate.ledger.sqlite.group_commit`` (it serves the SQLite backend); kept importable."""

from __future__ import annotations

from spendgate.ledger.sqlite.group_commit import Body, GroupCommit, Job, Outcome, RunBatch, future_job

__all__ = ["Body", "GroupCommit", "Job", "Outcome", "RunBatch", "future_job"]
