"""Tracing, off by default (``docs/tracing.md``).

``FLEET_TRACING=otlp`` turns it on: :func:`configure` builds a tracer provider with the
OTLP/HTTP (protobuf) exporter, configured by the standard ``OTEL_EXPORTER_OTLP_*``
variables and ``OTEL_SERVICE_NAME``, and instruments asyncpg. The SDK is the optional
extra ``streamfleet[tracing]``.

Off, nothing is imported from the SDK and nothing is created: :func:`consumer_spans`
returns None, and the kernel's only cost is one ``is not None`` test per read and per
batch. The one thing that happens either way is the producer's ``traceparent``
(:func:`producing`): the current span's context when tracing is on, else a new root
made from random bytes, so a consumer that traces can link to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from workers.errors import ConfigError
from workers.tracing.context import (
    TraceParent,
    format_traceparent,
    new_traceparent,
    parse_traceparent,
    raw_traceparent,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from workers.settings import Settings
    from workers.tracing.spans import ConsumerSpans, Producer

__all__ = [
    "TraceParent",
    "Tracing",
    "configure",
    "consumer_spans",
    "current_traceparent",
    "format_traceparent",
    "new_traceparent",
    "parse_traceparent",
    "producing",
    "raw_traceparent",
    "shutdown",
    "trace_ids_processor",
    "tracing_for",
]

SUPPORTED_PROTOCOL = "http/protobuf"
DEFAULT_SERVICE_NAME = "streamfleet"


class Tracing:
    """The tracer provider of a process that traces, and what it instrumented."""

    def __init__(self, provider: TracerProvider, instrumented: Any) -> None:
        from workers.tracing.spans import Producer

        self.provider = provider
        self.tracer = provider.get_tracer("streamfleet")
        self.producer: Producer = Producer(self.tracer)
        self._instrumented = instrumented

    def shutdown(self) -> None:
        """Export what is buffered, then stop; asyncpg is uninstrumented."""
        if self._instrumented is not None:
            self._instrumented.uninstrument()
        self.provider.shutdown()


_active: Tracing | None = None


def active() -> Tracing | None:
    """The process's tracing, or None when it is off."""
    return _active


def configure(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    exporter: SpanExporter | None = None,
) -> Tracing | None:
    """Turn tracing on when ``FLEET_TRACING=otlp``; with it off, return None and create
    nothing. ``exporter`` replaces the OTLP exporter (benchmarks, tests)."""
    global _active
    if settings.tracing == "off":
        return None
    if _active is not None:
        return _active
    env = os.environ if environ is None else environ
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    if protocol and protocol != SUPPORTED_PROTOCOL:
        raise ConfigError(
            f"invalid OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: FLEET_TRACING=otlp exports "
            f"{SUPPORTED_PROTOCOL} only"
        )
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"FLEET_TRACING=otlp needs the tracing extra: pip install 'streamfleet[tracing]' "
            f"({exc})"
        ) from None
    service = env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Endpoint, headers, timeout and compression come from OTEL_EXPORTER_OTLP_*.
        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # the instrumentation ships no annotations
    instrumentor.instrument(tracer_provider=provider)
    _active = Tracing(provider, instrumentor)
    return _active


@contextlib.contextmanager
def tracing_for(settings: Settings) -> Iterator[Tracing | None]:
    """Tracing configured for the block (when ``FLEET_TRACING`` asks), then flushed."""
    configured = configure(settings)
    try:
        yield configured
    finally:
        if configured is not None:
            shutdown()


def shutdown() -> None:
    """Flush and stop tracing, if it is on."""
    global _active
    if _active is not None:
        _active.shutdown()
        _active = None


def consumer_spans(
    stream: str, group: str, consumer: str, *, key: str | None = None
) -> ConsumerSpans | None:
    """The spans of one consumer of ``stream`` (reading its partition ``key``, when the
    stream is partitioned), or None with tracing off (the kernel's one test)."""
    if _active is None:
        return None
    from workers.tracing.spans import ConsumerSpans

    return ConsumerSpans(_active.tracer, stream, group, consumer, key=key)


@contextlib.contextmanager
def producing(stream: str) -> Iterator[str]:
    """The ``traceparent`` for events published to ``stream`` in this block: a ``send``
    span's context with tracing on, a new root without."""
    if _active is None:
        yield new_traceparent()
        return
    with _active.producer.sending(stream) as (traceparent, _):
        yield traceparent


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` with tracing on; None otherwise."""
    if _active is None:
        return None
    from workers.tracing.spans import current_traceparent as current

    return current()


def event(name: str, **attributes: str | int) -> None:
    """A span event on the current span; nothing with tracing off."""
    if _active is None:
        return
    from workers.tracing.spans import add_event

    add_event(name, attributes)


def trace_ids_processor() -> Any:
    """The structlog processor that puts ``trace_id`` and ``span_id`` on every line
    written inside a span; None when the SDK is not installed."""
    try:
        from workers.tracing.spans import add_trace_ids
    except ImportError:
        return None
    return add_trace_ids
