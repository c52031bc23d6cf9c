"""The cutover's final delta, as steps Dagster executes in the cutover job's own run.

final_delta: slices_compared -> slices_recopied -> target_finished -> tables_rechecked

Checks first: every table's checksum is grouped by slice on both servers, so one pass names
the slices that changed since they were materialized. Only those are re-copied, then the
indexes and sequences are finished, then the checks of the tables that changed or failed run
again. With the source frozen and the target untouched by anyone else, a check that passed in
the first pass stays true. If a table's checks could not run at all, every slice is compared
(and re-copied where it differs) and every table is checked again.

Each step calls the function its asset or check calls (`defs/`), and records what it found as
that asset's materializations and check evaluations (`engine/record.py`): a partition the
delta re-copied reads like one a partition run materialized. What one step hands the next
names tables, partitions and seconds, never a row value.
"""

from collections.abc import Iterable
from typing import Any

import dagster as dg

from migration_assets.defs.checks import differing_slices, table_check_results
from migration_assets.defs.finish import rebuild_indexes, sequences_ahead_result, set_sequences
from migration_assets.defs.keys import INDEXES_KEY, SEQUENCES_KEY, TARGET_POOL
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.defs.tables import materialize_slice
from migration_assets.engine.cutover_state import Setup, stays_frozen
from migration_assets.engine.record import record_checks, record_result
from migration_assets.engine.timer import Timer
from migration_assets.engine.work import Status, partition_statuses
from migration_assets.plan import MigrationPlan
from migration_assets.settings import Settings

Delta = dict[str, Any]  # redo: [[table, partition]], recheck: [table], phases: {name: seconds}


def _failing(evaluations: Iterable[dg.AssetCheckEvaluation]) -> list[dg.AssetCheckEvaluation]:
    """Evaluations that fail the migration (ERROR severity; WARN is advisory)."""
    return [e for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]


def _not_materialized(instance: dg.DagsterInstance, plan: MigrationPlan) -> set[tuple[str, str]]:
    """Partitions without a verified materialization (a cutover resumed after a kill does not
    pass the readiness gate again): due whatever their checksums say."""
    statuses = partition_statuses(instance, plan)
    return {
        (table, pk)
        for table, by_key in statuses.items()
        for pk, status in by_key.items()
        if status is not Status.MATERIALIZED
    }


@dg.op(
    pool=TARGET_POOL,
    description="Every table's checks on both sides, which name the slices that changed.",
)
def slices_compared(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    source: SourceDatabase,
    target: TargetDatabase,
    frozen: dict[str, Any],  # after the freeze: nothing the source holds changes any more
) -> Delta:
    setup, timer = Setup.load(settings), Timer()
    with timer.phase("checks"):
        redo = _not_materialized(context.instance, setup.plan)
        recheck: set[str] = set()
        crashed = False
        for table in setup.plan.tables:
            key = dg.AssetKey(table.asset_path)
            try:
                results = table_check_results(table, setup.plan, source, target)
                failing = _failing(record_checks(context, key, results))
            except dg.Failure as exc:
                context.log.warning(f"{table.qualified}: checks could not run: {exc.description}")
                crashed = True
                continue
            if failing:
                recheck.add(table.qualified)
            redo.update((table.qualified, pk) for e in failing for pk in differing_slices(e))
    if crashed:  # what that table's checks would have named is unknown: compare everything
        redo = {(t.qualified, pk) for t in setup.plan.tables for pk in t.partition_keys}
        recheck = {t.qualified for t in setup.plan.tables}
    order = {t.qualified: i for i, t in enumerate(setup.plan.tables)}
    return {
        "redo": [list(p) for p in sorted(redo, key=lambda p: (order.get(p[0], -1), p[1]))],
        "recheck": sorted(recheck | {table for table, _ in redo}),
        "phases": timer.phases,
    }


@dg.op(
    pool=TARGET_POOL,
    description="Re-copy the slices that differ, each verified and recorded as its partition.",
)
def slices_recopied(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    source: SourceDatabase,
    target: TargetDatabase,
    delta: Delta,
) -> Delta:
    setup, timer = Setup.load(settings), Timer(dict(delta["phases"]))
    copied = rows = 0
    with timer.phase("re-copy"), stays_frozen():
        for qualified, pk in delta["redo"]:
            table = setup.plan.table(qualified)
            outcome = materialize_slice(table, pk, source, target)
            key = dg.AssetKey(table.asset_path)
            if outcome.failure is not None:  # the verdict is evidence too: record it, then fail
                record_checks(context, key, outcome.checks, partition=pk)
                raise outcome.failure
            result: dg.MaterializeResult[None] = dg.MaterializeResult(
                metadata=outcome.metadata, check_results=outcome.checks
            )
            record_result(context, key, result, partition=pk)
            copied += outcome.result.copied
            rows += outcome.result.rows
    context.log.info(f"{copied} of {len(delta['redo'])} slice(s) due re-copied, {rows} row(s)")
    return {**delta, "slices_recopied": copied, "rows_recopied": rows, "phases": timer.phases}


@dg.op(
    pool=TARGET_POOL,
    description="Indexes and constraints back, sequences set, statistics fresh (the finish "
    "assets' work, recorded as theirs).",
)
def target_finished(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    source: SourceDatabase,
    target: TargetDatabase,
    delta: Delta,
) -> Delta:
    plan, timer = Setup.load(settings).plan, Timer(dict(delta["phases"]))
    with timer.phase("indexes and sequences"), stays_frozen():
        indexes = rebuild_indexes(plan, source, target, context.log.info)
        failed = _failing(record_result(context, INDEXES_KEY, indexes))
        if not failed:
            sequences = set_sequences(plan, source, target, context.log.info)
            record_result(context, SEQUENCES_KEY, sequences)
            ahead = [sequences_ahead_result(plan, target)]
            failed = _failing(record_checks(context, SEQUENCES_KEY, ahead))
        if failed:
            names = ", ".join(f"{e.asset_key.to_user_string()} {e.check_name}" for e in failed)
            raise dg.Failure(description=f"the final delta did not verify: {names} failed")
    return {**delta, "phases": timer.phases}


@dg.op(
    pool=TARGET_POOL,
    description="The checks of every table that changed or failed, again, recorded as theirs.",
)
def tables_rechecked(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    source: SourceDatabase,
    target: TargetDatabase,
    delta: Delta,
) -> dict[str, Any]:
    plan, timer = Setup.load(settings).plan, Timer(dict(delta["phases"]))
    failed: list[str] = []
    with timer.phase("re-checks"):
        for table in [plan.table(name) for name in delta["recheck"]]:
            key = dg.AssetKey(table.asset_path)
            try:
                evaluations = record_checks(
                    context, key, table_check_results(table, plan, source, target)
                )
            except dg.Failure as exc:
                context.log.warning(f"{table.qualified}: checks could not run: {exc.description}")
                failed.append("a check could not run")
                continue
            failed += [f"{key.to_user_string()} {e.check_name}" for e in _failing(evaluations)]
    with stays_frozen():
        if failed:
            raise dg.Failure(
                description=f"checks failed after the final delta ({', '.join(failed)})"
            )
    return {
        "slices_compared": plan.total_partitions(),
        "slices_recopied": delta["slices_recopied"],
        "rows_recopied": delta["rows_recopied"],
        "delta_time": timer.describe(),
    }


@dg.graph(description="Compare every slice, re-copy those that differ, finish, re-check.")
def final_delta(frozen: dict[str, Any]) -> Any:
    return tables_rechecked(target_finished(slices_recopied(slices_compared(frozen))))
