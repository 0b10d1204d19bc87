"""The request lifecycle's core, without I/O (docs/design.md, "Lifecycle").

- ``reading``: what a provider's answer or stream says (usage, tier, which events count),
  from parsed JSON and SDK objects alike;
- ``ending``: the one ending policy, what happened -> settle / partial / charge the
  reservation / release, and why.

The guard (``spendgate.guard``) runs these decisions against a ledger; the gateway
and the SDK wrappers only say what happened.
"""

from spendgate.lifecycle.ending import Action, Ending, Happened, Report, decide
from spendgate.lifecycle.reading import Answer, Show, StreamReader, field, read_response, usage_of

__all__ = [
    "Action",
    "Answer",
    "Ending",
    "Happened",
    "Report",
    "Show",
    "StreamReader",
    "decide",
    "field",
    "read_response",
    "usage_of",
]
