"""The fleet CLI against real Valkey: publish, status, dlq, trim, consumers."""

from __future__ import annotations

import json
from typing import Any

from contracts import encode_entry
from devkit import workload
from tests.helpers import fleet_cli
from workers import streams

STREAM = "notify:delivery"


def _lines(n: int, seed: int = 41) -> list[bytes]:
    return [encode_entry(e)["data"] for e in workload.notification_events(n, seed=seed)]


async def test_publish_validates_every_line_and_publishes_all_or_nothing(
    real_redis: Any, valkey_url: str, tmp_path: Any
) -> None:
    good = _lines(5)
    broken = json.loads(good[1])
    broken.pop("channelId")
    payload = b"\n".join(
        [good[0], json.dumps(broken).encode(), b"{oops", good[2], b'{"type":"scan.submitted"}']
    )
    path = tmp_path / "events.jsonl"
    path.write_bytes(payload)
    env = {"FLEET_VALKEY_URL": valkey_url}
    result = fleet_cli(env, "publish", STREAM, str(path))
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert "line 2:" in stderr and "line 3:" in stderr and "line 5:" in stderr
    assert "line 1:" not in stderr and "line 4:" not in stderr
    assert "nothing was published" in stderr
    assert await real_redis.xlen(STREAM) == 0

    ok = fleet_cli(env, "publish", STREAM, "-", stdin=b"\n".join(good) + b"\n")
    assert ok.returncode == 0, ok.stderr.decode()
    assert await real_redis.xlen(STREAM) == 5
    entries = await real_redis.xrange(STREAM)
    assert [e[1][b"type"] for e in entries] == [b"notification.sent"] * 5 or all(
        e[1][b"type"].startswith(b"notification.") for e in entries
    )


async def test_status_reports_groups_and_dead_letters(real_redis: Any, valkey_url: str) -> None:
    await streams.ensure_group(real_redis, STREAM, "notify-workers")
    for line in _lines(3):
        await real_redis.xadd(STREAM, {"type": b"notification.sent", "data": line})
    await real_redis.xreadgroup("notify-workers", "c1", {STREAM: ">"}, count=2)
    await real_redis.xadd(f"{STREAM}:dlq", {"type": b"x", "dlq.reason": b"invalid_event"})
    result = fleet_cli({"FLEET_VALKEY_URL": valkey_url}, "status", "--stream", STREAM, "--json")
    assert result.returncode == 0, result.stderr.decode()
    (row,) = json.loads(result.stdout)
    assert row["group"] == "notify-workers"
    assert (row["length"], row["pending"], row["lag"], row["consumers"], row["dlq_length"]) == (
        3,
        2,
        1,
        1,
        1,
    )


async def test_dlq_list_replay_and_purge(real_redis: Any, valkey_url: str) -> None:
    env = {"FLEET_VALKEY_URL": valkey_url}
    for i, reason in enumerate(["invalid_event", "max_deliveries", "invalid_event"]):
        await real_redis.xadd(
            f"{STREAM}:dlq",
            {"type": b"notification.sent", "data": b'{"n":%d}' % i, "dlq.reason": reason},
        )
    listed = fleet_cli(env, "dlq", "list", STREAM)
    assert listed.returncode == 0 and listed.stdout.decode().count("invalid_event") == 2
    replay = fleet_cli(env, "dlq", "replay", STREAM, "--reason", "max_deliveries")
    assert replay.returncode == 0, replay.stderr.decode()
    back = await real_redis.xrange(STREAM)
    assert [dict(f) for _, f in back] == [{b"type": b"notification.sent", b"data": b'{"n":1}'}]
    assert await real_redis.xlen(f"{STREAM}:dlq") == 2
    refused = fleet_cli(env, "dlq", "purge", STREAM)
    assert refused.returncode == 2 and "--yes" in refused.stderr.decode()
    assert fleet_cli(env, "dlq", "purge", STREAM, "--yes").returncode == 0
    assert await real_redis.xlen(f"{STREAM}:dlq") == 0


async def test_trim_dry_run_changes_nothing_and_trim_respects_groups(
    real_redis: Any, valkey_url: str
) -> None:
    env = {"FLEET_VALKEY_URL": valkey_url}
    await streams.ensure_group(real_redis, STREAM, "notify-workers")
    for line in _lines(10):
        await real_redis.xadd(STREAM, {"type": b"notification.sent", "data": line})
    read = await real_redis.xreadgroup("notify-workers", "c1", {STREAM: ">"}, count=6)
    await real_redis.xack(STREAM, "notify-workers", *[eid for eid, _ in read[0][1][:4]])
    dry = fleet_cli(env, "trim", "--stream", STREAM, "--retention-days", "0", "--dry-run")
    assert dry.returncode == 0 and "would remove 4 of 10" in dry.stdout.decode()
    assert await real_redis.xlen(STREAM) == 10
    done = fleet_cli(env, "trim", "--stream", STREAM, "--retention-days", "0")
    assert done.returncode == 0 and "removed 4 of 10" in done.stdout.decode()
    assert await real_redis.xlen(STREAM) == 6


async def test_consumers_prune_moves_work_to_a_live_consumer(
    real_redis: Any, valkey_url: str
) -> None:
    await streams.ensure_group(real_redis, STREAM, "notify-workers")
    for line in _lines(4):
        await real_redis.xadd(STREAM, {"type": b"notification.sent", "data": line})
    await real_redis.xreadgroup("notify-workers", "dead", {STREAM: ">"}, count=4)
    await real_redis.xgroup_createconsumer(STREAM, "notify-workers", "alive")
    result = fleet_cli(
        {"FLEET_VALKEY_URL": valkey_url}, "consumers", "prune", "--stream", STREAM, "--idle", "0"
    )
    assert result.returncode == 0, result.stderr.decode()
    pending = await real_redis.xpending_range(STREAM, "notify-workers", "-", "+", 10)
    assert len(pending) == 4
    names = {c["name"] for c in await real_redis.xinfo_consumers(STREAM, "notify-workers")}
    assert b"dead" not in names


async def test_dlq_replay_by_reason_finds_matches_past_the_first_page(
    real_redis: Any, valkey_url: str
) -> None:
    for i in range(1200):
        reason = b"max_deliveries" if i >= 1100 else b"invalid_event"
        await real_redis.xadd(
            f"{STREAM}:dlq", {"type": b"notification.sent", "data": b"%d" % i, "dlq.reason": reason}
        )
    env = {"FLEET_VALKEY_URL": valkey_url}
    result = fleet_cli(env, "dlq", "replay", STREAM, "--reason", "max_deliveries")
    assert result.returncode == 0, result.stderr.decode()
    assert await real_redis.xlen(STREAM) == 100
    assert await real_redis.xlen(f"{STREAM}:dlq") == 1100
    listed = fleet_cli(env, "dlq", "list", STREAM, "--reason", "invalid_event", "--count", "5")
    assert listed.stdout.decode().count("invalid_event") == 5


async def test_top_once_prints_one_frame_with_rates(real_redis: Any, valkey_url: str) -> None:
    await streams.ensure_group(real_redis, "notify:delivery", "notify-workers")
    for _ in range(5):
        await real_redis.xadd("notify:delivery", {"type": b"x", "data": b"{}"})
    await real_redis.xreadgroup("notify-workers", "c1", {"notify:delivery": ">"}, count=2)
    result = fleet_cli(
        {"FLEET_VALKEY_URL": valkey_url, "COLUMNS": "200"},
        "top", "--once", "--interval", "0.2", "--stream", "notify:delivery",
    )  # fmt: skip
    text = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "fleet top" in text and "in/s" in text and "out/s" in text
    row = next(line for line in text.splitlines() if "notify-workers" in line)
    assert "notify:delivery" in row and " 3 " in row  # lag: five added, two read
