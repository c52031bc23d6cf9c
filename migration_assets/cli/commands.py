"""One function per command: read settings, call the engine or the database code, print."""

from __future__ import annotations

import argparse
import shutil
from typing import TYPE_CHECKING

from migration_assets.cli.render import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_UNVERIFIED,
    MigrateProgress,
    err,
    out,
    print_checks,
    print_migrate,
    print_plan,
    print_status,
)
from migration_assets.defs.history import meta_text
from migration_assets.settings import load_settings

if TYPE_CHECKING:
    from migration_assets.engine.session import Session
    from migration_assets.settings import Settings


def open_session(args: argparse.Namespace) -> Session:
    from migration_assets.engine.session import Session

    settings = load_settings(args.env_file)
    return Session.open(settings, settings.plan_path(args.plan))


def cmd_plan(args: argparse.Namespace) -> int:
    from migration_assets.planner import write_plan

    settings = load_settings(args.env_file)
    plan = write_plan(
        settings.source_dsn,
        args.out,
        timeouts=settings.timeouts(),
        rows_per_partition=args.rows_per_partition,
        min_partitions=args.min_partitions,
        split_above=args.split_above,
        schemas=args.schemas,
    )
    print_plan(plan)
    out.print(
        f"plan written to {args.out}: review it, then `migration-assets migrate --plan {args.out}`"
    )
    _warn_of_schema_mode(settings)
    return EXIT_OK


def _warn_of_schema_mode(settings: Settings) -> None:
    """`migrate` refuses in its preflight what would build another schema on the target:
    said here first, while the user is still choosing settings."""
    from migration_assets.db.errors import MigrationError
    from migration_assets.db.schema import alembic_mismatch
    from migration_assets.db.session import connect
    from migration_assets.defs.resources import MigrationOptions
    from migration_assets.settings import SchemaMode

    if settings.migration_schema_mode is not SchemaMode.ALEMBIC:
        return
    try:
        with connect(
            settings.source_dsn, setting="SOURCE_DATABASE_URL", timeouts=settings.timeouts()
        ) as conn:
            problem = alembic_mismatch(conn, MigrationOptions.from_settings(settings).alembic_ini())
    except MigrationError as exc:
        problem = str(exc)
    if problem:
        err.print(
            f"[bold yellow]warning:[/] `migrate` will refuse: {problem}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.submit:
        return _submit(open_session(args), args)
    from migration_assets.engine.local import start_workers

    settings = load_settings(args.env_file)
    plan_path = settings.plan_path(args.plan)
    pool = start_workers(settings, plan_path, args.workers)  # before Dagster is imported
    from migration_assets.engine.migrate import migrate
    from migration_assets.engine.session import Session

    progress = MigrateProgress()
    try:
        report = migrate(
            Session.open(settings, plan_path),
            workers=args.workers,
            force=args.force,
            resync=args.resync,
            on_start=progress.start,
            on_done=progress.done,
            pool=pool,
        )
    finally:
        progress.stop()
        if pool is not None:
            pool.close()
    return print_migrate(report)


def _submit(session: Session, args: argparse.Namespace) -> int:
    """The runs of `migrate`, launched through the webserver as each one's inputs are done:
    the same summary and exit codes as `migrate`."""
    from migration_assets.engine.migrate import migrate
    from migration_assets.engine.submit import DaemonStoppedError, connect_remote

    remote = connect_remote(session)
    out.print(
        f"launching the runs through the Dagster webserver at {remote.webserver.shown}; the "
        "instance's run queue and launcher execute them (Ctrl-C stops launching; runs "
        "already launched go on)."
    )
    progress = MigrateProgress()
    try:
        report = migrate(
            session,
            force=args.force,
            resync=args.resync,
            on_start=progress.start,
            on_done=progress.done,
            remote=remote,
        )
    except KeyboardInterrupt:
        progress.stop()
        out.print(
            "stopped launching; the runs already launched go on (see the UI or "
            "`migration-assets status`). Once they have ended, `migrate --submit` launches "
            "only what is not verified."
        )
        return 130
    except DaemonStoppedError as exc:
        progress.stop()
        err.print("[bold red]stopped following: the daemon is gone.[/]")
        err.print(str(exc), markup=False, soft_wrap=True)
        return EXIT_CONFIG
    progress.stop()
    return print_migrate(report)


def cmd_status(args: argparse.Namespace) -> int:
    from migration_assets.engine.work import partition_statuses

    session = open_session(args)
    code = print_status(session.plan, partition_statuses(session.instance, session.plan))
    print_cutover_state(session)
    return code


def print_cutover_state(session: Session) -> None:
    """A cutover that froze the source says so wherever people look, until undone."""
    from migration_assets.engine.cutover_state import FREEZING, FROZEN, SWITCHED, CutoverState

    state = CutoverState.load(session.settings)
    if state.phase in (FREEZING, FROZEN):
        out.print(
            f"[bold red]the source database {state.database} is frozen by an unfinished "
            "cutover[/]: `migration-assets cutover` finishes it, `migration-assets cutover "
            "--rollback` undoes it.",
            soft_wrap=True,
        )
    elif state.phase == SWITCHED:
        out.print(
            f"cut over: the source database {state.database} stays read-only "
            "(`migration-assets cutover --rollback` makes it writable again)",
            soft_wrap=True,
        )


def cmd_verify(args: argparse.Namespace) -> int:
    session = open_session(args)
    tables = [session.plan.table(name) for name in args.tables] if args.tables else None
    return print_checks(session.run_checks(tables))


def cmd_report(args: argparse.Namespace) -> int:
    from migration_assets.engine.session import failure_message

    if args.check is not None:
        from migration_assets.cli.report_check import check_reports

        return check_reports(args)
    result = open_session(args).write_report(args.out)
    if not result.success:
        out.print(f"[red]report failed:[/] {failure_message(result)}", soft_wrap=True)
        return EXIT_UNVERIFIED
    event = result.get_asset_materialization_events()[0].materialization
    keys = ("json", "markdown", "sequence", "digest", "target_anchor", "complete")
    meta = {k: meta_text(event.metadata, k) for k in keys}
    out.print(
        f"report #{meta['sequence']} written: {meta['json']} and {meta['markdown']}\n"
        f"digest {meta['digest']}; anchored in the Dagster instance, on the target: "
        f"{meta['target_anchor']}",
        soft_wrap=True,
        markup=False,
    )
    complete = meta["complete"] == "True"
    out.print(
        "[green]verdict: COMPLETE[/]"
        if complete
        else "[red]verdict: INCOMPLETE[/] (see the report's problems)"
    )
    return EXIT_OK if complete else EXIT_UNVERIFIED


def cmd_demo(args: argparse.Namespace) -> int:
    from migration_assets.cli.demo import run_demo

    return run_demo(
        patients=args.patients,
        keep=args.keep,
        workers=args.workers,
        seed=args.seed,
        console=out,
        pg_bin=load_settings(args.env_file).migration_pg_bin,  # the one setting a demo reads
    )


def cmd_ui(args: argparse.Namespace) -> int:
    from migration_assets.cli.ui import DemoOptions, run_ui

    return run_ui(
        env_file=args.env_file,
        demo=args.demo,
        port=args.port,
        console=out,
        demo_options=DemoOptions(
            patients=args.patients,
            seed=args.seed,
            rows_per_partition=args.rows_per_partition,
            min_partitions=args.min_partitions,
            split_above=args.split_above,
        ),
    )


def cmd_stack(args: argparse.Namespace) -> int:
    from migration_assets.devstack.stack import DevStack

    DevStack.attach(args.dir).stop()
    shutil.rmtree(args.dir, ignore_errors=True)
    out.print(f"stack in {args.dir} stopped and removed")
    return EXIT_OK
