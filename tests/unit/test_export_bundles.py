"""Bundle files are a function of the rows alone: key order, row order and the renderer
change nothing."""

from __future__ import annotations

import json
from typing import Any

from workers.export import bundles

ROWS: list[dict[str, Any]] = [
    {
        "vulnerability_id": "CVE-2025-2001",
        "component_purl": "pkg:npm/right-pad@2.0.0",
        "resolved_status": "fixed",
        "confidence": 0.6429,
        "conflict_detected": False,
        "contributing_vex_ids": ["0c7f6b1e-3f52-4f0e-9a52-2a8f0e9f1f00"],
        "computed_at": "2025-03-01T00:00:00+00:00",
        "digest": "ab" * 32,
    },
    {
        "component_purl": "pkg:npm/left-pad@1.3.0",
        "vulnerability_id": "CVE-2025-2001",
        "resolved_status": "not_affected",
        "confidence": 1.0,
        "conflict_detected": True,
        "contributing_vex_ids": [],
        "computed_at": None,
        "digest": "cd" * 32,
        "note": 'ünïcödé, a "quote", a \\ and a\nnewline, \u2028',
        "extra": {},
    },
]


def test_json_files_are_the_bytes_json_dumps_would_write() -> None:
    value = {"consensus": ROWS, "count": 12345678901234567890, "empty": []}
    expected = (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    assert bundles.json_file(value) == expected


def test_vex_files_ignore_row_and_key_order() -> None:
    shuffled = [dict(reversed(list(r.items()))) for r in reversed(ROWS)]
    for fmt in bundles.VEX_FORMATS:
        assert bundles.vex_files(ROWS, fmt) == bundles.vex_files(shuffled, fmt)
    (data,) = bundles.vex_files(ROWS, "openvex").values()
    document = json.loads(data)
    assert [s["products"][0]["@id"] for s in document["statements"]] == [
        "pkg:npm/left-pad@1.3.0",
        "pkg:npm/right-pad@2.0.0",
    ]
    assert document["timestamp"] == "2025-03-01T00:00:00+00:00"
