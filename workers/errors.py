"""Exceptions that tell the runtime what to do with an entry.

- :class:`Permanent`: the event can never succeed; dead-letter it now with ``reason``.
- Anything else a worker raises leaves the entry pending; it is redelivered until
  ``max_deliveries``.
- :class:`ConfigError`: the process cannot start (bad configuration, a server it cannot
  reach, an unmigrated database, a taken port); it stops with one line and the
  :class:`ExitCode` the error names.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of ``fleet``, one per kind of start-up failure (README lists them)."""

    OK = 0
    FAILED = 1
    """A check failed, or a worker stopped on an error while running."""
    USAGE = 2
    """Bad command-line arguments (unknown worker, stream, option value, missing file)."""
    CONFIG = 3
    """An invalid ``FLEET_*`` setting."""
    VALKEY = 4
    """Valkey unreachable, or it refused the credentials or a command at start-up."""
    POSTGRES = 5
    """PostgreSQL unreachable, or it refused the connection."""
    UNMIGRATED = 6
    """The database lacks migrations this build needs: run ``fleet migrate``."""
    HTTP_PORT = 7
    """The ops HTTP port (``FLEET_HTTP_PORT``) cannot be bound."""
    S3 = 8
    """The S3 store is unreachable or refused the credentials."""


class FleetError(Exception):
    """Base class for errors the fleet raises on purpose."""


class ConfigError(FleetError):
    """The process cannot start: the message names the variable, argument or server, and
    ``exit_code`` says which kind of failure it is."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Unavailable(FleetError):
    """A server a batch needs (other than PostgreSQL, whose errors say so themselves) is
    unreachable: the kernel waits it out like a PostgreSQL outage, claims kept fresh, and
    dead-letters nothing (docs/guarantees.md)."""


class Permanent(FleetError):
    """Dead-letter the entry now: retrying cannot help."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


_MAX_ERROR_TEXT = 500


def error_text(exc: BaseException) -> str:
    """``Type: message``, cut to a length fit for a log line or a dead letter."""
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_TEXT]


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): what a
    one-line error quotes of a server's or library's answer."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
