"""``fleet demo``, plugged into the ``fleet`` command through the ``streamfleet.cli``
entry-point group (``pyproject.toml``), so the product never imports the dev kit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from devkit.demo import run_demo
from devkit.serve import run_serve
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
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Keep every worker running under a steady trickle of events until Ctrl-C.",
        ),
    ] = False,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="--serve: the ops HTTP port (0: any free one).")
    ] = 8080,
    rate: Annotated[
        float, typer.Option(min=0.1, max=10_000, help="--serve: notifications a second.")
    ] = 20.0,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus/--no-prometheus",
            help="--serve: start Debian's prometheus with our rules when it is installed.",
        ),
    ] = True,
) -> None:
    """Start the embedded stack, run every worker on a realistic workload, print a summary
    (with --serve: keep it running under a steady trickle until Ctrl-C)."""
    configure_logging("warning", "console")
    try:
        if serve:
            run_serve(state_dir, port=port, rate=rate, with_prometheus=prometheus, console=out)
            return
        run_demo(state_dir, scale=scale, console=out)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except FleetError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("interrupted; embedded servers stopped")
        raise typer.Exit(130) from None
