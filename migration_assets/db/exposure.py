"""Which tables the Supabase Data API would serve to anyone holding the anon key.

Supabase exposes the schemas its Data API serves (`public` by default) to the `anon` and
`authenticated` roles, and its default privileges grant them every new table there. A
table in such a schema with RLS off, or with grants the plan does not allow, is readable
with the project's anon key: for PHI that is a breach. The same text (what is exposed, and
the SQL that closes it) goes to the blocking check, the per-table checks, the CLI and the
audit report, so an operator reads one story wherever they look.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from migration_assets.db.session import Connection

HARDEN_OPTION = 'set "harden_existing_schema": true under "security" in the plan'

_POSTURE = """
SELECT n.nspname, c.relname, c.relrowsecurity,
       coalesce((SELECT string_agg(g.grantee || ': ' || g.privileges, '; ' ORDER BY g.grantee)
                 FROM (SELECT grantee, string_agg(privilege_type, ', ' ORDER BY privilege_type)
                              AS privileges
                       FROM information_schema.role_table_grants
                       WHERE table_schema = n.nspname AND table_name = c.relname
                         AND grantee = ANY(%(roles)s)
                       GROUP BY grantee) g), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%(schemas)s)
  AND (n.nspname || '.' || c.relname) = ANY(%(tables)s)
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Exposure:
    """One table the Data API would serve: why, and the statements that stop it."""

    schema: str
    table: str
    rls_enabled: bool
    grants: str  # "anon: SELECT, INSERT; authenticated: ..." or ""
    api_roles: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def reason(self) -> str:
        parts = [] if self.rls_enabled else ["row level security is off"]
        if self.grants:
            parts.append(f"grants {self.grants}")
        return f"{self.qualified}: " + " and ".join(parts)

    def fix_sql(self) -> str:
        rel = _quoted(self.schema) + "." + _quoted(self.table)
        statements = [] if self.rls_enabled else [f"ALTER TABLE {rel} ENABLE ROW LEVEL SECURITY;"]
        if self.grants:
            roles = ", ".join(_quoted(r) for r in self.api_roles)
            statements.append(f"REVOKE ALL ON TABLE {rel} FROM {roles};")
        return " ".join(statements)


def _quoted(name: str) -> str:
    """An identifier as the operator will paste it into psql (same rules as quote_ident)."""
    if name.isidentifier() and name == name.lower() and name.isascii():
        return name
    return '"' + name.replace('"', '""') + '"'


def exposed_tables(
    conn: Connection,
    tables: Iterable[tuple[str, str, bool]],
    *,
    exposed_schemas: Sequence[str],
    api_roles: Sequence[str],
) -> list[Exposure]:
    """Tables (schema, name, grants allowed by the plan) readable through the Data API."""
    wanted = {f"{s}.{t}": allowed for s, t, allowed in tables}
    rows = conn.execute(
        _POSTURE,
        {"roles": list(api_roles), "schemas": list(exposed_schemas), "tables": list(wanted)},
    ).fetchall()
    conn.rollback()
    found = []
    for schema, table, rls, grants in rows:
        allowed = wanted.get(f"{schema}.{table}", False)
        shown_grants = "" if allowed else str(grants)
        if not rls or shown_grants:
            found.append(Exposure(schema, table, bool(rls), shown_grants, tuple(api_roles)))
    return found


def describe(exposures: Sequence[Exposure]) -> str:
    """The one text every place shows: what is exposed, the SQL, and the plan option."""
    if not exposures:
        return "no table is readable through the Data API"
    lines = [
        f"{len(exposures)} table(s) would be readable through the Supabase Data API with the "
        "project's anon key:",
        *(f"- {e.reason()}" for e in exposures),
        "Fix: run on the target as its owner:",
        *(f"    {e.fix_sql()}" for e in exposures),
        f"or let the tool do it: {HARDEN_OPTION}, then run again.",
    ]
    return "\n".join(lines)
