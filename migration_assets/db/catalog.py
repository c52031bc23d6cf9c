"""What a database holds, read from pg_catalog once, for plans and schema comparison.

Works on PostgreSQL 12 and newer. Schemas that belong to PostgreSQL or to Supabase are
never ours to read or write, and objects that belong to extensions are left to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from migration_assets.db.left_out import LARGE_OBJECTS, in_managed_schemas, large_objects
from migration_assets.db.session import Connection, refuse_old_server
from migration_assets.db.state import AUDIT_SCHEMA, STATE_SCHEMA  # ours, on a target

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})

# Supabase-managed schemas: their contents come with the project, never from a migration.
SUPABASE_SCHEMAS = frozenset(
    {
        "auth",
        "storage",
        "extensions",
        "graphql",
        "graphql_public",
        "realtime",
        "supabase_functions",
        "supabase_migrations",
        "vault",
        "pgsodium",
        "pgsodium_masks",
        "net",
        "cron",
        "pgbouncer",
        "_realtime",
        "_analytics",
        STATE_SCHEMA,
        AUDIT_SCHEMA,
    }
)
EXCLUDED_SCHEMAS = SYSTEM_SCHEMAS | SUPABASE_SCHEMAS
FIRST_USER_OID = 16384


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    not_null: bool
    generated: bool
    identity: str  # '', 'a' (always) or 'd' (by default)
    binary_safe: bool  # its binary COPY form carries no server-specific OIDs
    default: str | None = None


@dataclass(frozen=True)
class ForeignKeyInfo:
    name: str
    columns: tuple[str, ...]
    ref_schema: str
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class PartitionIndex:
    """An index on one partition (at any depth) of a partitioned table.

    `index` is the name of the partitioned table's index it is attached to, through any
    intermediate levels; an index of the partition alone keeps its own name. Its own name
    is left out of `definition`: PostgreSQL picks it when the index is created through the
    parent, so a schema built by Alembic and one restored by pg_dump name it differently
    for the same index.
    """

    partition: str  # schema.name
    index: str
    definition: str
    valid: bool


@dataclass
class TableInfo:
    oid: int
    schema: str
    name: str
    kind: str  # 'r' table, 'p' partitioned table
    reltuples: int
    size_bytes: int
    columns: list[ColumnInfo] = field(default_factory=list)
    primary_key: tuple[str, ...] = ()
    key_source: str = "none"  # 'primary key', 'unique index <name>' or 'none'
    foreign_keys: list[ForeignKeyInfo] = field(default_factory=list)
    constraints: dict[str, str] = field(default_factory=dict)  # name -> definition
    indexes: dict[str, str] = field(default_factory=dict)  # name -> definition
    invalid_indexes: set[str] = field(default_factory=set)  # e.g. ON ONLY, never attached
    partition_indexes: list[PartitionIndex] = field(default_factory=list)
    rls_enabled: bool = False
    never_analyzed: bool = False  # reltuples is no estimate at all: see `count_exactly`

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class SequenceInfo:
    schema: str
    name: str
    owner_schema: str | None
    owner_table: str | None
    owner_column: str | None


@dataclass
class Catalog:
    server_version: int
    tables: dict[str, TableInfo]
    sequences: list[SequenceInfo]
    enums: dict[str, tuple[str, ...]]
    skipped: dict[str, str]  # qualified name -> why it is not migrated as data

    def in_schemas(self, schemas: Iterable[str]) -> Catalog:
        keep = set(schemas)
        return Catalog(
            server_version=self.server_version,
            tables={k: t for k, t in self.tables.items() if t.schema in keep},
            sequences=[s for s in self.sequences if s.schema in keep],
            enums={k: v for k, v in self.enums.items() if k.split(".", 1)[0] in keep},
            skipped={
                k: v
                for k, v in self.skipped.items()
                if k == LARGE_OBJECTS or k.split(".", 1)[0] in keep  # those are in no schema
            },
        )


_SCHEMA_FILTER = """
    n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
    AND NOT EXISTS (
        SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""

TABLES_SQL = f"""
SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text,
       greatest(c.reltuples, 0)::int8, pg_total_relation_size(c.oid)::int8,
       c.relrowsecurity, c.reltuples < 0 OR (c.reltuples = 0 AND c.relpages = 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_SCHEMA_FILTER}
ORDER BY n.nspname, c.relname
"""

SKIPPED_SQL = f"""
SELECT n.nspname, c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('m', 'f') AND {_SCHEMA_FILTER}
"""

# Built-in types whose binary form is the OID of a catalog object (a table, a type, a role):
# the same name has another OID on the target, so only their text (the name) may travel.
OID_ALIAS_TYPES = (
    "regclass", "regcollation", "regconfig", "regdictionary", "regnamespace", "regoper",
    "regoperator", "regproc", "regprocedure", "regrole", "regtype",
)  # fmt: skip

COLUMNS_SQL = """
SELECT a.attrelid::int8, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated <> '', a.attidentity::text,
       ((a.atttypid < %(first)s AND coalesce(el.oid, 0) < %(first)s)
         OR t.typtype = 'e'
         OR (t.typtype = 'd' AND t.typbasetype < %(first)s
             AND coalesce(bel.oid, 0) < %(first)s))
       AND coalesce(el.typname, bel.typname, bt.typname, t.typname) <> ALL(%(oid_aliases)s),
       pg_get_expr(ad.adbin, ad.adrelid)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type el ON el.oid = t.typelem AND t.typcategory = 'A'
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_type bel ON bel.oid = bt.typelem AND bt.typcategory = 'A'
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# Primary keys first; else a unique, non-partial, column-only index on NOT NULL columns.
KEYS_SQL = """
SELECT DISTINCT ON (i.indrelid) i.indrelid::int8,
       array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.ord),
       CASE WHEN i.indisprimary THEN 'primary key' ELSE 'unique index ' || ic.relname END
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%(oids)s) AND i.indisunique AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL
  AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey) k(attnum)
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE NOT a.attnotnull)
ORDER BY i.indrelid, i.indisprimary DESC, i.indnatts, ic.relname
"""

CONSTRAINTS_SQL = """
SELECT con.conrelid::int8, con.conname, con.contype::text, pg_get_constraintdef(con.oid),
       rn.nspname, rc.relname,
       array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.ord),
       array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
             ORDER BY k.ord)
FROM pg_constraint con
LEFT JOIN pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.conrelid = ANY(%(oids)s)
  AND (con.contype IN ('p', 'u', 'f', 'c', 'x')
       -- PostgreSQL 18: a NOT NULL column may be NOT VALID, which only this says
       OR (con.contype = 'n' AND NOT con.convalidated))
ORDER BY con.conrelid, con.conname
"""

INDEXES_SQL = """
SELECT i.indrelid::int8, i.indexrelid::int8, ic.relname, pg_get_indexdef(i.indexrelid),
       i.indisvalid
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%(oids)s)
ORDER BY i.indrelid, ic.relname
"""

# The indexes of every partition, at any depth, with the index each is attached to.
PARTITION_INDEXES_SQL = """
WITH RECURSIVE parts(root, relid) AS (
    SELECT inh.inhparent, inh.inhrelid FROM pg_inherits inh
    JOIN pg_class c ON c.oid = inh.inhrelid
    WHERE inh.inhparent = ANY(%(oids)s) AND c.relispartition
    UNION ALL
    SELECT p.root, inh.inhrelid FROM pg_inherits inh JOIN parts p ON inh.inhparent = p.relid
)
SELECT p.root::int8, pn.nspname || '.' || pc.relname, i.indexrelid::int8, ic.relname,
       quote_ident(ic.relname), pg_get_indexdef(i.indexrelid), i.indisvalid,
       (SELECT ii.inhparent::int8 FROM pg_inherits ii WHERE ii.inhrelid = i.indexrelid)
FROM parts p
JOIN pg_class pc ON pc.oid = p.relid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
JOIN pg_index i ON i.indrelid = p.relid JOIN pg_class ic ON ic.oid = i.indexrelid
ORDER BY 1, 2, 4
"""

SEQUENCES_SQL = f"""
SELECT n.nspname, c.relname, tn.nspname, t.relname, a.attname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class t ON t.oid = d.refobjid
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE c.relkind = 'S' AND {_SCHEMA_FILTER}
ORDER BY n.nspname, c.relname
"""

ENUMS_SQL = """
SELECT n.nspname, t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
JOIN pg_enum e ON e.enumtypid = t.oid
WHERE n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
GROUP BY n.nspname, t.typname
ORDER BY 1, 2
"""


def read_catalog(conn: Connection) -> Catalog:
    """Everything migratable in the connected database, in one short read-only pass over the
    catalog (no table's rows: `count_exactly` reads those, once the caller knows it may)."""
    refuse_old_server(conn.info.server_version)
    params = {
        "excluded": sorted(EXCLUDED_SCHEMAS),
        "first": FIRST_USER_OID,
        "oid_aliases": list(OID_ALIAS_TYPES),
    }
    tables: dict[int, TableInfo] = {}
    for oid, schema, name, kind, tuples, size, rls, never in conn.execute(TABLES_SQL, params):
        tables[oid] = TableInfo(
            oid, schema, name, kind, tuples, size, rls_enabled=rls, never_analyzed=never
        )
    params["oids"] = list(tables)
    _read_columns(conn, tables, params)
    _read_keys(conn, tables, params)
    _read_constraints(conn, tables, params)
    _read_indexes(conn, tables, params)
    skipped = {
        f"{s}.{n}": "materialized view: refresh it on the target after the data is in"
        if kind == "m"
        else "foreign table: its data lives elsewhere"
        for s, n, kind in conn.execute(SKIPPED_SQL, params)
    }
    ours = {STATE_SCHEMA, AUDIT_SCHEMA}  # a database that once was a target: not the app's
    skipped.update(in_managed_schemas(conn, sorted(SUPABASE_SCHEMAS - ours)))
    skipped.update(large_objects(conn))
    return Catalog(
        server_version=conn.info.server_version,
        tables={t.qualified: t for t in tables.values()},
        sequences=[SequenceInfo(*row) for row in conn.execute(SEQUENCES_SQL, params)],
        enums={f"{s}.{n}": tuple(labels) for s, n, labels in conn.execute(ENUMS_SQL, params)},
        skipped=skipped,
    )


def _read_columns(
    conn: Connection, tables: dict[int, TableInfo], params: dict[str, object]
) -> None:
    for relid, name, typ, not_null, generated, identity, safe, default in conn.execute(
        COLUMNS_SQL, params
    ):
        tables[relid].columns.append(
            ColumnInfo(name, typ, not_null, generated, identity, bool(safe), default)
        )


def _read_keys(conn: Connection, tables: dict[int, TableInfo], params: dict[str, object]) -> None:
    for relid, columns, source in conn.execute(KEYS_SQL, params):
        tables[relid].primary_key = tuple(columns)
        tables[relid].key_source = source


def _read_constraints(
    conn: Connection, tables: dict[int, TableInfo], params: dict[str, object]
) -> None:
    for relid, name, kind, definition, ref_schema, ref_table, cols, ref_cols in conn.execute(
        CONSTRAINTS_SQL, params
    ):
        table = tables[relid]
        table.constraints[name] = definition
        if kind == "f":
            table.foreign_keys.append(
                ForeignKeyInfo(name, tuple(cols), ref_schema, ref_table, tuple(ref_cols))
            )


def _read_indexes(
    conn: Connection, tables: dict[int, TableInfo], params: dict[str, object]
) -> None:
    names: dict[int, str] = {}  # index oid -> name, for partitions' indexes to name theirs by
    for relid, oid, name, definition, valid in conn.execute(INDEXES_SQL, params):
        names[oid] = name
        tables[relid].indexes[name] = definition
        if not valid:
            tables[relid].invalid_indexes.add(name)
    rows = conn.execute(PARTITION_INDEXES_SQL, params).fetchall()
    parents = {oid: parent for _, _, oid, _, _, _, _, parent in rows}
    names.update({oid: name for _, _, oid, name, _, _, _, _ in rows})
    for root, partition, oid, _, quoted, definition, valid, _ in rows:
        top = oid
        while parents.get(top) is not None:  # up to the index nothing is attached above
            top = parents[top]
        own_name_dropped = definition.replace(f" {quoted} ON ", " ON ", 1)
        tables[root].partition_indexes.append(
            PartitionIndex(partition, names.get(top, ""), own_name_dropped, valid)
        )


def count_exactly(conn: Connection, tables: Iterable[TableInfo], below: int) -> None:
    """Replace the estimate by a count where it is none (never analysed) or small enough
    that counting is cheap and slicing by a wrong estimate would matter."""
    for table in tables:
        if table.never_analyzed or table.reltuples < below:
            table.reltuples = _exact_count(conn, table)


def _exact_count(conn: Connection, table: TableInfo) -> int:
    from psycopg import sql

    query = sql.SQL(
        "SELECT count(*) FROM " + ("" if table.kind == "p" else "ONLY ") + "{}.{}"
    ).format(sql.Identifier(table.schema), sql.Identifier(table.name))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0
