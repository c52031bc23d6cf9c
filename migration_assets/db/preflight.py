"""Before anything is written: can this role do everything the migration will ask of it?

A migration that creates the schema and then finds it may not set
session_replication_role, or may not INSERT into a table, has already changed the
target. These probes change nothing (each runs in a transaction that is rolled back).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from migration_assets.db.errors import safe_message
from migration_assets.db.session import Connection


def _quoted(schema: str, table: str) -> str:
    return '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'


def _privileges(
    conn: Connection, tables: Iterable[tuple[str, str]], privileges: str
) -> tuple[list[str], list[str]]:
    """(missing tables, tables lacking `privileges`) as the current role sees them."""
    missing, lacking = [], []
    for schema, table in tables:
        name = _quoted(schema, table)
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
        if not row or not row[0]:
            missing.append(f"{schema}.{table}")
            continue
        # a comma list would be true if ANY privilege were held: ask for each one
        ok = conn.execute(
            "SELECT bool_and(has_table_privilege(current_user, %s::regclass, p)) "
            "FROM unnest(string_to_array(%s, ', ')) p",
            [name, privileges],
        ).fetchone()
        if not ok or not ok[0]:
            lacking.append(f"{schema}.{table}")
    conn.rollback()
    return missing, lacking


def source_problems(conn: Connection, tables: list[tuple[str, str]]) -> list[str]:
    missing, lacking = _privileges(conn, tables, "SELECT")
    problems = [
        f"{t}: in the plan but not on the source: write a new plan (migration-assets plan)"
        for t in missing
    ]
    problems += [
        f"{t}: the source role may not SELECT it: GRANT SELECT ON {t} TO <role>" for t in lacking
    ]
    return problems


def target_problems(conn: Connection, tables: list[tuple[str, str]]) -> list[str]:
    role = conn.info.user
    problems = []
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        problems.append(
            f"role {role} may not set session_replication_role, which the copy needs so that "
            "triggers and FK checks leave migrated rows alone. As a superuser run: GRANT SET ON "
            f"PARAMETER session_replication_role TO {role}; (PostgreSQL 15+; Supabase's "
            "postgres role has it)"
        )
    except psycopg.Error as exc:
        problems.append(f"role {role}: {safe_message(exc)}")
    _, lacking = _privileges(conn, tables, "SELECT, INSERT, DELETE")
    problems += [
        f"{t}: role {role} lacks SELECT, INSERT or DELETE on it: GRANT SELECT, INSERT, DELETE "
        f"ON {t} TO {role}"
        for t in lacking
    ]
    return problems
