"""Where a call goes, read from the host it is sent to: the price uplifts no body states.

OpenAI bills data residency (``eu.api.openai.com``, ``us.api.openai.com``) at an uplift (its
FedRAMP uplift has no host of its own here: say ``data_residency="fedramp"``); Vertex AI bills
every location but ``global`` at one. A usage report
never says either, so the guard reads them from the client's base URL (the SDK wrappers) or
the upstream's (the gateway), and both the reservation and the settled cost carry them.
"""

from __future__ import annotations

import functools
import re
from typing import Final, NamedTuple
from urllib.parse import urlsplit

__all__ = ["NOWHERE", "Where", "where_of"]

#: ``<location>-aiplatform.googleapis.com``: a Vertex AI location (``global`` has no prefix).
_VERTEX: Final = re.compile(r"^(?P<location>[a-z0-9-]+)-aiplatform\.googleapis\.com$")


class Where(NamedTuple):
    """The pricing conditions a host implies (None: the provider's default)."""

    data_residency: str | None = None
    endpoint_location: str | None = None


NOWHERE: Final = Where()


@functools.lru_cache(maxsize=256)  # on the gateway's path: one upstream URL, many requests
def _where_of_text(base_url: str) -> Where:
    try:
        host = (urlsplit(base_url).hostname or "").lower()
    except ValueError:
        return NOWHERE
    if host in ("eu.api.openai.com", "us.api.openai.com"):
        return Where(data_residency=host.split(".", 1)[0])
    match = _VERTEX.match(host)
    if match is not None:
        return Where(endpoint_location=match["location"])
    return NOWHERE


def where_of(base_url: object) -> Where:
    """The conditions of calls to ``base_url``: ``https://eu.api.openai.com/v1`` -> eu data
    residency; ``https://us-east5-aiplatform.googleapis.com`` -> Vertex location us-east5."""
    return _where_of_text(base_url if isinstance(base_url, str) else str(base_url or ""))
