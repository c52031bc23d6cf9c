"""The SQL an auditor runs with psql to recompute a table's row count and checksum.

A report's numbers come from `checksum.py`'s row hashes summed over the table, under the
session pins of `session.py`. This prints the same: the pins as SET statements, then one
SELECT in a READ ONLY transaction. The row hash expression is the very one the checks
build (`RowHash.expression`), so the text cannot drift from what the product computes;
it uses built-in functions only, so nothing of ours needs installing on either server and
the auditor needs none of this code to run it. A table's checksum is the sum of its
slices' (`checksum.combine`), which is the sum over all its rows: one SELECT, no slices.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from migration_assets.db.checksum import RowHash
from migration_assets.db.session import LIST_PINS, SESSION_PINS
from migration_assets.db.slices import TextBytes, own_rows

NATIVE = "native"


def pin_statements() -> list[sql.Composable]:
    """The session pins, as `pin_session` sets them (one SET each; search_path a list)."""
    statements: list[sql.Composable] = []
    for name, value in SESSION_PINS.items():
        values = value.split(", ") if name in LIST_PINS else [value]
        statements.append(
            sql.SQL("SET {} TO {};").format(
                sql.SQL(name), sql.SQL(", ").join(map(sql.Literal, values))
            )
        )
    return statements


def recompute_sql(
    *,
    schema: str,
    table: str,
    columns: Sequence[tuple[str, str]],
    row_hash: str,
    encoding: str = "UTF8",
    partitioned: bool = False,
) -> str:
    """The script for one table on one server. `columns`: the plan's (name, type), in plan
    order; `row_hash`: "native" or "text", as the checks recorded it; `encoding`: that
    server's server_encoding (text is hashed as its UTF-8 bytes)."""
    rows = RowHash(tuple(columns), native=row_hash == NATIVE)
    query = sql.SQL(
        "SELECT count(*) AS row_count, coalesce(sum({}), 0)::text AS checksum\n  FROM {};"
    ).format(
        rows.expression(TextBytes(encoding.upper())),
        own_rows(schema, table, partitioned=partitioned),
    )
    name = f"{schema}.{table}".replace("\n", " ")
    lines = [
        f"-- {name}: row count and checksum as migration_assets computes them ({row_hash})",
        *(s.as_string(None) for s in pin_statements()),
        "START TRANSACTION READ ONLY;",
        query.as_string(None),
        "COMMIT;",
    ]
    return "\n".join(lines)
