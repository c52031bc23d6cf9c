"""Row counts and order-independent checksums, computed inside each server.

A checksum is `count(*)` and the exact (numeric) sum of `hashtextextended(ROW(columns)::text,
0)`, a 64-bit hash built into PostgreSQL (11+), the one hash partitioning relies on being
stable across versions. It costs a third of an md5 turned into 64 bits. It hashes bytes in
native order, so a big-endian server would disagree: that shows as a loud mismatch, never
as silent loss. Rows never leave the server; only two numbers do. The column list is the
plan's, in the plan's order, so column order on disk cannot matter.

Both sides hash the UTF-8 bytes of the row text whatever their server encoding
(`TextBytes`), and read a table's own rows (`SliceSpec.own_rows`), never an inheritance
parent's children's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from migration_assets.db.session import Connection
from migration_assets.db.slices import UTF8, SliceSpec, TextBytes, slice_bucket, text_bytes


@dataclass(frozen=True)
class Checksum:
    rows: int
    digest: str  # exact sum as decimal text; "0" for no rows

    def __str__(self) -> str:
        return f"{self.rows} rows / {self.digest}"


EMPTY = Checksum(0, "0")


def row_hash(columns: Sequence[str], text: TextBytes = UTF8) -> sql.Composable:
    row = sql.SQL(", ").join(map(sql.Identifier, columns))
    return text.hash64(sql.SQL("ROW({})::text").format(row))


def slice_checksum(conn: Connection, spec: SliceSpec, columns: Sequence[str]) -> Checksum:
    text = text_bytes(conn)
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}").format(
        row_hash(columns, text), spec.own_rows, spec.predicate(text)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return Checksum(int(row[0]), str(row[1]))


def checksums_by_slice(
    conn: Connection, spec: SliceSpec, columns: Sequence[str]
) -> dict[int, Checksum]:
    """Every slice's checksum in a single scan of the table (slices absent had no rows)."""
    text = text_bytes(conn)
    query = sql.SQL(
        "SELECT {bucket} AS slice, count(*), coalesce(sum({hash}), 0)::text FROM {rel} GROUP BY 1"
    ).format(bucket=slice_bucket(spec, text), hash=row_hash(columns, text), rel=spec.own_rows)
    return {int(s): Checksum(int(n), str(d)) for s, n, d in conn.execute(query)}


def combine(parts: Sequence[Checksum]) -> Checksum:
    """Sums add up, so a table's checksum is the sum of its slices'."""
    return Checksum(sum(p.rows for p in parts), str(sum(int(p.digest) for p in parts)))
