"""`migrate`: the runs a "Materialize all" backfill would make, executed here or (`--submit`)
launched through the webserver, each as soon as the runs before it have ended.

Preflight, locking of slices, index deferral and rebuild, verification, lost-run recovery:
all of it happens inside the graph's runs. What this module adds is only the choice of
runs (missing and failed partitions; `--resync`: all, each re-copied only if it differs;
`--force`: all, re-copied), their order, progress, and a summary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dagster as dg

from migration_assets.db.errors import MigrationError
from migration_assets.defs.liveness import LOST_AFTER_SECONDS, in_flight, reap_lost_runs
from migration_assets.engine.driver import TAG_DRIVER, has_exited
from migration_assets.engine.home import apply_pool_limit
from migration_assets.engine.local import ProgressFn, WorkerPool, lanes, run_inline
from migration_assets.engine.session import Outcome, Session
from migration_assets.engine.timer import Timer
from migration_assets.engine.work import (
    carry,
    head_run,
    partition_statuses,
    slice_runs,
    tail_run,
)

if TYPE_CHECKING:
    from dagster import RunRecord

    from migration_assets.engine.submit import Remote

RELOOK_SECONDS = 0.5  # longer than the pause between two runs of one migration
QUIET_SECONDS = 5.0  # no run started or ended for this long: no migration is mid-way
RECENT_RUNS = 10  # the newest runs, where a migration that is mid-way shows


@dataclass
class MigrateReport(Timer):
    aborted: str = ""  # why the run stopped dispatching partitions early
    schema_ok: bool = False
    schema_message: str = ""
    schema_crashed: bool = False  # preflight or schema could not run: bad input, exit 2
    sequences_ok: bool = False
    sequences_message: str = ""
    indexes_rebuilt: int = 0
    audit: str = ""  # the audit report the tail wrote
    audit_complete: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    skipped_partitions: int = 0
    total_partitions: int = 0
    reaped_runs: int = 0
    resync: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def recopied(self) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.copied)

    @property
    def ok(self) -> bool:
        return self.schema_ok and not self.failed and self.sequences_ok and not self.aborted

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.outcomes if o.ok)


def settle_in_flight(session: Session, *, wait: float = LOST_AFTER_SECONDS + 3) -> int:
    """Runs Dagster believes are running: a live one means another migration is at work
    (refuse); a dead one (no heartbeat) is failed, so its slice is redone now.

    Alive is any sign of life while we watch: a heartbeat that moves, a run that ends without
    us failing it, or a new run. Between two short runs of another migration nothing may be in
    flight, so an empty first look is repeated once, if a run started or ended just now."""
    _refuse_queued(session)
    deadline = time.monotonic() + wait
    first = _beats(session)
    if not first and _may_be_between_runs(session, QUIET_SECONDS):
        time.sleep(RELOOK_SECONDS)
        first = _beats(session)
    reaped: set[str] = set()
    while first:
        reaped.update(reap_lost_runs(session.instance))
        still = _beats(session)
        alive = [r for r, beat in still.items() if beat != first.get(r)]
        alive += [r for r in first if r not in still and r not in reaped]
        if alive:
            raise MigrationError(
                f"another migration is running against this Dagster instance ({len(alive)} "
                f"run(s) in progress, e.g. {alive[0]}): wait for it to finish (see the Dagster "
                "UI), or stop it there, then run again."
            )
        if not still or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return len(reaped)


def _refuse_queued(session: Session) -> None:
    """Runs waiting in the instance's queue will execute whatever we do now: a `--submit`
    stopped with Ctrl-C, or a UI backfill, left them there for the daemon."""
    queued = session.instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]), limit=1
    )
    if queued:
        raise MigrationError(
            f"runs wait in this Dagster instance's run queue (e.g. {queued[0].dagster_run.run_id})"
            ": another migration launched them and the daemon will start them. Wait for them "
            "to end (see the Dagster UI, Runs), or cancel them there, then run again."
        )


def _may_be_between_runs(session: Session, seconds: float) -> bool:
    """Did a run start or end in the last `seconds` whose driver may still launch another?
    If none did, no migration is between two of its runs, and the first look needs no
    second. A run whose driving process has exited (`engine.driver`) has no next run."""
    now = time.time()
    for record in session.instance.get_run_records(limit=RECENT_RUNS):
        if now - _last_activity(record) < seconds and not has_exited(
            record.dagster_run.tags.get(TAG_DRIVER)
        ):
            return True
    return False


def _last_activity(record: RunRecord) -> float:
    created = record.create_timestamp
    if created.tzinfo is None:  # storage gives UTC, sometimes without saying so
        created = created.replace(tzinfo=dt.UTC)
    return max(record.end_time or 0.0, record.start_time or 0.0, created.timestamp())


def _beats(session: Session) -> dict[str, float | None]:
    return {f.run.run_id: f.last_beat for f in in_flight(session.instance)}


def migrate(
    session: Session,
    *,
    workers: int = 2,
    force: bool = False,
    resync: bool = False,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_done: ProgressFn = lambda outcome: None,
    pool: WorkerPool | None = None,
    remote: Remote | None = None,
) -> MigrateReport:
    """Head run, the partition runs that are due, tail run: all recorded in the instance.
    `pool`: workers the caller started before opening the session (`local.start_workers`);
    migrate releases them, or closes them at once if one run is all there is to do.
    `remote`: the deployment executes the same runs (`--submit`); each is launched as soon
    as the runs before it have ended."""
    started = time.perf_counter()
    report = MigrateReport(total_partitions=session.plan.total_partitions(), resync=resync)
    if remote is not None:
        workers = session.settings.migration_target_connections
        pool = None
    workers = lanes(session.settings, workers)
    with contextlib.ExitStack() as stack:
        if pool is not None:
            stack.callback(pool.close)
            pool.release()
        with report.phase("recover"):
            report.reaped_runs = settle_in_flight(session)
            apply_pool_limit(session.instance, session.settings.migration_target_connections)
            statuses = partition_statuses(session.instance, session.plan)
            runs, report.skipped_partitions = slice_runs(
                session.plan, statuses, every=resync, force=force
            )
            runs = carry(runs, lanes=workers)
        execute = session.execute if remote is None else remote.execute
        if remote is None:
            pool = _pool_for(session, len(runs), workers, pool, stack)
        with report.phase("preflight and schema"):
            head = execute(head_run())
            report.schema_ok, report.schema_message = head.ok, head.message
            report.schema_crashed = head.crashed
        if not head.ok:
            report.seconds = time.perf_counter() - started
            return report
        on_start(sum(len(r.slices) for r in runs), report.skipped_partitions)
        with report.phase("partitions"):
            if remote is not None:
                report.outcomes, report.aborted = remote.run(runs, on_done)
            elif pool is not None:
                report.outcomes, report.aborted = pool.run(runs, on_done, session=session)
            else:
                report.outcomes, report.aborted = run_inline(session, runs, on_done)
        if not report.failed and not report.aborted:
            with report.phase("indexes and sequences"):
                tail = execute(tail_run())
                report.sequences_ok, report.sequences_message = tail.ok, tail.message
                report.indexes_rebuilt = tail.indexes_rebuilt
                report.audit, report.audit_complete = tail.audit, tail.audit_complete
    report.seconds = time.perf_counter() - started
    return report


def _pool_for(
    session: Session,
    runs: int,
    workers: int,
    pool: WorkerPool | None,
    stack: contextlib.ExitStack,
) -> WorkerPool | None:
    """Workers for the partition runs, or None: this process is one of the `workers`, so
    one run needs no other, and an idle worker's imports would only take CPU from the head."""
    if workers < 2 or runs < 2:
        if pool is not None:
            pool.close()
        return None
    if pool is None:  # its imports overlap the head run
        pool = WorkerPool(session.settings, session.plan_path, workers - 1)
        pool.release()
        stack.callback(pool.close)
    return pool
