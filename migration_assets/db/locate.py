"""Turn a reported key hash back into where the row lives, without printing the row.

Reports name natural keys and key-less rows by a keyed hash (db/keyhash.py). To act on
one, the operator needs the row: we stream the key text of the table from the server
(a server-side cursor, a read-only transaction: memory stays flat on a big table), hash
each in Python with the operator's secret, and return the matching rows' positions
(relation and ctid). The key value itself never leaves this function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from migration_assets.db.keyhash import label
from migration_assets.db.session import Connection
from migration_assets.db.slices import key_text, own_rows

BATCH_ROWS = 10_000


@dataclass(frozen=True)
class Location:
    """A row's physical position: valid until the row is updated or the table rewritten."""

    relation: str  # as regclass prints it, quoted where needed (a partition's own name)
    ctid: str

    @property
    def select(self) -> str:
        return f"SELECT * FROM ONLY {self.relation} WHERE ctid = '{self.ctid}';"


def find_rows(
    conn: Connection,
    *,
    schema: str,
    table: str,
    columns: Sequence[str],
    partitioned: bool,
    wanted: str,
    secret: bytes,
    prefix: str,
) -> list[Location]:
    """Rows of `schema.table` whose key text (of `columns`) hashes to the label `wanted`."""
    query = sql.SQL("SELECT tableoid::regclass::text, ctid::text, {k} FROM {rel}").format(
        k=key_text(columns), rel=own_rows(schema, table, partitioned=partitioned)
    )
    found: list[Location] = []
    conn.read_only = True
    with conn.transaction(), conn.cursor(name="migration_assets_locate") as cursor:
        cursor.itersize = BATCH_ROWS
        cursor.execute(query)
        for relation, ctid, text in cursor:
            if label(str(text), secret, prefix=prefix) == wanted:
                found.append(Location(str(relation), str(ctid)))
    return found
