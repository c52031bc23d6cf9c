"""Data the plan cannot copy, named so that nothing is left behind without a word.

Besides materialized views and foreign tables (which the catalog lists itself): a source's
own tables in a schema Supabase manages, large objects, which belong to no table, and the
rows users added to an extension's configuration tables.
"""

from __future__ import annotations

import re
import shlex

from psycopg import sql

from migration_assets.db.session import Connection

# A source's own tables in a schema Supabase manages ("auth" is a common name for an app's
# login tables too): they cannot go there on the target, so the plan must say so.
MANAGED_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY(%(managed)s)
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""

# Large objects live in pg_largeobject, outside every table: a table's `oid` column that
# refers to one would arrive as a bare number. Counted so that the plan says so.
LARGE_OBJECTS = "large objects (pg_largeobject)"
LARGE_OBJECTS_SQL = "SELECT count(*) FROM pg_largeobject_metadata"


def in_managed_schemas(conn: Connection, managed: list[str]) -> dict[str, str]:
    """The source's own tables in the schemas Supabase manages (`managed`), and why each is
    not copied."""
    return {
        f"{s}.{n}": f"in schema {s}, which Supabase manages (its own tables live there on the "
        "target), so it is not copied. If it is your application's data, rename the schema "
        f"on the source (ALTER SCHEMA {s} RENAME TO …) and plan again"
        for s, n in conn.execute(MANAGED_SQL, {"managed": managed})
    }


def large_objects(conn: Connection) -> dict[str, str]:
    row = conn.execute(LARGE_OBJECTS_SQL).fetchone()
    count = int(row[0]) if row else 0
    if not count:
        return {}
    return {
        LARGE_OBJECTS: f"{count:,} large object(s) are not copied (they belong to no table; a "
        "column that refers to one arrives as a bare number). Move their contents into bytea "
        "columns on the source before planning, or restore them on the target separately "
        "(pg_dump --large-objects)"
    }


# An extension's configuration tables (pg_extension_config_dump) are the extension's, so the
# plan leaves them out with its other objects; but rows users add to them are the database's
# (pg_dump copies those its condition selects: a cron job, a custom spatial reference).
_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")
EXTENSION_CONFIG_SQL = """
SELECT e.extname, n.nspname, c.relname, coalesce(cfg.condition, ''),
       has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
FROM pg_extension e
CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) AS cfg(relid, condition)
JOIN pg_class c ON c.oid = cfg.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
ORDER BY n.nspname, c.relname
"""


def extension_configuration(conn: Connection) -> dict[str, str]:
    """Every extension configuration table, in any schema, that holds rows of the user's
    (counted by the extension's own condition, as pg_dump selects them), and why each is not
    copied; one this role may not read is listed too, since its rows cannot be ruled out."""
    found: dict[str, str] = {}
    for extension, schema, table, condition, readable in conn.execute(
        EXTENSION_CONFIG_SQL
    ).fetchall():
        rows = _user_rows(conn, schema, table, condition) if readable else None
        if rows != 0:
            found[f"{schema}.{table}"] = _config_reason(extension, schema, table, rows)
    return found


def _user_rows(conn: Connection, schema: str, table: str, condition: str) -> int:
    count = sql.SQL("SELECT count(*) FROM {} ").format(sql.Identifier(schema, table))
    row = conn.execute(count + sql.SQL(condition)).fetchone()  # the extension's own WHERE
    return int(row[0]) if row else 0


def _pattern(name: str) -> str:
    """`name` as a pg_dump pattern matches it: bare when lower-case and plain, else quoted."""
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def _config_reason(extension: str, schema: str, table: str, rows: int | None) -> str:
    qualified = f"{_pattern(schema)}.{_pattern(table)}"
    held = (
        f"{rows:,} row(s) added to it (beyond those the extension ships) are"
        if rows is not None
        else "this role may not read it, so rows added to it, if any, are"
    )
    return (
        f"configuration table of extension {extension}: {held} not copied (the table belongs "
        f"to the extension). Create the extension on the target (CREATE EXTENSION {extension}),"
        f" then copy those rows: pg_dump --data-only --table={shlex.quote(qualified)} of the "
        "source into psql on the target, or INSERT them"
    )
