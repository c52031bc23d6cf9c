"""What Dagster remembers about our assets, read the same way by the runner and the report.

Dagster is imported only where it is used: the CLI reads metadata with `meta_text` before
it imports Dagster, so `migrate` can start its workers first (`engine.local`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from migration_assets.plan import TablePlan

if TYPE_CHECKING:
    from dagster import DagsterInstance, EventLogRecord


def latest_materializations(
    instance: DagsterInstance, table: TablePlan
) -> dict[str, EventLogRecord]:
    """The newest materialization record of each of the table's partitions."""
    import dagster as dg

    wanted = set(table.partition_keys)
    seen: dict[str, EventLogRecord] = {}
    cursor = None
    while len(seen) < len(wanted):
        page = instance.fetch_materializations(
            dg.AssetKey(table.asset_path), limit=200, cursor=cursor
        )
        for record in page.records:  # newest first
            mat = record.asset_materialization
            if mat is not None and mat.partition in wanted and mat.partition not in seen:
                seen[mat.partition] = record
        if not page.has_more:
            break
        cursor = page.cursor
    return seen


def plain(value: Any) -> Any:
    """A metadata value as Python: Dagster wraps each one (IntMetadataValue, ...)."""
    raw = getattr(value, "value", value)
    return raw if isinstance(raw, str | int | float | bool) or raw is None else str(raw)


def meta_text(metadata: Mapping[str, Any], key: str, default: str = "") -> str:
    """One metadata entry as text, or `default` when it is absent."""
    return str(plain(metadata[key])) if key in metadata else default
