"""Which event types travel on which stream, and each stream's default group.

This table is the contract SREs and producers read: stream names, default
consumer groups and the idle time after which pending entries are reclaimed.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.base import Event
from contracts.concelier import AdvisoryNew, AdvisoryUpdated
from contracts.exports import ExportCompleted, ExportFailed, ExportRequested
from contracts.notify import NotificationFailed, NotificationSent
from contracts.scanner import ScanCompleted, ScanFailed, ScanSubmitted
from contracts.vex import ConsensusUpdated


@dataclass(frozen=True, slots=True)
class StreamContract:
    stream: str
    default_group: str | None
    reclaim_idle_seconds: float
    event_types: tuple[type[Event], ...]
    description: str

    @property
    def dlq(self) -> str:
        return f"{self.stream}:dlq"

    def types_by_name(self) -> dict[str, type[Event]]:
        return {cls.event_type(): cls for cls in self.event_types}


STREAMS: dict[str, StreamContract] = {
    c.stream: c
    for c in (
        StreamContract(
            stream="scanner:events",
            default_group="scan-metrics",
            reclaim_idle_seconds=60.0,
            event_types=(ScanSubmitted, ScanCompleted, ScanFailed),
            description="Scan lifecycle events from the scanner workers.",
        ),
        StreamContract(
            stream="concelier:drift",
            default_group="vex-consensus",
            reclaim_idle_seconds=60.0,
            event_types=(AdvisoryNew, AdvisoryUpdated),
            description="Advisory drift: new and updated advisories from the feeds.",
        ),
        StreamContract(
            stream="notify:delivery",
            default_group="notify-workers",
            reclaim_idle_seconds=30.0,
            event_types=(NotificationSent, NotificationFailed),
            description="Notification delivery outcomes from the notifier.",
        ),
        StreamContract(
            stream="vex:consensus",
            default_group=None,
            reclaim_idle_seconds=60.0,
            event_types=(ConsensusUpdated,),
            description="Changed VEX consensus results, published by vex-consensus.",
        ),
        StreamContract(
            stream="export:requests",
            default_group="export-workers",
            reclaim_idle_seconds=60.0,
            event_types=(ExportRequested,),
            description="Requests for signed export bundles (profiles vex, scan-metrics, "
            "snapshots).",
        ),
        StreamContract(
            stream="export:events",
            default_group=None,
            reclaim_idle_seconds=60.0,
            event_types=(ExportCompleted, ExportFailed),
            description="Export outcomes, published by the export worker.",
        ),
    )
}

_ALL_TYPES: dict[str, type[Event]] = {
    name: cls for contract in STREAMS.values() for name, cls in contract.types_by_name().items()
}


def contract_for_stream(stream: str) -> StreamContract:
    try:
        return STREAMS[stream]
    except KeyError:
        known = ", ".join(sorted(STREAMS))
        raise KeyError(f"unknown stream {stream!r} (known: {known})") from None


def event_class(event_type: str) -> type[Event] | None:
    return _ALL_TYPES.get(event_type)
