"""Planner statistics for freshly loaded tables.

A table filled by COPY has no statistics until autovacuum gets to it, and until then the
planner guesses: measured with 1,000,000 patients, the app's "encounters with observations"
query ran at p95 379 ms right after the load and within budget 32 s later, once autovacuum
had analyzed. Supabase's own restore guide ends with VACUUM ANALYZE; ANALYZE is the part
the planner needs, and it samples (cheap at any size), so it runs before the readiness
check and before cutover.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from psycopg import sql

from migration_assets.db.lanes import in_lanes
from migration_assets.db.session import Connection

# Tables whose statistics already describe their rows: ANALYZEd (autovacuum's sampling is
# not ours to vouch for), no row changed since, and not partitioned (a parent's own
# counters stay at zero whatever its partitions hold).
_CURRENT = """
SELECT s.schemaname, s.relname
FROM pg_stat_all_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE (s.schemaname, s.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
  AND c.relkind = 'r' AND c.reltuples >= 0 AND s.n_mod_since_analyze = 0
  AND s.last_analyze IS NOT NULL
"""


def stale(conn: Connection, tables: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The tables whose rows changed since their statistics were taken (a partitioned one
    always, with its partitions), in the order given.

    A re-run with nothing copied, or a cutover's delta that re-copied one slice, then
    samples only what moved.
    """
    wanted = list(tables)
    current = _current(conn, wanted)
    conn.rollback()
    return [table for table in wanted if table not in current]


def analyze(
    conn: Connection,
    tables: Iterable[tuple[str, str]],
    more: Callable[[], AbstractContextManager[Connection]],
    lanes: int = 1,
) -> float:
    """ANALYZE `tables` over `lanes` connections (`conn` and more from `more`), in the order
    given (largest first finishes soonest): the seconds it took.

    A table the role does not own is skipped by the server with a warning, not an error:
    its statistics are then the owner's business, and the readiness check will say so.
    """
    started = time.perf_counter()
    in_lanes(conn, more, lanes, [[table] for table in tables], _analyze)
    return time.perf_counter() - started


def _analyze(conn: Connection, table: tuple[str, str]) -> None:
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*table)))
    conn.commit()


def _current(conn: Connection, tables: list[tuple[str, str]]) -> set[tuple[str, str]]:
    schemas, names = [s for s, _ in tables], [t for _, t in tables]
    rows = conn.execute(_CURRENT, [schemas, names]).fetchall()
    return {(str(s), str(t)) for s, t in rows}
