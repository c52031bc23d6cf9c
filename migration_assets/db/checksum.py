"""Row counts and order-independent checksums, computed inside each server.

A checksum is `count(*)` and the exact (numeric) sum of `hashtextextended(ROW(columns)::text,
0)`, a 64-bit hash built into PostgreSQL (11+), the one hash partitioning relies on being
stable across versions. It costs a third of an md5 turned into 64 bits. It hashes bytes in
native order, so a big-endian server would disagree: that shows as a loud mismatch, never
as silent loss. Rows never leave the server; only two numbers do. The column list is the
plan's, in the plan's order, so column order on disk cannot matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from migration_assets.db.session import Connection
from migration_assets.db.slices import SliceSpec, slice_bucket


@dataclass(frozen=True)
class Checksum:
    rows: int
    digest: str  # exact sum as decimal text; "0" for no rows

    def __str__(self) -> str:
        return f"{self.rows} rows / {self.digest}"


EMPTY = Checksum(0, "0")


def row_hash(columns: Sequence[str]) -> sql.Composable:
    row = sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL("hashtextextended(ROW({})::text, 0)").format(row)


def slice_checksum(conn: Connection, spec: SliceSpec, columns: Sequence[str]) -> Checksum:
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}").format(
        row_hash(columns), spec.relation, spec.predicate()
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return Checksum(int(row[0]), str(row[1]))


def checksums_by_slice(
    conn: Connection, spec: SliceSpec, columns: Sequence[str]
) -> dict[int, Checksum]:
    """Every slice's checksum in a single scan of the table (slices absent had no rows)."""
    query = sql.SQL(
        "SELECT {bucket} AS slice, count(*), coalesce(sum({hash}), 0)::text FROM {rel} GROUP BY 1"
    ).format(bucket=slice_bucket(spec), hash=row_hash(columns), rel=spec.relation)
    return {int(s): Checksum(int(n), str(d)) for s, n, d in conn.execute(query)}


def combine(parts: Sequence[Checksum]) -> Checksum:
    """Sums add up, so a table's checksum is the sum of its slices'."""
    return Checksum(sum(p.rows for p in parts), str(sum(int(p.digest) for p in parts)))
