"""S3 access: one client per process, the bucket created on first use, small typed helpers.

``open_s3`` is the only place that builds a client: endpoint and region come from
:class:`~workers.settings.Settings`, credentials from the standard AWS variables (or any
other source botocore's default chain knows). The helpers each wrap one S3 call in a short
tenacity retry on transient failures (connection loss, timeouts, throttling, 5xx); anything
else, such as a missing key or access denied, is raised at once. botocore's own retries are
switched off so that exactly one layer decides how often to try.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import aioboto3
import aiohttp
import structlog
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from workers.errors import FleetError, Unavailable
from workers.settings import Settings, redact_url

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

log = structlog.get_logger("workers.s3")

T = TypeVar("T")

ATTEMPTS: Final = 4
"""Tries per S3 call (the first plus three retries, about two seconds in all)."""

_TRANSIENT_CODES: Final = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "500",
        "502",
        "503",
        "504",
    }
)
_MISSING_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Error(FleetError):
    """An S3 call failed for good (after retries, or not worth retrying)."""


class S3Unavailable(S3Error, Unavailable):
    """The store stayed unreachable (or kept answering 5xx) through every try: a batch
    that needs it waits, as for a PostgreSQL outage."""


class ObjectNotFound(S3Error):
    """The key does not exist in the bucket."""


class ObjectInfo:
    """What ``head_object`` tells about a stored object."""

    __slots__ = ("etag", "key", "size")

    def __init__(self, key: str, size: int, etag: str) -> None:
        self.key = key
        self.size = size
        self.etag = etag

    def __repr__(self) -> str:
        return f"ObjectInfo(key={self.key!r}, size={self.size}, etag={self.etag!r})"


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the network or the store had a bad moment."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return _error_code(exc) in _TRANSIENT_CODES or int(status) >= 500
    return isinstance(
        exc,
        (
            EndpointConnectionError,
            ConnectionClosedError,
            ConnectTimeoutError,
            ReadTimeoutError,
            aiohttp.ClientConnectionError,
            asyncio.TimeoutError,
            ConnectionError,
        ),
    )


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and _error_code(exc) in _MISSING_CODES


async def _call(what: str, key: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run one S3 call with retries on transient errors; wrap failures in :class:`S3Error`."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential_jitter(multiplier=0.1, max=1.0, jitter=0.1),
        reraise=True,
    )
    try:
        async for try_ in retrying:
            with try_:
                return await attempt()
    except ClientError as exc:
        if _is_missing(exc):
            raise ObjectNotFound(f"S3 object {key} does not exist") from None
        error = S3Unavailable if is_transient(exc) else S3Error
        raise error(f"S3 {what} {key} failed: {_error_code(exc)}: {exc}") from None
    except BotoCoreError as exc:
        # Credentials, configuration or (after the retries) connection problems.
        if is_transient(exc):
            tries = f"after {ATTEMPTS} attempts"
            raise S3Unavailable(f"S3 {what} {key} failed {tries}: {exc}") from None
        raise S3Error(f"S3 {what} {key} failed: {exc}") from None
    except Exception as exc:
        if is_transient(exc):
            raise S3Unavailable(
                f"S3 {what} {key} failed after {ATTEMPTS} attempts: {type(exc).__name__}: {exc}"
            ) from None
        raise
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


async def put_object(
    client: S3Client,
    bucket: str,
    key: str,
    data: bytes,
    *,
    content_type: str = "application/octet-stream",
    metadata: dict[str, str] | None = None,
) -> None:
    """Store ``data`` under ``key`` (overwriting: callers use content-addressed keys)."""

    async def attempt() -> None:
        await client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            Metadata=metadata or {},
        )

    await _call("put", key, attempt)


async def get_object(client: S3Client, bucket: str, key: str) -> bytes:
    """The object's bytes; :class:`ObjectNotFound` when the key is absent."""

    async def attempt() -> bytes:
        response = await client.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as body:
            return bytes(await body.read())

    return await _call("get", key, attempt)


async def head_object(client: S3Client, bucket: str, key: str) -> ObjectInfo | None:
    """Size and ETag of the object, or None when the key is absent."""

    async def attempt() -> ObjectInfo:
        response = await client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(
            key=key, size=int(response["ContentLength"]), etag=str(response.get("ETag", ""))
        )

    try:
        return await _call("head", key, attempt)
    except ObjectNotFound:
        return None


async def delete_object(client: S3Client, bucket: str, key: str) -> None:
    """Remove the object; removing an absent key is not an error (S3 semantics)."""

    async def attempt() -> None:
        await client.delete_object(Bucket=bucket, Key=key)

    await _call("delete", key, attempt)


async def ensure_bucket(client: S3Client, bucket: str, region: str) -> None:
    """Create ``bucket`` unless it exists (or is being created concurrently by us)."""

    async def exists() -> bool:
        try:
            await client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _error_code(exc) in {"404", "NoSuchBucket", "NotFound"}:
                return False
            raise
        return True

    if await _call("head bucket", bucket, exists):
        return

    async def create() -> None:
        try:
            if region == "us-east-1":
                await client.create_bucket(Bucket=bucket)
            else:
                await client.create_bucket(
                    Bucket=bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]  # any region name is valid here
                )
        except ClientError as exc:
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    await _call("create bucket", bucket, create)
    log.info("s3.bucket_created", bucket=bucket, region=region)


@contextlib.asynccontextmanager
async def open_s3(settings: Settings) -> AsyncIterator[S3Client]:
    """An S3 client for ``settings.s3_endpoint_url`` (None: AWS itself) with the bucket
    ensured; closed on exit. Raises :class:`S3Error` when the store cannot be reached."""
    session = aioboto3.Session()
    config = AioConfig(
        connect_timeout=5,
        read_timeout=30,
        retries={"total_max_attempts": 1, "mode": "standard"},
        # MinIO, RustFS and moto behind a custom endpoint serve buckets by path, not by
        # virtual host name; AWS itself picks the style.
        s3={"addressing_style": "auto" if settings.s3_endpoint_url is None else "path"},
    )
    async with session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=config,
    ) as client:
        try:
            await ensure_bucket(client, settings.s3_bucket, settings.s3_region)
        except S3Error as exc:
            endpoint = redact_url(settings.s3_endpoint_url or "AWS S3")
            raise S3Error(f"S3 at {endpoint} is not usable: {exc}") from None
        yield client
