"""The design notes stay consistent with the code they describe: every exit code is in
both exit-code tables, and every relative link in README and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workers.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (any level) up to the next heading of that level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"no section {heading!r}"
    level = len(match[1])
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


@pytest.mark.parametrize("path", ["README.md", "docs/operations.md"])
def test_every_exit_code_is_in_the_table(path: str) -> None:
    table = section((ROOT / path).read_text(encoding="utf-8"), "Exit codes")
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+?)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize(
    "source", [ROOT / "README.md", *DOCS], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_resolve(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", text):
        if "://" in target:
            continue
        path = (source.parent / target) if target else source
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor[1:] not in anchors(path):
            broken.append(f"{target}{anchor}")
    assert not broken
