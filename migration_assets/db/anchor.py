"""The audit report chain's anchor on the target: each report's sequence and digest.

Reports are files, and whoever can write their directory can delete the newest one: the
chain before it stays intact. So every report's (chain, sequence, digest) is also recorded
where the directory's writer cannot reach it, here on the target (and in the Dagster
instance, by the report asset's metadata). `migration-assets report --check` compares.

The table lives in a schema of its own (`state.AUDIT_SCHEMA`) that nothing drops: the
load's records in `migration_assets_state` go once they are done, evidence stays. No
privilege on it is granted to anyone (a new schema gives PUBLIC no USAGE, so the Data
API's roles cannot read it); an auditor's read-only role needs
`GRANT USAGE ON SCHEMA migration_assets_audit` and `GRANT SELECT ON ... report_anchors`.
"""

from __future__ import annotations

from psycopg import sql

from migration_assets.db.errors import MigrationError
from migration_assets.db.session import Connection
from migration_assets.db.state import AUDIT_SCHEMA, ensure_table, has_table, state_table

TABLE = "report_anchors"
COLUMNS = (
    "chain text NOT NULL, sequence integer NOT NULL, digest text NOT NULL, "
    "directory text NOT NULL, written_at timestamptz NOT NULL DEFAULT now(), "
    "PRIMARY KEY (chain, sequence)"
)
WHERE = f"{AUDIT_SCHEMA}.{TABLE}"


class AnchorConflictError(MigrationError):
    """The target anchors another report under the number about to be written."""


def record_anchor(
    conn: Connection, *, chain: str, sequence: int, digest: str, directory: str
) -> None:
    """Record a report in the caller's transaction, which commits once the files are
    written. A report of that number already anchored with another digest means the
    directory lost its newest report(s), or another directory continues the chain: refused,
    so the evidence of the first is never overwritten."""
    ensure_table(conn, TABLE, COLUMNS, AUDIT_SCHEMA)
    inserted = conn.execute(
        sql.SQL(
            "INSERT INTO {} (chain, sequence, digest, directory) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (chain, sequence) DO NOTHING RETURNING 1"
        ).format(state_table(TABLE, AUDIT_SCHEMA)),
        [chain, sequence, digest, directory],
    ).fetchone()
    if inserted is None:
        raise AnchorConflictError(
            f"the target already anchors report #{sequence} of this chain ({WHERE}), "
            f"another one than the one about to be written into {directory}: that directory "
            "lost its newest report(s), or another directory continues its chain. "
            f"`migration-assets report --check {directory}` says which; move the directory "
            "aside to start a new chain. Nothing was written"
        )


def read_anchors(conn: Connection, chain: str) -> list[tuple[int, str]] | None:
    """Every (sequence, digest) anchored for `chain`; None when the target has no anchor
    table at all. Only reads: the caller ends the transaction."""
    if not has_table(conn, TABLE, AUDIT_SCHEMA):
        return None
    rows = conn.execute(
        sql.SQL("SELECT sequence, digest FROM {} WHERE chain = %s ORDER BY sequence").format(
            state_table(TABLE, AUDIT_SCHEMA)
        ),
        [chain],
    ).fetchall()
    return [(int(s), str(d)) for s, d in rows]
