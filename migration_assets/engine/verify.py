"""The job that ends a UI migration verified: every whole-table check, then the audit report.

A UI backfill ("Materialize all" of split tables, "backfill failed and missing") plans each
table's whole-table checks into its partition runs, where a split table's only wait: a
half-copied table proves nothing, and Dagster cannot order them after a table's last slice
inside one backfill. So the audit report such a backfill writes reads INCOMPLETE. (When every
table is one slice, "Materialize all" is one run that ends verified on its own.) This job is
the one click after a backfill:

verify_and_report: tables_verified -> audit_report_written

Each step calls the functions the checks and the report asset call (`defs/`) and records
what they find as those checks' evaluations and that asset's materialization
(`engine/record.py`), in this job's own run: the asset pages show the verdicts as if their
own steps had run them. `verify` and `report` run the same checks and report in the CLI.
"""

from typing import Any

import dagster as dg

from migration_assets.defs.checks import table_check_results
from migration_assets.defs.keys import TARGET_POOL, VERIFY_JOB
from migration_assets.defs.resources import MigrationOptions, SourceDatabase, TargetDatabase
from migration_assets.engine.cutover_state import Setup
from migration_assets.engine.record import record_checks, record_report
from migration_assets.settings import Settings


@dg.op(
    pool=TARGET_POOL,
    description="Every table's whole-table checks (counts, checksums, foreign keys, RLS and "
    "grants) on both servers, recorded as those checks' evaluations.",
)
def tables_verified(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    source: SourceDatabase,
    target: TargetDatabase,
) -> dict[str, Any]:
    plan = Setup.load(settings).plan
    failed: list[str] = []
    for table in plan.tables:
        key = dg.AssetKey(table.asset_path)
        try:
            evaluations = record_checks(
                context, key, table_check_results(table, plan, source, target)
            )
        except dg.Failure as exc:  # the next table's checks may still run: say, go on
            context.log.warning(f"{table.qualified}: checks could not run: {exc.description}")
            failed.append(f"{key.to_user_string()} (could not run)")
            continue
        failed += [
            f"{key.to_user_string()} {e.check_name}"
            for e in evaluations
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
        ]
    context.log.info(f"{len(plan.tables)} table(s) checked; {len(failed)} check(s) failed")
    return {"tables": len(plan.tables), "failed": failed}


@dg.op(
    pool=TARGET_POOL,  # the report anchors its digest on the target
    description="The audit report, written after the checks and recorded as its asset's.",
)
def audit_report_written(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    target: TargetDatabase,
    options: MigrationOptions,
    verified: dict[str, Any],
) -> None:
    setup = Setup.load(settings)
    if not record_report(context, setup.plan, setup.audit_dir, target, options):
        raise dg.Failure(description="the audit report could not be written (see the log)")
    if verified["failed"]:
        raise dg.Failure(
            description="the report is written; these checks failed: "
            + ", ".join(verified["failed"][:20])
        )


@dg.job(
    name=VERIFY_JOB,
    description="After a UI backfill: run every whole-table check, then write the audit "
    "report (COMPLETE when the data is equal). One click ends a migration verified.",
)
def verify_and_report() -> None:
    audit_report_written(tables_verified())
