"""The export worker: export requests in, signed bundles in S3, outcomes out.

Stream in: ``export:requests`` (``export.requested``), group ``export-workers``. For each
request: build the profile's bundle (:mod:`workers.export.service`), sign its manifest
with ``FLEET_EXPORT_KEY_FILE``, write the files, then ``manifest.dsse.json``, then
``manifest.json`` under ``exports/<profile>/<exportId>/`` in the bucket, and check the
stored manifest's signature. Stream out: ``export:events`` (``export.completed`` or
``export.failed``).

Idempotency: the inbox (``eventId``) and ``export.jobs`` keyed by the request's
``eventId``, written in the batch's transaction with the outcome event; S3 keys are
fixed per request, so a redelivered request rewrites the same objects. The outcome is
published after commit; rows still unpublished (a crash in between) are published by
the background task; the outcome's ``eventId`` is a uuid5 of the request's, so a
repeated outcome is recognisable. A request that can never succeed (unknown option, no
signing key) completes as ``export.failed``; S3 or PostgreSQL trouble leaves the entry
pending for redelivery. See ``docs/exports.md``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Final

import asyncpg
import msgspec
import structlog

from contracts.exports import ExportCompleted, ExportFailed, ExportRequested
from contracts.wire import decode_data, encode_event
from workers import metrics, signing, streams
from workers import s3 as s3io
from workers.db import DbConn
from workers.export import service
from workers.export.bundles import BundleError
from workers.kernel.inbox import Tx
from workers.kernel.stopping import Stopping
from workers.kernel.worker import Resources, Worker
from workers.partitions import consumed_keys
from workers.publishing import PUBLISH_FAILURES, publish

log = structlog.get_logger("workers.export")

EVENTS_STREAM: Final = "export:events"
OUTCOME_NAMESPACE: Final = uuid.UUID("5f0e2d3c-8a4b-4c6d-9e1f-2a3b4c5d6e7f")
"""uuid5 namespace of outcome event ids (over the request's eventId)."""
PREFIX: Final = "exports"

_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    *PUBLISH_FAILURES,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


@dataclass(frozen=True, slots=True)
class Done:
    """One handled request: its outcome and what the metrics observe after commit."""

    outcome: ExportCompleted | ExportFailed
    seconds: float
    size: int | None


def outcome_id(export_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(OUTCOME_NAMESPACE, str(export_id))


def bundle_prefix(profile: str, export_id: uuid.UUID) -> str:
    return f"{PREFIX}/{profile}/{export_id}"


def _failed(request: ExportRequested, reason: str, error: str) -> ExportFailed:
    now = datetime.now(UTC)
    return ExportFailed(
        event_id=outcome_id(request.event_id),
        version=1,
        tenant_id=request.tenant_id,
        occurred_at=now,
        source="export",
        correlation_id=request.correlation_id,
        causation_id=str(request.event_id),
        export_id=request.event_id,
        profile=request.profile,
        reason=reason,
        error=error[:1000],
        failed_at=now,
    )


_INSERT_JOB = """
INSERT INTO export.jobs (
    export_id, tenant_id, profile, options, status, manifest_key, manifest_sha256, key_id,
    file_count, bundle_size, error, outcome, requested_at
) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13)
ON CONFLICT (export_id) DO NOTHING
"""


class ExportWorker(Worker[ExportRequested, list[Done]]):
    name: ClassVar[str] = "export"
    stream: ClassVar[str] = "export:requests"
    uses_s3: ClassVar[bool] = True

    def __init__(self, resources: Resources, *, group: str | None = None) -> None:
        super().__init__(resources, group=group)
        self._log = log.bind(stream=self.stream, group=self.group)

    async def apply(self, tx: Tx, fresh: Sequence[ExportRequested]) -> list[Done]:
        conn = await tx.connection()
        done = []
        for request in fresh:
            started = time.perf_counter()
            outcome, size = await self._export(conn, request)
            await self._record(conn, request, outcome)
            done.append(Done(outcome=outcome, seconds=time.perf_counter() - started, size=size))
        return done

    async def _export(
        self, conn: DbConn, request: ExportRequested
    ) -> tuple[ExportCompleted | ExportFailed, int | None]:
        settings = self.resources.settings
        try:
            options = service.parse_options(request.profile, request.options)
        except BundleError as exc:
            return _failed(request, "invalid_request", str(exc)), None
        try:
            key = service.load_key(settings.export_key_file)
        except signing.SigningError as exc:
            metrics.EXPORT_ATTESTATION_FAILURES.labels("no_key").inc()
            return _failed(request, "signing", str(exc)), None
        bundle = await service.build(conn, options)
        files = service.signed_files(bundle, key)
        prefix = bundle_prefix(request.profile, request.event_id)
        client: Any = self.resources.s3
        bucket = settings.s3_bucket
        manifest_name = service.MANIFEST_NAME
        envelope_name = signing.envelope_path(Path(manifest_name)).name
        # Files first, the manifest last: a manifest in the store means a whole bundle.
        for name in sorted(files, key=lambda n: (n == manifest_name, n == envelope_name, n)):
            try:
                await s3io.put_object(
                    client, bucket, f"{prefix}/{name}", files[name], content_type="application/json"
                )
            except s3io.S3Error:
                if name == manifest_name:
                    metrics.EXPORT_MANIFEST_PUBLISH.labels("error").inc()
                raise
        metrics.EXPORT_MANIFEST_PUBLISH.labels("ok").inc()
        # Read back what readers will get and check its signature with the public key.
        stored = await s3io.get_object(client, bucket, f"{prefix}/{manifest_name}")
        stored_envelope = await s3io.get_object(client, bucket, f"{prefix}/{envelope_name}")
        try:
            _, keyid = signing.verify_manifest(
                stored, stored_envelope, key.public_key(), bundle.files.get
            )
        except signing.VerificationError as exc:
            metrics.EXPORT_ATTESTATION_FAILURES.labels(exc.reason).inc()
            return _failed(request, "signing", f"stored manifest does not verify: {exc}"), None
        now = datetime.now(UTC)
        completed = ExportCompleted(
            event_id=outcome_id(request.event_id),
            version=1,
            tenant_id=request.tenant_id,
            occurred_at=now,
            source="export",
            correlation_id=request.correlation_id,
            causation_id=str(request.event_id),
            export_id=request.event_id,
            profile=request.profile,
            bucket=bucket,
            manifest_key=f"{prefix}/{manifest_name}",
            manifest_sha256=signing.sha256_hex(stored),
            key_id=keyid,
            file_count=len(bundle.files),
            bundle_size_bytes=bundle.size,
            completed_at=now,
        )
        return completed, bundle.size

    async def _record(
        self, conn: DbConn, request: ExportRequested, outcome: ExportCompleted | ExportFailed
    ) -> None:
        done = isinstance(outcome, ExportCompleted)
        await conn.execute(
            _INSERT_JOB,
            request.event_id,
            request.tenant_id,
            request.profile,
            dict(request.options),
            "completed" if done else "failed",
            outcome.manifest_key if isinstance(outcome, ExportCompleted) else None,
            outcome.manifest_sha256 if isinstance(outcome, ExportCompleted) else None,
            outcome.key_id if isinstance(outcome, ExportCompleted) else None,
            outcome.file_count if isinstance(outcome, ExportCompleted) else None,
            outcome.bundle_size_bytes if isinstance(outcome, ExportCompleted) else None,
            outcome.error if isinstance(outcome, ExportFailed) else None,
            msgspec.json.decode(encode_event(outcome)),
            request.occurred_at,
        )

    async def after_commit(self, fresh: Sequence[ExportRequested], result: list[Done]) -> None:
        for item in result:
            profile = item.outcome.profile
            metrics.EXPORT_JOB_DURATION.labels(profile).observe(item.seconds)
            completed = isinstance(item.outcome, ExportCompleted)
            metrics.EXPORTS.labels(profile, "completed" if completed else "failed").inc()
            if item.size is not None:
                metrics.EXPORT_BUNDLE_SIZE.labels(profile).observe(item.size)
            self._log.info(
                "export.finished",
                export_id=str(item.outcome.export_id),
                profile=profile,
                outcome=item.outcome.event_type(),
                seconds=round(item.seconds, 3),
            )
        await self._publish_pending()

    async def background(self, stopping: Stopping) -> None:
        """Publish outcomes a crash left unpublished; refresh the queue depth gauge."""
        settings = self.resources.settings
        while True:
            try:
                await self._publish_pending()
                metrics.EXPORT_QUEUE_DEPTH.set(await self._queue_depth())
            except Exception as exc:  # noqa: BLE001 - one failed pass must not end the loop; the next retries
                self._log.warning("export.maintenance_failed", error=str(exc)[:200])
            if await stopping.sleep(settings.maintenance_interval_seconds):
                return

    async def _queue_depth(self) -> int:
        """Entries of ``export:requests`` the group has not read, plus those pending, over
        every key the workers read (its partitions, docs/scaling.md)."""
        settings = self.resources.settings
        depth = 0
        keys = consumed_keys(
            self.stream, settings.stream_partitions, settings.stream_partitions_previous
        )
        for key in keys:
            for status in await streams.group_statuses(self.resources.redis, key):
                if status.group == self.group:
                    depth += (status.lag or 0) + status.pending
        return depth

    async def _publish_pending(self) -> int:
        """Publish the outcomes of jobs not yet published; returns how many.

        The rows are claimed ``FOR UPDATE SKIP LOCKED`` in one transaction that marks
        them published after the ``XADD``: ``after_commit``, the background task and
        other replicas never publish the same outcome at once (a crash between the
        ``XADD`` and the commit publishes it again, with the same event id). Only the
        outcomes a partition took are marked: when one partition's primary is failing
        over, the others' outcomes are not announced again on the next pass. With
        ``FLEET_PUBLISH_REPLICAS`` each partition's share is marked once a replica
        confirmed it, or once the wait for one ran out (a warning: on the primary, not
        yet on a replica)."""
        pool = self.resources.pool
        assert pool is not None
        settings = self.resources.settings
        failure: BaseException | None = None
        done: list[uuid.UUID] = []
        try:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "SELECT status, outcome::text AS outcome FROM export.jobs "
                    "WHERE published_at IS NULL ORDER BY finished_at LIMIT 500 "
                    "FOR UPDATE SKIP LOCKED"
                )
                if not rows:
                    return 0
                events = [_decode_outcome(r["status"], r["outcome"]) for r in rows]
                try:
                    await publish(
                        self.resources.redis,
                        EVENTS_STREAM,
                        events,
                        partitions=settings.stream_partitions,
                        replicas=settings.publish_replicas,
                        accepted=lambda share: done.extend(_export_ids(share)),
                    )
                except PUBLISH_FAILURES as exc:
                    failure = exc
                await conn.execute(
                    "UPDATE export.jobs SET published_at = now() WHERE export_id = ANY($1::uuid[])",
                    done,
                )
        except _PUBLISH_ERRORS as exc:
            failure = exc
            done = []
        if failure is not None:
            self._log.warning(
                "export.publish_deferred", published=len(done), error=str(failure)[:200]
            )
        return len(done)


def _export_ids(events: Sequence[object]) -> list[uuid.UUID]:
    return [e.export_id for e in events if isinstance(e, ExportCompleted | ExportFailed)]


def _decode_outcome(status: str, text: str) -> ExportCompleted | ExportFailed:
    cls: type[ExportCompleted | ExportFailed] = (
        ExportCompleted if status == "completed" else ExportFailed
    )
    return decode_data(cls, text.encode())
