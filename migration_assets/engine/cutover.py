"""The cutover as Dagster jobs: the UI launches them, `migration-assets cutover` executes the
same jobs in process, so both paths run the same steps and leave the same runs.

Jobs, not assets: "Materialize all" and every backfill take all assets, and none of them may
ever freeze a production database. The evidence is the asset `migration_cutover` (an
external asset these jobs record), which the audit report reads.

migration_cutover: cutover_ready -> source_frozen -> final_delta -> switch_application
migration_cutover_rollback: source_unfrozen
"""

import datetime as dt
from pathlib import Path
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
from migration_assets.db.session import connect
from migration_assets.defs.checks import differing_slices
from migration_assets.defs.keys import CUTOVER_KEY
from migration_assets.engine.cutover_state import (
    FREEZING,
    FROZEN,
    SWITCHED,
    CutoverState,
    readiness_problems,
    write_app_env,
)
from migration_assets.engine.session import Session
from migration_assets.engine.session import blocking_failures as blocking
from migration_assets.engine.timer import Timer
from migration_assets.plan import TablePlan
from migration_assets.settings import load_settings

EXIT_TAG = "exit"  # a step's failure metadata: the CLI's exit code for it (2: fix the setup)


class CutoverConfig(dg.Config):
    freeze: bool = True  # False: the operator stopped the app; prove it, change nothing
    app_env: str = ""  # where to write the application's new settings ("" : nowhere)
    wait_seconds: float = 30.0  # how long open sessions of the source may take to end
    workers: int = 2


def _session(context: dg.OpExecutionContext) -> Session:
    settings = load_settings(env_file=None)
    return Session.open(settings, settings.plan_path(), instance=context.instance)


def _audit_dir(session: Session) -> Path:
    assert session.settings.dagster_home is not None  # Session.open requires it
    return session.settings.dagster_home / "audit"


def _fail(message: str, *, exit_code: int = 1) -> dg.Failure:
    return dg.Failure(description=message, metadata={EXIT_TAG: exit_code})


@dg.op(description="Refuse unless every partition is verified and the last checks passed.")
def cutover_ready(context: dg.OpExecutionContext, config: CutoverConfig) -> bool:
    session = _session(context)
    state = CutoverState.load(session.settings)
    if state.phase in (FREEZING, FROZEN):
        context.log.info("resuming: the source was frozen by an unfinished cutover")
        return True
    if state.phase == SWITCHED:
        raise _fail(
            f"database {state.database} was cut over already and stays frozen: nothing "
            "changed. To cut over again, `migration-assets cutover --rollback` first."
        )
    if config.app_env and not session.settings.supabase_pooler_url:
        raise _fail("--app-env needs SUPABASE_POOLER_URL (port 6543) to write", exit_code=2)
    problems = readiness_problems(session)
    if problems:
        raise _fail(
            "not ready for cutover, nothing changed: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Run `migration-assets migrate`, then `migration-assets verify`."
        )
    return False


@dg.op(description="Stop writes to the source (new sessions read-only, old ones ended).")
def source_frozen(
    context: dg.OpExecutionContext, config: CutoverConfig, resuming: bool
) -> dict[str, Any]:
    session = _session(context)
    state = CutoverState.load(session.settings)
    with connect(session.settings.source_dsn, setting="SOURCE_DATABASE_URL") as conn:
        if resuming and is_frozen(conn):
            if state.record is not None:
                return state.record.to_dict()
            # killed while sessions were being ended: undo to the recorded prior, freeze anew
            unfreeze(conn, _intent_record(state))
        if not config.freeze:
            return _quiet_or_refuse(conn)
        problem = freeze_problem(conn)
        if problem:
            raise _fail(problem, exit_code=2)
        # the setting to restore, on disk before anything changes
        state.save_intent(session.settings, conn.info.dbname, prior_setting(conn))
        try:
            record = freeze(conn, wait_seconds=config.wait_seconds)
        except MigrationError as exc:
            state.clear(session.settings)
            raise _fail(str(exc)) from None
    state.save_frozen(session.settings, record)
    context.log.info(f"source frozen at {record.frozen_at}; {record.terminated} session(s) ended")
    return record.to_dict()


def _quiet_or_refuse(conn: Any) -> dict[str, Any]:
    """--no-freeze: the operator says the app is stopped; a write in the settle time says no."""
    start = write_position(conn)
    quiet, _ = quiescent(conn, start, settle_seconds=3.0)
    if not quiet:
        raise _fail(
            "--no-freeze, but the source is still being written: stop the application (or "
            "run without --no-freeze to freeze it), then run cutover again. Nothing changed."
        )
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = FreezeRecord("", None, now, 0, start)
    return {**record.to_dict(), "frozen_by_us": False}


@dg.op(description="Compare every slice on both sides, re-copy those that differ, re-check.")
def final_delta(
    context: dg.OpExecutionContext, config: CutoverConfig, frozen: dict[str, Any]
) -> dict[str, Any]:
    """Checks first: every table's checksum is grouped by slice on both servers, so one pass
    names the slices that changed since they were materialized. Only those are resynced
    (the `--resync` mechanism, through the engine's runs), then the tail (sequences), then
    the checks of the tables that changed or failed. With the source frozen and the target
    untouched by anyone else, a check that passed in the first pass stays true. If a check
    could not run at all, every slice is resynced and every check runs again."""
    from migration_assets.engine.migrate import migrate

    session = _session(context)
    timer = Timer()
    with timer.phase("checks"):
        first = session.run_checks()
    redo, recheck = _what_differs(session, first)
    report = migrate(session, workers=config.workers, resync=not first.success, redo=redo)
    timer.phases.update(report.phases)
    if not report.ok:
        raise _fail(
            "the final delta did not verify (see its runs); the source stays frozen: fix and "
            "run cutover again, or `migration-assets cutover --rollback`"
        )
    failed: list[str] = []
    if recheck or not first.success:
        with timer.phase("re-checks"):
            checks = session.run_checks(recheck if first.success else None)
        failed = [f"{e.asset_key.to_user_string()} {e.check_name}" for e in blocking(checks)]
        if not checks.success:
            failed.append("a check could not run")
    if failed:
        raise _fail(
            f"checks failed after the final delta ({', '.join(failed)}); the source stays "
            "frozen: fix and run cutover again, or roll back"
        )
    copied = [o for o in report.outcomes if o.copied]
    return {
        "slices_compared": session.plan.total_partitions(),
        "slices_recopied": len(copied),
        "rows_recopied": sum(o.rows for o in copied),
        "delta_time": timer.describe(),
    }


def _what_differs(
    session: Session, checks: dg.ExecuteInProcessResult
) -> tuple[frozenset[tuple[str, str]], list[TablePlan]]:
    """The (table, partition) pairs whose checksums differ, and the tables to check again:
    every table with a failed blocking check (a differing slice is one)."""
    by_key = {dg.AssetKey(t.asset_path): t for t in session.plan.tables}
    failing = [e for e in blocking(checks) if e.asset_key in by_key]
    redo = frozenset(
        (by_key[e.asset_key].qualified, pk) for e in failing for pk in differing_slices(e)
    )
    tables = {by_key[e.asset_key].qualified: by_key[e.asset_key] for e in failing}
    return redo, list(tables.values())


@dg.op(description="Prove no write reached the source, record the evidence, write app env.")
def switch_application(
    context: dg.OpExecutionContext,
    config: CutoverConfig,
    frozen: dict[str, Any],
    delta: dict[str, Any],
) -> dict[str, Any]:
    session = _session(context)
    record = FreezeRecord.from_dict(frozen)
    with connect(session.settings.source_dsn, setting="SOURCE_DATABASE_URL") as conn:
        quiet, end = quiescent(conn, record.position)
    started = dt.datetime.fromisoformat(record.frozen_at)
    window = (dt.datetime.now(dt.UTC) - started).total_seconds()
    evidence = _evidence(record, end, delta, window, quiet, frozen.get("frozen_by_us", True))
    context.log_event(dg.AssetMaterialization(CUTOVER_KEY, metadata=evidence))
    if not quiet:
        raise _fail(
            "the source was written during the cutover window (its write position moved): "
            "nothing was switched. Run `migration-assets cutover --rollback`, find the writer, "
            "then cut over again."
        )
    audit = session.write_report(_audit_dir(session))
    if config.app_env:
        write_app_env(session.settings, config.app_env)
    if frozen.get("frozen_by_us", True):  # --no-freeze changed nothing to undo
        CutoverState.load(session.settings).save_switched(session.settings)
    return {**evidence, "report_written": audit.success}


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
def source_unfrozen(context: dg.OpExecutionContext) -> dict[str, Any]:
    session = _session(context)
    state = CutoverState.load(session.settings)
    with connect(session.settings.source_dsn, setting="SOURCE_DATABASE_URL") as conn:
        frozen = is_frozen(conn)
        ours = state.phase in (FREEZING, FROZEN, SWITCHED)
        if frozen and not ours:
            raise _fail(
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
    state.save_rolled_back(session.settings)
    session.write_report(_audit_dir(session))
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
