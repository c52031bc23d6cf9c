"""`defs/compat.py`, the one module on Dagster's internals, against a real Dagster instance
(SQLite storage in a temporary DAGSTER_HOME, which has pools): each entry does what its
callers rely on, so a Dagster upgrade that breaks one fails here, by name."""

import multiprocessing as mp
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from migration_assets.defs.checks import PARTITION_TAG
from migration_assets.defs.compat import (
    AssetCheckExecutionRecordStatus,
    fail_run,
    free_pool_slots,
    latest_check_executions,
    pool_holders,
    set_pool_limit,
)
from migration_assets.engine.home import prepare_dagster_home
from migration_assets_tests.helpers import open_first

pytestmark = pytest.mark.unit

POOL = "compat_pool"
SLICES = dg.StaticPartitionsDefinition(["a", "b", "c"])


@dg.asset
def head() -> None:
    return None


@dg.asset(
    partitions_def=SLICES,
    deps=[head],
    pool=POOL,
    check_specs=[dg.AssetCheckSpec("verified", asset="table")],
)
def table(context: dg.AssetExecutionContext) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Records what the pool looks like from inside a step that holds a slot of it."""
    held = pool_holders(context.instance, POOL)
    free_pool_slots(context.instance, context.run.run_id)
    return dg.MaterializeResult(
        metadata={
            "held": context.run.run_id in held,
            "freed": context.run.run_id not in pool_holders(context.instance, POOL),
            "partition_tag": context.run.tags.get(PARTITION_TAG, ""),
        },
        check_results=[dg.AssetCheckResult(passed=True)],
    )


@dg.op
def nothing() -> None:
    return None


@dg.job
def lost() -> None:
    nothing()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """The instance an empty DAGSTER_HOME gets from us (`prepare_dagster_home`'s YAML)."""
    with open_first(tmp_path) as opened:
        yield opened


def test_a_step_in_a_limited_pool_holds_a_slot_that_can_be_freed(
    instance: dg.DagsterInstance,
) -> None:
    assert set_pool_limit(instance, POOL, 2)
    result = dg.materialize([head, table], partition_key="b", instance=instance, selection=[table])
    assert result.success
    meta = result.asset_materializations_for_node("table")[0].metadata
    assert meta["held"].value is True, "the step held no slot of the pool"
    assert meta["freed"].value is True, "free_pool_slots left the run's slot taken"
    assert meta["partition_tag"].value == "b", "Dagster no longer tags a partition run so"
    assert pool_holders(instance, POOL) == set()


def test_a_run_whose_worker_is_gone_is_failed_with_the_reason(
    instance: dg.DagsterInstance,
) -> None:
    run = instance.create_run_for_job(job_def=lost)
    fail_run(instance, run, "no heartbeat for 20 s")
    after = instance.get_run_by_id(run.run_id)
    assert after is not None
    assert after.status == dg.DagsterRunStatus.FAILURE
    events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert [e.message for e in events] == ["no heartbeat for 20 s"]


def test_each_check_s_latest_execution_is_found_and_an_unknown_one_is_not(
    instance: dg.DagsterInstance,
) -> None:
    assert dg.materialize([head, table], partition_key="a", instance=instance).success
    known = dg.AssetCheckKey(table.key, "verified")
    never = dg.AssetCheckKey(table.key, "never_ran")
    found = latest_check_executions(instance, [known, never])
    assert set(found) == {known}
    assert found[known].status == AssetCheckExecutionRecordStatus.SUCCEEDED


def _open_when_all_are_ready(home: str, ready: Any, failures: Any) -> None:
    from migration_assets.engine.home import open_instance

    ready.wait()
    try:
        open_instance(Path(home)).dispose()
    except Exception as exc:  # the race's two faces: "already exists", "more than one head"
        failures.put(f"{type(exc).__name__}: {str(exc)[:120]}")


def test_commands_started_together_on_an_empty_home_both_open_it(tmp_path: Path) -> None:
    """`ui` and `migrate` started at the same moment: without the lock one of them failed
    (or both did), and the storage could be left stamped twice for every later command."""
    prepare_dagster_home(tmp_path)
    ctx = mp.get_context("spawn")
    ready, failures = ctx.Barrier(3), ctx.Queue()
    openers = [
        ctx.Process(target=_open_when_all_are_ready, args=(str(tmp_path), ready, failures))
        for _ in range(3)
    ]
    for proc in openers:
        proc.start()
    for proc in openers:
        proc.join(timeout=120)
    assert [p.exitcode for p in openers] == [0, 0, 0]
    assert failures.empty(), failures.get()
    with sqlite3.connect(tmp_path / "schedules" / "schedules.db") as db:
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
