"""The ``fleet`` command line: the composition root of the product.

It imports every command group explicitly, the root's own (``run``, ``migrate``,
``publish``, ``status``, ``top``, ``dlq``, ``partitions``, ``consumers``, ``trim``,
``contracts``) and
the worker packages' (``tte``, ``vex``, ``snapshots``), and mounts them on one Typer
app. Commands that live above the product (the dev kit's ``fleet demo``) are plugged in
through the ``streamfleet.cli`` entry-point group, so nothing here imports upward
(``docs/architecture.md``).

Every command reads the same ``FLEET_*`` settings as the workers. Bad input ends with
one ``error: …`` line and an exit code of its kind (README, "Exit codes"), never a
traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

import typer

# typer vendors click since 0.26: its parser raises these, which typer exports nowhere
# else.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from workers.cli import contracts, dlq, maintenance, partitions, publish, run, status, top
from workers.errors import ConfigError, ExitCode
from workers.export import cli as export_cli
from workers.scan_metrics import cli as scan_metrics_cli
from workers.shell import fail
from workers.snapshot_retention import cli as snapshot_retention_cli
from workers.vex_consensus import cli as vex_consensus_cli

PLUGIN_GROUP = "streamfleet.cli"
"""Entry points in this group add commands: a :class:`typer.Typer` (its commands are
merged into ``fleet``) or a function (a command named after the entry point)."""

app = typer.Typer(
    name="fleet",
    help="streamfleet: event-driven workers on Valkey streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for commands in (run.app, publish.app, status.app, top.app, maintenance.app):
    app.add_typer(commands)
app.add_typer(dlq.app, name="dlq")
app.add_typer(partitions.app, name="partitions")
app.add_typer(contracts.app, name="contracts")
app.command("tte")(scan_metrics_cli.tte)
# `fleet vex export|verify` are the export package's, mounted beside the vex commands.
vex_consensus_cli.app.command("export")(export_cli.vex_export)
vex_consensus_cli.app.command("verify")(export_cli.vex_verify)
app.add_typer(vex_consensus_cli.app, name="vex")
app.add_typer(export_cli.app, name="export")
app.add_typer(snapshot_retention_cli.app, name="snapshots")


def _plug_in(entry: EntryPoint) -> None:
    try:
        target = entry.load()
    except ModuleNotFoundError as exc:
        # Declared by the distribution but not shipped in this install (the container
        # image carries no dev kit): the command is simply not there.
        if exc.name is not None and entry.value.startswith(exc.name.split(".")[0]):
            return
        raise
    if isinstance(target, typer.Typer):
        app.add_typer(target)
    else:
        app.command(entry.name)(target)


for _entry in entry_points(group=PLUGIN_GROUP):
    _plug_in(_entry)


def main() -> None:
    """Run ``fleet``. Every failure ends as one ``error:`` line and its exit code
    (README, "Exit codes"), the command-line parser's own usage errors included."""
    try:
        code = app(prog_name="fleet", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()  # a group called without a command: its help, as asked for
        code = exc.exit_code
    except UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(f"{exc.format_message().rstrip('.')}{hint}", ExitCode.USAGE)
        code = ExitCode.USAGE
    except ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
        code = exc.exit_code
    except typer.Abort:
        fail("aborted")
        code = ExitCode.FAILED
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else ExitCode.OK)


__all__ = ["PLUGIN_GROUP", "app", "main"]
