"""W3C ``traceparent`` without the SDK: what producers stamp and consumers link to."""

from __future__ import annotations

import msgspec
import pytest

from contracts import encode_entry
from devkit import workload
from workers.tracing import (
    format_traceparent,
    new_traceparent,
    parse_traceparent,
    raw_traceparent,
)


def test_a_new_root_is_a_valid_sampled_traceparent_each_time_different() -> None:
    first, second = new_traceparent(), new_traceparent()
    assert first != second
    for value in (first, second):
        parsed = parse_traceparent(value)
        assert parsed is not None and parsed.flags == 1
        assert parsed.format() == value


def test_formatting_and_parsing_round_trip() -> None:
    value = format_traceparent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    assert value == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    parsed = parse_traceparent(value)
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    ],
)
def test_a_malformed_traceparent_starts_no_link(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_the_traceparent_is_found_in_an_entry_without_decoding_it() -> None:
    traceparent = new_traceparent()
    (event,) = workload.notification_events(1, seed=3)
    data = encode_entry(msgspec.structs.replace(event, traceparent=traceparent))["data"]
    assert raw_traceparent(data) == traceparent.encode()
    assert raw_traceparent(b'{"type":"x"}') is None
    assert raw_traceparent(None) is None
