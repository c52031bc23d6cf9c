"""Defer a cold table's secondary indexes: drop before the load, rebuild once after.

On a cold load the target spends most of its time maintaining indexes row by row;
building each once at the end is far cheaper (measured: 1.96 s -> 0.74 s + 0.49 s for
564k observations). Only plain indexes are deferred: primary keys and unique indexes stay,
because slices are deleted by key and uniqueness must hold throughout.

Partitioned tables: dropping a parent's index drops its partitions' indexes with it, and
`pg_get_indexdef` of the parent's gives `CREATE INDEX ... ON ONLY parent`, which alone
rebuilds an invalid parent index and nothing on the partitions. So the whole tree is
recorded: the parent's definition, then, level by level, each partition's index under its
own name (PostgreSQL would pick other names than a pg_dump'd schema has) and the `ALTER
INDEX ... ATTACH PARTITION` that hangs it under its parent; once every partition's index
is attached PostgreSQL marks the parent valid.

Crash safety: each table's index definitions are recorded on the target (`db.state`), in
the same transaction that drops them; `restore_indexes` recreates whatever is recorded
after the data, in every run of `supabase_indexes`, so a killed run's indexes come back
with the next migrate's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from migration_assets.db.lanes import in_lanes
from migration_assets.db.session import Connection
from migration_assets.db.slices import own_rows
from migration_assets.db.state import ensure_table, has_table, records, state_table

TABLE = "deferred_indexes"
COLUMNS = (
    "schema_name text, table_name text, index_name text, definition text NOT NULL, "
    "then_run text[] NOT NULL DEFAULT '{}', PRIMARY KEY (schema_name, index_name)"
)

_DEFERRABLE = """
SELECT ic.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary AND NOT i.indisunique
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY ic.relname
"""

# Every index attached below a partitioned index, parents before children.
_ATTACHED = """
WITH RECURSIVE tree(child, parent, depth) AS (
    SELECT inhrelid, inhparent, 1 FROM pg_inherits WHERE inhparent = %s::regclass
    UNION ALL
    SELECT i.inhrelid, i.inhparent, t.depth + 1
    FROM pg_inherits i JOIN tree t ON i.inhparent = t.child
)
SELECT pg_get_indexdef(t.child), cn.nspname, c.relname, pn.nspname, p.relname
FROM tree t
JOIN pg_class c ON c.oid = t.child JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = t.parent JOIN pg_namespace pn ON pn.oid = p.relnamespace
ORDER BY t.depth, cn.nspname, c.relname
"""


@dataclass(frozen=True)
class Deferred:
    schema: str
    table: str
    name: str
    definition: str
    then_run: tuple[str, ...] = ()  # partitions' indexes and their ATTACH, in order


def _qualified(schema: str, name: str) -> str:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name)).as_string()


def _ensure_state(conn: Connection) -> None:
    ensure_table(conn, TABLE, COLUMNS)
    conn.execute(  # a killed run of an older version left its table without this column
        sql.SQL(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS then_run text[] NOT NULL DEFAULT '{{}}'"
        ).format(state_table(TABLE))
    )


def is_empty(conn: Connection, schema: str, table: str, *, partitioned: bool = False) -> bool:
    row = conn.execute(
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(
            own_rows(schema, table, partitioned=partitioned)
        )
    ).fetchone()
    conn.rollback()
    return bool(row and row[0])


def defer_indexes(conn: Connection, tables: Iterable[tuple[str, str]]) -> list[Deferred]:
    """Drop the plain indexes of `tables`, recording them first; skip what we may not drop."""
    deferred: list[Deferred] = []
    for schema, table in tables:
        try:
            with conn.transaction():
                _ensure_state(conn)
                found = conn.execute(_DEFERRABLE, [_qualified(schema, table)]).fetchall()
                for name, definition in found:
                    index = Deferred(schema, table, name, definition, _attached(conn, schema, name))
                    conn.execute(
                        sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s)").format(
                            state_table(TABLE)
                        ),
                        [schema, table, name, definition, list(index.then_run)],
                    )
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
                    deferred.append(index)
        except psycopg.errors.InsufficientPrivilege:
            continue  # not our table to change: it keeps its indexes, only slower to load
    return deferred


def _attached(conn: Connection, schema: str, name: str) -> tuple[str, ...]:
    """What rebuilds the partitions' indexes of a partitioned index exactly: each one under
    its own name, then attached to its parent index (nothing for a plain table's index)."""
    steps: list[str] = []
    for definition, c_schema, c_name, p_schema, p_name in conn.execute(
        _ATTACHED, [_qualified(schema, name)]
    ):
        steps.append(definition)
        steps.append(
            sql.SQL("ALTER INDEX {} ATTACH PARTITION {}")
            .format(sql.Identifier(p_schema, p_name), sql.Identifier(c_schema, c_name))
            .as_string(conn)
        )
    return tuple(steps)


def recorded(conn: Connection) -> list[Deferred]:
    if has_table(conn, TABLE):
        with conn.transaction():
            _ensure_state(conn)  # a killed run of an older version's table lacks then_run
    columns = ("schema_name", "table_name", "index_name", "definition", "then_run")
    rows = records(conn, TABLE, columns)
    return [Deferred(s, t, n, d, tuple(steps)) for s, t, n, d, steps in rows]


def index_groups(pending: Iterable[Deferred]) -> list[list[Deferred]]:
    """`pending` in groups that may build at the same time, each in its order: indexes on one
    plain table may (CREATE INDEX shares the table's lock with another), a partitioned
    table's go one after another (see `restore_index`)."""
    groups: dict[tuple[str, ...], list[Deferred]] = {}
    for index in pending:
        alone = (index.schema, index.table) if index.then_run else (index.schema, index.name)
        groups.setdefault(alone, []).append(index)
    return list(groups.values())


def restore_indexes(
    conn: Connection,
    groups: list[list[Deferred]],
    more: Callable[[], AbstractContextManager[Connection]],
    lanes: int = 1,
) -> None:
    """Every index of `groups` (`index_groups`), over `lanes` connections (`conn` and more
    from `more`); a group's indexes in its order, on one connection."""
    in_lanes(conn, more, lanes, groups, restore_index)


def restore_index(conn: Connection, index: Deferred) -> None:
    """Recreate one index (if it is not there) and forget it, in one transaction.

    A partitioned table's indexes are rebuilt one at a time: two transactions creating and
    attaching indexes on the same partitions would deadlock.
    """
    with conn.transaction():
        if index.then_run:
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                    sql.Identifier(index.schema, index.table)
                )
            )
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [_qualified(index.schema, index.name)]
        ).fetchone()
        if not exists or not exists[0]:
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            for statement in (index.definition, *index.then_run):
                conn.execute(statement.encode())
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE schema_name = %s AND index_name = %s").format(
                state_table(TABLE)
            ),
            [index.schema, index.name],
        )
