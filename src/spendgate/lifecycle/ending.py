"""The one ending policy: what happened to a call -> how its reservation ends, and why.

Pure: no I/O, no clock, no ledger. The gateway and both SDK wrappers say what
happened (``Happened``) and what the provider's answer told (the final usage,
or the part of it known so far); ``decide`` answers with an ``Ending``; the
guard's shells carry it out. The table in docs/design.md ("The ending table")
is this function, and tests/lifecycle/test_ending_table.py checks it row by row.

The rule behind every row is *never under-count*: a reservation is released
only when the provider certainly billed nothing; it is settled below the
reservation only on the provider's own usage, or on an upper bound built from
the part of it that is known. Text seen in a stream is never the bound: a
reasoning model bills hidden reasoning tokens that no stream shows, and the
tier a request was served at may be unknown until the final event.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from spendgate.usage import Usage

__all__ = ["Action", "Ending", "Happened", "Report", "decide"]


class Happened(StrEnum):
    """What became of a call, as the caller of the provider saw it."""

    #: The call failed before the request could reach the provider (no connection was made,
    #: an argument the SDK rejected before sending).
    NOT_SENT = "not_sent"
    #: The provider answered with an error status (4xx/5xx, its 429 included).
    REFUSED = "refused"
    #: The request was (or may have been) sent, and no answer was read: a timeout, a dropped
    #: connection, a cancellation while waiting, an SDK failing after an answer it did not return.
    LOST = "lost"
    #: A whole 2xx answer: a response body, or a stream read to its end.
    COMPLETE = "complete"
    #: A 2xx stream that broke off before its end.
    CUT = "cut"
    #: The caller stopped reading a 2xx stream (closed it, left, dropped it).
    CLOSED = "closed"


class Action(StrEnum):
    """How a reservation ends."""

    #: Charge the actual cost computed from the provider's usage.
    SETTLE = "settle"
    #: Charge an upper bound built from the usage known so far (Anthropic's message_start
    #: tells the exact prompt): the reservation with the known prompt in place of its bound.
    PARTIAL = "partial"
    #: Charge the whole reservation: billed (or maybe billed), and nothing tighter is known.
    CHARGE_RESERVATION = "charge_reservation"
    #: Free the reservation: the provider billed nothing.
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Ending:
    """The decision for one call: the action, the status the request log records, and why."""

    action: Action
    #: The request log's status: "ok", "cut", "closed", "unread", "lost" (or "released").
    status: str
    why: str


@dataclass(frozen=True, slots=True)
class Report:
    """What a caller of the provider saw of one call: the facts the ending is decided on."""

    happened: Happened
    #: The provider's final usage, when it was read.
    usage: Usage | None = None
    #: The usage known before the end (Anthropic's message_start, a running total), if any.
    known: Usage | None = None
    #: The service tier the provider said it served the request at.
    tier: str | None = None
    #: A word for the log: an error's name, why the usage could not be read.
    detail: str | None = None

    def decide(self) -> Ending:
        return decide(self.happened, usage=self.usage, known=self.known)


_RELEASED: Final = {
    Happened.NOT_SENT: Ending(Action.RELEASE, "released", "the request never reached the provider"),
    Happened.REFUSED: Ending(Action.RELEASE, "released", "the provider refused the request: nothing billed"),
}


def decide(happened: Happened, *, usage: Usage | None = None, known: Usage | None = None) -> Ending:
    """The ending for ``happened``, given the provider's final ``usage`` (None if none was read)
    and the part of it ``known`` before the end (None if nothing was)."""
    released = _RELEASED.get(happened)
    if released is not None:
        return released
    status = "ok" if happened is Happened.COMPLETE else happened.value
    if usage is not None:
        # The provider said what it billed; a stream may still be cut or closed after that.
        return Ending(Action.SETTLE, status, "the provider reported the usage it billed")
    if happened is Happened.COMPLETE:
        return Ending(
            Action.CHARGE_RESERVATION,
            "unread",
            "billed, but the answer carries no readable usage: the reserved worst case is charged",
        )
    if happened is Happened.LOST:
        return Ending(
            Action.CHARGE_RESERVATION,
            "lost",
            "sent, and no answer was read: the provider may have billed up to the reserved worst case",
        )
    if known is not None:
        return Ending(
            Action.PARTIAL,
            status,
            "the stream ended before its usage: the known prompt plus the reserved output bound is charged",
        )
    return Ending(
        Action.CHARGE_RESERVATION,
        status,
        "the stream ended before its usage: hidden reasoning and the served tier are unknown, "
        "so the reserved worst case is charged",
    )
