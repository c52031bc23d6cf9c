"""Table-level evidence on the target: FK integrity, security posture, TLS in use.

Rows are loaded with FK checks off (replica mode), so integrity is proven here, after the
fact, for every foreign key. Security is judged the way Supabase exposes data: tables in a
schema the Data API serves are readable by `anon`/`authenticated` unless RLS is on and
their grants are withheld.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from psycopg import sql

from migration_assets.db.session import Connection
from migration_assets.db.slices import own_rows

SAMPLE_KEYS = 20


@dataclass(frozen=True)
class ForeignKeyFinding:
    name: str
    columns: tuple[str, ...]
    references: str
    orphans: int
    sample_keys: tuple[str, ...]  # primary keys of orphan rows, never other values

    def __str__(self) -> str:
        shown = f"; keys {', '.join(self.sample_keys)}" if self.sample_keys else ""
        return (
            f"{self.name} ({', '.join(self.columns)} -> {self.references}): "
            f"{self.orphans} orphan row(s){shown}"
        )


def _rel(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def orphan_rows(
    conn: Connection,
    *,
    schema: str,
    table: str,
    key: Sequence[str],
    columns: Sequence[str],
    ref_schema: str,
    ref_table: str,
    ref_columns: Sequence[str],
) -> tuple[int, list[str]]:
    """Child rows whose (non-NULL) FK columns match no parent row: MATCH SIMPLE semantics.

    As PostgreSQL enforces it: the FK covers the child table's own rows and sees the
    referenced table's own rows (inheritance children have neither the constraint nor a
    say), while a partitioned table on either side means all of its partitions."""
    not_null = sql.SQL(" AND ").join(
        sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in columns
    )
    joined = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(r), sql.Identifier(c))
        for c, r in zip(columns, ref_columns, strict=True)
    )
    key_text = (
        sql.SQL("ROW({})::text").format(
            sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(k)) for k in key)
        )
        if key
        else sql.SQL("NULL::text")
    )
    query = sql.SQL(
        "SELECT count(*) OVER (), {key} FROM {child} c WHERE {not_null} "
        "AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {joined}) LIMIT {limit}"
    ).format(
        key=key_text,
        child=own_rows(schema, table, partitioned=_partitioned(conn, schema, table)),
        not_null=not_null,
        parent=own_rows(
            ref_schema, ref_table, partitioned=_partitioned(conn, ref_schema, ref_table)
        ),
        joined=joined,
        limit=sql.Literal(SAMPLE_KEYS),
    )
    rows = conn.execute(query).fetchall()
    if not rows:
        return 0, []
    return int(rows[0][0]), [str(r[1]) for r in rows if r[1] is not None]


def _partitioned(conn: Connection, schema: str, table: str) -> bool:
    """Asked of the server the FK lives on: its relkind is what the constraint follows."""
    row = conn.execute(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)",
        [_rel(schema, table).as_string(conn)],
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Posture:
    rls_enabled: bool
    policies: int
    api_grants: tuple[str, ...]  # "anon: SELECT, INSERT" ...


def security_posture(
    conn: Connection, *, schema: str, table: str, api_roles: Iterable[str]
) -> Posture:
    row = conn.execute(
        "SELECT c.relrowsecurity, (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        [schema, table],
    ).fetchone()
    grants = conn.execute(
        "SELECT grantee, string_agg(privilege_type, ', ' ORDER BY privilege_type) "
        "FROM information_schema.role_table_grants "
        "WHERE table_schema = %s AND table_name = %s AND grantee = ANY(%s) "
        "GROUP BY grantee ORDER BY grantee",
        [schema, table, list(api_roles)],
    ).fetchall()
    return Posture(
        rls_enabled=bool(row and row[0]),
        policies=int(row[1]) if row else 0,
        api_grants=tuple(f"{g}: {p}" for g, p in grants),
    )


@dataclass(frozen=True)
class TlsEvidence:
    ssl: bool
    version: str
    cipher: str
    bits: int

    def __str__(self) -> str:
        return f"{self.version} {self.cipher} ({self.bits} bits)" if self.ssl else "no TLS"


def tls_evidence(conn: Connection) -> TlsEvidence:
    """What this very connection negotiated, as the server sees it."""
    row = conn.execute(
        "SELECT ssl, coalesce(version, ''), coalesce(cipher, ''), coalesce(bits, 0) "
        "FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    ).fetchone()
    if row is None:
        return TlsEvidence(False, "", "", 0)
    return TlsEvidence(bool(row[0]), str(row[1]), str(row[2]), int(row[3]))
