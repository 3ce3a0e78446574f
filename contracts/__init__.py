"""Event contracts for the streamfleet streams.

One module per stream holds every version of that stream's event types as
frozen, keyword-only msgspec Structs in a tagged union (tag field ``type``).
:mod:`contracts.wire` turns events into stream entries (``type`` + ``data``
fields) and back. This package never imports ``workers``.
"""

from contracts.base import Event
from contracts.registry import STREAMS, StreamContract, contract_for_stream, event_class
from contracts.wire import DecodeError, decode_event, encode_entry, encode_event

__all__ = [
    "STREAMS",
    "DecodeError",
    "Event",
    "StreamContract",
    "contract_for_stream",
    "decode_event",
    "encode_entry",
    "encode_event",
    "event_class",
]
