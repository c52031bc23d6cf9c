"""Whole-table comparison: counts and checksums on both sides, localised to slices.

One scan per table per side (grouped by slice), the two sides in parallel; a table's
checksum is the sum of its slices', so a difference names the slices to redo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

from migration_assets.db.checksum import EMPTY, Checksum, checksums_by_slice, combine
from migration_assets.db.session import Connection
from migration_assets.db.slices import SliceSpec

Connect = Callable[[], AbstractContextManager[Connection]]


@dataclass(frozen=True)
class TableComparison:
    table: str
    source: Checksum
    target: Checksum
    differing_slices: tuple[str, ...]

    @property
    def equal(self) -> bool:
        return self.source == self.target and not self.differing_slices


def compare_table(
    source: Connect,
    target: Connect,
    *,
    spec: SliceSpec,
    columns: Sequence[str],
    partition_keys: Sequence[str],
) -> TableComparison:
    """`spec` is any slice of the table (its slicing is what matters); one connection a side."""

    def sums(connect: Connect) -> dict[int, Checksum]:
        with connect() as conn:
            return checksums_by_slice(conn, spec, columns)

    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(sums, source), pool.submit(sums, target)
        src, tgt = a.result(), b.result()
    differing = tuple(
        pk for i, pk in enumerate(partition_keys) if src.get(i, EMPTY) != tgt.get(i, EMPTY)
    )
    return TableComparison(
        f"{spec.schema}.{spec.table}",
        combine(list(src.values())),
        combine(list(tgt.values())),
        differing,
    )
