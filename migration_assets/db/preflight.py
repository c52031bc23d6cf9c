"""Before anything is written: can this role do everything the migration will ask of it?

A migration that creates the schema and then finds it may not set
session_replication_role, or may not INSERT into a table, has already changed the
target. These probes change nothing (each runs in a transaction that is rolled back).

The same holds for the source's text: Supabase is UTF8, and a SQL_ASCII source stores
whatever bytes it was given. Text that cannot become UTF-8 would fail mid-copy, after
other tables were written; it is found here instead, by table and column (never values).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from migration_assets.db.errors import ROW_SECURITY_FIX, safe_message
from migration_assets.db.session import Connection
from migration_assets.db.slices import own_rows, text_bytes, unsupported_encoding


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
    unreadable = set(missing) | set(lacking)
    readable = [(s, t) for s, t in tables if f"{s}.{t}" not in unreadable]
    return problems + row_security_problems(conn, readable) + encoding_problems(conn, readable)


# PostgreSQL's own rule (check_enable_rls): policies bind a role unless it is a superuser,
# has BYPASSRLS, or owns the table and the table does not FORCE them.
_POLICY_BOUND = """
SELECT t.s, t.n
FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(s, n, i)
JOIN pg_namespace ns ON ns.nspname = t.s
JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n
JOIN pg_roles r ON r.rolname = current_user
WHERE c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls
  AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
ORDER BY t.i
"""


def row_security_problems(conn: Connection, tables: Iterable[tuple[str, str]]) -> list[str]:
    """Tables whose policies would show the source role only some of their rows (or none):
    the copy and its checksum would agree on those, so a partial copy would verify.
    (Every session also pins `row_security = off`, so PostgreSQL refuses what this misses.)"""
    pairs = list(tables)
    if not pairs:
        return []
    rows = conn.execute(_POLICY_BOUND, [[s for s, _ in pairs], [t for _, t in pairs]])
    role = conn.info.user
    problems = [
        f"{s}.{t}: row-level security applies to the source role {role}, which would see only "
        f"the rows its policies allow, and so copy and verify only those. {ROW_SECURITY_FIX}"
        for s, t in rows.fetchall()
    ]
    conn.rollback()
    return problems


# Every byte of these is a character UTF-8 has: their text always converts.
ALWAYS_CONVERTS = frozenset({"UTF8", "LATIN1"})

# Columns whose text may hold more than ASCII: not numbers, booleans, dates, times, bit
# strings, addresses or geometry (by type category), nor bytea (hex) and uuid.
_TEXTUAL_COLUMNS = """
SELECT c.relkind = 'p', array_agg(a.attname::text ORDER BY a.attnum)
FROM pg_class c
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.oid = to_regclass(%s)
  AND t.typcategory <> ALL('{N,B,D,T,V,I,G}'::"char"[])
  AND t.oid <> ALL(ARRAY['bytea'::regtype, 'uuid'::regtype]::oid[])
GROUP BY c.relkind
"""


def encoding_problems(conn: Connection, tables: Iterable[tuple[str, str]]) -> list[str]:
    """Text on a non-UTF8 source that cannot become UTF-8, by table and column.

    Costs one read of the textual columns, and only for sources whose bytes may not convert
    (SQL_ASCII, single-byte encodings with undefined bytes); UTF8 and LATIN1 cost nothing.
    """
    encoding = text_bytes(conn).encoding
    unsupported = unsupported_encoding(encoding)
    if unsupported:
        return [unsupported]
    if encoding in ALWAYS_CONVERTS:
        return []
    problems = []
    for schema, table in tables:
        problems += _unconvertible(conn, encoding, schema, table)
    conn.rollback()
    return problems


def _unconvertible(conn: Connection, encoding: str, schema: str, table: str) -> list[str]:
    row = conn.execute(_TEXTUAL_COLUMNS, [_quoted(schema, table)]).fetchone()
    if row is None:
        return []
    relation = own_rows(schema, table, partitioned=bool(row[0]))
    columns: list[str] = list(row[1])
    if _converts(conn, relation, columns):  # one scan when all is well
        return []
    return [
        _encoding_message(encoding, f"{schema}.{table}.{column}")
        for column in columns
        if not _converts(conn, relation, [column])
    ]


def _converts(conn: Connection, relation: sql.Composable, columns: list[str]) -> bool:
    """Whether every value of `columns` converts to UTF-8 (the error names bytes, so it is
    never shown: it could carry a piece of a value)."""
    counts = sql.SQL(", ").join(
        sql.SQL("count(convert_to({}::text, 'UTF8'))").format(sql.Identifier(c)) for c in columns
    )
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT {} FROM {}").format(counts, relation))
    except (psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter):
        return False
    return True


def _encoding_message(encoding: str, where: str) -> str:
    if encoding == "SQL_ASCII":
        return (
            f"{where}: holds bytes that are not valid UTF-8. The source database is SQL_ASCII "
            "(it stores bytes unchecked) and Supabase is UTF8. Convert it first: dump it "
            "(pg_dump), change the dump's `SET client_encoding = 'SQL_ASCII'` to the encoding "
            "the text really is in (often LATIN1 or WIN1252), restore it into a database "
            "created with ENCODING 'UTF8' and plan from that one; or correct those values"
        )
    return (
        f"{where}: holds characters that have no UTF-8 equivalent in the source's encoding "
        f"{encoding} (bytes that encoding leaves undefined): correct those values on the "
        "source, then retry"
    )


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
