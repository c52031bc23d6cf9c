"""The cutover as Dagster jobs: the UI launches them, `migration-assets cutover` executes the
same jobs in process, so both paths run the same steps and leave the same runs: one run per
cutover, whose steps do all of its work (no run is started inside it).

Jobs, not assets: "Materialize all" and every backfill take all assets, and none of them may
ever freeze a production database. The evidence is the asset `migration_cutover` (an
external asset these jobs record), which the audit report reads; the final delta records what
it re-copies and re-checks as the table assets' own materializations and check evaluations
(`engine/delta.py`), and the audit report is written in the same run.

migration_cutover: cutover_ready -> source_frozen -> final_delta -> switch_application
  final_delta: slices_compared -> slices_recopied -> target_finished -> tables_rechecked
migration_cutover_rollback: source_unfrozen
"""

import datetime as dt
from typing import Any

import dagster as dg

from migration_assets.db.errors import MigrationError
from migration_assets.db.freeze import (
    FreezeRecord,
    freeze,
    freeze_problem,
    is_frozen,
    prior_setting,
    unfreeze,
)
from migration_assets.db.quiescence import WritePosition, quiescent, write_position
from migration_assets.defs.keys import CUTOVER_KEY
from migration_assets.defs.resources import MigrationOptions, SourceDatabase, TargetDatabase
from migration_assets.engine.cutover_state import (
    FREEZING,
    FROZEN,
    SWITCHED,
    CutoverState,
    Setup,
    readiness_problems,
    refusal,
    write_app_env,
)
from migration_assets.engine.delta import final_delta
from migration_assets.engine.record import record_report
from migration_assets.settings import Settings


class CutoverConfig(dg.Config):
    freeze: bool = True  # False: the operator stopped the app; prove it, change nothing
    app_env: str = ""  # where to write the application's new settings ("" : nowhere)
    wait_seconds: float = 30.0  # how long open sessions of the source may take to end


@dg.op(description="Refuse unless every partition is verified and the last checks passed.")
def cutover_ready(
    context: dg.OpExecutionContext, settings: dg.ResourceParam[Settings], config: CutoverConfig
) -> bool:
    setup = Setup.load(settings)
    state = CutoverState.load(setup.settings)
    if state.phase in (FREEZING, FROZEN):
        context.log.info("resuming: the source was frozen by an unfinished cutover")
        return True
    if state.phase == SWITCHED:
        raise refusal(
            f"database {state.database} was cut over already and stays frozen: nothing "
            "changed. To cut over again, `migration-assets cutover --rollback` first."
        )
    if config.app_env and not setup.settings.supabase_pooler_url:
        raise refusal("--app-env needs SUPABASE_POOLER_URL (port 6543) to write", exit_code=2)
    problems = readiness_problems(context.instance, setup)
    if problems:
        raise refusal(
            "not ready for cutover, nothing changed: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Run `migration-assets migrate`, then `migration-assets verify`."
        )
    return False


@dg.op(description="Stop writes to the source (new sessions read-only, old ones ended).")
def source_frozen(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    config: CutoverConfig,
    source: SourceDatabase,
    resuming: bool,
) -> dict[str, Any]:
    state = CutoverState.load(settings)
    with source.connect() as conn:
        if resuming and is_frozen(conn):
            if state.record is not None:
                return state.record.to_dict()
            # killed while sessions were being ended: undo to the recorded prior, freeze anew
            unfreeze(conn, _intent_record(state))
        if not config.freeze:
            return _quiet_or_refuse(conn)
        problem = freeze_problem(conn)
        if problem:
            raise refusal(problem, exit_code=2)
        # the setting to restore, on disk before anything changes
        state.save_intent(settings, conn.info.dbname, prior_setting(conn))
        try:
            record = freeze(conn, wait_seconds=config.wait_seconds)
        except MigrationError as exc:
            state.clear(settings)
            raise refusal(str(exc)) from None
    state.save_frozen(settings, record)
    context.log.info(f"source frozen at {record.frozen_at}; {record.terminated} session(s) ended")
    return record.to_dict()


def _quiet_or_refuse(conn: Any) -> dict[str, Any]:
    """--no-freeze: the operator says the app is stopped; a write in the settle time says no."""
    start = write_position(conn)
    quiet, _ = quiescent(conn, start, settle_seconds=3.0)
    if not quiet:
        raise refusal(
            "--no-freeze, but the source is still being written: stop the application (or "
            "run without --no-freeze to freeze it), then run cutover again. Nothing changed."
        )
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = FreezeRecord("", None, now, 0, start)
    return {**record.to_dict(), "frozen_by_us": False}


@dg.op(description="Prove no write reached the source, record the evidence, write app env.")
def switch_application(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    config: CutoverConfig,
    source: SourceDatabase,
    target: TargetDatabase,
    options: MigrationOptions,
    frozen: dict[str, Any],
    delta: dict[str, Any],
) -> dict[str, Any]:
    setup = Setup.load(settings)
    record = FreezeRecord.from_dict(frozen)
    with source.connect() as conn:
        quiet, end = quiescent(conn, record.position)
    started = dt.datetime.fromisoformat(record.frozen_at)
    window = (dt.datetime.now(dt.UTC) - started).total_seconds()
    evidence = _evidence(record, end, delta, window, quiet, frozen.get("frozen_by_us", True))
    context.log_event(dg.AssetMaterialization(CUTOVER_KEY, metadata=evidence))
    if not quiet:
        raise refusal(
            "the source was written during the cutover window (its write position moved): "
            "nothing was switched. Run `migration-assets cutover --rollback`, find the writer, "
            "then cut over again."
        )
    written = record_report(context, setup.plan, setup.audit_dir, target, options)
    if config.app_env:
        write_app_env(setup.settings, config.app_env)
    if frozen.get("frozen_by_us", True):  # --no-freeze changed nothing to undo
        CutoverState.load(setup.settings).save_switched(setup.settings)
    return {**evidence, "report_written": written}


def _evidence(
    record: FreezeRecord,
    end: WritePosition,
    delta: dict[str, Any],
    window: float,
    quiet: bool,
    frozen_by_us: bool,
) -> dict[str, Any]:
    return {
        "state": "cut over" if quiet else "refused: writes during the window",
        "frozen_by": "cutover" if frozen_by_us else "the operator (--no-freeze)",
        "frozen_at": record.frozen_at,
        "window_seconds": round(window, 1),
        "sessions_ended": record.terminated,
        **delta,
        "next_xid_at_freeze": record.position.next_xid,
        "next_xid_at_end": end.next_xid,
        "write_tuples_at_freeze": record.position.write_tuples,
        "write_tuples_at_end": end.write_tuples,
        "wal_lsn_at_freeze": record.position.wal_lsn,
        "wal_lsn_at_end": end.wal_lsn,
    }


@dg.op(description="Undo the freeze exactly (the setting it changed) and record it.")
def source_unfrozen(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    source: SourceDatabase,
    target: TargetDatabase,
    options: MigrationOptions,
) -> dict[str, Any]:
    setup = Setup.load(settings)
    state = CutoverState.load(setup.settings)
    with source.connect() as conn:
        frozen = is_frozen(conn)
        ours = state.phase in (FREEZING, FROZEN, SWITCHED)
        if frozen and not ours:
            raise refusal(
                "the source is read-only for new sessions, but no cutover of this DAGSTER_HOME "
                "froze it: nothing changed. If you froze it, run ALTER DATABASE … RESET "
                "default_transaction_read_only as its owner."
            )
        if ours:
            unfreeze(conn, state.record or _intent_record(state))
        writable = not is_frozen(conn)
    evidence: dict[str, Any] = {
        "state": "rolled back",
        "was_frozen": frozen,
        "source_writable": writable,
    }
    context.log_event(dg.AssetMaterialization(CUTOVER_KEY, metadata=evidence))
    state.save_rolled_back(setup.settings)
    record_report(context, setup.plan, setup.audit_dir, target, options)
    return evidence


def _intent_record(state: CutoverState) -> FreezeRecord:
    """Killed between recording the intent and the freeze: the prior setting is known."""
    now = dt.datetime.now(dt.UTC).isoformat()
    return FreezeRecord(state.database, state.prior, now, 0, WritePosition(0, 0, ""))


@dg.job(description="Freeze the source, final delta, prove no write, switch the application.")
def migration_cutover() -> None:
    frozen = source_frozen(cutover_ready())
    switch_application(frozen, final_delta(frozen))


@dg.job(description="Undo a cutover's freeze: the source takes writes again; the target stays.")
def migration_cutover_rollback() -> None:
    source_unfrozen()


CUTOVER_ASSET = dg.AssetSpec(
    CUTOVER_KEY,
    group_name="cutover",
    description=(
        "The cutover's evidence, recorded by the jobs migration_cutover and "
        "migration_cutover_rollback (never by Materialize all): freeze time, window, slices "
        "re-copied, the source's write position at freeze and at the end."
    ),
)


def cutover_definitions() -> dg.Definitions:
    """The jobs and their evidence asset, to merge beside the asset graph: the code location
    and the CLI bind them to the graph's own resources and executor."""
    return dg.Definitions(
        assets=[CUTOVER_ASSET], jobs=[migration_cutover, migration_cutover_rollback]
    )


def cutover_job(graph: dg.Definitions, name: str) -> dg.JobDefinition:
    """`name`'s job as the code location serves it: beside `graph`, with its resources."""
    return dg.Definitions.merge(graph, cutover_definitions()).resolve_job_def(name)
