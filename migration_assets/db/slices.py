"""Slices: which rows partition k of a table means, as SQL both servers evaluate alike.

A slice must select the same rows on the source and the target, every time, cheaply.
- range: an orderable, collation-free single-column key split at bounds taken from the
  data (so skewed keys, uuid v7 and gappy integers still split evenly). The first and
  last slices are open, so rows added after planning always belong to some slice.
- hash: md5 of the key's text (or of the whole row when there is no key), modulo N.
  It scans the table once per slice, so it is the fallback, not the default.
- single: one slice, the whole table.

Every read of a table reads its OWN rows (`FROM ONLY`): an inheritance parent's plain
`SELECT` also returns its children's rows, and the children are planned as tables of their
own. A declaratively partitioned table is the exception: its rows live in its partitions,
so it is read whole. `own_rows` is the one place that decides.

Hashes (md5 of keys, the 64-bit row hash of checksums) read the bytes of text in the
server's encoding: 'ü' is one byte in LATIN1 and two in UTF8. `TextBytes` makes every
server hash the UTF-8 bytes of its text, so a LATIN1 source and a UTF8 target agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from psycopg import sql

from migration_assets.db.errors import MigrationError
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


def own_rows(schema: str, table: str, *, partitioned: bool = False) -> sql.Composed:
    """What `FROM` reads for this table's rows: `ONLY` unless declaratively partitioned
    (ONLY on a partitioned table returns nothing; its partitions are not planned apart)."""
    name = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    return name if partitioned else sql.SQL("ONLY {}").format(name)


# Text in these server encodings is hashed as it is: UTF-8 already (SQL_ASCII passes bytes
# through unconverted; preflight refuses a SQL_ASCII source holding anything but UTF-8).
AS_IS_ENCODINGS = frozenset({"UTF8", "SQL_ASCII"})
# Server encodings with multi-byte characters other than UTF8: see TextBytes.hash64.
MULTIBYTE_ENCODINGS = frozenset(
    {"EUC_CN", "EUC_JP", "EUC_JIS_2004", "EUC_KR", "EUC_TW", "MULE_INTERNAL"}
)


@dataclass(frozen=True)
class TextBytes:
    """How one server hashes text so that every server agrees: over its UTF-8 bytes.

    UTF8 servers keep the plain expressions (no conversion, today's speed). Others hash
    `convert_to(text, 'UTF8')`: md5 takes bytea directly; hashtextextended takes only text,
    so the UTF-8 bytes are re-read as text of the (single-byte) server encoding, in which
    every byte is valid and nothing is converted. Multi-byte encodings such as EUC_JP
    cannot hold arbitrary bytes: those sources are refused (see `unsupported_encoding`).
    """

    encoding: str = "UTF8"

    @property
    def as_is(self) -> bool:
        return self.encoding in AS_IS_ENCODINGS

    def _utf8(self, text: sql.Composable) -> sql.Composable:
        return sql.SQL("convert_to({}, 'UTF8')").format(text)

    def md5(self, text: sql.Composable) -> sql.Composable:
        return sql.SQL("md5({})").format(text if self.as_is else self._utf8(text))

    def hash64(self, text: sql.Composable) -> sql.Composable:
        if self.as_is:
            return sql.SQL("hashtextextended({}, 0)").format(text)
        problem = unsupported_encoding(self.encoding)
        if problem:
            raise MigrationError(problem)
        return sql.SQL("hashtextextended(convert_from({}, {}), 0)").format(
            self._utf8(text), sql.Literal(self.encoding)
        )


UTF8 = TextBytes()


def text_bytes(conn: Connection) -> TextBytes:
    """The connected server's way (server_encoding is reported at connect: no round trip)."""
    encoding = conn.info.parameter_status("server_encoding")
    if not encoding:
        row = conn.execute("SHOW server_encoding").fetchone()
        encoding = str(row[0]) if row else "UTF8"
    return TextBytes(encoding.upper())


def unsupported_encoding(encoding: str) -> str | None:
    """Why rows of a database in this encoding cannot be verified, if they cannot."""
    if encoding.upper() not in MULTIBYTE_ENCODINGS:
        return None
    return (
        f"the source database's encoding is {encoding}: rows are verified by hashing their "
        "text as UTF-8, which works for UTF8, SQL_ASCII and single-byte encodings only. "
        "Convert the source to UTF8 first (pg_dump --encoding=UTF8, restore into a database "
        "created with ENCODING 'UTF8'), then write a new plan from it"
    )


WHOLE_TABLE_FINGERPRINT = hashlib.sha256(b"whole table").hexdigest()[:16]


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
    partitioned: bool = False  # declaratively partitioned: read whole, never ONLY

    @property
    def relation(self) -> sql.Composed:
        """The table's name (COPY ... FROM, locks); reads use `own_rows`."""
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))

    @property
    def own_rows(self) -> sql.Composed:
        """What FROM, DELETE FROM and bisection read: this table's own rows."""
        return own_rows(self.schema, self.table, partitioned=self.partitioned)

    @property
    def fingerprint(self) -> str:
        """Changes exactly when the rows this slice means could change (a re-plan): for a
        range slice its own two bounds, for a hash slice the bucket and their number. It is
        part of the partition key, so a re-planned slice is a new partition, missing in the
        UI and in `status` until it is copied, and an unchanged one keeps its status.

        A table's only slice means every row, whatever its key: all such slices share one
        key, so one run can carry several small tables (see `engine/work.py`)."""
        if self.partitions <= 1 or self.strategy is Strategy.SINGLE:
            return WHOLE_TABLE_FINGERPRINT
        if self.strategy is Strategy.RANGE:
            lo = self.bounds[self.index - 1] if self.index > 0 else ""
            hi = self.bounds[self.index] if self.index < len(self.bounds) else ""
            meaning = [self.key_type or "", lo, hi]
        else:
            meaning = [str(self.partitions), str(self.index)]
        text = "|".join([self.strategy, ",".join(self.key), *meaning])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def predicate(self, text: TextBytes = UTF8) -> sql.Composable:
        """`text`: the server's (`text_bytes(conn)`), so hash slices mean the same rows."""
        return slice_predicate(self, text)


def key_text(columns: Sequence[str]) -> sql.Composable:
    """Text of the key as both servers print it under the pinned session settings."""
    if len(columns) == 1:
        return sql.SQL("{}::text").format(sql.Identifier(columns[0]))
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


def hash_bucket(columns: Sequence[str], partitions: int, text: TextBytes = UTF8) -> sql.Composable:
    """0..partitions-1 from the first 32 bits of md5: stable across versions and platforms
    (and server encodings: md5 of the key's UTF-8 bytes)."""
    return sql.SQL("(('x' || substr({}, 1, 8))::bit(32)::int8 % {})").format(
        text.md5(key_text(columns)), sql.Literal(partitions)
    )


def _bound(value: str, cast: str | None) -> sql.Composable:
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(cast or "text"))


def slice_predicate(spec: SliceSpec, text: TextBytes = UTF8) -> sql.Composable:
    if spec.strategy is Strategy.SINGLE or spec.partitions == 1:
        return sql.SQL("TRUE")
    if spec.strategy is Strategy.HASH:
        return sql.SQL("{} = {}").format(
            hash_bucket(spec.key, spec.partitions, text), sql.Literal(spec.index)
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


def slice_bucket(spec: SliceSpec, text: TextBytes = UTF8) -> sql.Composable:
    """The slice index of every row, for one-scan-per-table verification of all slices."""
    if spec.strategy is Strategy.SINGLE or spec.partitions == 1:
        return sql.SQL("0")
    if spec.strategy is Strategy.HASH:
        return hash_bucket(spec.key, spec.partitions, text)
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
    partitioned: bool = False,
) -> list[str]:
    """Quantiles of the key; big tables are sampled, which only makes slices less even."""
    if partitions <= 1:
        return []
    fractions = [i / partitions for i in range(1, partitions)]
    relation = own_rows(schema, table, partitioned=partitioned)
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
        return compute_bounds(
            conn, schema, table, column, partitions, sample_above=rows + 1, partitioned=partitioned
        )
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
