"""Each table's evidence for the report: slices, checks, its numbers and the SQL behind them.

Everything comes from what Dagster recorded (materializations, check evaluations, their
run ids and timestamps). A table's numbers (row count and checksum on each side) come
from its whole-table checks when they judged the current data, else from its slices' own
verification; beside them, the SQL an auditor runs with psql to get the same numbers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster import DagsterInstance

from migration_assets.db.checksum import NATIVE_MIN_VERSION
from migration_assets.db.errors import MigrationError
from migration_assets.db.recompute import NATIVE, recompute_sql
from migration_assets.defs.checks import check_names
from migration_assets.defs.compat import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
    latest_check_executions,
)
from migration_assets.defs.history import latest_materializations, plain
from migration_assets.defs.keys import TABLE_CHECKSUM, TABLE_ROW_COUNT
from migration_assets.plan import MigrationPlan, TablePlan

Verdicts = Mapping[dg.AssetCheckKey, AssetCheckExecutionRecord]
VERDICTS_PER_QUERY = 500
SIDES = ("source", "target")
TARGET_ENCODING = "UTF8"  # Supabase's; every target of ours hashes text as it is


def when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def verdicts(instance: DagsterInstance, keys: list[dg.AssetCheckKey]) -> Verdicts:
    """Every check's latest execution, a few queries for all (one a check grew with tables)."""
    found: dict[dg.AssetCheckKey, AssetCheckExecutionRecord] = {}
    for i in range(0, len(keys), VERDICTS_PER_QUERY):
        chunk = keys[i : i + VERDICTS_PER_QUERY]
        found.update(latest_check_executions(instance, chunk))
    return found


def check_entry(
    found: Verdicts, key: dg.AssetKey, name: str, *, changed: int | None = None
) -> dict[str, Any]:
    """A check's last verdict. `changed`: the storage id of the asset's newest
    materialization, for a check that judges the whole asset: a verdict on older data (or
    none at all) is stale, whichever way the asset changed since."""
    record = found.get(dg.AssetCheckKey(key, name))
    entry: dict[str, Any] = {"asset": key.to_user_string(), "name": name, "passed": None}
    if record is None or record.event is None or record.event.dagster_event is None:
        if changed is not None:
            entry.update(stale=True)
        return entry
    evaluation = record.event.dagster_event.event_specific_data
    if record.status == AssetCheckExecutionRecordStatus.PLANNED or _older(evaluation, changed):
        # Planned in a later run that did not evaluate it (a UI backfill's partition runs
        # plan the whole-table checks and leave them), or judged data since replaced.
        entry.update(stale=True, run_id=record.run_id)
        return entry
    entry.update(
        passed=bool(getattr(evaluation, "passed", False)),
        severity=str(getattr(getattr(evaluation, "severity", None), "value", "ERROR")),
        at=when(record.event.timestamp),
        run_id=record.run_id,
        metadata={k: plain(v) for k, v in getattr(evaluation, "metadata", {}).items()},
    )
    return entry


def _older(evaluation: Any, changed: int | None) -> bool:
    """Was this verdict given on a materialization older than the newest one?"""
    if changed is None:
        return False
    target = getattr(evaluation, "target_materialization_data", None)
    return target is None or target.storage_id < changed


def table_entry(
    instance: DagsterInstance, found: Verdicts, table: TablePlan, plan: MigrationPlan
) -> dict[str, Any]:
    latest = latest_materializations(instance, table)
    slices = []
    for pk in table.partition_keys:
        record = latest.get(pk)
        mat = record.asset_materialization if record is not None else None
        meta = {k: plain(v) for k, v in mat.metadata.items()} if mat is not None else {}
        slices.append(
            {
                "partition": pk,
                "verified": mat is not None,  # the key names the slice's fingerprint
                "rows": meta.get("target_rows"),
                "source_rows": meta.get("source_rows"),
                "target_rows": meta.get("target_rows"),
                "source_checksum": meta.get("source_checksum"),
                "target_checksum": meta.get("target_checksum"),
                "row_hash": meta.get("row_hash"),
                "at": when(record.timestamp) if record is not None else None,
                "run_id": record.run_id if record is not None else None,
            }
        )
    key = dg.AssetKey(table.asset_path)
    changed = max((r.storage_id for r in latest.values()), default=None)
    verified = [s for s in slices if s["verified"]]
    checks = [check_entry(found, key, n, changed=changed) for n in check_names(table, plan)]
    numbers = _numbers(checks, slices)
    return {
        "table": table.qualified,
        "asset": key.to_user_string(),
        "partitions": {"total": len(slices), "verified": len(verified)},
        "rows_verified": sum(int(s["rows"] or 0) for s in verified),
        "slices": slices,
        "checks": checks,
        "numbers": numbers,
        "recompute": recompute_scripts(table, plan, numbers),
    }


def _numbers(checks: list[dict[str, Any]], slices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Row count and checksum of each side: the whole-table checks' when they judged the
    current data, else the sum of the slices' (each verified when it was copied)."""
    by_name = {c["name"]: c for c in checks}
    counted = by_name.get(TABLE_ROW_COUNT, {}).get("metadata") or {}
    summed = by_name.get(TABLE_CHECKSUM, {}).get("metadata") or {}
    if all(f"{s}_rows" in counted and f"{s}_checksum" in summed for s in SIDES):
        check = by_name[TABLE_CHECKSUM]
        numbers = {
            s: {"rows": counted[f"{s}_rows"], "checksum": summed[f"{s}_checksum"]} for s in SIDES
        }
        return numbers | {
            "row_hash": summed.get("row_hash") or "text",
            "from": f"check {TABLE_CHECKSUM} at {check.get('at')}, run {check.get('run_id')}",
        }
    if not slices or not all(s["verified"] and s["target_checksum"] is not None for s in slices):
        return None
    return {s: _summed(slices, s) for s in SIDES} | {
        "row_hash": slices[0]["row_hash"] or "text",
        "from": "the sum of its slices, each verified when it was copied",
    }


def _summed(slices: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """One side's numbers as the sum of its slices' (a table's checksum is exactly that)."""
    rows = (s[f"{side}_rows"] if s[f"{side}_rows"] is not None else s["rows"] for s in slices)
    return {
        "rows": sum(int(r or 0) for r in rows),
        "checksum": str(sum(int(s[f"{side}_checksum"]) for s in slices)),
    }


def recompute_scripts(
    table: TablePlan, plan: MigrationPlan, numbers: dict[str, Any] | None
) -> dict[str, str]:
    """The psql script of each side: the row hash the numbers were made with (or the one
    the checks would use: native when the source can, as the target always can)."""
    if numbers is not None:
        row_hash = str(numbers["row_hash"])
    else:
        capable = plan.source_server_version >= NATIVE_MIN_VERSION
        row_hash = NATIVE if capable and plan.source_encoding.upper() == "UTF8" else "text"

    def script(encoding: str) -> str:
        return recompute_sql(
            schema=table.schema_name,
            table=table.name,
            columns=table.hash_columns,
            row_hash=row_hash,
            encoding=encoding,
            partitioned=table.partitioned,
        )

    try:
        return {"source": script(plan.source_encoding), "target": script(TARGET_ENCODING)}
    except MigrationError:  # a source encoding no row hash works in: preflight refuses it
        return {}
