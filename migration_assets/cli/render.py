"""What the commands print: tables, progress, summaries. No value of a patient row is ever
in what they are given, and a DSN reaches them masked."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from migration_assets.defs.history import meta_text

if TYPE_CHECKING:
    import dagster as dg

    from migration_assets.engine.migrate import MigrateReport
    from migration_assets.engine.session import Outcome
    from migration_assets.engine.work import Status
    from migration_assets.plan import MigrationPlan

# Piped output gets a generous width: folded table names are hard to grep.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)

EXIT_OK, EXIT_UNVERIFIED, EXIT_CONFIG = 0, 1, 2
DETAIL_KEYS = ("details", "orphans", "behind", "grants", "problems", "error", "fix")


def print_plan(plan: MigrationPlan) -> None:
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


class MigrateProgress:
    """The progress bar of `migrate` (local or submitted): partitions, rows, rate."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.rows = 0
        self.bar = Progress(
            TextColumn("[bold]migrate"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("partitions"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self.task = self.bar.add_task("migrate", total=None, rate="")

    def start(self, total: int, done: int) -> None:
        self.bar.update(self.task, total=total + done, completed=done)
        self.bar.start()

    def done(self, outcome: Outcome) -> None:
        self.rows += outcome.rows
        rate = self.rows / max(time.perf_counter() - self.started, 1e-6)
        self.bar.update(self.task, advance=1, rate=f"{self.rows:,} rows, {rate:,.0f} rows/s")
        if not outcome.ok:
            self.bar.console.print(
                f"  [red]FAILED[/] {outcome.spec.label}: {outcome.message}", soft_wrap=True
            )

    def stop(self) -> None:
        self.bar.stop()


def print_migrate(report: MigrateReport) -> int:
    """The summary, and the exit code it means."""
    if not report.schema_ok:
        err.print("[bold red]preflight or schema step failed; no data was copied.[/]")
        err.print(report.schema_message, markup=False, soft_wrap=True)
        return EXIT_CONFIG if report.schema_crashed else EXIT_UNVERIFIED
    copied = len(report.outcomes) - len(report.failed)
    if report.resync:
        out.print(
            f"resync: {report.recopied} of {len(report.outcomes)} slices differed on the two "
            f"sides; re-copied {report.recopied}"
        )
    if report.reaped_runs:
        out.print(f"  {report.reaped_runs} run(s) whose worker had died were failed and redone")
    out.print(
        f"migrate: {copied} partition(s) copied and verified, {len(report.failed)} failed, "
        f"{report.skipped_partitions} already verified; {report.rows:,} rows in "
        f"{report.seconds:.1f}s"
    )
    out.print("  time: " + report.describe())
    if report.indexes_rebuilt:
        out.print(f"  {report.indexes_rebuilt} secondary index(es) were built after the load")
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
        out.print("[red]the index or sequences step did not verify:[/]")
        out.print(report.sequences_message, markup=False, soft_wrap=True)
        return EXIT_UNVERIFIED
    out.print("[green]every partition verified; indexes rebuilt; sequences set[/]")
    print_audit(report.audit, report.audit_complete)
    return EXIT_OK


def print_audit(path: str, complete: bool) -> None:
    """Where the graph's last asset left the report; after a migration alone it is
    incomplete until the whole-table checks have run."""
    if complete:
        out.print(f"  audit report: {path} (complete)", soft_wrap=True)
        return
    out.print(
        f"  audit report: {path} (incomplete: its problems list says why). For the whole-table "
        "checks run `migration-assets verify` (in the UI: Checks, Execute all), then "
        "`migration-assets report`.",
        soft_wrap=True,
    )


def print_status(plan: MigrationPlan, statuses: dict[str, dict[str, Status]]) -> int:
    from migration_assets.engine.work import Status

    table = Table(title="partitions per table")
    for column in ("asset", "materialized", "failed", "missing", "in progress", "total"):
        table.add_column(column, justify="right" if column != "asset" else "left", overflow="fold")
    incomplete = 0
    for t in plan.tables:
        counts = dict.fromkeys(Status, 0)
        for status in statuses[t.qualified].values():
            counts[status] += 1
        incomplete += counts[Status.FAILED] + counts[Status.MISSING] + counts[Status.IN_PROGRESS]
        table.add_row(
            "/".join(t.asset_path), *(str(counts[s]) for s in Status), str(t.slicing.partitions)
        )
    out.print(table)
    return EXIT_OK if incomplete == 0 else EXIT_UNVERIFIED


def print_checks(result: dg.ExecuteInProcessResult) -> int:
    """One row per check; exit 1 when an ERROR check failed or a check could not run."""
    import dagster as dg

    from migration_assets.engine.session import crashed, failure_message

    table = Table(title="checks (source vs target, target posture)")
    for column in ("asset", "check", "result", "detail"):
        table.add_column(column, overflow="fold")
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
            e.asset_key.to_user_string(), e.check_name, mark, detail(e.check_name, e.metadata)
        )
    out.print(table)
    if crashed(result):
        out.print(f"[red]a check could not run:[/] {failure_message(result)}", soft_wrap=True)
        return EXIT_UNVERIFIED
    out.print(f"{len(evaluations) - failed} of {len(evaluations)} checks passed")
    return EXIT_OK if failed == 0 else EXIT_UNVERIFIED


def detail(name: str, metadata: object) -> str:
    """The one line a person needs from a check's metadata."""
    meta = dict(metadata)  # type: ignore[call-overload]
    if "source_rows" in meta:
        return f"source {meta_text(meta, 'source_rows')}, target {meta_text(meta, 'target_rows')}"
    if name == "table_checksum" and "differing_rows" in meta:
        keys = meta_text(meta, "keys").replace("\n", "; ").replace("- ", "")
        return (
            f"slices {meta_text(meta, 'differing_slices')}; "
            f"{meta_text(meta, 'differing_rows')} row(s): {keys}"
        )
    for key in DETAIL_KEYS:
        if key in meta and meta_text(meta, key) not in ("none", ""):
            return meta_text(meta, key).replace("\n", "; ").replace("- ", "")
    if "worst_p95_ms" in meta:
        return (
            f"connect {meta_text(meta, 'connect_ms')} ms, worst p95 "
            f"{meta_text(meta, 'worst_p95_ms')} ms"
        )
    if "protocol" in meta:
        return f"{meta_text(meta, 'protocol')} {meta_text(meta, 'cipher')}"
    return ""
