"""Row counts and order-independent checksums, computed inside each server.

A checksum is `count(*)` and the exact (numeric) sum of a 64-bit hash of each row. Rows
never leave the server; only two numbers do. The column list is the plan's, in the plan's
order, so column order on disk cannot matter. Two ways to hash a row, and both sides of a
comparison always use the same one (`RowHash.between`):

- text: `hashtextextended(ROW(columns)::text, 0)`, the hash partitioning relies on being
  stable across versions. Any server, any encoding: both sides hash the UTF-8 bytes of the
  row text (`TextBytes`).
- native (both servers PostgreSQL 14+ and UTF8): `hash_record_extended` over the columns
  whose type's own hash is exact, that is, equal only for identical values (integers,
  boolean, uuid, date, timestamps, bytea, text in the "C" collation), plus one text hash
  of the other columns' row text. Printing a timestamp or a number costs more than hashing
  it: 1.7x cheaper over the benchmark's clinic tables, more where fewer columns stay text.
  Types whose equality is looser than identity (numeric 1.0 = 1.00, jsonb, arrays, floats,
  intervals, enums by OID) stay in the text part.

Hashes read bytes in native order, so a big-endian server would disagree: that shows as a
loud mismatch, never as silent loss. Both sides read a table's own rows
(`SliceSpec.own_rows`), never an inheritance parent's children's.
"""

from __future__ import annotations

import re
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


# Types whose hash tells every two distinct values apart (up to collisions), by the name
# format_type gives them (typmod removed), and the type a column is cast to for hashing:
# the plan's type on both sides, so a target column of a looser type (citext, say) is still
# hashed by its text. varchar hashes as text (binary-coercible: the cast costs nothing).
# Names are qualified: no search_path can make them another type.
EXACT_HASH_TYPES = {
    "boolean": "pg_catalog.bool",
    "smallint": "pg_catalog.int2",
    "integer": "pg_catalog.int4",
    "bigint": "pg_catalog.int8",
    "uuid": "pg_catalog.uuid",
    "date": "pg_catalog.date",
    "bytea": "pg_catalog.bytea",
    "text": "pg_catalog.text",
    "character varying": "pg_catalog.text",
    "timestamp with time zone": "pg_catalog.timestamptz",
    "timestamp without time zone": "pg_catalog.timestamp",
}
TYPMOD = re.compile(r"\(\d+\)")
NATIVE_MIN_VERSION = 140000  # hash_record_extended


def row_hash(columns: Sequence[str], text: TextBytes = UTF8) -> sql.Composable:
    """The text way: a hash of the row's text."""
    row = sql.SQL(", ").join(map(sql.Identifier, columns))
    return text.hash64(sql.SQL("ROW({})::text").format(row))


@dataclass(frozen=True)
class RowHash:
    """How both sides of one comparison hash a row (see the module's docstring)."""

    columns: tuple[tuple[str, str], ...]  # (name, type as format_type prints it), plan order
    native: bool = False

    @classmethod
    def between(cls, a: Connection, b: Connection, columns: Sequence[tuple[str, str]]) -> RowHash:
        """Native only when both servers can, so that both sides hash alike."""
        return cls(tuple(columns), native=_native_capable(a) and _native_capable(b))

    @property
    def method(self) -> str:
        """What the audit trail records: "native" or "text" (see the module's docstring)."""
        return "native" if self.native and self._exact() else "text"

    def expression(self, text: TextBytes) -> sql.Composable:
        names = [name for name, _ in self.columns]
        exact = self._exact() if self.native else {}
        if not exact:
            return row_hash(names, text)
        parts: list[sql.Composable] = [
            sql.SQL(
                "{}::{}" + (' COLLATE pg_catalog."C"' if as_type == "pg_catalog.text" else "")
            ).format(sql.Identifier(name), sql.SQL(as_type))
            for name, as_type in exact.items()
        ]
        rest = [n for n in names if n not in exact]
        if rest:
            parts.append(row_hash(rest, text))
        return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(parts))

    def _exact(self) -> dict[str, str]:
        """Column -> the type its own hash is taken as, for the exactly hashable ones."""
        out = {}
        for name, column_type in self.columns:
            as_type = EXACT_HASH_TYPES.get(TYPMOD.sub("", column_type))
            if as_type:
                out[name] = as_type
        return out


def _native_capable(conn: Connection) -> bool:
    return conn.info.server_version >= NATIVE_MIN_VERSION and text_bytes(conn).encoding == "UTF8"


def slice_checksum(conn: Connection, spec: SliceSpec, rows: RowHash) -> Checksum:
    text = text_bytes(conn)
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}").format(
        rows.expression(text), spec.own_rows, spec.predicate(text)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return Checksum(int(row[0]), str(row[1]))


def checksums_by_slice(conn: Connection, spec: SliceSpec, rows: RowHash) -> dict[int, Checksum]:
    """Every slice's checksum in a single scan of the table (slices absent had no rows).

    The slice of a row is a function of its key, so the planner expects as many groups as
    keys and sorts the whole rows to group them (on disk, from a few hundred thousand). The
    subquery, fenced by OFFSET 0, hashes each row first and groups the narrow results in a
    hash table: a third less work at 500k rows. One slice needs no grouping."""
    text = text_bytes(conn)
    parts = {
        "bucket": slice_bucket(spec, text),
        "hash": rows.expression(text),
        "rel": spec.own_rows,
    }
    shape = SLICED_SUMS if spec.partitions > 1 else WHOLE_SUMS
    return {int(s): Checksum(int(n), str(d)) for s, n, d in conn.execute(shape.format(**parts))}


WHOLE_SUMS = sql.SQL(
    "SELECT {bucket} AS slice, count(*), coalesce(sum({hash}), 0)::text FROM {rel} GROUP BY 1"
)
SLICED_SUMS = sql.SQL(
    "SELECT slice, count(*), coalesce(sum(h), 0)::text"
    " FROM (SELECT {bucket} AS slice, {hash} AS h FROM {rel} OFFSET 0) s GROUP BY 1"
)


def combine(parts: Sequence[Checksum]) -> Checksum:
    """Sums add up, so a table's checksum is the sum of its slices'."""
    return Checksum(sum(p.rows for p in parts), str(sum(int(p.digest) for p in parts)))
