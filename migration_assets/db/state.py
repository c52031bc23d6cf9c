"""Our private schema on the target: what a killed run must find to finish its work.

For a load the schema step drops what would slow or break it (a cold table's plain indexes,
NOT VALID constraints the old rows break) and records each in a table here, in the same
transaction as the DROP; `supabase_indexes` puts it back and forgets it in one transaction.
Whichever run is killed in between, the next `migrate` finds the record. This module owns
the schema: each kind of record has a table of its own, and the schema goes only once
every table in it is empty, so one kind's cleanup never loses another's record.

The audit report chain's anchors live beside it, in a schema of their own that is never
dropped (`AUDIT_SCHEMA`, see `db/anchor.py`): they are evidence that must outlive every
load, and "nothing of ours stays behind" keeps holding for the load's own records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from migration_assets.db.session import Connection

STATE_SCHEMA = "migration_assets_state"
AUDIT_SCHEMA = "migration_assets_audit"  # never dropped: `drop_if_empty` knows only STATE_SCHEMA


def state_table(name: str, schema: str = STATE_SCHEMA) -> sql.Identifier:
    return sql.Identifier(schema, name)


def ensure_table(conn: Connection, name: str, columns: str, schema: str = STATE_SCHEMA) -> None:
    """The schema and the record table `name` (`columns`: its fixed column list), created
    if missing, in the caller's transaction."""
    conn.execute(
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} ({})").format(
            sql.Identifier(schema), state_table(name, schema), sql.SQL(columns)
        )
    )


def has_table(conn: Connection, name: str, schema: str = STATE_SCHEMA) -> bool:
    """Is there a record table `name`? Read in a transaction the caller ends."""
    qualified = state_table(name, schema).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [qualified]).fetchone()
    return bool(row and row[0])


def records(conn: Connection, name: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Every row of the record table `name` (none where it does not exist), by its first
    three columns; read in a transaction of its own."""
    if not has_table(conn, name):
        conn.rollback()
        return []
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {} ORDER BY 1, 2, 3").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), state_table(name)
        )
    ).fetchall()
    conn.rollback()
    return rows


def drop_if_empty(conn: Connection) -> None:
    """Drop the schema once none of its tables records anything (called between
    transactions: this is one)."""
    with conn.transaction():
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", [STATE_SCHEMA]
        ).fetchall()
        for (name,) in tables:
            row = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(state_table(name))
            ).fetchone()
            if row and row[0]:
                return
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(STATE_SCHEMA))
        )
