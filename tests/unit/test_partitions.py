"""Partitioned stream keys and the documented partition function (docs/scaling.md)."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.partitions import (
    consumed_keys,
    dlq_key,
    draining_keys,
    key_for,
    logical_stream,
    partition_index,
    partition_of,
    stream_keys,
)


def test_one_partition_keeps_todays_key_names() -> None:
    assert stream_keys("notify:delivery", 1) == ["notify:delivery"]
    assert key_for("notify:delivery", "any-tenant", 1) == "notify:delivery"
    assert dlq_key("notify:delivery") == "notify:delivery:dlq"


def test_several_partitions_are_hash_tagged_keys_with_their_dead_letters_beside() -> None:
    keys = stream_keys("notify:delivery", 3)
    assert keys == ["{notify:delivery:0}", "{notify:delivery:1}", "{notify:delivery:2}"]
    assert dlq_key(keys[0]) == "{notify:delivery:0}:dlq"
    assert [logical_stream(k) for k in keys] == ["notify:delivery"] * 3
    assert [partition_index(k) for k in keys] == [0, 1, 2]
    assert logical_stream("notify:delivery") == "notify:delivery"
    assert partition_index("notify:delivery") is None


def test_the_partition_is_crc32_ieee_of_the_utf8_key_mod_p() -> None:
    # Known CRC-32 (IEEE) check value: crc32("123456789") == 0xCBF43926, as every
    # conforming implementation in other languages computes it.
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert partition_of("123456789", 7) == 0xCBF43926 % 7
    tenant = "a0000000-0000-4000-8000-000000000001"
    assert partition_of(tenant, 3) == zlib.crc32(tenant.encode()) % 3
    assert key_for("notify:delivery", tenant, 3) == f"{{notify:delivery:{partition_of(tenant, 3)}}}"


@given(st.text(), st.integers(min_value=1, max_value=1024))
def test_a_partition_key_always_lands_in_range_and_in_the_same_place(key: str, p: int) -> None:
    chosen = partition_of(key, p)
    assert 0 <= chosen < p
    assert partition_of(key, p) == chosen


def test_zero_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        stream_keys("s", 0)


def test_draining_keys_are_the_previous_layouts_keys_the_new_one_lacks() -> None:
    # Raising from 1: the unpartitioned key drains; from 2 to 3 nothing does.
    assert draining_keys("s", 3, 1) == ["s"]
    assert draining_keys("s", 3, 2) == []
    assert draining_keys("s", 3, None) == draining_keys("s", 3, 3) == []
    # Lowering: the partitions beyond the new count drain, and so do all when going to 1.
    assert draining_keys("s", 2, 4) == ["{s:2}", "{s:3}"]
    assert draining_keys("s", 1, 2) == ["{s:0}", "{s:1}"]
    assert consumed_keys("s", 2, 1) == ["{s:0}", "{s:1}", "s"]
    assert consumed_keys("s", 1) == ["s"]
