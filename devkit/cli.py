"""``fleet demo``, plugged into the ``fleet`` command through the ``streamfleet.cli``
entry-point group (``pyproject.toml``), so the product never imports the dev kit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from devkit.demo import run_demo
from workers.errors import ConfigError, FleetError
from workers.logs import configure_logging
from workers.shell import err, fail, out

app = typer.Typer()


@app.command()
def demo(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the embedded servers keep their data.")
    ] = Path(".state/demo"),
    scale: Annotated[float, typer.Option(min=0.01, help="Workload size multiplier.")] = 1.0,
) -> None:
    """Start the embedded stack, run every worker on a realistic workload, print a summary."""
    configure_logging("warning", "console")
    try:
        run_demo(state_dir, scale=scale, console=out)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except FleetError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("interrupted; embedded servers stopped")
        raise typer.Exit(130) from None
