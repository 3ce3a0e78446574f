"""Instants and ISO 8601 durations for snapshot governance (docs/snapshots.md).

Pure: every instant is passed in and must be timezone-aware; nothing reads a clock.
"""

import re
from datetime import UTC, datetime, timedelta
from typing import Final


def utc(name: str, value: datetime) -> datetime:
    """Return ``value`` in UTC; naive datetimes are refused because their instant is unknown."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """Render an aware datetime as RFC 3339 in UTC (``2025-12-04T00:00:00Z``, microseconds
    only when non-zero)."""
    return utc("datetime", value).isoformat().replace("+00:00", "Z")


def format_duration(value: timedelta) -> str:
    """ISO 8601 duration in whole seconds, largest units first: ``P2D``, ``P1DT2H30M``,
    ``PT0S``. Sub-second parts are dropped (ages are reported to the second)."""
    if value < timedelta(0):
        raise ValueError(f"duration must not be negative, got {value}")
    total = value.days * 86_400 + value.seconds
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    date_part = f"{days}D" if days else ""
    time_part = "".join(
        f"{amount}{unit}"
        for amount, unit in ((hours, "H"), (minutes, "M"), (seconds, "S"))
        if amount
    )
    if not date_part and not time_part:
        return "PT0S"
    return "P" + date_part + (f"T{time_part}" if time_part else "")


# PnW, or PnDTnHnMnS with at least one part (fractions of seconds allowed). Years and months
# have no fixed length, so they are refused rather than guessed.
_DURATION_RE: Final = re.compile(
    r"P(?:(?P<weeks>[0-9]+)W|(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?(?:(?P<seconds>[0-9]+(?:\.[0-9]+)?)S)?)?)"
)


def parse_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration in weeks, days, hours, minutes and seconds (``P7D``,
    ``PT36H``, ``P1DT12H``, ``P2W``); ValueError names the value and the accepted form."""
    value = text.strip().upper()
    match = _DURATION_RE.fullmatch(value)
    if match is None or value in ("P", "PT") or value.endswith("T"):
        raise ValueError(
            f"invalid duration {text!r}: expected ISO 8601 like P7D, PT36H or P1DT12H "
            "(years and months are not accepted)"
        )
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return timedelta(
        weeks=parts.get("weeks", 0),
        days=parts.get("days", 0),
        hours=parts.get("hours", 0),
        minutes=parts.get("minutes", 0),
        seconds=parts.get("seconds", 0),
    )
