"""Process configuration, decoded once from ``FLEET_*`` environment variables.

Every field maps to ``FLEET_<FIELD_NAME_UPPER>``; an invalid value stops the
process with a one-line :class:`~workers.errors.ConfigError` naming the variable.
Unknown ``FLEET_*`` variables are ignored so tooling may add its own.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from workers.errors import ConfigError

PREFIX = "FLEET_"

Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    valkey_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "streamfleet"
    s3_region: str = "us-east-1"

    # Valkey Cluster: unset, detected from `INFO cluster`; true or false to say so.
    valkey_cluster: bool | None = None
    # Keys per stream ({S:0} … {S:P-1}); 1 keeps the one key S (docs/scaling.md).
    stream_partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    # While P changes: the previous P, whose keys the new layout lacks are still read
    # until `fleet partitions retire` removes them (docs/scaling.md).
    stream_partitions_previous: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    # Replicas that must confirm (WAIT) the events the fleet itself publishes (export
    # outcomes, vex:consensus) before they count as published; 0: no wait. Set it to 1
    # on a replicated Valkey so a failover cannot lose one (docs/scaling.md).
    publish_replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0

    http_host: str = "0.0.0.0"
    http_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    api_token: str | None = None

    # Unset: each group's consumer is named after the lowest free leased slot
    # (<group>-0, <group>-1, …; see workers/kernel/lease.py).
    consumer_name: str | None = None
    consumer_lease_seconds: PositiveFloat = 10.0
    batch_size: Positive = 500
    block_ms: Positive = 2000
    prefetch_batches: Positive = 2
    # Batches handled at once per consumer: overlaps one batch's database round trip
    # with the next batch's decoding. Effects must converge in any order anyway.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=16)] = 3
    max_deliveries: Positive = 5
    # How long a batch keeps retrying contention (serialization failures, deadlocks, lock
    # and statement timeouts) in process before its entries are tried one by one, and
    # how long those tries may retry; default: half the group's reclaim idle time.
    retry_budget_seconds: PositiveFloat | None = None
    # statement_timeout of every worker statement, in milliseconds.
    db_statement_timeout_ms: Positive = 30_000
    shutdown_grace_seconds: PositiveFloat = 25.0
    # Overrides every stream's reclaim idle time when set (tests, incident response).
    reclaim_idle_seconds: PositiveFloat | None = None
    reclaim_interval_seconds: PositiveFloat = 5.0
    maintenance_interval_seconds: PositiveFloat = 15.0
    consumer_prune_idle_seconds: PositiveFloat = 3600.0

    stream_retention_days: NonNegativeFloat = 7.0
    stream_max_len: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: no hard cap
    inbox_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 30

    scan_metrics_retention_days: PositiveFloat = 90.0
    retention_schedule: str = "0 0 * * *"
    snapshot_max_age_days: PositiveFloat = 7.0
    snapshot_stale_days: PositiveFloat = 14.0
    snapshot_critical_days: PositiveFloat = 30.0
    # Snapshot retention (docs/snapshots.md): previous -> archived, archived -> deleted,
    # and the age below which `fleet snapshots audit prune` keeps audit records.
    snapshot_previous_retention_days: PositiveFloat = 30.0
    snapshot_archived_retention_days: PositiveFloat = 90.0
    snapshot_audit_retention_days: PositiveFloat = 365.0

    # The ed25519 private key (PEM) that signs export manifests (docs/exports.md).
    export_key_file: str | None = None

    # uvloop (libuv) runs the event loop of `fleet run` where it is installed; "asyncio"
    # chooses the standard library's loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    # "otlp": spans exported over OTLP/HTTP, configured by the standard OTEL_* variables
    # (docs/tracing.md); "off": no tracer is created at all.
    tracing: Literal["off", "otlp"] = "off"

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console", "auto"] = "auto"
    schema_dir: str | None = None

    def resolved_consumer_name(self) -> str:
        return self.consumer_name or f"{socket.gethostname()}-{os.getpid()}"

    def public(self) -> dict[str, object]:
        """Settings safe to show on ``/status``: secrets removed, URLs without passwords."""
        shown: dict[str, object] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name == "api_token":
                value = "***" if value else None
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)
            shown[name] = value
        return shown


_URL_SCHEMES = {
    "valkey_url": ("redis", "rediss", "valkey", "valkeys", "unix"),
    "database_url": ("postgres", "postgresql"),
    "s3_endpoint_url": ("http", "https"),
}


def redact_url(url: str) -> str:
    """``scheme://user:***@host/...``: never print a password.

    A password typed without percent-encoding may hold ``/``, ``?`` or ``#``, which end
    ``urlsplit``'s netloc early; everything up to the last ``@`` is then credentials.
    """
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}"


_LOCATION = re.compile(r"at `\$\.(\w+)")


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Decode settings from ``environ`` (default ``os.environ``) plus explicit overrides."""
    env = os.environ if environ is None else environ
    fields = set(Settings.__struct_fields__)
    raw: dict[str, object] = {}
    for key, value in env.items():
        if key.startswith(PREFIX):
            name = key[len(PREFIX) :].lower()
            if name in fields:
                raw[name] = None if value == "" and name.endswith("_url") else value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = _LOCATION.search(str(exc))
        field = match.group(1) if match else "?"
        message = str(exc).split(" - at ")[0]
        shown = raw.get(field)
        shown_text = redact_url(shown) if isinstance(shown, str) else shown
        raise ConfigError(f"invalid {PREFIX}{field.upper()}={shown_text!r}: {message}") from None
    for field, schemes in _URL_SCHEMES.items():
        value = getattr(settings, field)
        if value is None:
            continue
        scheme = value.partition("://")[0].lower()
        if scheme not in schemes or ("://" not in value):
            raise ConfigError(
                f"invalid {PREFIX}{field.upper()}={redact_url(value)!r}: "
                f"expected a URL starting with one of {', '.join(s + '://' for s in schemes)}"
            )
    if not settings.snapshot_max_age_days <= settings.snapshot_stale_days:
        raise ConfigError(
            f"{PREFIX}SNAPSHOT_STALE_DAYS must be at least {PREFIX}SNAPSHOT_MAX_AGE_DAYS"
        )
    if not settings.snapshot_stale_days <= settings.snapshot_critical_days:
        raise ConfigError(
            f"{PREFIX}SNAPSHOT_CRITICAL_DAYS must be at least {PREFIX}SNAPSHOT_STALE_DAYS"
        )
    return settings
