"""Tracing end to end (docs/tracing.md): ``fleet publish`` and ``fleet run`` with
``FLEET_TRACING=otlp`` export to a real OTLP/HTTP receiver started here, which decodes
the protobuf requests. One trace joins the producer's ``send`` span, the consumer's
``receive`` and ``process`` spans (messaging attributes, a link to the producer) and the
PostgreSQL spans of the batch's transaction; log lines of the batch carry its ids. With
tracing off, no tracer provider, exporter or instrumentation exists."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from contracts import encode_entry
from devkit import workload
from devkit.embedded import free_port
from tests.helpers import fleet_cli, fleet_process, poll, process_log

trace_service_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="opentelemetry-proto (the tracing extra) is not installed",
)
pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")

STREAM = "notify:delivery"
GROUP = "notify-workers"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    events: list[str]
    service: str


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0

    async def traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.requests += 1
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=[(ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links],
                            events=[e.name for e in s.events],
                            service=str(resource.get("service.name")),
                        )
                    )
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", got.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield got, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_one_trace_joins_the_producer_the_read_the_batch_and_its_statements(
    real_redis: Any, valkey_url: str, database_url: str
) -> None:
    events = list(workload.notification_events(5, seed=7))
    lines = b"\n".join(encode_entry(e)["data"] for e in events) + b"\n"
    async with receiver() as (got, endpoint):
        env = {
            "FLEET_VALKEY_URL": valkey_url,
            "FLEET_DATABASE_URL": database_url,
            "FLEET_TRACING": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "FLEET_HTTP_PORT": "0",
            "FLEET_BLOCK_MS": "100",
            "FLEET_LOG_FORMAT": "json",
        }
        fleet = fleet_process({**env, "OTEL_SERVICE_NAME": "notify-test"}, "run", "notify-delivery")
        try:
            # Published once the group exists, so the events arrive in one read.
            async def group_exists() -> bool:
                return await real_redis.exists(STREAM) and bool(
                    await real_redis.xinfo_groups(STREAM)
                )

            await poll(group_exists, what="the worker's group")
            published = await asyncio.to_thread(
                fleet_cli, {**env, "OTEL_SERVICE_NAME": "publisher"}, "publish", STREAM, "-",
                stdin=lines,
            )  # fmt: skip
            assert published.returncode == 0, published.stderr.decode()

            def joined() -> tuple[Span, Span, Span, list[Span]] | None:
                for send in got.named(f"send {STREAM}"):
                    receives = [
                        s for s in got.named(f"receive {STREAM}") if s.parent == send.span_id
                    ]
                    for receive in receives:
                        processes = [
                            s for s in got.named(f"process {STREAM}") if s.parent == receive.span_id
                        ]
                        for process in processes:
                            sql = [s for s in got.spans if s.parent == process.span_id]
                            if sql:
                                return send, receive, process, sql
                return None

            async def trace_arrived() -> bool:
                return joined() is not None

            await poll(trace_arrived, what="one trace from producer to PostgreSQL")
        finally:
            fleet.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(fleet.wait, 30)
        log = process_log(fleet)
    assert code == 0, log[-3000:]
    found = joined()
    assert found is not None
    send, receive, process, sql = found
    assert send.service == "publisher" and process.service == "notify-test"
    assert {send.trace_id, receive.trace_id, process.trace_id} | {s.trace_id for s in sql} == {
        send.trace_id
    }
    # The producer's context travels in the envelope.
    entries = await real_redis.xrange(STREAM)
    stamped = {json.loads(f[b"data"])["traceparent"][:52] for _, f in entries}
    assert stamped == {f"00-{send.trace_id}-{send.span_id}"}
    assert send.attributes["messaging.destination.name"] == STREAM
    for span, operation in ((receive, "receive"), (process, "process")):
        attrs = span.attributes
        assert attrs["messaging.system"] == "valkey"
        assert attrs["messaging.operation.type"] == operation
        assert attrs["messaging.destination.name"] == STREAM
        assert attrs["messaging.consumer.group.name"] == GROUP
        assert 1 <= attrs["messaging.batch.message_count"] <= len(events)
    # The pipelined XADDs may land across two reads; every entry was received in one.
    received = [s for s in got.named(f"receive {STREAM}") if s.trace_id == send.trace_id]
    assert sum(s.attributes["messaging.batch.message_count"] for s in received) == len(events)
    assert (send.trace_id, send.span_id) in process.links
    assert all(
        s.attributes.get("db.system", s.attributes.get("db.system.name")) == "postgresql"
        for s in sql
    )
    # The batch's log line carries the ids of its process span.
    handled = [
        json.loads(line)
        for line in log.splitlines()
        if line.startswith("{") and '"batch.handled"' in line
    ]
    assert any(
        h.get("trace_id") == process.trace_id and h.get("span_id") == process.span_id
        for h in handled
    ), handled


def test_with_tracing_off_no_provider_exporter_or_instrumentation_exists() -> None:
    # redis-py imports the OpenTelemetry API (and metrics SDK) by itself when installed;
    # what tracing would add (the trace SDK, an exporter, instrumentations) never loads.
    probe = (
        "import sys\n"
        "from workers.settings import load_settings\n"
        "from workers import tracing\n"
        "import workers.cli, workers.app, workers.publishing\n"
        "assert tracing.configure(load_settings({})) is None\n"
        "assert tracing.active() is None\n"
        "assert tracing.consumer_spans('s', 'g', 'c') is None\n"
        "with tracing.producing('s') as tp:\n"
        "    assert tracing.parse_traceparent(tp) is not None\n"
        "from opentelemetry import trace\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "ours = ('opentelemetry.sdk.trace', 'opentelemetry.exporter', "
        "'opentelemetry.instrumentation')\n"
        "print(sorted(m for m in sys.modules if m.startswith(ours)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "[]"


def test_an_unsupported_otlp_protocol_is_one_line_naming_the_variable(valkey_url: str) -> None:
    result = fleet_cli(
        {
            "FLEET_VALKEY_URL": valkey_url,
            "FLEET_TRACING": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
        "publish",
        STREAM,
        "-",
        stdin=b"",
    )
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in stderr and "Traceback" not in stderr


async def test_vex_consensus_events_continue_the_trace_of_their_batch(
    real_redis: Any, db: Any, settings_for: Any
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from contracts.vex import ConsensusUpdated
    from contracts.wire import decode_data
    from tests.helpers import resources, running
    from tests.integration import test_vex_worker as vex
    from workers import tracing
    from workers.vex_consensus import VexConsensusWorker

    exporter = InMemorySpanExporter()
    configured = tracing.configure(settings_for(tracing="otlp"), exporter=exporter)
    assert configured is not None
    try:
        await vex.seed(db)
        worker = VexConsensusWorker(resources(settings_for(), real_redis, db))
        trigger = vex.advisory([vex.A, vex.B])
        async with running(worker):
            await vex.publish_advisory(real_redis, trigger)
            await poll(lambda: vex.handled(real_redis, db, 1), what="the advisory handled")
        configured.provider.force_flush()
        spans = exporter.get_finished_spans()
        (process,) = [s for s in spans if s.name == "process concelier:drift"]
        context = process.get_span_context()
        out = [
            decode_data(ConsensusUpdated, fields[b"data"])
            for _, fields in await real_redis.xrange("vex:consensus")
        ]
        assert out
        for event in out:
            parsed = tracing.parse_traceparent(event.traceparent)
            assert parsed is not None
            assert (parsed.trace_id, parsed.span_id) == (context.trace_id, context.span_id)
            assert event.correlation_id == trigger.correlation_id
            assert event.causation_id == str(trigger.event_id)
        # The batch's statements and the outbox's send are children of its process span.
        children = [s for s in spans if s.parent == context]
        assert any((s.attributes or {}).get("db.system") == "postgresql" for s in children)
        assert "send vex:consensus" in {s.name for s in children}
    finally:
        tracing.shutdown()
