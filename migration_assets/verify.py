"""Whole-table comparison: counts and checksums on both sides, localised to slices.

One scan per table per side (grouped by slice), the two sides in parallel; a table's
checksum is the sum of its slices', so a difference names the slices to redo.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migration_assets.db.checksum import EMPTY, Checksum, checksums_by_slice, combine
from migration_assets.plan import TablePlan

if TYPE_CHECKING:
    from migration_assets.runner import Runner


@dataclass(frozen=True)
class TableComparison:
    table: str
    source: Checksum
    target: Checksum
    differing_slices: tuple[str, ...]

    @property
    def equal(self) -> bool:
        return self.source == self.target and not self.differing_slices


def compare_table(source: Any, target: Any, table: TablePlan) -> TableComparison:
    """`source`/`target` are resources with a `connect()` context manager."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(_sums, source, table)
        b = pool.submit(_sums, target, table)
        src, tgt = a.result(), b.result()
    differing = tuple(
        pk for i, pk in enumerate(table.partition_keys) if src.get(i, EMPTY) != tgt.get(i, EMPTY)
    )
    return TableComparison(
        table.qualified, combine(list(src.values())), combine(list(tgt.values())), differing
    )


def _sums(resource: Any, table: TablePlan) -> dict[int, Checksum]:
    with resource.connect() as conn:
        return checksums_by_slice(conn, table.slice(0), table.checksum_columns)


def compare_tables(
    runner: Runner, tables: Sequence[TablePlan] | None = None
) -> list[TableComparison]:
    chosen = list(tables) if tables is not None else runner.plan.tables
    source, target = runner.source, runner.target
    return [compare_table(source, target, t) for t in chosen]
