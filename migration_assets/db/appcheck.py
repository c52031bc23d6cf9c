"""Is the target ready for the application? Time its queries through the pooler.

The application will talk to Supabase through the transaction pooler (6543): no prepared
statements, no session state, TLS. We connect exactly that way and time representative
queries, so cutover does not discover a slow index or a pooler misconfiguration.

The queries come from the plan, a file people edit: each one's runs happen in one READ ONLY
transaction (`BEGIN READ ONLY` works through a transaction-mode pooler: the transaction
keeps its server connection), and the sample query goes over the extended protocol, which
takes one statement only, so `...; COMMIT; DELETE ...` cannot step out of it. A query
that writes fails the check and changes nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from migration_assets.db.errors import MigrationError
from migration_assets.db.session import Connection

RUNS = 100


@dataclass(frozen=True)
class QueryTiming:
    name: str
    runs: int
    p50_ms: float
    p95_ms: float


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def time_queries(
    conn: Connection, queries: Iterable[tuple[str, str, str]], runs: int = RUNS
) -> list[QueryTiming]:
    """(name, sql with one %s, sample sql) -> p50/p95 over `runs` executions each.

    `conn` is in autocommit mode (as through the pooler); each query gets its own READ ONLY
    transaction."""
    timings = []
    conn.read_only = True
    for name, sql, sample_sql in queries:
        try:
            with conn.transaction():
                timings.append(_time_one(conn, name, sql, sample_sql, runs))
        except psycopg.errors.ReadOnlySqlTransaction:
            raise MigrationError(
                f"app query {name!r} of the plan writes: app queries run READ ONLY and must "
                "only read; put the application's SELECTs in the plan's app_queries"
            ) from None
    return timings


def _time_one(conn: Connection, name: str, sql: str, sample_sql: str, runs: int) -> QueryTiming:
    # stream(): the extended protocol, one statement only (execute() without parameters
    # would use the simple protocol, which runs several)
    samples: list[Any] = [r[0] for r in conn.cursor().stream(sample_sql.encode())]
    if not samples:
        samples = [None]
    elapsed = []
    for i in range(runs):
        started = time.perf_counter()
        # execute() has the whole result from the server; turning it into Python objects
        # would time this client (and fail on values Python cannot hold, like -infinity)
        conn.execute(sql.encode(), [samples[i % len(samples)]])
        elapsed.append((time.perf_counter() - started) * 1000)
    return QueryTiming(
        name, runs, round(statistics.median(elapsed), 2), round(percentile(elapsed, 0.95), 2)
    )
