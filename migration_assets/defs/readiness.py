"""Is the target ready for the application? TLS on our own connection, and the app's
queries through the transaction pooler within budget, as the application will run them."""

import time

import dagster as dg
import psycopg

from migration_assets.db.appcheck import RUNS, time_queries
from migration_assets.db.audit import tls_evidence
from migration_assets.db.dsn import is_local_host, parse_dsn
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.defs.keys import (
    POOLER_READY,
    SCHEMA_KEY,
    SEQUENCES_KEY,
    TARGET_POOL,
    TLS_IN_USE,
)
from migration_assets.defs.resources import TargetDatabase
from migration_assets.plan import MigrationPlan

CONNECT_BUDGET_S = 2.0
P95_BUDGET_MS = 200.0


@dg.asset_check(
    asset=SCHEMA_KEY,
    name=TLS_IN_USE,
    pool=TARGET_POOL,
    description="The migration's own connection to the target is encrypted (pg_stat_ssl).",
)
def tls_in_use(target: TargetDatabase) -> dg.AssetCheckResult:
    with target.connect() as conn:
        evidence = tls_evidence(conn)
    hosts = parse_dsn(target.url).get("host", "")
    local = all(is_local_host(h) for h in hosts.split(",") or [""])
    return dg.AssetCheckResult(
        passed=evidence.ssl,
        severity=dg.AssetCheckSeverity.WARN if local else dg.AssetCheckSeverity.ERROR,
        metadata={
            "ssl": evidence.ssl,
            "protocol": evidence.version or "none",
            "cipher": evidence.cipher or "none",
            "bits": evidence.bits,
        },
    )


def build_pooler_check(plan: MigrationPlan) -> dg.AssetChecksDefinition:
    queries = [(q.name, q.sql, q.sample_sql) for q in plan.app_queries]

    @dg.asset_check(
        asset=SEQUENCES_KEY,
        name=POOLER_READY,
        pool=TARGET_POOL,
        description=(
            "The application's path works: through SUPABASE_POOLER_URL with TLS and "
            f"prepare_threshold=None, connect in under {CONNECT_BUDGET_S:.0f} s and run the "
            f"plan's app queries {RUNS} times each with p95 under {P95_BUDGET_MS:.0f} ms."
        ),
    )
    def pooler_ready(target: TargetDatabase) -> dg.AssetCheckResult:
        if not target.pooler_url:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"fix": "set SUPABASE_POOLER_URL (the transaction pooler, port 6543)"},
            )
        started = time.perf_counter()
        try:
            with target.connect_pooler() as conn:
                connect_s = time.perf_counter() - started
                tls = bool(conn.pgconn.ssl_in_use)
                timings = time_queries(conn, queries)
        except (psycopg.Error, MigrationError) as exc:
            message = safe_message(exc) if isinstance(exc, psycopg.Error) else str(exc)
            return dg.AssetCheckResult(passed=False, metadata={"error": message})
        worst = max((t.p95_ms for t in timings), default=0.0)
        return dg.AssetCheckResult(
            passed=tls and connect_s < CONNECT_BUDGET_S and worst < P95_BUDGET_MS,
            metadata={
                "tls": tls,
                "connect_ms": round(connect_s * 1000, 1),
                "worst_p95_ms": worst,
                "queries": dg.MetadataValue.md(
                    "\n".join(
                        f"- {t.name}: p50 {t.p50_ms} ms, p95 {t.p95_ms} ms ({t.runs} runs)"
                        for t in timings
                    )
                    or "none in the plan"
                ),
            },
        )

    return pooler_ready
