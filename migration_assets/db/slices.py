"""Slices: which rows partition k of a table means, as SQL both servers evaluate alike.

A slice must select the same rows on the source and the target, every time, cheaply.
- range: an orderable, collation-free single-column key split at bounds taken from the
  data (so skewed keys, uuid v7 and gappy integers still split evenly). The first and
  last slices are open, so rows added after planning always belong to some slice.
- hash: md5 of the key's text (or of the whole row when there is no key), modulo N.
  It scans the table once per slice, so it is the fallback, not the default.
- single: one slice, the whole table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from psycopg import sql

from migration_assets.db.session import Connection

RANGE_TYPES = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "uuid",
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
        "oid",
    }
)


def range_cast_type(column_type: str) -> str | None:
    """The type to cast bounds to, when a range slice on this column type is safe."""
    if column_type in RANGE_TYPES:
        return column_type
    if column_type == "numeric" or column_type.startswith("numeric("):
        return "numeric"
    return None


class Strategy(StrEnum):
    RANGE = "range"
    HASH = "hash"
    SINGLE = "single"


@dataclass(frozen=True)
class SliceSpec:
    """Everything needed to select one slice; built from a table's plan."""

    schema: str
    table: str
    strategy: Strategy
    key: tuple[str, ...]  # range: one column; hash: key columns, or every copied column
    key_type: str | None
    bounds: tuple[str, ...]
    partitions: int
    index: int

    @property
    def relation(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))

    @property
    def fingerprint(self) -> str:
        """Changes whenever the rows this slice means could change (a re-plan)."""
        text = "|".join(
            [
                self.strategy,
                ",".join(self.key),
                self.key_type or "",
                *self.bounds,
                str(self.partitions),
                str(self.index),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def predicate(self) -> sql.Composable:
        return slice_predicate(self)


def key_text(columns: Sequence[str]) -> sql.Composable:
    """Text of the key as both servers print it under the pinned session settings."""
    if len(columns) == 1:
        return sql.SQL("{}::text").format(sql.Identifier(columns[0]))
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


def hash_bucket(columns: Sequence[str], partitions: int) -> sql.Composable:
    """0..partitions-1 from the first 32 bits of md5: stable across versions and platforms."""
    return sql.SQL("(('x' || substr(md5({}), 1, 8))::bit(32)::int8 % {})").format(
        key_text(columns), sql.Literal(partitions)
    )


def _bound(value: str, cast: str | None) -> sql.Composable:
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(cast or "text"))


def slice_predicate(spec: SliceSpec) -> sql.Composable:
    if spec.strategy is Strategy.SINGLE or spec.partitions == 1:
        return sql.SQL("TRUE")
    if spec.strategy is Strategy.HASH:
        return sql.SQL("{} = {}").format(
            hash_bucket(spec.key, spec.partitions), sql.Literal(spec.index)
        )
    column = sql.Identifier(spec.key[0])
    parts: list[sql.Composable] = []
    if spec.index > 0:
        lo = spec.bounds[spec.index - 1]
        parts.append(sql.SQL("{} >= {}").format(column, _bound(lo, spec.key_type)))
    if spec.index < len(spec.bounds):
        hi = spec.bounds[spec.index]
        parts.append(sql.SQL("{} < {}").format(column, _bound(hi, spec.key_type)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")


def slice_bucket(spec: SliceSpec) -> sql.Composable:
    """The slice index of every row, for one-scan-per-table verification of all slices."""
    if spec.strategy is Strategy.SINGLE or spec.partitions == 1:
        return sql.SQL("0")
    if spec.strategy is Strategy.HASH:
        return hash_bucket(spec.key, spec.partitions)
    bounds = sql.SQL(", ").join(_bound(b, spec.key_type) for b in spec.bounds)
    return sql.SQL("width_bucket({}, ARRAY[{}])").format(sql.Identifier(spec.key[0]), bounds)


def compute_bounds(
    conn: Connection,
    schema: str,
    table: str,
    column: str,
    partitions: int,
    *,
    sample_above: int = 2_000_000,
    rows: int = 0,
) -> list[str]:
    """Quantiles of the key; big tables are sampled, which only makes slices less even."""
    if partitions <= 1:
        return []
    fractions = [i / partitions for i in range(1, partitions)]
    relation = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    sample: sql.Composable = sql.SQL("")
    if rows > sample_above:
        percent = max(0.01, min(100.0, 100.0 * sample_above / rows))
        sample = sql.SQL(" TABLESAMPLE SYSTEM ({})").format(sql.Literal(percent))
    query = sql.SQL(
        "SELECT (percentile_disc({}::float8[]) WITHIN GROUP (ORDER BY {}))::text[] FROM {}{}"
    ).format(sql.Literal(fractions), sql.Identifier(column), relation, sample)
    row = conn.execute(query).fetchone()
    values = [v for v in (row[0] if row and row[0] else []) if v is not None]
    if not values and rows > sample_above:
        return compute_bounds(conn, schema, table, column, partitions, sample_above=rows + 1)
    distinct: list[str] = []
    for value in values:  # already in key order; drop repeats from a small sample
        if not distinct or distinct[-1] != value:
            distinct.append(value)
    return (
        distinct[1:] if distinct and _is_minimum(conn, relation, column, distinct[0]) else distinct
    )


def _is_minimum(conn: Connection, relation: sql.Composable, column: str, value: str) -> bool:
    """A bound equal to the smallest key would leave slice 0 empty: drop it."""
    query = sql.SQL("SELECT {0}::text = {1} FROM {2} ORDER BY {0} LIMIT 1").format(
        sql.Identifier(column), sql.Literal(value), relation
    )
    row = conn.execute(query).fetchone()
    return bool(row and row[0])
