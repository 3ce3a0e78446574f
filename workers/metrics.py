"""Every Prometheus metric the fleet exports, in one place.

Names are a contract with dashboards and alert rules (docs/operations.md, "Metrics"). Labels
are bounded: stream, group, event type, outcome, reason codes, phase, channel
type, tool. Tenant ids and event ids are never labels.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Runtime (docs/operations.md)
EVENTS = Counter(
    "fleet_events_total",
    "Stream entries handled, by outcome (ok, duplicate, ignored, retried, dead_lettered).",
    ["stream", "group", "type", "outcome"],
)
EVENT_HANDLE_SECONDS = Histogram(
    "fleet_event_handle_seconds",
    "Per-event handling time, averaged over the batch the event was handled in.",
    ["stream", "group", "type"],
    buckets=(0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0),
)
BATCH_SIZE = Histogram(
    "fleet_batch_size",
    "Entries per batch read from a stream.",
    ["stream", "group"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
)
STREAM_LENGTH = Gauge("fleet_stream_length", "Entries in the stream (XLEN).", ["stream"])
GROUP_LAG = Gauge("fleet_group_lag", "Entries not yet delivered to the group.", ["stream", "group"])
GROUP_LAG_ESTIMATED = Gauge(
    "fleet_group_lag_estimated",
    "1 when fleet_group_lag is a lower bound: Valkey could not report the lag (entries "
    "deleted or trimmed across the group's position) and counting stopped at its limit.",
    ["stream", "group"],
)
GROUP_PENDING = Gauge(
    "fleet_group_pending", "Entries delivered but not acknowledged.", ["stream", "group"]
)
OLDEST_PENDING_AGE = Gauge(
    "fleet_oldest_pending_age_seconds",
    "Time since the oldest unacknowledged entry of the group was last delivered "
    "(XPENDING idle time; 0 when none).",
    ["stream", "group"],
)
DEAD_LETTERS = Counter(
    "fleet_dead_letters_total", "Entries moved to <stream>:dlq.", ["stream", "group", "reason"]
)
RECLAIMED = Counter(
    "fleet_reclaimed_total",
    "Idle pending entries taken over from another consumer (XAUTOCLAIM).",
    ["stream", "group"],
)
CONSUMERS = Gauge("fleet_consumers", "Consumers registered in the group.", ["stream", "group"])
TRIMMED_UNCONSUMED = Counter(
    "fleet_stream_trimmed_unconsumed_total",
    "Entries removed by the hard length cap before every group had consumed them.",
    ["stream"],
)
CONNECTION_REPLACED = Counter(
    "fleet_connection_replaced_total",
    "Connections to a server that were lost or went silent and were opened anew.",
    ["server"],
)
for _server in ("valkey", "postgres"):
    CONNECTION_REPLACED.labels(_server)  # exported at 0 from the start, for rate()
AFTER_COMMIT_FAILURES = Counter(
    "fleet_after_commit_failures_total",
    "Batches whose after-commit step (publishing, metrics) failed; never applied again.",
    ["stream", "group"],
)

# scan-metrics (docs/workers.md)
SCAN_TTE_SECONDS = Histogram(
    "fleet_scan_tte_seconds",
    "Time-to-Evidence of completed, non-replay scans.",
    buckets=(5, 10, 30, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1800),
)
SCAN_PHASE_DURATION = Histogram(
    "fleet_scan_phase_duration_seconds",
    "Duration of scan execution phases.",
    ["phase"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
SCANS = Counter("fleet_scans_total", "Scans recorded, by outcome.", ["outcome"])
SCAN_SLO_BREACHES = Counter(
    "fleet_scan_slo_breaches_total",
    "Completed scans whose TTE exceeded an SLO threshold (p50: 120 s, p95: 300 s).",
    ["slo"],
)

# vex-consensus (docs/workers.md)
VEX_CONSENSUS_LATENCY = Histogram(
    "fleet_vex_consensus_latency_seconds",
    "From the triggering event's occurredAt to the consensus write.",
    buckets=(*_LATENCY_BUCKETS, 10.0, 30.0, 60.0),
)
VEX_CONFLICT_QUEUE_DEPTH = Gauge(
    "fleet_vex_conflict_queue_depth", "Open conflicts in the consensus review queue."
)
VEX_CONFLICT_QUEUE_TENANT_MAX = Gauge(
    "fleet_vex_conflict_queue_tenant_max_depth",
    "Open conflicts of the tenant with the most (seed 004 alerts above 500 for any tenant).",
)
VEX_ISSUER_TRUST_CHANGES = Counter(
    "fleet_vex_issuer_trust_changes_total",
    "Issuer trust rows changed, by issuer and trust tier (issuer type).",
    ["issuer", "tier"],
)
VEX_RECOMPUTE_DURATION = Histogram(
    "fleet_vex_recompute_duration_seconds",
    "Consensus recompute duration, by trigger.",
    ["reason"],
    buckets=(*_LATENCY_BUCKETS, 10.0, 30.0),
)
VEX_CONFLICTS = Counter(
    "fleet_vex_consensus_conflicts_total", "Consensus conflicts detected, by reason.", ["reason"]
)

VEX_DSSE_FAILURES = Counter(
    "fleet_vex_dsse_verification_failures_total",
    "Signed VEX documents refused on ingest because their DSSE envelope did not verify.",
    ["reason"],
)
VEX_EXPORT_DURATION = Histogram(
    "fleet_vex_export_duration_seconds",
    "Time to read and render the VEX consensus export.",
    buckets=(*_LATENCY_BUCKETS, 10.0, 30.0, 60.0),
)

# exports (docs/workers.md, "Signed exports")
EXPORT_JOB_DURATION = Histogram(
    "fleet_export_job_duration_seconds",
    "Export job duration from the request's pick-up to the published manifest, by profile.",
    ["profile"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
EXPORT_BUNDLE_SIZE = Histogram(
    "fleet_export_bundle_size_bytes",
    "Size of the files of an export bundle, manifest excluded, by profile.",
    ["profile"],
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
)
EXPORTS = Counter(
    "fleet_exports_total",
    "Export requests handled, by profile and outcome (completed, failed).",
    ["profile", "outcome"],
)
EXPORT_ATTESTATION_FAILURES = Counter(
    "fleet_export_attestation_failures_total",
    "Export manifests that could not be signed or whose signature did not verify.",
    ["reason"],
)
EXPORT_QUEUE_DEPTH = Gauge(
    "fleet_export_queue_depth", "Export requests not yet handled (group lag plus pending)."
)
EXPORT_MANIFEST_PUBLISH = Counter(
    "fleet_export_manifest_publish_total",
    "Manifests written to the bundle store, by result.",
    ["result"],
)

# Exported at 0 from the start, so increase() sees the first failure.
for _reason in (
    "malformed",
    "unknown_key",
    "bad_signature",
    "payload_type",
    "signature_required",
):
    VEX_DSSE_FAILURES.labels(_reason)
for _result in ("ok", "error"):
    EXPORT_MANIFEST_PUBLISH.labels(_result)
for _reason in ("no_key", "malformed", "unknown_key", "bad_signature", "hash_mismatch"):
    EXPORT_ATTESTATION_FAILURES.labels(_reason)
for _profile in ("vex", "scan-metrics", "snapshots"):
    for _outcome in ("completed", "failed"):
        EXPORTS.labels(_profile, _outcome)

# notify-delivery (docs/workers.md)
NOTIFY_DELIVERIES = Counter(
    "fleet_notify_deliveries_total",
    "Notification deliveries recorded, by channel type and status.",
    ["channel_type", "status"],
)
NOTIFY_DELIVERY_LATENCY = Histogram(
    "fleet_notify_delivery_latency_seconds",
    "Delivery latency reported by the notifier.",
    ["channel_type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# snapshots (docs/workers.md)
SNAPSHOT_AGE = Gauge("fleet_snapshot_age_seconds", "Age of the active snapshot.", ["tool"])
SNAPSHOT_FRESHNESS = Gauge(
    "fleet_snapshot_freshness",
    "1 for the tool's current freshness state, 0 for the others.",
    ["tool", "state"],
)
SNAPSHOT_THRESHOLD = Gauge(
    "fleet_snapshot_threshold_seconds",
    "Freshness thresholds in force for the tool (threshold: max_age, stale, critical).",
    ["tool", "threshold"],
)
SNAPSHOT_RETENTION_ACTIONS = Counter(
    "fleet_snapshot_retention_actions_total", "Retention actions applied.", ["action"]
)
SNAPSHOT_ROLLBACKS = Counter(
    "fleet_snapshot_rollbacks_total", "Snapshot rollbacks, by trigger.", ["trigger"]
)


def observe_many(histogram: Any, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for every value, with one increment per bucket touched and
    one of the sum instead of a locked increment per value: workers observe whole batches
    (a batch of 500 scans is 3,500 observations).

    ``histogram`` is an unlabelled histogram or a labelled child. Values are finite (the
    workers observe durations). Reads the client's bucket bounds; a client without them
    gets the plain per-value calls."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total_value = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total_value is None:
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    total = 0.0
    seen = False
    for value in values:
        # The first bound not below the value: observe's ``value <= bound``; +Inf is last.
        counts[bisect.bisect_left(bounds, value)] += 1
        total += value
        seen = True
    if not seen:
        return
    total_value.inc(total)
    for index, n in enumerate(counts):
        if n:
            buckets[index].inc(n)


METRIC_NAMES: frozenset[str] = frozenset(
    {
        "fleet_events_total",
        "fleet_event_handle_seconds",
        "fleet_batch_size",
        "fleet_stream_length",
        "fleet_group_lag",
        "fleet_group_lag_estimated",
        "fleet_group_pending",
        "fleet_oldest_pending_age_seconds",
        "fleet_dead_letters_total",
        "fleet_reclaimed_total",
        "fleet_consumers",
        "fleet_stream_trimmed_unconsumed_total",
        "fleet_scan_tte_seconds",
        "fleet_scan_phase_duration_seconds",
        "fleet_scans_total",
        "fleet_scan_slo_breaches_total",
        "fleet_vex_consensus_latency_seconds",
        "fleet_vex_conflict_queue_depth",
        "fleet_vex_recompute_duration_seconds",
        "fleet_vex_conflict_queue_tenant_max_depth",
        "fleet_vex_issuer_trust_changes_total",
        "fleet_vex_consensus_conflicts_total",
        "fleet_vex_dsse_verification_failures_total",
        "fleet_vex_export_duration_seconds",
        "fleet_export_job_duration_seconds",
        "fleet_exports_total",
        "fleet_export_bundle_size_bytes",
        "fleet_export_attestation_failures_total",
        "fleet_export_queue_depth",
        "fleet_export_manifest_publish_total",
        "fleet_notify_deliveries_total",
        "fleet_notify_delivery_latency_seconds",
        "fleet_snapshot_age_seconds",
        "fleet_snapshot_freshness",
        "fleet_snapshot_threshold_seconds",
        "fleet_snapshot_retention_actions_total",
        "fleet_snapshot_rollbacks_total",
    }
)
"""Base names of every metric above, for tests that check dashboards and rules."""
