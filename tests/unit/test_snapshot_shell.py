"""The snapshot worker's shell without servers: S3 retry classification, the API's request
and token checks, CLI argument parsing, settings-derived policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import typer
from aiohttp.test_utils import make_mocked_request
from botocore.exceptions import ClientError, EndpointConnectionError

from workers import s3 as s3io
from workers.errors import ConfigError
from workers.settings import load_settings
from workers.snapshot_retention.api import SnapshotApi
from workers.snapshot_retention.api_shapes import RollbackRequest
from workers.snapshot_retention.base import freshness_policy
from workers.snapshot_retention.cli_common import instant_arg
from workers.snapshot_retention.service import Snapshots


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("Whatever", 502), True),
        (client_error("NoSuchKey", 404), False),
        (client_error("AccessDenied", 403), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (TimeoutError(), True),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_s3_errors_are_retried(exc: BaseException, transient: bool) -> None:
    assert s3io.is_transient(exc) is transient


async def test_a_transient_failure_is_retried_until_the_call_succeeds() -> None:
    calls = 0

    async def flaky() -> bytes:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise client_error("SlowDown", 503)
        return b"ok"

    assert await s3io._call("get", "k", flaky) == b"ok"
    assert calls == 3


async def test_persistent_transient_failures_give_up_after_the_attempt_budget() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(s3io.S3Error, match=f"after {s3io.ATTEMPTS} attempts"):
        await s3io._call("put", "k", down)
    assert calls == s3io.ATTEMPTS


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [("NoSuchKey", 404, s3io.ObjectNotFound), ("AccessDenied", 403, s3io.S3Error)],
)
async def test_permanent_failures_are_not_retried(
    code: str, status: int, error: type[Exception]
) -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise client_error(code, status)

    with pytest.raises(error):
        await s3io._call("get", "k", refused)
    assert calls == 1


def test_rollback_request_takes_the_seed_fields_and_refuses_unknown_ones() -> None:
    decoder = msgspec.json.Decoder(RollbackRequest)
    body = decoder.decode(b'{"reason": "Data corruption detected", "dryRun": true}')
    assert body == RollbackRequest(reason="Data corruption detected", dryRun=True)
    assert decoder.decode(b'{"reason": "x"}').dryRun is False
    # a misspelt dryRun must not turn a dry run into a real rollback
    with pytest.raises(msgspec.ValidationError, match="dry_run"):
        decoder.decode(b'{"reason": "x", "dry_run": true}')
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(b'{"reason": "x", "trigger": "import_failure"}')


@pytest.mark.parametrize(
    ("configured", "header", "allowed"),
    [
        ("s3cret", "Bearer s3cret", True),
        ("s3cret", "bearer s3cret", True),
        ("s3cret", "Bearer wrong", False),
        ("s3cret", "Basic s3cret", False),
        ("s3cret", None, False),
        (None, "Bearer s3cret", False),
        ("", "Bearer ", False),
    ],
)
def test_rollback_needs_the_configured_bearer_token(
    configured: str | None, header: str | None, allowed: bool
) -> None:
    api = SnapshotApi(snapshots=None, token=configured)  # type: ignore[arg-type]  # not reached
    headers = {} if header is None else {"Authorization": header}
    request = make_mocked_request("POST", "/api/v1/ingest/snapshots/x/rollback", headers=headers)
    refused = api._unauthorized(request)
    if allowed:
        assert refused is None
    else:
        assert refused is not None and refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_now_option_takes_rfc3339_with_an_offset_only() -> None:
    assert instant_arg("2025-12-04T00:00:00Z") == datetime(2025, 12, 4, tzinfo=UTC)
    assert instant_arg("2025-12-04T02:00:00+02:00") == datetime(2025, 12, 4, tzinfo=UTC)
    assert instant_arg(None) is None
    for bad in ("2025-12-04T00:00:00", "yesterday"):
        with pytest.raises(typer.Exit) as exited:
            instant_arg(bad)
        assert exited.value.exit_code == 2


def test_freshness_thresholds_come_from_settings_for_every_tool() -> None:
    settings = load_settings(
        {
            "FLEET_SNAPSHOT_MAX_AGE_DAYS": "1",
            "FLEET_SNAPSHOT_STALE_DAYS": "2",
            "FLEET_SNAPSHOT_CRITICAL_DAYS": "3.5",
        }
    )
    policy = freshness_policy(settings)
    limits = policy.for_tool("my-custom-feed")
    assert (limits.max_age, limits.stale_warning, limits.critical) == (
        timedelta(days=1),
        timedelta(days=2),
        timedelta(days=3, hours=12),
    )


def test_an_invalid_retention_schedule_is_a_config_error() -> None:
    settings = load_settings({"FLEET_RETENTION_SCHEDULE": "every night"})
    with pytest.raises(ConfigError, match="FLEET_RETENTION_SCHEDULE"):
        Snapshots(settings, pool=None, s3=None)  # type: ignore[arg-type]  # never used
