"""`migration-assets`: demo, plan, migrate, cutover, status, verify, report, locate, ui, stack.

Exit codes: 0 everything verified; 1 something did not verify (details printed);
2 configuration or connection problem (the message names the fix).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import psycopg

from migration_assets.cli import commands
from migration_assets.cli.cutover import cmd_cutover
from migration_assets.cli.locate import cmd_locate
from migration_assets.cli.parser import build_parser
from migration_assets.cli.render import EXIT_CONFIG, err
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.devstack.binaries import DevstackError
from migration_assets.plan import PlanError
from migration_assets.settings import SettingsError

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

COMMANDS: dict[str, Callable[..., int]] = {
    "demo": commands.cmd_demo,
    "stack": commands.cmd_stack,
    "plan": commands.cmd_plan,
    "migrate": commands.cmd_migrate,
    "cutover": cmd_cutover,
    "status": commands.cmd_status,
    "verify": commands.cmd_verify,
    "report": commands.cmd_report,
    "locate": cmd_locate,
    "ui": commands.cmd_ui,
}


# Owner-only by default for everything this process and its children create: Dagster's own
# files in DAGSTER_HOME (storage, run logs, schedules), reports, temporary files. Our own
# writers set their modes explicitly (migration_assets.private); this is defence in depth.
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    """The command, under umask 077 while it runs (the caller's is restored afterwards, for
    callers that run commands in their own process, as the tests do)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        return _dispatch(argv)
    finally:
        os.umask(previous)


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except (SettingsError, PlanError, MigrationError, DevstackError) as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        return EXIT_CONFIG
    except psycopg.Error as exc:  # never a raw traceback: it can quote row values
        err.print(f"[bold red]database error:[/] {safe_message(exc)}", markup=True, soft_wrap=True)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        err.print("interrupted: partitions in flight were rolled back; run `migrate` again")
        return 130


# Commands that start no servers and leave nothing for exit handlers to do: their runs are
# recorded, their workers joined and their connections closed before `main` returns.
QUICK_EXIT = frozenset({"plan", "migrate", "cutover", "status", "verify", "report", "locate"})


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script. Tearing down an interpreter with Dagster loaded takes most of a
    second (measured: 0.9 s of a 9 s no-op re-run), so the commands above leave without it,
    once their output is flushed."""
    args = list(sys.argv[1:] if argv is None else argv)
    code = main(args)
    if args and args[0] in QUICK_EXIT:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
