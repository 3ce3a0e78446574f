"""W3C trace context (``traceparent``) without the OpenTelemetry SDK (pure).

A producer stamps every event it publishes with a ``traceparent`` (``docs/tracing.md``):
the current span's when tracing is on, otherwise a new root made here from random
bytes. Parsing and formatting live here so the publish path never needs the SDK.

Format (https://www.w3.org/TR/trace-context/#traceparent-header):
``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``, lower case, neither id all
zeros.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = 0x01


class TraceParent(NamedTuple):
    trace_id: int
    span_id: int
    flags: int

    def format(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.flags)


def format_traceparent(trace_id: int, span_id: int, flags: int = SAMPLED) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The ids of a valid version-00 ``traceparent``; None for anything else (a producer's
    malformed header starts no link, it never fails an event)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags = match.groups()
    if version == "ff" or trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    return TraceParent(int(trace_hex, 16), int(span_hex, 16), int(flags, 16))


def new_traceparent() -> str:
    """A new root: random trace and parent ids, sampled (so a downstream consumer that
    samples by its parent keeps the trace)."""
    raw = os.urandom(24)
    trace_hex, span_hex = raw[:16].hex(), raw[16:].hex()
    if trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:  # 2**-64: draw again
        return new_traceparent()
    return f"00-{trace_hex}-{span_hex}-01"


_FIELD = b'"traceparent":"'


def raw_traceparent(data: bytes | None) -> bytes | None:
    """The ``traceparent`` of an entry's undecoded ``data``, found without decoding it
    (one substring search): what the receive span needs before triage decodes the
    entries. Our producers write the key without spaces; anything else reads as None."""
    if not data:
        return None
    start = data.find(_FIELD)
    if start < 0:
        return None
    start += len(_FIELD)
    end = data.find(b'"', start)
    if end < 0 or end - start > 64:
        return None
    return data[start:end]
