"""The shortcuts the runtime takes for throughput give exactly what the plain way gives:
batched histogram observations, hiredis command packing, the all-new inbox fast path,
and the collector set-up of ``fleet run``."""

from __future__ import annotations

import asyncio
import gc
import random
import uuid
from typing import Any

import pytest
import redis.asyncio.connection as aioconnection
import redis.exceptions as redis_exc
from prometheus_client import CollectorRegistry, Histogram

from workers import metrics, streams
from workers.errors import ConfigError
from workers.kernel import inbox, process, triage
from workers.settings import load_settings
from workers.shell import run_event_loop


def _samples(histogram: Histogram) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in histogram.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _histograms() -> tuple[Histogram, Histogram]:
    buckets = (0.1, 0.5, 1, 2.5, 5, 10, 30)
    one_by_one = Histogram("h", "h", ["kind"], buckets=buckets, registry=CollectorRegistry())
    batched = Histogram("h", "h", ["kind"], buckets=buckets, registry=CollectorRegistry())
    return one_by_one, batched


def test_observe_many_counts_like_observing_one_value_at_a_time() -> None:
    rng = random.Random(7)
    one_by_one, batched = _histograms()
    # Bounds themselves (a value equal to a bound belongs to that bucket), zero, values
    # past the last bound (+Inf) and ordinary ones.
    values = [0.0, 0.1, 0.5, 1.0, 30.0, 31.0, 1e9] + [rng.uniform(0, 40) for _ in range(500)]
    for value in values:
        one_by_one.labels("x").observe(value)
    metrics.observe_many(batched.labels("x"), values)
    expected, got = _samples(one_by_one), _samples(batched)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_observe_many_of_nothing_changes_nothing() -> None:
    _, batched = _histograms()
    child = batched.labels("x")
    before = _samples(batched)
    metrics.observe_many(child, [])
    assert _samples(batched) == before


def test_observe_many_falls_back_to_observe_without_bucket_bounds() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    metrics.observe_many(plain, [1.0, 2.0])
    assert plain.seen == [1.0, 2.0]


COMMANDS: list[tuple[Any, ...]] = [
    ("XACK", "notify:delivery", "notify-workers", *[f"{i}-0".encode() for i in range(600)]),
    ("XREADGROUP", "GROUP", "g", "c", "COUNT", 500, "BLOCK", 2000, "STREAMS", "s", ">"),
    ("CONFIG GET", "maxmemory"),  # literal arguments in the command name
    (b"XADD", b"s", b"*", b"data", "é".encode(), "type", 1.5),
    ("SET", "k", memoryview(b"value")),
    ("SET", "k", bytearray(b"value")),
    ("SET", "k", b"x" * 100_000),  # larger than redis-py's chunking cut-off
]


@pytest.fixture
def connections() -> tuple[Any, Any]:
    client = streams.connect(load_settings({}, valkey_url="redis://127.0.0.1:1/0"))
    fast = client.connection_pool.connection_class()
    plain = aioconnection.Connection()
    return fast, plain


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packing_sends_the_same_bytes(
    connections: tuple[Any, Any], command: tuple[Any, ...]
) -> None:
    fast, plain = connections
    assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))


def test_hiredis_packing_refuses_what_redis_py_refuses(connections: tuple[Any, Any]) -> None:
    fast, plain = connections
    for conn in (fast, plain):
        with pytest.raises(redis_exc.DataError):
            conn.pack_command("SET", "k", None)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6379/0", aioconnection.Connection),
        ("rediss://127.0.0.1:6379/0", aioconnection.SSLConnection),
        ("unix:///tmp/valkey.sock", aioconnection.UnixDomainSocketConnection),
    ],
)
def test_connect_keeps_the_connection_kind_the_url_asks_for(url: str, base: type) -> None:
    client = streams.connect(load_settings({}, valkey_url=url))
    kind = client.connection_pool.connection_class
    assert issubclass(kind, base)
    assert kind.pack_command is streams._HiredisPacking.pack_command


def _event(event_id: uuid.UUID) -> Any:
    class Event:
        pass

    event = Event()
    event.event_id = event_id  # type: ignore[attr-defined]
    return event


def test_distinct_events_are_all_kept() -> None:
    events = [_event(uuid.uuid4()) for _ in range(5)]
    assert inbox._first_of_each(events) == events


def test_a_second_copy_in_the_batch_is_dropped() -> None:
    shared = uuid.uuid4()
    first, copy, other = _event(shared), _event(shared), _event(uuid.uuid4())
    assert inbox._first_of_each([first, copy, other]) == [first, other]
    assert inbox._first_of_each([copy, other, first]) == [copy, other]


def test_tune_gc_freezes_start_up_objects_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        process.tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == process.GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def _loop_kind() -> type:
    return type(asyncio.get_running_loop())


def test_fleet_run_uses_uvloop_unless_told_otherwise() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert load_settings({}).event_loop == "uvloop"
    assert issubclass(run_event_loop(_loop_kind(), "uvloop"), uvloop.Loop)
    chosen = load_settings({"FLEET_EVENT_LOOP": "asyncio"}).event_loop
    assert not issubclass(run_event_loop(_loop_kind(), chosen), uvloop.Loop)


def test_an_unknown_event_loop_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="FLEET_EVENT_LOOP"):
        load_settings({"FLEET_EVENT_LOOP": "trio"})


ENTRIES = [
    [b"1-0", [b"type", b"notification.sent", b"data", b"{}"]],
    [b"2-0", None],  # deleted while pending
    [b"3-0", [b"type", b"scan.failed", b"data", b"{}", b"extra", b"x"]],
]


def test_read_replies_are_shaped_like_redis_py_shapes_them() -> None:
    from redis._parsers.helpers import parse_xread_resp3_to_resp2_legacy

    resp3 = {b"notify:delivery": ENTRIES}
    legacy = parse_xread_resp3_to_resp2_legacy(resp3)[0][1]
    expected = [(i, fields or {}) for i, fields in legacy]
    assert triage.shape_reply(resp3) == expected
    assert triage.shape_reply([[b"notify:delivery", ENTRIES]]) == expected


@pytest.mark.parametrize("empty", [None, {}, []])
def test_an_empty_read_is_no_entries(empty: Any) -> None:
    assert triage.shape_reply(empty) == []
