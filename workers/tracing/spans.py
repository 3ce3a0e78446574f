"""The spans themselves, per the OpenTelemetry messaging semantic conventions.

Imported only once tracing is on (:func:`workers.tracing.configure`): with tracing off
the SDK is never imported and none of this runs.

- ``send <stream>`` (PRODUCER): one per :func:`workers.publishing.publish` call; every
  event it publishes without a ``traceparent`` of its own carries this span's context.
- ``receive <stream>`` (CLIENT): one per read that returned entries (``XREADGROUP`` of
  new entries or of the consumer's own pending list, ``XAUTOCLAIM``). Its parent is the
  producer context the entries share, when they all share one; otherwise it is a root.
- ``process <stream>`` (CONSUMER): one per batch, child of its receive span, with a link
  to every distinct producer context in the batch (the conventions' batch pattern). The
  batch's transaction runs inside it, so the asyncpg instrumentation's PostgreSQL spans
  are its children; retries, isolation, releases and dead letters are its span events.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from workers.tracing.context import format_traceparent, parse_traceparent, raw_traceparent

SYSTEM = "valkey"
MAX_LINKS = 128
"""Links per process span at most (the SDK's default limit): distinct producer contexts
beyond it are dropped, and the span says how many it had."""


def _remote(value: str | bytes | None) -> SpanContext | None:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    parsed = parse_traceparent(text)
    if parsed is None:
        return None
    return SpanContext(
        trace_id=parsed.trace_id,
        span_id=parsed.span_id,
        is_remote=True,
        trace_flags=TraceFlags(parsed.flags & 0x01),
    )


def traceparent_of(span: Span) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


def current_traceparent() -> str | None:
    """The current span's context as a ``traceparent``, when there is one."""
    return traceparent_of(trace.get_current_span())


def add_trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` of the current span on the line."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = f"{ctx.trace_id:032x}"
        event_dict["span_id"] = f"{ctx.span_id:016x}"
    return event_dict


def add_event(name: str, attributes: Mapping[str, AttributeValue]) -> None:
    """A span event on the current span (a no-op outside any span)."""
    trace.get_current_span().add_event(name, attributes)


class Producer:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextlib.contextmanager
    def sending(self, stream: str) -> Iterator[tuple[str, Span]]:
        attributes: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "XADD",
            "messaging.destination.name": stream,
        }
        with self._tracer.start_as_current_span(
            f"send {stream}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            traceparent = traceparent_of(span)
            assert traceparent is not None  # a recording span always has a valid context
            yield traceparent, span


class ConsumerSpans:
    """The receive and process spans of one consumer of one group."""

    def __init__(
        self,
        tracer: trace.Tracer,
        stream: str,
        group: str,
        consumer: str,
        *,
        key: str | None = None,
    ) -> None:
        self._tracer = tracer
        self._stream = stream
        self._receive_name = f"receive {stream}"
        self._process_name = f"process {stream}"
        self._common: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": stream,
            "messaging.consumer.group.name": group,
            "messaging.client.id": consumer,
        }
        if key is not None and key != stream:
            # A partitioned stream (docs/scaling.md): the key this consumer reads.
            self._common["messaging.destination.partition.id"] = key

    def received(
        self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]], started_ns: int, command: str
    ) -> SpanContext:
        """Record the read that returned ``entries`` (started at ``started_ns``); its
        context is the parent of the batch's process span."""
        shared = {raw_traceparent(fields.get(b"data")) for _, fields in entries}
        context = None
        if len(shared) == 1:
            producer = _remote(shared.pop())
            if producer is not None:
                context = trace.set_span_in_context(NonRecordingSpan(producer))
        span = self._tracer.start_span(
            self._receive_name,
            context=context,
            kind=SpanKind.CLIENT,
            start_time=started_ns,
            attributes={
                **self._common,
                "messaging.operation.type": "receive",
                "messaging.operation.name": command,
                "messaging.batch.message_count": len(entries),
            },
        )
        span.end()
        return span.get_span_context()

    @contextlib.contextmanager
    def processing(
        self,
        parent: SpanContext | None,
        size: int,
        source: str,
        traceparents: Iterable[str | None],
        started_ns: int,
    ) -> Iterator[Span]:
        """The process span of a batch of ``size`` entries, current while it is handled."""
        distinct = {tp for tp in traceparents if tp}
        links = []
        for value in distinct:
            producer = _remote(value)
            if producer is not None:
                links.append(Link(producer))
            if len(links) >= MAX_LINKS:
                break
        context = None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))
        span = self._tracer.start_span(
            self._process_name,
            context=context,
            kind=SpanKind.CONSUMER,
            links=links,
            start_time=started_ns,
            attributes={
                **self._common,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.batch.message_count": size,
                "fleet.batch.source": source,
                "fleet.batch.producer_contexts": len(distinct),
            },
        )
        with trace.use_span(span, end_on_exit=True, record_exception=True):
            yield span
