"""Event contracts: wire format, evolution rules and the committed schema files."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import DecodeError, decode_event, encode_entry, export
from contracts.notify import NotificationSent
from contracts.registry import STREAMS, contract_for_stream
from contracts.wire import decode_data
from devkit import workload


def _sent() -> NotificationSent:
    event = next(workload.notification_events(1, seed=1, failure_rate=0.0))
    assert isinstance(event, NotificationSent)
    return event


def test_entry_has_type_and_flat_camel_case_data() -> None:
    fields = encode_entry(_sent())
    assert set(fields) == {"type", "data"}
    assert fields["type"] == b"notification.sent"
    data = json.loads(fields["data"])
    assert data["type"] == "notification.sent"
    for key in ("eventId", "tenantId", "occurredAt", "deliveryId", "channelType", "version"):
        assert key in data
    assert not any("_" in key for key in data)


def test_round_trip_is_lossless() -> None:
    event = _sent()
    assert decode_event(encode_entry(event)) == event


def test_unknown_extra_fields_are_accepted() -> None:
    data = json.loads(encode_entry(_sent())["data"])
    data["addedInAFutureRelease"] = {"x": 1}
    event = decode_data(NotificationSent, json.dumps(data).encode())
    assert event.delivery_id == _sent().delivery_id


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("deliveryId"), "invalid_event"),
        (lambda d: d.update(attempt="two"), "invalid_event"),
        (lambda d: d.update(channelType="pager"), "invalid_event"),
        (lambda d: d.update(version=2), "unsupported_version"),
        (lambda d: d.update(occurredAt="2026-01-01T00:00:00"), "invalid_event"),  # no zone
        (lambda d: d.update(eventId="not-a-uuid"), "invalid_event"),
        # The constraints the schema enforces travel in the contract:
        (lambda d: d.update(attempt=0), "invalid_event"),  # CHECK (attempt >= 1)
        (lambda d: d.update(attempt=-3), "invalid_event"),
        (lambda d: d.update(attempt=2**31), "invalid_event"),  # INTEGER
        (lambda d: d.update(latencyMs=2**31), "invalid_event"),
    ],
)
def test_bad_events_fail_with_a_reason(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(encode_entry(_sent())["data"])
    mutate(data)
    with pytest.raises(DecodeError) as info:
        decode_data(NotificationSent, json.dumps(data).encode())
    assert info.value.reason == reason


def test_decode_event_rejects_entries_without_type_or_data() -> None:
    with pytest.raises(DecodeError, match="missing_type"):
        decode_event({b"data": b"{}"})
    with pytest.raises(DecodeError, match="missing_data"):
        decode_event({b"type": b"notification.sent"})
    with pytest.raises(DecodeError, match="unknown_type"):
        decode_event({b"type": b"nope", b"data": b"{}"})


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    for contract in STREAMS.values():
        for cls in contract.event_types:
            with contextlib.suppress(DecodeError):
                decode_data(cls, data)


def test_every_stream_of_the_spec_is_registered() -> None:
    assert contract_for_stream("scanner:events").default_group == "scan-metrics"
    assert contract_for_stream("concelier:drift").default_group == "vex-consensus"
    assert contract_for_stream("notify:delivery").default_group == "notify-workers"
    assert contract_for_stream("notify:delivery").reclaim_idle_seconds == 30
    assert {c.event_type() for c in contract_for_stream("scanner:events").event_types} == {
        "scan.submitted",
        "scan.completed",
        "scan.failed",
    }


def test_committed_schema_files_match_the_code() -> None:
    stale = export.drift()
    assert not stale, f"run `fleet contracts export`; stale: {stale}"


def test_generated_events_validate_against_the_published_schema() -> None:
    schema = json.loads((export.SCHEMA_DIR / "notification-sent.schema.json").read_text())
    for event in workload.notification_events(20, seed=3, failure_rate=0.0):
        jsonschema.validate(json.loads(encode_entry(event)["data"]), schema)
    bad = json.loads(encode_entry(_sent())["data"])
    bad.pop("deliveryId")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_asyncapi_document_names_every_stream_and_group() -> None:
    doc = json.loads((export.SCHEMA_DIR / export.ASYNCAPI_FILE).read_text())
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"]: c for c in doc["channels"].values()}
    assert set(addresses) >= {"scanner:events", "concelier:drift", "notify:delivery"}
    assert addresses["notify:delivery"]["x-consumer-group"] == "notify-workers"


def test_event_ids_are_uuids_and_times_are_utc() -> None:
    event = _sent()
    assert isinstance(event.event_id, uuid.UUID)
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.utcoffset() == datetime(2026, 1, 1, tzinfo=UTC).utcoffset()
