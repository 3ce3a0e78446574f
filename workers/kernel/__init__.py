"""The stream kernel every worker runs on, as named parts.

- :mod:`~workers.kernel.worker`: the worker contract (``apply`` / ``after_commit``).
- :mod:`~workers.kernel.inbox`: effectively-once, written down in one place.
- :mod:`~workers.kernel.triage`: entries into items, dead letters or acknowledgements (pure).
- :mod:`~workers.kernel.handling`: apply and commit with bounded retries, isolation.
- :mod:`~workers.kernel.settle`: dead letters, acknowledgements, counts, the batch log line.
- :mod:`~workers.kernel.held`: the lifecycle of held entries, claim refresh, ack back-pressure.
- :mod:`~workers.kernel.acker`: coalesced ``XACK``.
- :mod:`~workers.kernel.reading`: own pending list, then new entries.
- :mod:`~workers.kernel.housekeeping`: reclaim, heartbeat, maintenance.
- :mod:`~workers.kernel.consumer`: start and stop order.
- :mod:`~workers.kernel.lease`: consumer names by lease.
- :mod:`~workers.kernel.stopping`: the one "sleep unless stopping".

The guarantees are described in ``docs/kernel.md``.
"""

from workers.kernel.consumer import StreamConsumer, partition_consumers
from workers.kernel.inbox import Inbox, NoInbox, PgInbox, Statement, Tx, compose
from workers.kernel.process import tune_gc
from workers.kernel.stopping import Stopping
from workers.kernel.worker import Resources, Worker

__all__ = [
    "Inbox",
    "NoInbox",
    "PgInbox",
    "Resources",
    "Statement",
    "Stopping",
    "StreamConsumer",
    "Tx",
    "Worker",
    "compose",
    "partition_consumers",
    "tune_gc",
]
