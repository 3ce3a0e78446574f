"""Handling a batch: triage, apply and commit with bounded retries, isolate failures,
run ``after_commit``, then settle (dead letters, acknowledgements, counts).

Failures of a commit, by what they say about trying again (:func:`workers.db.classify`):

- an outage (PostgreSQL refused, lost, shutting down) is waited out for as long as it
  takes, the claims kept fresh: losing the database dead-letters nothing;
- contention (serialization failure, deadlock, lock or statement timeout) retries with
  exponential backoff and jitter within a budget (default half the group's reclaim idle
  time);
- anything else, or contention past the budget, isolates the batch: each entry is
  committed alone, within a second budget. An entry that still fails is dead-lettered
  at once when retrying cannot help (:class:`~workers.errors.Permanent`; a database
  data exception or constraint violation: ``rejected_by_database``), dead-lettered as
  ``max_deliveries`` on its last delivery, and otherwise released: no longer kept
  fresh, it is redelivered once idle, with a higher delivery count.

``after_commit`` runs once the transaction committed, outside any retry: a failure
there is logged and counted (``fleet_after_commit_failures_total``), and the batch is
never applied again.

With tracing on, a batch is handled inside its ``process`` span (``docs/tracing.md``):
its PostgreSQL statements are child spans, retries, isolation, releases and dead
letters are span events. With tracing off, ``spans`` is None and nothing else happens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from workers import metrics, tracing
from workers.db import Failure, classify, sqlstate_of
from workers.errors import Permanent, error_text
from workers.kernel.inbox import Inbox, apply_new
from workers.kernel.settle import Settler
from workers.kernel.stopping import Stopping
from workers.kernel.triage import Item, Triage, Triaged
from workers.kernel.worker import Worker

if TYPE_CHECKING:
    from workers.tracing.spans import ConsumerSpans


@dataclass(slots=True)
class Batch:
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    # Delivery counts for entries read from a pending list; ``None``: first delivery.
    counts: dict[bytes, int] | None = None
    source: str = "new"
    # The context of the read's receive span (tracing on), parent of the process span.
    trace: Any = None


@dataclass(slots=True)
class _Committed:
    fresh: list[Item]
    result: Any = None


class BatchHandler:
    """Handles the batches of one consumer, several at once (no per-batch state here)."""

    def __init__(
        self,
        worker: Worker[Any, Any],
        inbox: Inbox,
        settler: Settler,
        hard_stop: Stopping,
        log: Any,
        spans: ConsumerSpans | None = None,
    ) -> None:
        settings = worker.resources.settings
        self._spans = spans
        self._worker = worker
        self._inbox = inbox
        self._settler = settler
        self._hard_stop = hard_stop
        self._log = log
        self._group = worker.group
        self._max_deliveries = settings.max_deliveries
        self._budget = settings.retry_budget_seconds or worker.reclaim_idle_seconds / 2
        self.triage = triage_for(worker)
        # Labelled with the key read, like every runtime metric: a partition's own key.
        self._retries = metrics.EVENTS.labels(settler.stream, worker.group, "batch", "retried")
        self._after_commit_failures = metrics.AFTER_COMMIT_FAILURES.labels(
            settler.stream, worker.group
        )

    async def handle(self, batch: Batch) -> None:
        started = time.perf_counter()
        spans = self._spans
        if spans is None:
            await self._handle(batch, self.triage(batch.entries, batch.counts), started)
            return
        started_ns = time.time_ns()
        out = self.triage(batch.entries, batch.counts)
        traceparents = [item.event.traceparent for item in out.items]
        with spans.processing(
            batch.trace, len(batch.entries), batch.source, traceparents, started_ns
        ):
            await self._handle(batch, out, started)

    async def _handle(self, batch: Batch, out: Triaged, started: float) -> None:
        if out.items:
            await self._apply(out.items, out)
        await self._settler.settle(out)
        self._settler.observe(len(batch.entries), batch.source, out, time.perf_counter() - started)

    async def _apply(self, items: list[Item], out: Triaged) -> None:
        try:
            await self._commit(items, out, time.monotonic() + self._budget)
            return
        except Exception as exc:  # noqa: BLE001 - every failure is sorted below
            if classify(exc) is Failure.OUTAGE or self._hard_stop.is_set():
                # Stopping for good (while the database is away, or before the batch could
                # commit): everything stays pending, for this consumer's restart or another.
                self._settler.release(items)
                return
            if len(items) == 1:
                self._settle(items[0], exc, out)
                return
            self._log.info("batch.isolating", size=len(items), error=error_text(exc))
            tracing.event("isolating", size=len(items), error=error_text(exc))
        deadline = time.monotonic() + self._budget
        for index, item in enumerate(items):
            late = time.monotonic() >= deadline
            try:
                await self._commit([item], out, deadline)
            except Exception as exc:  # noqa: BLE001 - settled per entry, never blocks the rest
                kind = classify(exc)
                if kind is Failure.OUTAGE or (late and kind is Failure.CONTENTION):
                    # The database is away, or contended past the budget for every entry:
                    # the rest are released untried rather than each waiting its timeout.
                    self._release(items[index:], exc, out)
                    return
                self._settle(item, exc, out)

    async def _commit(self, items: list[Item], out: Triaged, deadline: float) -> None:
        def worth_retrying(exc: BaseException) -> bool:
            if isinstance(exc, Permanent) or self._hard_stop.is_set():
                return False
            kind = classify(exc)
            if kind is Failure.OUTAGE:
                return True
            return kind is Failure.CONTENTION and time.monotonic() < deadline

        committed = _Committed(items)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(worth_retrying),
            wait=wait_exponential_jitter(multiplier=0.05, max=5.0, jitter=0.05),
            sleep=self._backoff,
            before_sleep=self._count_retry,
            reraise=True,
        ):
            with attempt:
                committed = await self._transaction(items)
        self._settler.committed(items, committed.fresh, out)
        if committed.fresh:
            try:
                await self._worker.after_commit(
                    [i.event for i in committed.fresh], committed.result
                )
            except Exception as exc:  # noqa: BLE001 - committed is committed: count, never re-apply
                self._after_commit_failures.inc()
                self._log.error(
                    "after_commit.failed", size=len(committed.fresh), error=error_text(exc)
                )

    async def _transaction(self, items: list[Item]) -> _Committed:
        events = [i.event for i in items]
        fresh, result = await apply_new(self._inbox, self._group, self._worker.apply, events)
        if len(fresh) == len(items):
            return _Committed(items, result)
        applied = {id(e) for e in fresh}
        return _Committed([i for i in items if id(i.event) in applied], result)

    def _settle(self, item: Item, exc: BaseException, out: Triaged) -> None:
        dead = None
        if isinstance(exc, Permanent):
            dead = (exc.reason, str(exc))
        elif classify(exc) is Failure.REJECTED:
            dead = ("rejected_by_database", f"SQLSTATE {sqlstate_of(exc)}: {error_text(exc)}")
        elif item.deliveries >= self._max_deliveries:
            dead = ("max_deliveries", error_text(exc))
        if dead is not None:
            self._settler.dead_letter(item, *dead, out)
            return
        self._release([item], exc, out)

    def _release(self, items: Sequence[Item], exc: BaseException, out: Triaged) -> None:
        """Stay pending, no longer kept fresh: redelivered once idle."""
        self._settler.release(items)
        for item in items:
            out.counts[(item.type_label, "retried")] += 1
            self._log.warning(
                "event.failed",
                entry_id=item.entry_id.decode(),
                event_id=str(item.event.event_id),
                type=item.type_label,
                deliveries=item.deliveries,
                error=error_text(exc),
            )
            tracing.event(
                "released",
                entry_id=item.entry_id.decode(),
                deliveries=item.deliveries,
                error=error_text(exc),
            )

    async def _backoff(self, seconds: float) -> None:
        # A hard stop ends the wait; the next attempt's failure then ends the retrying.
        await self._hard_stop.sleep(seconds)

    def _count_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self._log.warning(
            "batch.retrying",
            attempt=state.attempt_number,
            error=None if error is None else error_text(error),
        )
        tracing.event(
            "retry",
            attempt=state.attempt_number,
            error="" if error is None else error_text(error),
        )
        self._retries.inc()


def triage_for(worker: Worker[Any, Any]) -> Triage:
    """The triage of ``worker``'s stream: its event types, its checks, the delivery limit.
    Workers without semantic checks are not called for every event."""
    validate = None if type(worker).validate is Worker.validate else worker.validate
    return Triage(
        worker.event_types,
        max_deliveries=worker.resources.settings.max_deliveries,
        validate=validate,
    )
