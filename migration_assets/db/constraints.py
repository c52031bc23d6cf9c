"""NOT VALID constraints that old rows break: dropped for the load, added back after it.

A CHECK constraint added NOT VALID (a rule added later without validating history), or on
PostgreSQL 18 a NOT NULL one, binds new rows only, and to COPY every row is new: the
source's old rows that break it would fail their slice on every retry ([23514]). pg_dump
adds such constraints after the data for the same reason. So the schema step, once the
schema is applied, records each one's `pg_get_constraintdef` on the target (`db.state`) and
drops it, in one transaction per planned table; after every slice, `supabase_indexes` adds
each back (the definition ends in NOT VALID, so no row is scanned and none is changed) and
forgets it, in one transaction each. A run killed in between leaves the record, and the next
migrate adds them back. Foreign keys stay: they are triggers, which the load's
`session_replication_role = replica` does not fire.

A partitioned table's partitions are looked at too (COPY into the parent checks theirs); a
constraint a partition inherits goes and comes back with its parent's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from migration_assets.db.session import Connection
from migration_assets.db.state import ensure_table, records, state_table

TABLE = "deferred_constraints"
COLUMNS = (
    "schema_name text, table_name text, constraint_name text, kind text NOT NULL, "
    "column_name text, definition text NOT NULL, "
    "PRIMARY KEY (schema_name, table_name, constraint_name)"
)

# The planned tables and their partitions (at any depth), each NOT VALID CHECK or NOT NULL
# constraint of their own: parents first, so that dropping one drops its inherited copies.
_NOT_VALID = """
WITH RECURSIVE tree(root, relid, depth) AS (
    SELECT to_regclass(t)::oid, to_regclass(t)::oid, 0
    FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NOT NULL
    UNION ALL
    SELECT tree.root, i.inhrelid, tree.depth + 1
    FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid
    JOIN pg_class p ON p.oid = i.inhrelid
    WHERE p.relispartition
)
SELECT tree.root::int8, n.nspname, c.relname, con.conname, con.contype::text,
       (SELECT a.attname FROM pg_attribute a
        WHERE con.contype = 'n' AND a.attrelid = con.conrelid AND a.attnum = con.conkey[1]),
       pg_get_constraintdef(con.oid)
FROM tree
JOIN pg_constraint con ON con.conrelid = tree.relid
JOIN pg_class c ON c.oid = tree.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE con.contype IN ('c', 'n') AND NOT con.convalidated AND con.conislocal
ORDER BY tree.root, tree.depth, n.nspname, c.relname, con.conname
"""


@dataclass(frozen=True)
class DeferredConstraint:
    schema: str
    table: str  # the relation it is on: a planned table or one of its partitions
    name: str
    kind: str  # 'c' CHECK, 'n' NOT NULL
    column: str | None  # a NOT NULL constraint's column
    definition: str  # from pg_get_constraintdef: ends in NOT VALID

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"


def _qualified(schema: str, name: str) -> str:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name)).as_string()


def not_valid(
    conn: Connection, tables: Iterable[tuple[str, str]]
) -> list[list[DeferredConstraint]]:
    """The NOT VALID CHECK and NOT NULL constraints of `tables`, one list per table that has
    any (its partitions' included), in the order they may be dropped."""
    names = [_qualified(schema, table) for schema, table in tables]
    groups: dict[int, list[DeferredConstraint]] = {}
    for root, *found in conn.execute(_NOT_VALID, [names]).fetchall():
        groups.setdefault(root, []).append(DeferredConstraint(*found))
    conn.rollback()
    return list(groups.values())


def defer_constraints(
    conn: Connection, tables: Iterable[tuple[str, str]]
) -> list[DeferredConstraint]:
    """Record and drop the NOT VALID constraints of `tables`, one transaction per table;
    skip a table we may not change (its slices will name the constraint they break)."""
    deferred: list[DeferredConstraint] = []
    for group in not_valid(conn, tables):
        try:
            with conn.transaction():
                ensure_table(conn, TABLE, COLUMNS)
                for constraint in group:
                    _drop_recorded(conn, constraint)
        except psycopg.errors.InsufficientPrivilege:
            continue
        deferred.extend(group)
    return deferred


def _drop_recorded(conn: Connection, c: DeferredConstraint) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (schema_name, table_name, constraint_name) DO UPDATE "
            "SET kind = excluded.kind, column_name = excluded.column_name, "
            "definition = excluded.definition"
        ).format(state_table(TABLE)),
        [c.schema, c.table, c.name, c.kind, c.column, c.definition],
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            sql.Identifier(c.schema, c.table), sql.Identifier(c.name)
        )
    )


def held_for_load(conn: Connection, schema: str, table: str) -> list[DeferredConstraint]:
    """In the caller's (a slice's) transaction: drop the NOT VALID constraints still on the
    table, for `put_back` to add before it commits.

    The schema step defers them for a whole migration, so a slice finds none; a partition
    run without it (a UI backfill of one table's failed partitions after the constraints came
    back) would otherwise fail on the old rows that break them, on every retry. Nothing is
    recorded: a failed or killed slice rolls the DROP back with its rows. While held, the
    table is locked against the other slices' transactions until this one ends."""
    name = _qualified(schema, table)
    found = [DeferredConstraint(*row[1:]) for row in conn.execute(_NOT_VALID, [[name]])]
    for constraint in found:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(constraint.schema, constraint.table),
                sql.Identifier(constraint.name),
            )
        )
    return found


def put_back(conn: Connection, held: Iterable[DeferredConstraint]) -> None:
    """Add `held_for_load`'s constraints again, in the same transaction (still NOT VALID:
    no row is scanned)."""
    for c in held:
        add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
            sql.Identifier(c.schema, c.table), sql.Identifier(c.name)
        )
        conn.execute(add + sql.SQL(c.definition))  # the server's own text


def recorded_constraints(conn: Connection) -> list[DeferredConstraint]:
    """What the target has on record as dropped for a load (nothing when it has no record)."""
    columns = ("schema_name", "table_name", "constraint_name", "kind", "column_name", "definition")
    return [DeferredConstraint(*row) for row in records(conn, TABLE, columns)]


def restore_constraints(conn: Connection, pending: Iterable[DeferredConstraint]) -> None:
    """Add each constraint back, unless it is there already (or its table is gone), and
    forget it: one transaction each, so a kill loses no record."""
    for c in pending:
        with conn.transaction():
            row = conn.execute(
                "SELECT to_regclass(%s) IS NULL OR EXISTS (SELECT 1 FROM pg_constraint "
                "WHERE conrelid = to_regclass(%s) AND conname = %s)",
                [_qualified(c.schema, c.table), _qualified(c.schema, c.table), c.name],
            ).fetchone()
            if not row or not row[0]:
                put_back(conn, [c])
            conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE schema_name = %s AND table_name = %s "
                    "AND constraint_name = %s"
                ).format(state_table(TABLE)),
                [c.schema, c.table, c.name],
            )
