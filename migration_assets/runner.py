"""Headless runs go through Dagster, not around it.

Every partition the CLI copies is a Dagster run recorded in DAGSTER_HOME, so the UI
shows exactly what the CLI did and partition status stays the checkpoint. Workers are
separate processes (copying is CPU-bound in Python); each loads the definitions once.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from queue import Empty
from typing import Any

import dagster as dg
import psycopg
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from migration_assets.db.copy import LOCK_NAMESPACE
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.db.indexes import (
    Deferred,
    defer_indexes,
    drop_state_if_empty,
    is_empty,
    recorded,
    restore_index,
)
from migration_assets.db.session import Connection
from migration_assets.defs.assets import (
    SCHEMA_KEY,
    SEQUENCES_KEY,
    SLICE_CHECKSUM,
    SLICE_ROW_COUNT,
)
from migration_assets.defs.build import build_definitions, build_resources
from migration_assets.defs.history import latest_materializations, meta_text
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.plan import MigrationPlan, TablePlan, load_plan
from migration_assets.settings import Settings

TAG_LAUNCHED_BY = "migration_assets/launched_by"
TAG_PID = "migration_assets/pid"
TAG_HOST = "migration_assets/host"
# The CLI prints its own (PHI-safe) summary; Dagster's console echo would only repeat it.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

warnings.filterwarnings("ignore", module="dagster")
warnings.filterwarnings("ignore", message=".*is currently in preview.*")
warnings.filterwarnings("ignore", message=".*is currently in beta.*")


class Status(StrEnum):
    MATERIALIZED = "materialized"
    FAILED = "failed"
    MISSING = "missing"
    IN_PROGRESS = "in progress"


@dataclass(frozen=True)
class Task:
    table: str  # qualified
    partition: str
    weight: int = 0


@dataclass(frozen=True)
class Outcome:
    task: Task
    ok: bool
    rows: int
    seconds: float
    message: str = ""
    run_id: str = ""


@dataclass
class MigrateReport:
    aborted: str = ""  # why the run stopped dispatching partitions early
    schema_ok: bool = False
    schema_message: str = ""
    sequences_message: str = ""
    deferred_indexes: int = 0
    index_message: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    skipped_partitions: int = 0
    total_partitions: int = 0
    sequences_ok: bool = False
    differing_slices: int | None = None  # only for --resync
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return self.schema_ok and not self.failed and self.sequences_ok and not self.aborted

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.outcomes if o.ok)


@dataclass
class Runner:
    """The plan, its definitions and the instance: what every command works with."""

    settings: Settings
    plan_path: Path
    plan: MigrationPlan
    defs: dg.Definitions
    instance: DagsterInstance

    @classmethod
    def open(cls, settings: Settings, plan_path: Path) -> Runner:
        settings.require("SOURCE_DATABASE_URL", "SUPABASE_DB_URL", "DAGSTER_HOME")
        settings.export_environment()
        os.environ["MIGRATION_PLAN"] = str(plan_path.resolve())
        assert settings.dagster_home is not None
        _prepare_dagster_home(settings.dagster_home)
        plan = load_plan(plan_path)
        instance = DagsterInstance.get()
        # dagster-postgres opens a new connection for every storage call by default (NullPool),
        # about 70 per run: more than the copy of a small slice costs. A long-lived process
        # may hold a small pool, as the webserver does.
        instance.optimize_for_webserver(
            statement_timeout=120_000, pool_recycle=3600, max_overflow=4
        )
        return cls(settings, plan_path, plan, build_definitions(plan), instance)

    @property
    def source(self) -> SourceDatabase:
        """For work outside Dagster runs (locks, comparisons): values from settings."""
        return SourceDatabase(url=self.settings.source_dsn)

    @property
    def target(self) -> TargetDatabase:
        return TargetDatabase(
            url=self.settings.target_dsn,
            sslrootcert=self.settings.sslrootcert or "",
            pooler_url=(
                self.settings.supabase_pooler_url.get_secret_value()
                if self.settings.supabase_pooler_url
                else ""
            ),
        )

    # -------------------------------------------------------------- one run

    def materialize(
        self,
        selection: dg.AssetSelection,
        partition_key: str | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*(self.defs.assets or []), *(self.defs.asset_checks or [])],  # type: ignore[list-item]
            selection=selection,
            partition_key=partition_key,
            instance=self.instance,
            resources=build_resources(),
            raise_on_error=False,
            run_config={**QUIET, **(run_config or {})},
            tags={
                TAG_LAUNCHED_BY: "cli",
                TAG_PID: str(os.getpid()),
                TAG_HOST: socket.gethostname(),
            },
        )

    def run_partition(self, task: Task) -> Outcome:
        table = self.plan.table(task.table)
        started = time.perf_counter()
        result = self.materialize(partition_selection(table), task.partition)
        rows = 0
        for event in result.get_asset_materialization_events():
            rows += int(meta_text(event.materialization.metadata, "rows", "0"))
        message = "" if result.success else _failure_message(result)
        return Outcome(
            task, result.success, rows, time.perf_counter() - started, message, result.run_id
        )

    def preflight(self) -> None:
        """Refuse before anything is written when the roles cannot do the whole job."""
        from migration_assets.db.preflight import source_problems, target_problems

        tables = [(t.schema_name, t.name) for t in self.plan.tables]
        with self.source.connect() as src:
            problems = source_problems(src, tables)
        with self.target.connect() as tgt:
            problems += target_problems(tgt, tables)
        if problems:
            raise MigrationError(
                "nothing was written; fix these first:\n" + "\n".join(f"  - {p}" for p in problems)
            )

    def defer_cold_indexes(self, tasks: list[Task]) -> list[Deferred]:
        """Tables loaded from empty in this run, and big enough to matter, lose their plain
        indexes until the end of the run (recorded on the target first)."""
        threshold = self.settings.migration_defer_indexes_above
        if threshold < 0:
            return []
        queued: dict[str, int] = {}
        for task in tasks:
            queued[task.table] = queued.get(task.table, 0) + 1
        candidates = [
            t
            for t in self.plan.tables
            if queued.get(t.qualified) == t.slicing.partitions and t.row_estimate >= threshold
        ]
        with self.target.connect() as conn:
            cold = [
                (t.schema_name, t.name)
                for t in candidates
                if is_empty(conn, t.schema_name, t.name, partitioned=t.partitioned)
            ]
            return defer_indexes(conn, cold)

    def restore_deferred_indexes(self, parallel: int = 1) -> int:
        """Rebuild every recorded index (ours, or a killed run's), several at a time."""
        with self.target.connect() as conn:
            pending = recorded(conn)
        if pending:

            def restore(index: Deferred) -> None:
                with self.target.connect() as conn:
                    restore_index(conn, index)

            with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
                list(pool.map(restore, pending))
        with self.target.connect() as conn:
            drop_state_if_empty(conn)
        return len(pending)

    def run_checks(self, tables: list[TablePlan] | None = None) -> dg.ExecuteInProcessResult:
        """Every separately executable check (or those of `tables`), in one recorded run."""
        chosen = {tuple(t.asset_path) for t in tables} if tables is not None else None
        keys = [
            key
            for checks in self.defs.asset_checks or []
            for key in checks.check_keys
            if chosen is None or tuple(key.asset_key.path) in chosen
        ]
        return self.materialize(dg.AssetSelection.checks(*keys))

    def write_report(self, out_dir: Path) -> dg.ExecuteInProcessResult:
        from migration_assets.defs.report import REPORT_KEY

        config = {"ops": {"migration_audit_report": {"config": {"out_dir": str(out_dir)}}}}
        return self.materialize(dg.AssetSelection.assets(REPORT_KEY), run_config=config)

    # -------------------------------------------------------------- statuses

    def statuses(self) -> dict[str, dict[str, Status]]:
        out: dict[str, dict[str, Status]] = {}
        for table in self.plan.tables:
            partitions = dg.StaticPartitionsDefinition(table.partition_keys)
            raw = (
                self.instance.get_status_by_partition(
                    dg.AssetKey(table.asset_path), table.partition_keys, partitions
                )
                or {}
            )
            out[table.qualified] = {pk: _status(raw.get(pk)) for pk in table.partition_keys}
        return out

    def stale(self, table: TablePlan) -> set[str]:
        """Materialized under another plan: the same key no longer means the same rows."""
        latest = latest_materializations(self.instance, table)
        stale = set()
        for pk, record in latest.items():
            assert record.asset_materialization is not None
            metadata = record.asset_materialization.metadata
            if meta_text(metadata, "slice_fingerprint") != table.slice(pk).fingerprint:
                stale.add(pk)
        return stale

    def reap_orphans(self) -> int:
        """CLI runs left STARTED by a killed process are failed, so their slices get redone."""
        runs = self.instance.get_runs(
            filters=RunsFilter(
                statuses=[
                    DagsterRunStatus.STARTED,
                    DagsterRunStatus.STARTING,
                    DagsterRunStatus.NOT_STARTED,
                ],
                tags={TAG_LAUNCHED_BY: "cli"},
            )
        )
        reaped = 0
        for run in runs:
            host, pid = run.tags.get(TAG_HOST), int(run.tags.get(TAG_PID, "0") or 0)
            if host == socket.gethostname() and pid and not _alive(pid):
                self.instance.report_run_failed(
                    run, "the migrate process died (killed?); its slice was rolled back"
                )
                # its pool slot would otherwise stay taken until a daemon notices
                self.instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
                reaped += 1
        return reaped

    def todo(self, *, force: bool) -> tuple[list[Task], int]:
        """Partitions to run (largest first, for an even finish) and how many are done."""
        tasks: list[Task] = []
        done = 0
        statuses = self.statuses()
        for table in self.plan.tables:
            stale = self.stale(table) if not force else set()
            weight = max(1, table.row_estimate // max(1, table.slicing.partitions))
            for pk, status in statuses[table.qualified].items():
                if force or status is not Status.MATERIALIZED or pk in stale:
                    tasks.append(Task(table.qualified, pk, weight))
                else:
                    done += 1
        tasks.sort(key=lambda t: -t.weight)
        return tasks, done

    # -------------------------------------------------------------- comparison

    def differing_slices(self) -> dict[str, list[str]]:
        """Re-checksum every slice on both sides (one scan per table per side)."""
        from migration_assets.verify import compare_tables

        return {
            c.table: list(c.differing_slices) for c in compare_tables(self) if c.differing_slices
        }


FRESH_HOME_YAML = """\
# Written by migration-assets into an empty DAGSTER_HOME: Dagster's default storage
# (SQLite in this directory), no usage telemetry, and no stdout capture (our steps log
# through the event log; capturing costs subprocesses for every step).
telemetry:
  enabled: false
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


def _prepare_dagster_home(home: Path) -> None:
    """An empty DAGSTER_HOME works as Dagster defaults it, except that a tool for patient
    data does not phone home, and does not pay for stdout capture it never uses."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(FRESH_HOME_YAML)


def partition_selection(table: TablePlan) -> dg.AssetSelection:
    """The table's asset and its per-slice checks, not the whole-table checks."""
    key = dg.AssetKey(table.asset_path)
    return dg.AssetSelection.assets(key).without_checks() | dg.AssetSelection.checks(
        dg.AssetCheckKey(key, SLICE_ROW_COUNT), dg.AssetCheckKey(key, SLICE_CHECKSUM)
    )


def blocking_failures(result: dg.ExecuteInProcessResult) -> list[Any]:
    """Check evaluations that failed with ERROR severity (WARN is advisory)."""
    return [
        e
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]


def _status(raw: Any) -> Status:
    if raw is None:
        return Status.MISSING
    return {
        "MATERIALIZED": Status.MATERIALIZED,
        "FAILED": Status.FAILED,
        "IN_PROGRESS": Status.IN_PROGRESS,
    }.get(str(getattr(raw, "value", raw)), Status.MISSING)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def crashed(result: dg.ExecuteInProcessResult) -> bool:
    """A step failed for a reason other than a blocking check that failed: a failed check is
    a result (shown with its details), not a check that could not run."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            if error is None or error.cls_name != "DagsterAssetCheckFailedError":
                return True
    return False


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                return data.user_failure_data.description.strip()
            if data.error is not None:
                return data.error.message.strip().split("\n")[0][:500]
    return "the run failed (see the Dagster UI for the run's events)"


# ------------------------------------------------------------------ locking


@contextmanager
def migration_lock(target: TargetDatabase) -> Iterator[None]:
    """One migrate per target at a time; a second one is told who holds the lock."""
    with target.connect(autocommit=True) as conn:
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            [f"migration_assets migrate pid={os.getpid()} host={socket.gethostname()}"],
        )
        row = conn.execute("SELECT pg_try_advisory_lock(%s, 0)", [LOCK_NAMESPACE]).fetchone()
        if not row or not row[0]:
            raise MigrationError(
                "another `migration-assets migrate` is already running against this target "
                f"({_lock_holder(conn)}); wait for it to finish, or stop it, then run again."
            )
        try:
            yield
        finally:
            # a lost lock connection has released the lock already; nothing to undo
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s, 0)", [LOCK_NAMESPACE])


def _lock_holder(conn: Connection) -> str:
    row = conn.execute(
        "SELECT a.application_name, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = 0 AND l.granted",
        [LOCK_NAMESPACE],
    ).fetchone()
    return f"{row[0]}, since {row[1]:%Y-%m-%d %H:%M:%S %Z}" if row else "holder unknown"


# ------------------------------------------------------------------ workers


ProgressFn = Callable[[Outcome], None]


def unreachable(outcome: Outcome) -> bool:
    """A connection that cannot even be opened: the server is down or the network is gone,
    so the remaining partitions would only fail the same way."""
    return "cannot connect to" in outcome.message


def run_tasks(
    runner: Runner, tasks: list[Task], pool: WorkerPool | None, on_done: ProgressFn
) -> tuple[list[Outcome], str]:
    """Run partitions; stop dispatching once a database is unreachable (say why)."""
    if pool is None or len(tasks) <= 1:
        outcomes = []
        for task in tasks:
            outcome = runner.run_partition(task)
            on_done(outcome)
            outcomes.append(outcome)
            if unreachable(outcome):
                return outcomes, outcome.message
        return outcomes, ""
    return pool.run(tasks, on_done)


class WorkerPool:
    """Worker processes started early, so importing Dagster overlaps the schema step."""

    def __init__(self, plan_path: Path, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.todo: mp.Queue[Task | None] = ctx.Queue()
        self.done: mp.Queue[Outcome] = ctx.Queue()
        self.stop = ctx.Event()
        env = dict(os.environ)
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(str(plan_path), env, self.todo, self.done, self.stop),
                daemon=True,
            )
            for _ in range(count)
        ]
        for proc in self.procs:
            proc.start()

    def run(self, tasks: list[Task], on_done: ProgressFn) -> tuple[list[Outcome], str]:
        for task in tasks:
            self.todo.put(task)
        for _ in self.procs:
            self.todo.put(None)
        outcomes: list[Outcome] = []
        aborted = ""
        while len(outcomes) < len(tasks):
            try:
                outcome = self.done.get(timeout=1.0)
            except Empty:
                if not any(p.is_alive() for p in self.procs):
                    break
                continue
            outcomes.append(outcome)
            on_done(outcome)
            if unreachable(outcome) and not aborted:
                aborted = outcome.message
                self.stop.set()
        if not aborted:
            _report_lost(tasks, outcomes, on_done)
        return outcomes, aborted

    def close(self) -> None:
        """Idle workers are terminated rather than joined: every outcome is already in hand,
        and a worker's interpreter teardown (Dagster loaded) costs most of a second."""
        self.stop.set()
        for _ in self.procs:
            self.todo.put(None)
        for proc in self.procs:
            proc.join(timeout=0.2)
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def _report_lost(tasks: list[Task], outcomes: list[Outcome], on_done: ProgressFn) -> None:
    """A worker that died took its task with it: report it, never hide it."""
    finished = {(o.task.table, o.task.partition) for o in outcomes}
    for task in tasks:
        if (task.table, task.partition) not in finished:
            lost = Outcome(task, False, 0, 0.0, "the worker process died during this slice")
            outcomes.append(lost)
            on_done(lost)


def _die_with_parent() -> None:
    """A worker must not outlive a killed migrate (Linux; elsewhere best effort)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker(plan_path: str, env: dict[str, str], todo: Any, done: Any, stop: Any) -> None:
    _die_with_parent()
    os.environ.update(env)
    from migration_assets.settings import load_settings

    runner = Runner.open(load_settings(), Path(plan_path))
    while not stop.is_set() and (task := todo.get()) is not None:
        try:
            outcome = runner.run_partition(task)
        except Exception as exc:  # never let one slice take the worker down
            outcome = Outcome(task, False, 0, 0.0, safe_message(exc))
        done.put(outcome)


# ------------------------------------------------------------------ the command


def migrate(
    runner: Runner,
    *,
    workers: int = 2,
    force: bool = False,
    resync: bool = False,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_done: ProgressFn = lambda outcome: None,
) -> MigrateReport:
    """Schema, then every partition not yet verified, then sequences; all as Dagster runs."""
    started = time.perf_counter()
    report = MigrateReport(total_partitions=runner.plan.total_partitions())
    with migration_lock(runner.target), contextlib.ExitStack() as stack:
        with report.phase("preflight"):
            runner.preflight()
            runner.reap_orphans()
            runner.restore_deferred_indexes()  # a killed run's, before the schema is compared
            tasks, report.skipped_partitions = runner.todo(force=force)
        pool = None
        if workers > 1 and (len(tasks) > 1 or resync):
            pool = WorkerPool(runner.plan_path, workers)
            stack.callback(pool.close)
        with report.phase("schema"):
            report.schema_ok, report.schema_message = _step(runner, SCHEMA_KEY)
        if not report.schema_ok:
            report.seconds = time.perf_counter() - started
            return report
        if resync and not force:
            with report.phase("resync checksums"):
                _add_differing(runner, tasks, report)
        on_start(len(tasks), report.skipped_partitions)
        with report.phase("defer indexes"):
            report.deferred_indexes = len(runner.defer_cold_indexes(tasks))
        try:
            with report.phase("partitions"):
                report.outcomes, report.aborted = run_tasks(runner, tasks, pool, on_done)
        finally:
            with report.phase("rebuild indexes"):
                _rebuild(runner, report, workers)
        if not report.failed and not report.aborted:
            with report.phase("sequences"):
                report.sequences_ok, report.sequences_message = _step(runner, SEQUENCES_KEY)
    report.seconds = time.perf_counter() - started
    return report


def _step(runner: Runner, key: dg.AssetKey) -> tuple[bool, str]:
    """Materialize one unpartitioned asset with its checks: (verified, what failed)."""
    result = runner.materialize(dg.AssetSelection.assets(key))
    ok = result.success and not blocking_failures(result)
    return ok, "" if ok else _check_failures(result)


def _add_differing(runner: Runner, tasks: list[Task], report: MigrateReport) -> None:
    """--resync: queue every slice whose checksums differ now, whatever its status says."""
    differing = runner.differing_slices()
    report.differing_slices = sum(len(v) for v in differing.values())
    queued = {(t.table, t.partition) for t in tasks}
    for table, pks in differing.items():
        for pk in pks:
            if (table, pk) not in queued:
                tasks.append(Task(table, pk))
                report.skipped_partitions -= 1


def _rebuild(runner: Runner, report: MigrateReport, workers: int) -> None:
    """Always put deferred indexes back; if the target is gone, the next run will."""
    try:
        runner.restore_deferred_indexes(parallel=workers)
    except (MigrationError, psycopg.Error) as exc:
        why = str(exc) if isinstance(exc, MigrationError) else safe_message(exc)
        report.index_message = (
            "deferred indexes could not be rebuilt now; the next `migration-assets migrate` "
            f"rebuilds them first. [{why}]"
        )


def _check_failures(result: dg.ExecuteInProcessResult) -> str:
    """The failed checks of a run, each with what its metadata says went wrong."""
    lines = []
    for evaluation in blocking_failures(result):
        meta = evaluation.metadata
        text = "\n".join(
            meta_text(meta, key)
            for key in ("details", "behind", "queries", "error", "fix")
            if key in meta
        )
        lines.append(f"{evaluation.check_name} failed:\n{text}")
    if not result.success and not lines:
        lines.append(_failure_message(result))
    return "\n".join(lines)


def open_runner(settings: Settings, plan: Path | None) -> Runner:
    return Runner.open(settings, settings.plan_path(plan))
