"""Whole-table comparison: counts and checksums on both sides, localised to slices.

One scan per table per side (grouped by slice), the two sides in parallel; a table's
checksum is the sum of its slices', so a difference names the slices to redo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

from migration_assets.db.checksum import EMPTY, Checksum, RowHash, checksums_by_slice, combine
from migration_assets.db.session import Connection
from migration_assets.db.slices import SliceSpec

Connect = Callable[[], AbstractContextManager[Connection]]


@dataclass(frozen=True)
class TableComparison:
    table: str
    source: Checksum
    target: Checksum
    differing_slices: tuple[str, ...]
    row_hash: str = "text"  # how both sides hashed a row (RowHash.method)

    @property
    def equal(self) -> bool:
        return self.source == self.target and not self.differing_slices


def compare_table(
    source: Connect,
    target: Connect,
    *,
    spec: SliceSpec,
    columns: Sequence[tuple[str, str]],
    partition_keys: Sequence[str],
) -> TableComparison:
    """`spec` is any slice of the table (its slicing is what matters); one connection a side.
    `columns`: (name, type), whose types and both servers say how rows are hashed."""
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=2) as pool:
        src_conn, tgt_conn = stack.enter_context(source()), stack.enter_context(target())
        rows = RowHash.between(src_conn, tgt_conn, columns)
        a = pool.submit(checksums_by_slice, src_conn, spec, rows)
        b = pool.submit(checksums_by_slice, tgt_conn, spec, rows)
        src, tgt = a.result(), b.result()
        for conn in (src_conn, tgt_conn):
            conn.rollback()  # only read: ends the transaction, so a lent connection is kept
    differing = tuple(
        pk for i, pk in enumerate(partition_keys) if src.get(i, EMPTY) != tgt.get(i, EMPTY)
    )
    return TableComparison(
        f"{spec.schema}.{spec.table}",
        combine(list(src.values())),
        combine(list(tgt.values())),
        differing,
        rows.method,
    )
