"""`migrate --submit`: the same runs, as an asset backfill in the instance at DAGSTER_HOME.

Its daemon's backfill and run-queue loops, its run coordinator and its run launcher decide
where each run executes (a process per run, a Kubernetes job, an ECS task): this module
only submits and follows. No public Dagster API creates an asset backfill without the
GraphQL server: `defs.compat` does it with Dagster's internal backfill classes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from migration_assets.db.errors import MigrationError
from migration_assets.defs.compat import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionStatus,
    PartitionBackfill,
    add_asset_backfill,
)
from migration_assets.engine.home import apply_pool_limit
from migration_assets.engine.session import TAG_LAUNCHED_BY, Session, failure_text, raised
from migration_assets.engine.work import HEAD, TAIL, RunSpec

DAEMON_FRESH_SECONDS = 60.0
DAEMON_WAIT_SECONDS = 10.0
# The daemon beats every 30 s (a long backfill iteration can delay a beat): three missed beats
# mean it is gone, and a backfill nobody runs would be followed forever.
DAEMON_SILENT_SECONDS = 90.0
BACKFILL_DAEMON = "BACKFILL"
NEEDED_DAEMONS = ("BACKFILL", "QUEUED_RUN_COORDINATOR")
BACKFILL_TAG = "dagster/backfill"


def daemon_problem(instance: dg.DagsterInstance, wait: float = DAEMON_WAIT_SECONDS) -> str:
    """'' when a daemon serves this instance (fresh heartbeats), else what to start."""
    deadline = time.monotonic() + wait
    while True:
        beats = instance.get_daemon_heartbeats()
        now = time.time()
        fresh = {k for k, b in beats.items() if now - b.timestamp < DAEMON_FRESH_SECONDS}
        if "BACKFILL" in fresh:
            return ""
        if time.monotonic() > deadline:
            return (
                "no Dagster daemon serves this DAGSTER_HOME (no backfill daemon heartbeat in "
                f"the last {DAEMON_FRESH_SECONDS:.0f} s), so a submitted backfill would never "
                "start. Start one: `dagster-daemon run -w workspace.yaml` with the same "
                "DAGSTER_HOME and settings (or `migration-assets ui`), then run again."
            )
        time.sleep(1.0)


def submit(session: Session, slices: list[RunSpec], *, force: bool) -> str:
    """Add a backfill of the head assets, the given partitions and the tail; its id."""
    if force:
        raise MigrationError(
            "--submit with --force is not supported: a backfill cannot pass per-run config. "
            "Use --resync (re-copies every slice that differs) or run --force locally."
        )
    # the instance's default pool limit is not the operator's: the backfill's runs, on whatever
    # hosts, must hold the target to MIGRATION_TARGET_CONNECTIONS, as a local `migrate` does
    apply_pool_limit(session.instance, session.settings.migration_target_connections)
    wanted: list[tuple[dg.AssetKey, str | None]] = [(key, None) for key in (*HEAD, *TAIL)]
    wanted += [(s.assets[0], s.partition) for s in slices]
    return add_asset_backfill(
        session.instance,
        session.defs,
        wanted,
        tags={TAG_LAUNCHED_BY: "cli --submit"},
        title="migration-assets migrate --submit",
        description=f"{len(slices)} partition(s), with the schema, indexes and sequences",
    )


class DaemonStoppedError(MigrationError):
    """The backfill daemon stopped beating while its backfill was followed."""


@dataclass
class DaemonWatch:
    """How long the backfill daemon has been silent, on this machine's monotonic clock: the
    daemon's host stamps its beats with its own wall clock, which only dates the first beat
    seen (a skewed clock there must not end a healthy follow)."""

    instance: dg.DagsterInstance
    last_beat: float | None = None
    new_at: float = field(default_factory=time.monotonic)

    def silent_for(self) -> float:
        beat = self.instance.get_daemon_heartbeats().get(BACKFILL_DAEMON)
        now = time.monotonic()
        if beat is not None and beat.timestamp != self.last_beat:
            age = max(0.0, time.time() - beat.timestamp) if self.last_beat is None else 0.0
            self.last_beat, self.new_at = beat.timestamp, now - age
        return now - self.new_at


def daemon_stopped(backfill_id: str, silent: float) -> str:
    return (
        f"the Dagster daemon stopped: no backfill daemon heartbeat for {silent:.0f} s, so "
        f"nothing more of backfill {backfill_id} launches. The backfill is still in the "
        "instance and resumes where it stopped once a daemon runs again: start one "
        "(`dagster-daemon run -w workspace.yaml` with the same DAGSTER_HOME and settings, or "
        "`migration-assets ui`), then watch it in the UI or with `migration-assets status`; "
        "do not submit it again."
    )


@dataclass
class Progress:
    status: str
    materialized: int
    failed: int
    runs: int


def follow(
    session: Session,
    backfill_id: str,
    on_progress: Callable[[Progress], None],
    poll: float = 1.0,
    daemon_silence: float | None = None,
) -> Progress:
    """Poll the backfill until it ends; Ctrl-C stops following, never the backfill. Raises
    DaemonStoppedError once the backfill daemon has been silent for `daemon_silence` seconds
    (default DAEMON_SILENT_SECONDS, read when called)."""
    bound = DAEMON_SILENT_SECONDS if daemon_silence is None else daemon_silence
    watch = DaemonWatch(session.instance)
    while True:
        backfill = session.instance.get_backfill(backfill_id)
        if backfill is None:
            raise MigrationError(f"backfill {backfill_id} disappeared from the instance")
        progress = _progress(session, backfill)
        on_progress(progress)
        if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            return progress
        silent = watch.silent_for()
        if silent > bound:
            raise DaemonStoppedError(daemon_stopped(backfill_id, silent))
        time.sleep(poll)


def _progress(session: Session, backfill: PartitionBackfill) -> Progress:
    records = session.instance.get_run_records(
        filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill.backfill_id})
    )
    data = backfill.asset_backfill_data
    materialized = failed = 0
    if data is not None:
        materialized = data.materialized_subset.num_partitions_and_non_partitioned_assets
        failed = data.failed_and_downstream_subset.num_partitions_and_non_partitioned_assets
    return Progress(backfill.status.value, materialized, failed, len(records))


def head_failure(instance: dg.DagsterInstance, backfill_id: str) -> str:
    """Why the preflight or schema step of the backfill could not run (bad input: a
    password, TLS, a privilege), or '' if it ran: `migrate` exits 2 for that, so `--submit`
    does too."""
    runs = instance.get_run_records(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
    for record in runs:
        run = record.dagster_run
        if run.status != dg.DagsterRunStatus.FAILURE or not set(run.asset_selection or ()) & set(
            HEAD
        ):
            continue
        logs = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        events = [e.dagster_event for e in logs if e.dagster_event is not None]
        if raised(events):
            return failure_text(events)
    return ""


def succeeded(progress: Progress) -> bool:
    return progress.status == BulkActionStatus.COMPLETED_SUCCESS.value
