"""JSON Schema per event type and one AsyncAPI 3.0 document for all streams.

The files are generated from the Structs, committed under ``contracts/schemas/``
and checked for drift by the test suite, so producers in other languages can
rely on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from contracts.base import Event
from contracts.registry import STREAMS

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
ASYNCAPI_FILE = "asyncapi.json"


def _schema_name(cls: type[Event]) -> str:
    return cls.event_type().replace(".", "-") + ".schema.json"


def event_schema(cls: type[Event]) -> dict[str, Any]:
    (schema,), components = msgspec.json.schema_components([cls], ref_template="#/$defs/{name}")
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:streamfleet:event:{cls.event_type()}",
        "title": cls.event_type(),
        "description": (
            f"The `data` field of a `{cls.event_type()}` stream entry. Unknown extra "
            "fields are accepted; supported versions: "
            + ", ".join(str(v) for v in sorted(cls.supported_versions))
            + "."
        ),
        **schema,
        "$defs": components,
    }
    return doc


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for contract in STREAMS.values():
        key = contract.stream.replace(":", "-")
        channel_messages = {}
        for cls in contract.event_types:
            name = cls.event_type().replace(".", "-")
            messages[name] = {
                "name": cls.event_type(),
                "title": cls.event_type(),
                "contentType": "application/json",
                "summary": (cls.__doc__ or cls.event_type()).strip().splitlines()[0],
                "payload": {"$ref": f"./{_schema_name(cls)}"},
                "headers": {
                    "type": "object",
                    "description": "Stream entry fields besides `data`.",
                    "properties": {"type": {"type": "string", "const": cls.event_type()}},
                    "required": ["type"],
                },
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        bindings: dict[str, Any] = {}
        if contract.default_group:
            bindings = {
                "x-consumer-group": contract.default_group,
                "x-reclaim-idle-seconds": contract.reclaim_idle_seconds,
                "x-dead-letter-stream": contract.dlq,
            }
        channels[key] = {
            "address": contract.stream,
            "description": contract.description,
            "messages": channel_messages,
            **bindings,
        }
        operations[f"publish-{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"XADD {contract.stream} * type <event type> data <JSON>",
        }
        if contract.default_group:
            operations[f"consume-{key}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"XREADGROUP GROUP {contract.default_group} <consumer> "
                f"STREAMS {contract.stream} >",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "streamfleet event streams",
            "version": "1.0.0",
            "description": (
                "Each stream entry has two fields: `type` (the event type) and `data` "
                "(the event as one flat UTF-8 JSON object, camelCase keys)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "valkey": {
                "host": "localhost:6379",
                "protocol": "redis",
                "description": "Any Valkey 8+ or Redis-protocol server >= 7.0.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render() -> dict[str, str]:
    """File name → file text for every exported document."""
    files: dict[str, str] = {}
    for contract in STREAMS.values():
        for cls in contract.event_types:
            files[_schema_name(cls)] = _dump(event_schema(cls))
    files[ASYNCAPI_FILE] = _dump(asyncapi())
    return files


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of files that are missing or differ from what the code generates."""
    out = []
    for name, text in render().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out
