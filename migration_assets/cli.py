"""`migration-assets`: demo, plan, migrate, status, verify, report, locate, ui.

Exit codes: 0 everything verified; 1 something did not verify (details printed);
2 configuration or connection problem (the message names the fix).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from migration_assets import __version__
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.plan import (
    DEFAULT_MIN_PARTITIONS,
    DEFAULT_ROWS_PER_PARTITION,
    MIN_ROWS_TO_SPLIT,
    PlanError,
)
from migration_assets.settings import SettingsError, load_settings

# Piped output gets a generous width: folded table names are hard to grep.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    import dagster as dg

    from migration_assets.plan import MigrationPlan, TablePlan
    from migration_assets.runner import MigrateReport, Runner

EXIT_OK, EXIT_UNVERIFIED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migration-assets",
        description="Move a PostgreSQL database into Supabase as verified Dagster assets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="throwaway servers, seed, plan, migrate, verify")
    demo.add_argument("--patients", type=int, default=10_000)
    demo.add_argument("--keep", action="store_true", help="leave the servers running")
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--seed", type=int, default=42)

    ui = sub.add_parser(
        "ui", help="the Dagster UI (webserver + daemon) on your settings or a throwaway stack"
    )
    ui.add_argument("--port", type=int, default=3000, help="the UI's port on 127.0.0.1")
    ui.add_argument("--demo", action="store_true", help="a throwaway stack even if configured")
    ui.add_argument("--patients", type=int, default=10_000, help="demo: patients to seed")
    ui.add_argument("--seed", type=int, default=42, help="demo: seed of the synthetic data")
    ui.add_argument("--rows-per-partition", type=int, default=DEFAULT_ROWS_PER_PARTITION)
    ui.add_argument("--min-partitions", type=int, default=DEFAULT_MIN_PARTITIONS)
    ui.add_argument("--split-above", type=int, default=MIN_ROWS_TO_SPLIT)

    stack = sub.add_parser("stack", help="stop a stack left running by `demo --keep`")
    stack.add_argument("action", choices=["down"])
    stack.add_argument("dir", type=Path, help="the stack's directory (printed by demo --keep)")

    plan = sub.add_parser("plan", help="reflect the source and write a plan file")
    plan.add_argument("--out", type=Path, required=True)
    plan.add_argument("--rows-per-partition", type=int, default=DEFAULT_ROWS_PER_PARTITION)
    plan.add_argument("--min-partitions", type=int, default=DEFAULT_MIN_PARTITIONS)
    plan.add_argument(
        "--split-above",
        type=int,
        default=MIN_ROWS_TO_SPLIT,
        help="tables with fewer rows get a single partition",
    )
    plan.add_argument(
        "--schema",
        action="append",
        dest="schemas",
        help="only these schemas (repeatable; default: all user schemas)",
    )

    migrate = sub.add_parser("migrate", help="copy every missing or failed partition")
    _plan_option(migrate)
    migrate.add_argument("--workers", type=int, default=2)
    migrate.add_argument("--force", action="store_true", help="re-copy every partition")
    migrate.add_argument(
        "--resync",
        action="store_true",
        help="re-checksum every slice; re-copy only those that differ",
    )

    status = sub.add_parser("status", help="partitions materialized / failed / missing")
    _plan_option(status)

    verify = sub.add_parser("verify", help="run every check; exit 1 if an ERROR check fails")
    _plan_option(verify)
    verify.add_argument("--tables", nargs="+", help="only these tables (schema.table)")

    report = sub.add_parser("report", help="write or check the audit report")
    _plan_option(report)
    what = report.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="write the next report of the chain into DIR")
    what.add_argument("--check", type=Path, help="verify the digest chain of the reports in DIR")

    locate = sub.add_parser(
        "locate", help="where the row of a reported key hash (key#..., row#...) lives"
    )
    locate.add_argument("hash", help="as reported, e.g. key#3f9a1c2b7d4e")
    _plan_option(locate)
    locate.add_argument("--table", help="only this table (schema.table)")
    locate.add_argument(
        "--on",
        choices=["source", "target"],
        default="source",
        help="the server to search (default: source; `extra` rows exist on the target only)",
    )
    return parser


def _plan_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", type=Path, help="plan file (default: $MIGRATION_PLAN)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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


# ---------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    from migration_assets.db.session import connect
    from migration_assets.plan import build_plan, save_plan

    settings = load_settings(args.env_file)
    with connect(settings.source_dsn, setting="SOURCE_DATABASE_URL") as conn:
        plan = build_plan(
            conn,
            source_dsn=settings.source_dsn,
            rows_per_partition=args.rows_per_partition,
            min_partitions=args.min_partitions,
            split_above=args.split_above,
            schemas=args.schemas,
        )
    save_plan(plan, args.out)
    _print_plan(plan)
    out.print(
        f"plan written to {args.out}: review it, then `migration-assets migrate --plan {args.out}`"
    )
    return EXIT_OK


def _print_plan(plan: MigrationPlan) -> None:
    table = Table(title=f"plan: {len(plan.tables)} tables, {plan.total_partitions()} partitions")
    for column in ("table", "rows (est.)", "key", "slices"):
        table.add_column(column, overflow="fold")
    for t in plan.tables:
        table.add_row(
            t.qualified,
            f"{t.row_estimate:,}",
            ", ".join(t.key) or "(none)",
            f"{t.slicing.partitions} {t.slicing.strategy.value}",
        )
    out.print(table)
    for name, why in sorted(plan.skipped.items()):
        out.print(f"  not copied: {name}: {why}")


# ---------------------------------------------------------------- migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    from migration_assets.runner import open_runner

    runner = open_runner(load_settings(args.env_file), args.plan)
    report = _migrate_with_progress(
        runner, workers=args.workers, force=args.force, resync=args.resync
    )
    return _print_migrate(report)


def _migrate_with_progress(
    runner: Runner, *, workers: int, force: bool, resync: bool
) -> MigrateReport:
    from migration_assets.runner import Outcome, migrate

    started = time.perf_counter()
    rows = 0
    progress = Progress(
        TextColumn("[bold]migrate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("partitions"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task_id = progress.add_task("migrate", total=None, rate="")

    def on_start(total: int, done: int) -> None:
        progress.update(task_id, total=total + done, completed=done)
        progress.start()

    def on_done(outcome: Outcome) -> None:
        nonlocal rows
        rows += outcome.rows
        rate = rows / max(time.perf_counter() - started, 1e-6)
        progress.update(task_id, advance=1, rate=f"{rows:,} rows, {rate:,.0f} rows/s")
        if not outcome.ok:
            progress.console.print(
                f"  [red]FAILED[/] {outcome.task.table} partition {outcome.task.partition}: "
                f"{outcome.message}",
                soft_wrap=True,
            )

    try:
        return migrate(
            runner, workers=workers, force=force, resync=resync, on_start=on_start, on_done=on_done
        )
    finally:
        progress.stop()


def _print_migrate(report: MigrateReport) -> int:
    if not report.schema_ok:
        err.print("[bold red]schema step failed; no data was copied.[/]")
        err.print(report.schema_message, markup=False)
        return EXIT_UNVERIFIED
    copied = len(report.outcomes) - len(report.failed)
    if report.differing_slices is not None:
        out.print(
            f"resync: {report.differing_slices} of {report.total_partitions} slices "
            f"differed; re-copied {report.differing_slices}"
        )
    out.print(
        f"migrate: {copied} partition(s) copied and verified, {len(report.failed)} failed, "
        f"{report.skipped_partitions} already verified; {report.rows:,} rows in "
        f"{report.seconds:.1f}s"
    )
    out.print("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items()))
    if report.deferred_indexes:
        out.print(f"  {report.deferred_indexes} secondary index(es) were built after the load")
    if report.index_message:
        out.print(f"[yellow]{report.index_message}[/]", soft_wrap=True)
    if report.aborted:
        not_run = report.total_partitions - report.skipped_partitions - len(report.outcomes)
        out.print(
            f"[red]stopped early[/]: a database became unreachable, {not_run} partition(s) "
            "were not attempted. Once it is back, run `migration-assets migrate` again: it "
            "redoes only what is not verified.",
            soft_wrap=True,
        )
        return EXIT_UNVERIFIED
    if report.failed:
        out.print(
            "failed partitions are FAILED in Dagster: run `migration-assets migrate` "
            "again (or backfill failed partitions in the UI) to redo only those."
        )
        return EXIT_UNVERIFIED
    if not report.sequences_ok:
        out.print("[red]the sequences step did not verify:[/]")
        out.print(report.sequences_message, markup=False, soft_wrap=True)
        return EXIT_UNVERIFIED
    out.print("[green]every partition verified; sequences set[/]")
    return EXIT_OK


# ---------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from migration_assets.runner import Status, open_runner

    runner = open_runner(load_settings(args.env_file), args.plan)
    statuses = runner.statuses()
    table = Table(title="partitions per table")
    for column in ("asset", "materialized", "failed", "missing", "in progress", "total"):
        table.add_column(column, justify="right" if column != "asset" else "left", overflow="fold")
    incomplete = 0
    for t in runner.plan.tables:
        counts = dict.fromkeys(Status, 0)
        for status in statuses[t.qualified].values():
            counts[status] += 1
        incomplete += counts[Status.FAILED] + counts[Status.MISSING] + counts[Status.IN_PROGRESS]
        table.add_row(
            "/".join(t.asset_path), *(str(counts[s]) for s in Status), str(t.slicing.partitions)
        )
    out.print(table)
    return EXIT_OK if incomplete == 0 else EXIT_UNVERIFIED


# ---------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace) -> int:
    from migration_assets.runner import open_runner

    runner = open_runner(load_settings(args.env_file), args.plan)
    tables = [runner.plan.table(name) for name in args.tables] if args.tables else None
    return print_checks(runner.run_checks(tables))


def print_checks(result: dg.ExecuteInProcessResult) -> int:
    """One row per check; exit 1 when an ERROR check failed or a check could not run."""
    from migration_assets.runner import _failure_message, crashed

    table = Table(title="checks (source vs target, target posture)")
    for column in ("asset", "check", "result", "detail"):
        table.add_column(column, overflow="fold")
    import dagster as dg

    failed = 0
    evaluations = sorted(
        result.get_asset_check_evaluations(),
        key=lambda e: (e.asset_key.to_user_string(), e.check_name),
    )
    for e in evaluations:
        error = e.severity == dg.AssetCheckSeverity.ERROR
        failed += int(not e.passed and error)
        mark = "[green]pass[/]" if e.passed else ("[red]FAIL[/]" if error else "[yellow]warn[/]")
        table.add_row(
            e.asset_key.to_user_string(),
            e.check_name,
            mark,
            _detail(e.check_name, dict(e.metadata)),
        )
    out.print(table)
    if crashed(result):
        out.print(f"[red]a check could not run:[/] {_failure_message(result)}", soft_wrap=True)
        return EXIT_UNVERIFIED
    out.print(f"{len(evaluations) - failed} of {len(evaluations)} checks passed")
    return EXIT_OK if failed == 0 else EXIT_UNVERIFIED


def _value(metadata: dict[str, object], key: str) -> str:
    from migration_assets.defs.history import meta_text

    return meta_text(metadata, key)


def _detail(name: str, metadata: dict[str, object]) -> str:
    if "source_rows" in metadata:
        return f"source {_value(metadata, 'source_rows')}, target {_value(metadata, 'target_rows')}"
    if name == "table_checksum" and "differing_rows" in metadata:
        keys = _value(metadata, "keys").replace("\n", "; ").replace("- ", "")
        return (
            f"slices {_value(metadata, 'differing_slices')}; "
            f"{_value(metadata, 'differing_rows')} row(s): {keys}"
        )
    for key in ("details", "orphans", "behind", "grants", "problems", "error", "fix"):
        if key in metadata and _value(metadata, key) not in ("none", ""):
            return _value(metadata, key).replace("\n", "; ").replace("- ", "")
    if "worst_p95_ms" in metadata:
        return (
            f"connect {_value(metadata, 'connect_ms')} ms, worst p95 "
            f"{_value(metadata, 'worst_p95_ms')} ms"
        )
    if "protocol" in metadata:
        return f"{_value(metadata, 'protocol')} {_value(metadata, 'cipher')}"
    return ""


def cmd_report(args: argparse.Namespace) -> int:
    from migration_assets.report import check_chain

    if args.check is not None:
        problems = check_chain(args.check)
        for problem in problems:
            out.print(f"[red]TAMPERED or BROKEN:[/] {problem}", soft_wrap=True)
        if not problems:
            out.print(f"[green]report chain in {args.check} is intact[/]")
        return EXIT_OK if not problems else EXIT_UNVERIFIED
    from migration_assets.runner import _failure_message, open_runner

    runner = open_runner(load_settings(args.env_file), args.plan)
    result = runner.write_report(args.out)
    if not result.success:
        out.print(f"[red]report failed:[/] {_failure_message(result)}", soft_wrap=True)
        return EXIT_UNVERIFIED
    event = result.get_asset_materialization_events()[0].materialization
    meta = {k: _value(dict(event.metadata), k) for k in ("json", "markdown", "digest", "complete")}
    out.print(f"report written: {meta['json']} and {meta['markdown']}\ndigest {meta['digest']}")
    complete = meta["complete"] == "True"
    out.print(
        "[green]verdict: COMPLETE[/]"
        if complete
        else "[red]verdict: INCOMPLETE[/] (see the report's problems)"
    )
    return EXIT_OK if complete else EXIT_UNVERIFIED


# ---------------------------------------------------------------- locate


def cmd_locate(args: argparse.Namespace) -> int:
    """Stream key text from one server, hash it with the operator's secret, print positions:
    the operator gets a `SELECT ... WHERE ctid = ...` to run, never the key itself."""
    from migration_assets.db.keyhash import KEY_PREFIX, ROW_PREFIX, load_secret, parse_label
    from migration_assets.db.locate import find_rows
    from migration_assets.db.session import connect
    from migration_assets.plan import load_plan

    settings = load_settings(args.env_file)
    try:
        kind, digest = parse_label(args.hash)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    plan = load_plan(settings.plan_path(args.plan))
    tables = _locate_tables(plan, args.table, kind)
    settings.export_environment()
    secret = load_secret(create=False)
    dsn, setting = (
        (settings.source_dsn, "SOURCE_DATABASE_URL")
        if args.on == "source"
        else (settings.target_dsn, "SUPABASE_DB_URL")
    )
    found = 0
    with connect(dsn, setting=setting, sslrootcert=settings.sslrootcert) as conn:
        for t in tables:
            prefix = KEY_PREFIX if t.key else ROW_PREFIX
            for where in find_rows(
                conn,
                schema=t.schema_name,
                table=t.name,
                columns=t.key or t.copy_columns,
                partitioned=t.partitioned,
                wanted=prefix + digest,
                secret=secret,
                prefix=prefix,
            ):
                found += 1
                out.print(f"{t.qualified} on the {args.on}: ctid {where.ctid}", markup=False)
                out.print(f"  {where.select}", markup=False, soft_wrap=True)
    if found:
        out.print("(a ctid holds until the row is updated or the table is rewritten)")
        return EXIT_OK
    out.print(
        f"no row of {len(tables)} table(s) on the {args.on} hashes to {prefix_of(kind)}{digest}: "
        "the row may exist on the other side only (`--on target` for `extra` rows), or the "
        "hash was made with another secret (MIGRATION_KEY_SECRET, $DAGSTER_HOME/key_secret)",
        soft_wrap=True,
    )
    return EXIT_UNVERIFIED


def prefix_of(kind: str | None) -> str:
    return f"{kind}#" if kind else ""


def _locate_tables(plan: MigrationPlan, name: str | None, kind: str | None) -> list[TablePlan]:
    """Tables whose rows are reported by hash (natural keys: key#; no key: row#)."""
    from migration_assets.db.keyhash import is_surrogate

    if name:
        table = plan.table(name)
        if is_surrogate(table.key_types):
            raise PlanError(
                f"{name} has a surrogate key ({', '.join(table.key)}): reports show its keys "
                "as they are, there is no hash to locate"
            )
        return [table]
    hashed = [t for t in plan.tables if not is_surrogate(t.key_types)]
    return [t for t in hashed if kind is None or (kind == "key") == bool(t.key)]


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from migration_assets.demo import run_demo

    return run_demo(
        patients=args.patients, keep=args.keep, workers=args.workers, seed=args.seed, console=out
    )


def cmd_ui(args: argparse.Namespace) -> int:
    from migration_assets.ui import DemoOptions, run_ui

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
    import shutil

    from migration_assets.devstack.stack import DevStack

    DevStack.attach(args.dir).stop()
    shutil.rmtree(args.dir, ignore_errors=True)
    out.print(f"stack in {args.dir} stopped and removed")
    return EXIT_OK


COMMANDS = {
    "demo": cmd_demo,
    "stack": cmd_stack,
    "plan": cmd_plan,
    "migrate": cmd_migrate,
    "status": cmd_status,
    "verify": cmd_verify,
    "report": cmd_report,
    "locate": cmd_locate,
    "ui": cmd_ui,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
