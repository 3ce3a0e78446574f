"""``fleet contracts``: the published event contracts as files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contracts import export
from workers.shell import fail, out

app = typer.Typer(help="Published event contracts.", no_args_is_help=True)


@app.command("export")
def contracts_export(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Output folder (default: contracts/schemas).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if files differ from code.")
    ] = False,
) -> None:
    """Write a JSON Schema per event type and an AsyncAPI 3.0 document."""
    target = directory or export.SCHEMA_DIR
    if check:
        stale = export.drift(target)
        if stale:
            raise fail(f"contract files differ from the code: {', '.join(stale)}")
        out.print(f"{target}: up to date")
        return
    for path in export.write(target):
        out.print(f"wrote {path}")
