"""Fuzzed input: every parser of untrusted bytes fails only in its documented way.

Entries come from producers we do not control and files come from operators, so
each parser is driven with arbitrary bytes, arbitrary JSON and mutations of real
inputs. The promise checked here:

- ``contracts.wire``: only :class:`~contracts.wire.DecodeError` (with a known reason).
- the kernel's triage of entries (``workers.kernel.triage``): every entry becomes
  an item to handle, an acknowledgement (ignored type, trimmed entry) or a dead
  letter with a non-empty reason, exactly once; metric labels stay bounded.
- ``fleet publish``: never raises; each bad line is reported once by its number.
- ``fleet vex import``: only :class:`~workers.vex_consensus.documents.DocumentError`.
- ``fleet snapshots import``: only ``ValueError``.

No servers: everything here is pure.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts import Event
from contracts.registry import STREAMS
from contracts.wire import DecodeError, decode_data, decode_event, encode_entry, encode_event
from workers.cli.publish import parse_publish_lines
from workers.kernel.handling import triage_for
from workers.kernel.triage import Triage
from workers.kernel.worker import Resources, Worker
from workers.settings import load_settings
from workers.snapshot_retention.payload import normalize_payload
from workers.vex_consensus.documents import DocumentError, ParsedDocument, parse_document

T = TypeVar("T")

FUZZ = settings(
    # FLEET_FUZZ_EXAMPLES=5000 for a long manual run; the default keeps the file fast.
    max_examples=int(os.environ.get("FLEET_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VEX_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "vex"
SMALL_DOCUMENT = 64 * 1024  # bigger real documents are parsed once, not mutated per example

ALL_TYPES: dict[str, type[Event]] = {
    name: cls for contract in STREAMS.values() for name, cls in contract.types_by_name().items()
}
WIRE_REASONS = {"invalid_event", "malformed_json", "unsupported_version"}
ENTRY_REASONS = WIRE_REASONS | {"missing_type", "missing_data", "unknown_type", "type_mismatch"}

# ------------------------------------------------------------------ valid samples

_AT = "2026-03-01T12:00:00Z"
_MID = "2026-03-01T12:02:00Z"
_LATER = "2026-03-01T14:05:00+02:00"  # 12:05 UTC: producers may send any offset


def _envelope(type_name: str) -> dict[str, Any]:
    return {
        "type": type_name,
        "eventId": str(uuid.UUID(int=1)),
        "version": 1,
        "tenantId": str(uuid.UUID(int=2)),
        "occurredAt": _AT,
        "source": "fuzz",
        "correlationId": "corr-1",
    }


def _scan(type_name: str) -> dict[str, Any]:
    return {
        **_envelope(type_name),
        "scanId": str(uuid.UUID(int=3)),
        "artifactDigest": "sha256:" + "ab" * 32,
        "artifactType": "oci_image",
        "startedAt": _AT,
        "phases": [
            {"name": "ingest", "order": 0, "startedAt": _AT, "finishedAt": _MID},
            {"name": "analyze", "order": 1, "startedAt": _MID, "finishedAt": _LATER},
        ],
        "packageCount": 10,
    }


_PAYLOADS: dict[str, dict[str, Any]] = {
    "scan.submitted": {
        "scanId": str(uuid.UUID(int=3)),
        "artifactDigest": "sha256:" + "ab" * 32,
        "artifactType": "tarball",
        "submittedAt": _AT,
    },
    "advisory.new": {
        "advisoryId": "CVE-2026-0001",
        "aliases": ["GHSA-aaaa-bbbb-cccc"],
        "affected": [{"purl": "pkg:npm/left-pad@1.0.0", "versionRange": "<1.1"}],
        "documentSha256": "cd" * 32,
        "modifiedAt": _AT,
    },
    "notification.sent": {
        "deliveryId": str(uuid.UUID(int=4)),
        "channelId": str(uuid.UUID(int=5)),
        "channelType": "slack",
        "sourceEventId": str(uuid.UUID(int=6)),
        "sentAt": _AT,
        "statusCode": 200,
    },
    "vex.consensus.updated": {
        "componentPurl": "pkg:npm/left-pad@1.0.0",
        "vulnerabilityId": "CVE-2026-0001",
        "resolvedStatus": "affected",
        "computedAt": _AT,
        "reason": "advisory_drift",
    },
    "export.requested": {"profile": "vex", "options": {"format": "openvex"}},
    "export.completed": {
        "exportId": str(uuid.UUID(int=7)),
        "profile": "vex",
        "bucket": "streamfleet",
        "manifestKey": "exports/vex/x/manifest.json",
        "manifestSha256": "ef" * 32,
        "keyId": "01" * 32,
        "fileCount": 1,
        "bundleSizeBytes": 10,
        "completedAt": _AT,
    },
    "export.failed": {
        "exportId": str(uuid.UUID(int=8)),
        "profile": "snapshots",
        "reason": "signing",
        "error": "no signing key",
        "failedAt": _AT,
    },
}


def sample(type_name: str) -> dict[str, Any]:
    """A valid event of ``type_name`` as the JSON object of its ``data`` field."""
    if type_name == "scan.completed":
        return {**_scan(type_name), "finishedAt": _LATER}
    if type_name == "scan.failed":
        return {**_scan(type_name), "failedAt": _LATER, "errorCode": "E_TIMEOUT"}
    if type_name == "advisory.updated":
        return {**_envelope(type_name), **_PAYLOADS["advisory.new"], "revision": 2}
    if type_name == "notification.failed":
        payload = {k: v for k, v in _PAYLOADS["notification.sent"].items() if k != "sentAt"}
        return {**_envelope(type_name), **payload, "failedAt": _AT, "error": "timeout"}
    return {**_envelope(type_name), **_PAYLOADS[type_name]}


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def attempt(call: Callable[[], T], expected: type[Exception]) -> T | Exception:
    """``call()``'s result, or the ``expected`` exception it raised; anything else escapes."""
    try:
        return call()
    except expected as exc:
        return exc


def assert_decode_error(exc: Exception, reasons: set[str]) -> None:
    assert isinstance(exc, DecodeError)
    assert exc.reason in reasons and exc.detail, exc


# ------------------------------------------------------------------ strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
type_names = st.sampled_from(sorted(ALL_TYPES))
# Values a producer might plausibly get wrong: the right kinds, the wrong kinds, edge sizes.
tricky_values = json_values | st.sampled_from(
    [
        "",
        " ",
        "not-a-uuid",
        "2026-03-01T12:00:00",  # no zone
        "2026-02-30T00:00:00Z",
        "9999-12-31T23:59:59Z",
        str(uuid.UUID(int=0)),
        0,
        -1,
        2,
        2**31,
        2**63,
        1.5,
        [],
        {},
        "x" * 2000,
        "\x00",
        "\ud800",
    ]
)


@st.composite
def mutated_samples(draw: st.DrawFn, type_name: str | None = None) -> tuple[str, dict[str, Any]]:
    """A valid event with a few fields deleted, replaced or added (possibly still valid)."""
    name = type_name or draw(type_names)
    data = sample(name)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        action = draw(st.sampled_from(["delete", "replace", "add", "retype", "version"]))
        keys = sorted(data)
        if action == "delete" and keys:
            data.pop(draw(st.sampled_from(keys)))
        elif action == "replace" and keys:
            data[draw(st.sampled_from(keys))] = draw(tricky_values)
        elif action == "add":
            data[draw(st.text(max_size=12))] = draw(json_values)
        elif action == "retype":
            data["type"] = draw(type_names | st.text(max_size=12))
        else:
            data["version"] = draw(st.integers(min_value=-2, max_value=5) | tricky_values)
    return name, data


def _encodable(data: dict[str, Any]) -> bytes:
    # A lone surrogate cannot be UTF-8 encoded; a producer would send its escape instead.
    return json.dumps(data, ensure_ascii=True).encode()


entry_values = (
    st.binary(max_size=64)
    | st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass"))
    | json_values.map(_json)
)


# ------------------------------------------------------------------ contracts.wire


def test_every_sample_is_a_valid_event() -> None:
    """The samples the mutations start from must decode, or the fuzzing proves nothing."""
    assert set(ALL_TYPES) == {*_PAYLOADS, "scan.completed", "scan.failed", "advisory.updated",
                              "notification.failed"}  # fmt: skip
    for name, cls in ALL_TYPES.items():
        event = decode_data(cls, _json(sample(name)))
        assert event.event_type() == name
        assert decode_event({b"type": name.encode(), b"data": encode_event(event)}) == event


@FUZZ
@given(type_names, st.binary(max_size=512))
@example("notification.sent", b"")
@example("notification.sent", b"\xff\xfe")
@example("scan.completed", b'{"version": 2}')
def test_decode_data_of_arbitrary_bytes_raises_only_decode_error(name: str, data: bytes) -> None:
    cls = ALL_TYPES[name]
    result = attempt(lambda: decode_data(cls, data), DecodeError)
    if isinstance(result, Exception):
        assert_decode_error(result, WIRE_REASONS)
    else:
        assert isinstance(result, cls)


@FUZZ
@given(type_names, json_values)
def test_decode_data_of_arbitrary_json_raises_only_decode_error(name: str, value: Any) -> None:
    cls = ALL_TYPES[name]
    result = attempt(lambda: decode_data(cls, _json(value)), DecodeError)
    if isinstance(result, Exception):
        assert_decode_error(result, WIRE_REASONS)
    else:
        assert isinstance(result, cls)


@FUZZ
@given(mutated_samples())
def test_decode_data_of_mutated_events_raises_only_decode_error(
    mutated: tuple[str, dict[str, Any]],
) -> None:
    name, data = mutated
    cls = ALL_TYPES[name]
    result = attempt(lambda: decode_data(cls, _encodable(data)), DecodeError)
    if isinstance(result, DecodeError):
        assert_decode_error(result, WIRE_REASONS)
        if result.reason == "unsupported_version":
            assert isinstance(data.get("version"), int) and data["version"] != 1
    else:
        assert isinstance(result, cls) and result.version == 1


_field_keys = st.sampled_from([b"type", b"data", "type", "data"]) | st.binary(max_size=8)
_field_values = entry_values | st.sampled_from([n.encode() for n in ALL_TYPES]) | json_values


@FUZZ
@given(st.dictionaries(_field_keys, _field_values, max_size=4))
@example({b"type": b"notification.sent"})
@example({"type": 7, "data": [1]})
@example({b"type": b"notification.sent", b"data": _json(sample("notification.failed"))})
def test_decode_event_of_arbitrary_fields_raises_only_decode_error(fields: dict[Any, Any]) -> None:
    result = attempt(lambda: decode_event(fields), DecodeError)
    if isinstance(result, Exception):
        assert_decode_error(result, ENTRY_REASONS)
    else:
        assert isinstance(result, Event)


def test_decode_event_of_a_field_name_that_is_not_utf8_raises_decode_error() -> None:
    fields = {b"\x80": b"", b"type": b"notification.sent"}
    with pytest.raises(DecodeError):
        decode_event(fields)


def _consumer_workers() -> list[type[Worker[Any, Any]]]:
    from workers.app import WORKERS, available_workers, resolve

    chosen = [n for n in available_workers() if n in WORKERS]
    return [cls for cls in resolve(chosen) if isinstance(cls, type) and issubclass(cls, Worker)]


CONSUMER_WORKERS = _consumer_workers()


def _triage(worker_cls: type[Worker[Any, Any]]) -> Triage:
    """A worker's triage, with no connections: the pure step every entry goes through."""
    settings = load_settings({}, max_deliveries=5)
    return triage_for(worker_cls(Resources(settings=settings, redis=None)))  # type: ignore[arg-type]


@st.composite
def entry_fields(draw: st.DrawFn) -> dict[bytes, bytes]:
    shape = draw(st.sampled_from(["valid", "mutated", "arbitrary", "empty", "type-only"]))
    if shape == "valid":
        name = draw(type_names)
        return {b"type": name.encode(), b"data": _json(sample(name))}
    if shape == "mutated":
        name, data = draw(mutated_samples())
        type_field = draw(
            st.sampled_from(
                [name.encode(), str(data.get("type", "")).encode("utf-8", "surrogatepass")]
            )
        )
        return {b"type": type_field, b"data": _encodable(data)}
    if shape == "empty":
        return {}
    if shape == "type-only":
        return {b"type": draw(type_names).encode()}
    return draw(st.dictionaries(st.sampled_from([b"type", b"data"]) | st.binary(max_size=6),
                                entry_values, max_size=3))  # fmt: skip


@FUZZ
@given(
    st.sampled_from(CONSUMER_WORKERS),
    st.lists(st.tuples(entry_fields(), st.integers(min_value=1, max_value=8)), max_size=12),
    st.booleans(),
)
def test_runtime_turns_every_entry_into_an_item_an_ack_or_a_dead_letter(
    worker_cls: type[Worker[Any, Any]], drawn: list[tuple[dict[bytes, bytes], int]], pending: bool
) -> None:
    triage = _triage(worker_cls)
    handled = {cls.event_type().encode() for cls in worker_cls.event_types}
    entries = [(f"{i + 1}-0".encode(), fields) for i, (fields, _) in enumerate(drawn)]
    counts = {eid: n for (eid, _), (_, n) in zip(entries, drawn, strict=True)} if pending else None

    out = triage(entries, counts)
    items = out.items
    placed = [i.entry_id for i in items] + out.ack + [d.entry_id for d in out.dead]
    assert sorted(placed) == sorted(eid for eid, _ in entries), "every entry placed exactly once"
    for dead in out.dead:
        assert isinstance(dead.reason, str) and dead.reason.strip(), dead
        assert isinstance(dead.error, str) and dead.deliveries >= 1
    for item in items:
        assert isinstance(item.event, worker_cls.event_types)
        assert item.fields[b"type"] in handled
        assert item.deliveries <= 5
    by_id = dict(entries)
    for entry_id in out.ack:
        fields = by_id[entry_id]
        assert not fields or fields.get(b"type") not in handled, "a handled type is never ignored"
    # Outcomes of entries not handed on are counted once each, with labels from the contract
    # only (bounded cardinality); the handed-on items are counted when committed.
    assert sum(out.counts.values()) == sum(1 for _, f in entries if f) - len(items)
    assert {label for label, _ in out.counts} <= {*ALL_TYPES, "unknown"}
    assert {outcome for _, outcome in out.counts} <= {"ignored", "dead_lettered"}


def test_runtime_keeps_every_valid_entry_of_its_types() -> None:
    for worker_cls in CONSUMER_WORKERS:
        triage = _triage(worker_cls)
        entries = [
            (f"{i + 1}-0".encode(), {b"type": cls.event_type().encode(),
                                     b"data": _json(sample(cls.event_type()))})
            for i, cls in enumerate(worker_cls.event_types)
        ]  # fmt: skip
        out = triage(entries, None)
        assert [i.entry_id for i in out.items] == [eid for eid, _ in entries]
        assert not out.dead and not out.ack


# ------------------------------------------------------------------ fleet publish


def publish_lines(stream: str) -> st.SearchStrategy[list[bytes]]:
    names = sorted(STREAMS[stream].types_by_name())
    line = st.one_of(
        st.binary(max_size=80),
        st.just(b""),
        st.just(b"   \t"),
        json_values.map(_json),
        st.sampled_from(names).map(lambda n: _json(sample(n))),
        mutated_samples().map(lambda m: _encodable(m[1])),
    )
    return st.lists(line, max_size=10)


@FUZZ
@given(st.sampled_from(sorted(STREAMS)), st.data())
def test_publish_lines_never_raise_and_name_every_bad_line(
    stream: str, data: st.DataObject
) -> None:
    raw = data.draw(publish_lines(stream))
    # Lines as a file yields them: split at newlines, each ending with its newline.
    numbered = [(n, line.replace(b"\n", b" ") + b"\n") for n, line in enumerate(raw, start=1)]

    entries, problems = parse_publish_lines(stream, iter(numbered))
    non_blank = [n for n, line in numbered if line.strip()]
    assert len(entries) + len(problems) == len(non_blank), "one outcome per non-blank line"
    named = []
    for problem in problems:
        assert problem.startswith("line "), problem
        number = int(problem.split(":", 1)[0].removeprefix("line "))
        named.append(number)
    assert named == sorted(set(named)) and set(named) <= set(non_blank)
    allowed = set(STREAMS[stream].types_by_name())
    for event in entries:
        entry = encode_entry(event)  # what `fleet publish` sends
        assert set(entry) == {"type", "data"}
        cls = ALL_TYPES[entry["type"].decode()]
        assert entry["type"].decode() in allowed
        decode_data(cls, entry["data"])  # what was accepted decodes again on the consumer side


# ------------------------------------------------------------------ fleet vex import


def _real_documents() -> list[tuple[str, bytes]]:
    if not VEX_DATA.is_dir():
        return []
    return [(p.name, p.read_bytes()) for p in sorted(VEX_DATA.glob("*.json"))]


REAL_DOCUMENTS = _real_documents()
SMALL_DOCUMENTS = [(n, b) for n, b in REAL_DOCUMENTS if len(b) <= SMALL_DOCUMENT]
needs_documents = pytest.mark.skipif(
    not REAL_DOCUMENTS, reason=f"no real VEX documents at {VEX_DATA}"
)


def _parse_or_document_error(data: bytes) -> ParsedDocument | None:
    result = attempt(lambda: parse_document(data), DocumentError)
    if isinstance(result, DocumentError):
        assert str(result).strip() and "\n" not in str(result), "a one-line message"
        return None
    assert isinstance(result, ParsedDocument)
    return result


@needs_documents
def test_every_real_document_parses_or_is_refused_with_one_line() -> None:
    for name, data in REAL_DOCUMENTS:
        parsed = _parse_or_document_error(data)
        if "legacy" not in name:
            # csaf-example.json's one product has a purl without a name: reported, not stored.
            assert parsed is not None and (parsed.records or parsed.skipped), name


@FUZZ
@given(st.binary(max_size=1024))
@example(b"")
@example(b"null")
@example(b'{"@context": "https://openvex.dev/ns/v9"}')
@example(b'{"document": {"csaf_version": "2.0"}}')
def test_vex_parse_document_of_arbitrary_bytes_raises_only_document_error(data: bytes) -> None:
    _parse_or_document_error(data)


@FUZZ
@given(json_values)
def test_vex_parse_document_of_arbitrary_json_raises_only_document_error(value: Any) -> None:
    _parse_or_document_error(_json(value))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_paths(child, (*prefix, index)))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    """A real OpenVEX or CSAF document with values replaced, deleted or added at any depth."""
    _, raw = draw(st.sampled_from(SMALL_DOCUMENTS))
    document = copy.deepcopy(json.loads(raw))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        if not path:
            document = draw(tricky_values)
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(tricky_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(tricky_values)
        else:
            parent.insert(path[-1], draw(tricky_values))
    return json.dumps(document, ensure_ascii=True).encode()


@needs_documents
@FUZZ
@given(mutated_documents())
def test_vex_parse_document_of_mutated_real_documents_raises_only_document_error(
    data: bytes,
) -> None:
    parsed = _parse_or_document_error(data)
    if parsed is not None:
        raw_ids = [record.statement.raw_id for record in parsed.records]
        assert len(raw_ids) == len(set(raw_ids)), "equal statements are kept once"
        for record in parsed.records:
            assert record.statement.component_purl and record.statement.vulnerability_id
            published = record.statement.published_at
            assert published is None or published.utcoffset() is not None
        assert parse_document(data) == parsed, "parsing is deterministic"


@needs_documents
@FUZZ
@given(st.data())
def test_vex_parse_document_of_corrupted_real_bytes_raises_only_document_error(
    data: st.DataObject,
) -> None:
    _, raw = data.draw(st.sampled_from(SMALL_DOCUMENTS))
    buffer = bytearray(raw)
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        at = data.draw(st.integers(min_value=0, max_value=len(buffer)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and at < len(buffer):
            buffer[at] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "insert":
            buffer[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del buffer[at : at + data.draw(st.integers(min_value=1, max_value=16))]
        else:
            del buffer[at:]
    _parse_or_document_error(bytes(buffer))


# ------------------------------------------------------------------ fleet snapshots import


@FUZZ
@given(
    st.binary(max_size=512) | json_values.map(_json),
    st.none() | st.text(max_size=8),
    st.booleans(),
)
@example(b"[]", None, False)
@example(b'{"a": [], "b": []}', None, True)
@example(b'[{"z": 1, "a": [1.5e300, -0.0, 18446744073709551615]}]', None, False)
def test_normalize_payload_raises_only_value_error(
    data: bytes, records_key: str | None, allow_empty: bool
) -> None:
    payload = attempt(
        lambda: normalize_payload(data, records_key=records_key, allow_empty=allow_empty),
        ValueError,
    )
    if isinstance(payload, ValueError):
        assert str(payload).strip()
        return
    assert payload.record_count >= (0 if allow_empty else 1)
    assert payload.normalized_hash.startswith("b3:") and payload.source_hash.startswith("b3:")
    # The canonical form is a fixed point: normalising it again changes nothing.
    again = normalize_payload(payload.normalized, records_key=records_key, allow_empty=True)
    assert again.normalized == payload.normalized


# ------------------------------------------------------------------ hostile JSON (known bugs)

_DEPTH = 1500  # deeper than the interpreter's recursion limit, in about 3 KB


def hostile(kind: str) -> bytes:
    """A ``notification.failed`` event a producer or operator could plausibly send:
    ``nested`` carries an extra field nested 1,500 deep, ``latin1`` was written in
    Latin-1 instead of UTF-8 (its ``error`` text has an umlaut)."""
    event = sample("notification.failed")
    if kind == "nested":
        return _json(event)[:-1] + b',"x":' + b"[" * _DEPTH + b"]" * _DEPTH + b"}"
    event["error"] = "Zeitüberschreitung beim Senden"
    return json.dumps(event, ensure_ascii=False).encode("latin-1")


def _wire(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_data(ALL_TYPES["notification.failed"], data)


def _entry(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event({b"type": b"notification.failed", b"data": data})


def _runtime(data: bytes) -> None:
    [worker_cls] = [w for w in CONSUMER_WORKERS if w.stream == "notify:delivery"]
    out = _triage(worker_cls)([(b"1-0", {b"type": b"notification.failed", b"data": data})], None)
    assert out.items == []
    assert [d.reason for d in out.dead] in (["malformed_json"], ["invalid_event"])


def _publish(data: bytes) -> None:
    entries, problems = parse_publish_lines("notify:delivery", iter([(1, data + b"\n")]))
    assert not entries and len(problems) == 1 and problems[0].startswith("line 1:")


def _vex(data: bytes) -> None:
    with pytest.raises(DocumentError):
        parse_document(data)


def _snapshot(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the documented contract is a bare ValueError
        normalize_payload(b"[" + data + b"]")


_CHECKS = {"wire": _wire, "entry": _entry, "runtime": _runtime, "publish": _publish,
           "vex": _vex, "snapshot": _snapshot}  # fmt: skip


@pytest.mark.parametrize(
    ("parser", "kind"),
    [pytest.param(parser, kind) for parser in _CHECKS for kind in ("nested", "latin1")],
)
def test_hostile_json_fails_the_documented_way(parser: str, kind: str) -> None:
    _CHECKS[parser](hostile(kind))
