"""Runs whose worker died: found by a missed heartbeat, failed, so their slices are redone.

A run killed mid-slice (SIGKILL, a lost pod, a power cut) stays STARTED in Dagster's
storage forever, and its partitions show "in progress": neither "backfill failed and
missing" nor `migrate` would redo them. Dagster's run monitoring finds dead run workers only
for launchers that can ask their platform (Kubernetes, Docker, ECS); the default launcher and
our local path cannot. So every run that touches the target beats: while its target resource
is open it stamps the run with the time every few seconds, in the instance's storage, which
every host shares. A STARTED run whose stamp is older than `LOST_AFTER_SECONDS` lost its
worker, wherever it ran: the `lost_migration_runs` sensor (in the daemon) and `migrate`
(before it plans work) fail it and free its pool slots (through `defs.compat`: Dagster has
no public API for either).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import dagster as dg

from migration_assets.defs.compat import fail_run, free_pool_slots, pool_holders
from migration_assets.defs.keys import TARGET_POOL

HEARTBEAT_TAG = "migration_assets/heartbeat"
HEARTBEAT_SECONDS = 2.0
LOST_AFTER_SECONDS = 15.0
LIVE_STATUSES = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]


class Heartbeat:
    """A daemon thread that stamps one run while its worker lives."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str) -> None:
        self._instance = instance
        self._run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._stamp()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _stamp(self) -> None:
        self._instance.add_run_tags(self._run_id, {HEARTBEAT_TAG: f"{time.time():.1f}"})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # storage briefly away: the next beat tries
                self._stamp()


@dataclass(frozen=True)
class InFlight:
    """A run of ours that Dagster believes is running, and when it last showed life."""

    run: dg.DagsterRun
    last_beat: float | None

    def age(self, now: float) -> float | None:
        return None if self.last_beat is None else now - self.last_beat


def in_flight(instance: dg.DagsterInstance) -> list[InFlight]:
    """STARTED/STARTING runs that beat (runs that never touch the target do not)."""
    found = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=LIVE_STATUSES)):
        stamp = record.dagster_run.tags.get(HEARTBEAT_TAG)
        if stamp is not None:
            found.append(InFlight(record.dagster_run, float(stamp)))
    return found


def reap_lost_runs(
    instance: dg.DagsterInstance, *, lost_after: float = LOST_AFTER_SECONDS
) -> list[str]:
    """Fail every run whose heartbeat is older than `lost_after`; returns their ids."""
    now = time.time()
    reaped = []
    for flight in in_flight(instance):
        age = flight.age(now)
        if age is not None and age > lost_after:
            fail_run(
                instance,
                flight.run,
                f"the run's worker stopped (no heartbeat for {age:.0f} s): killed, or its host "
                "went away. Its slice's transaction was rolled back on the target; the "
                "partition is FAILED and `migrate` or 'backfill failed and missing' redoes it.",
            )
            # its pool slots would otherwise stay taken until someone frees them by hand
            free_pool_slots(instance, flight.run.run_id)
            reaped.append(flight.run.run_id)
    return reaped


def free_slots_of_ended_runs(instance: dg.DagsterInstance) -> list[str]:
    """Free the target pool's slots still held by runs that have ended; their ids.

    A run worker killed under the default launcher is reported FAILED by its code server, not
    by `reap_lost_runs`, and nobody frees its slots: with a pool of one, every later run of the
    backfill would wait forever (run monitoring's `free_slots_after_run_end_seconds` does this
    only where run monitoring is configured)."""
    freed = []
    for run_id in sorted(pool_holders(instance, TARGET_POOL)):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            free_pool_slots(instance, run_id)
            freed.append(run_id)
    return freed


@dg.sensor(
    name="lost_migration_runs",
    minimum_interval_seconds=int(LOST_AFTER_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Fails runs whose worker died mid-slice (no heartbeat for "
        f"{LOST_AFTER_SECONDS:.0f} s), so their partitions show FAILED and 'backfill failed "
        "and missing' redoes them."
    ),
)
def lost_migration_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    reaped = reap_lost_runs(context.instance)
    if reaped:
        context.log.warning(f"failed {len(reaped)} run(s) whose worker died: {reaped}")
    freed = free_slots_of_ended_runs(context.instance)
    if freed:
        context.log.warning(f"freed the target pool slots of {len(freed)} ended run(s): {freed}")
    return dg.SkipReason(f"{len(reaped)} lost run(s) failed, {len(freed)} run(s)' slots freed")
