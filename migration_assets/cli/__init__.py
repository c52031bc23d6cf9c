"""`migration-assets`: demo, plan, migrate, cutover, status, verify, report, locate, ui, stack.

Exit codes: 0 everything verified; 1 something did not verify (details printed);
2 configuration or connection problem (the message names the fix).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import psycopg

from migration_assets.cli import commands
from migration_assets.cli.cutover import cmd_cutover
from migration_assets.cli.locate import cmd_locate
from migration_assets.cli.parser import build_parser
from migration_assets.cli.render import EXIT_CONFIG, err
from migration_assets.db.errors import MigrationError, safe_message
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except (SettingsError, PlanError, MigrationError) as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        return EXIT_CONFIG
    except psycopg.Error as exc:  # never a raw traceback: it can quote row values
        err.print(f"[bold red]database error:[/] {safe_message(exc)}", markup=True, soft_wrap=True)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        err.print("interrupted: partitions in flight were rolled back; run `migrate` again")
        return 130
