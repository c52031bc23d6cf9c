"""Evidence a cutover step records in its own run, as the asset steps would have recorded it.

The cutover's final delta does the assets' work inside the job's own run (DESIGN.md: never a
run started inside a run), through the same functions the asset steps call. What those
return, materializations and check results, is logged here as the same events for the same
asset keys and partitions, so the UI, `status`, `verify`, the audit report and a later
`migrate` read them as they read a partition run's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dagster as dg

from migration_assets.defs.keys import REPORT_KEY
from migration_assets.defs.report import ReportConfig, build_report_asset
from migration_assets.defs.resources import MigrationOptions, TargetDatabase
from migration_assets.plan import MigrationPlan


def record_result(
    context: dg.OpExecutionContext,
    key: dg.AssetKey,
    result: dg.MaterializeResult,  # type: ignore[type-arg]
    *,
    partition: str | None = None,
) -> list[dg.AssetCheckEvaluation]:
    """A step's result as its asset's materialization, then its checks' evaluations."""
    context.log_event(dg.AssetMaterialization(key, partition=partition, metadata=result.metadata))
    return record_checks(context, key, result.check_results or [], partition=partition)


def record_checks(
    context: dg.OpExecutionContext,
    key: dg.AssetKey,
    results: Iterable[dg.AssetCheckResult],
    *,
    partition: str | None = None,
) -> list[dg.AssetCheckEvaluation]:
    """Each check result as an evaluation of `key`'s check, logged as soon as it is known.

    Each names the materialization it judged, the asset's (or the partition's) newest, as
    Dagster does for a check its own step evaluates: the audit report counts a verdict on
    older data as stale."""
    target: Any = None
    recorded = []
    for result in results:
        if target is None:
            target = judged_materialization(context.instance, key, partition)
        assert result.check_name is not None, "a recorded check result names its check"
        evaluation = dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=result.check_name,
            passed=result.passed,
            metadata=result.metadata,
            target_materialization_data=target,
            severity=result.severity,
            description=result.description,
            partition=partition,
        )
        # log_event records an AssetCheckEvaluation (Dagster 1.13 handles it beside the events
        # its annotation names); waits for: AssetCheckEvaluation in that annotation
        context.log_event(evaluation)  # type: ignore[arg-type]
        recorded.append(evaluation)
    return recorded


def judged_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None
) -> Any:
    """The pointer to the newest materialization of `key` (or of its `partition`).

    Dagster 1.13 does not export its type (AssetCheckEvaluationTargetMaterializationData), so
    it is built from its serialized form, the one the event log stores and must keep reading.
    Waits for: that type among `dagster`'s exports."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    newest = records[0]
    pointer = {
        "__class__": "AssetCheckEvaluationTargetMaterializationData",
        "storage_id": newest.storage_id,
        "run_id": newest.run_id,
        "timestamp": newest.timestamp,
    }
    return dg.deserialize_value(json.dumps(pointer))


def record_report(
    context: dg.OpExecutionContext,
    plan: MigrationPlan,
    out_dir: Path,
    target: TargetDatabase,
    options: MigrationOptions,
) -> bool:
    """The audit report, written by the report asset's own body invoked in this step and
    recorded as its materialization and check; whether it was written. The cutover's work is
    done either way, so a report that could not be written is logged, not raised: `report`
    writes it again."""
    report = build_report_asset(plan)
    try:
        result = report(
            context=dg.build_asset_context(instance=context.instance),
            config=ReportConfig(out_dir=str(out_dir)),
            target=target,  # the report anchors its digest on the target
            options=options,
        )
    except Exception as exc:  # as the report's own run failing did not fail the cutover
        why = exc.description if isinstance(exc, dg.Failure) else type(exc).__name__
        context.log.warning(f"audit report not written ({why}): run `migration-assets report`")
        return False
    assert isinstance(result, dg.MaterializeResult), "the report asset returns its result"
    record_result(context, REPORT_KEY, result)
    return True
