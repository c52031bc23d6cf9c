"""Is the target ready for the application? TLS on our own connection, and the app's
queries through the transaction pooler within budget, as the application will run them."""

import time
from typing import Any

import dagster as dg
import psycopg

from migration_assets.db.appcheck import RUNS, time_queries
from migration_assets.db.audit import TlsEvidence, tls_evidence
from migration_assets.db.dsn import SOURCE_TLS_VERIFY, is_local_dsn, parse_dsn
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.defs.keys import (
    POOLER_READY,
    SCHEMA_KEY,
    SEQUENCES_KEY,
    TARGET_POOL,
    TLS_IN_USE,
)
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.plan import MigrationPlan

CONNECT_BUDGET_S = 2.0
P95_BUDGET_MS = 200.0


@dg.asset_check(
    asset=SCHEMA_KEY,
    name=TLS_IN_USE,
    pool=TARGET_POOL,
    description=(
        "The migration's own connection to the target is encrypted (pg_stat_ssl), and so is "
        "its connection to a non-local source unless MIGRATION_SOURCE_TLS=unverified; what "
        "both sessions negotiated is recorded (source_*: the source's)."
    ),
)
def tls_in_use(target: TargetDatabase, source: SourceDatabase) -> dg.AssetCheckResult:
    with target.connect() as conn:
        evidence = tls_evidence(conn)
    with source.connect() as conn:
        source_evidence = tls_evidence(conn)
        source_sslmode = parse_dsn(conn.info.dsn).get("sslmode", "prefer")
    source_required = not source.local and source.tls == SOURCE_TLS_VERIFY
    return dg.AssetCheckResult(
        passed=evidence.ssl and (source_evidence.ssl or not source_required),
        severity=(
            dg.AssetCheckSeverity.WARN if is_local_dsn(target.url) else dg.AssetCheckSeverity.ERROR
        ),
        metadata={
            "ssl": evidence.ssl,
            "protocol": evidence.version or "none",
            "cipher": evidence.cipher or "none",
            "bits": evidence.bits,
            **_source_metadata(source_evidence, source_sslmode, source.tls),
        },
    )


def _source_metadata(evidence: TlsEvidence, sslmode: str, policy: str) -> dict[str, Any]:
    """The source's side, for the audit report: `none` for an unencrypted session (a local
    source usually is), the policy a non-local one was held to, the sslmode it was reached
    with (verify-full: its certificate and name were checked against the CA)."""
    return {
        "source_ssl": evidence.ssl,
        "source_protocol": evidence.version or "none",
        "source_cipher": evidence.cipher or "none",
        "source_bits": evidence.bits,
        "source_sslmode": sslmode,
        "source_tls_policy": policy,
    }


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
