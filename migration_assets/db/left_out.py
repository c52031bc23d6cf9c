"""Data the plan cannot copy, named so that nothing is left behind without a word.

Besides materialized views and foreign tables (which the catalog lists itself): a source's
own tables in a schema Supabase manages, and large objects, which belong to no table.
"""

from __future__ import annotations

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
