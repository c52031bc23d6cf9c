"""Is the target ready for the application? Time its queries through the pooler.

The application will talk to Supabase through the transaction pooler (6543): no prepared
statements, no session state, TLS. We connect exactly that way and time representative
queries, so cutover does not discover a slow index or a pooler misconfiguration.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
    """(name, sql with one %s, sample sql) -> p50/p95 over `runs` executions each."""
    timings = []
    for name, sql, sample_sql in queries:
        samples: list[Any] = [r[0] for r in conn.execute(sample_sql.encode()).fetchall()]
        if not samples:
            samples = [None]
        elapsed = []
        for i in range(runs):
            started = time.perf_counter()
            # execute() has the whole result from the server; turning it into Python objects
            # would time this client (and fail on values Python cannot hold, like -infinity)
            conn.execute(sql.encode(), [samples[i % len(samples)]])
            elapsed.append((time.perf_counter() - started) * 1000)
        timings.append(
            QueryTiming(
                name,
                runs,
                round(statistics.median(elapsed), 2),
                round(percentile(elapsed, 0.95), 2),
            )
        )
    return timings
