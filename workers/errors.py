"""Exceptions that tell the runtime what to do with an entry.

- :class:`Permanent`: the event can never succeed; dead-letter it now with ``reason``.
- :class:`Retryable`: leave the entry pending; it is redelivered until ``max_deliveries``.
- Anything unexpected is treated as retryable.
- :class:`ConfigError`: bad configuration; the process stops with one line.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base class for errors the fleet raises on purpose."""


class ConfigError(FleetError):
    """Invalid configuration; the message names the variable or argument."""


class Permanent(FleetError):
    """Dead-letter the entry now: retrying cannot help."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Retryable(FleetError):
    """Leave the entry pending for redelivery."""


_MAX_ERROR_TEXT = 500


def error_text(exc: BaseException) -> str:
    """``Type: message``, cut to a length fit for a log line or a dead letter."""
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_TEXT]
