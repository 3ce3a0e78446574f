"""The stream entry wire format.

An entry has two fields: ``type`` (the event type, readable without decoding
``data``) and ``data`` (the whole event as one flat UTF-8 JSON object with
camelCase keys, envelope and payload side by side). Decoders are built once
per type and reused.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from contracts.base import Event
from contracts.registry import event_class

E = TypeVar("E", bound=Event)

_encoder = msgspec.json.Encoder()


class DecodeError(ValueError):
    """An entry that can never be processed; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _VersionProbe(msgspec.Struct):
    version: Any = None


_probe = msgspec.json.Decoder(_VersionProbe)


_decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}


def _decoder(cls: type[E]) -> msgspec.json.Decoder[E]:
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    return decoder


def decoder_for(cls: type[E]) -> msgspec.json.Decoder[E]:
    """The decoder :func:`decode_data` uses for ``cls``, for loops over many entries: call
    its ``decode`` and check ``version`` inline; on any failure, :func:`decode_data` on the
    same bytes gives the reason."""
    return _decoder(cls)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def encode_entry(event: Event) -> dict[str, bytes]:
    """Fields for ``XADD``: ``{"type": ..., "data": ...}``."""
    return {"type": event.event_type().encode(), "data": _encoder.encode(event)}


def decode_data(cls: type[E], data: bytes) -> E:
    """Decode ``data`` as ``cls``; raise :class:`DecodeError` with a reason code.

    The one decode path of the fleet: the consumers' triage, ``fleet publish`` and the
    fuzz harnesses all come through here."""
    try:
        event: E = _decoder(cls).decode(data)
    except msgspec.ValidationError as exc:
        version = _peek_version(data)
        if isinstance(version, int) and version not in cls.supported_versions:
            raise DecodeError("unsupported_version", _version_message(cls, version)) from None
        raise DecodeError("invalid_event", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError("malformed_json", str(exc)) from None
    except (RecursionError, UnicodeDecodeError) as exc:
        # msgspec raises these, not its DecodeError, for JSON nested past the recursion
        # limit and for strings that are not UTF-8.
        raise DecodeError("malformed_json", f"{type(exc).__name__}: {exc}") from None
    if event.version not in cls.supported_versions:
        raise DecodeError("unsupported_version", _version_message(cls, event.version))
    return event


def decode_event(fields: dict[bytes, bytes] | dict[str, Any]) -> Event:
    """Decode a whole entry by its ``type`` field, for tools that read any stream."""
    raw = {k.decode(errors="replace") if isinstance(k, bytes) else k: v for k, v in fields.items()}
    type_value = raw.get("type")
    data = raw.get("data")
    if type_value is None:
        raise DecodeError("missing_type", "entry has no 'type' field")
    if data is None:
        raise DecodeError("missing_data", "entry has no 'data' field")
    name = type_value.decode(errors="replace") if isinstance(type_value, bytes) else type_value
    cls = event_class(str(name))
    if cls is None:
        raise DecodeError("unknown_type", f"unknown event type {name!r}")
    payload = data if isinstance(data, bytes) else str(data).encode()
    event = decode_data(cls, payload)
    if event.event_type() != name:
        raise DecodeError("type_mismatch", f"field 'type' is {name!r} but data says otherwise")
    return event


def _peek_version(data: bytes) -> object:
    try:
        return _probe.decode(data).version
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        return None


def _version_message(cls: type[Event], version: int) -> str:
    supported = ", ".join(str(v) for v in sorted(cls.supported_versions))
    return f"{cls.event_type()} version {version} is not supported (supported: {supported})"
