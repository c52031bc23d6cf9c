"""Deterministic synthetic clinic data for an empty database at alembic head.

Every value is a pure function of ``(seed, table, row number)``: each row hashes
``md5('<seed>:<table>:<i>')`` inside PostgreSQL and slices its fields out of the hash bits.
No ``random()``, no ``now()``, no dependence on execution order, so the same ``patients`` and
``seed`` give byte-identical rows (ids included) on any server, which is what lets tests
compare a migrated target against a freshly seeded twin.

Rows are generated server-side with ``INSERT ... SELECT ... FROM generate_series(...)``, with
the tables' FKs and secondary indexes set aside during the load and restored (identically)
after it, as pg_restore does. On two cores: 10k patients in about a second, 1M patients
(13.3M rows in all) in about two minutes.

The FK cycle (encounters.primary_observation_id -> observations) is closed without an UPDATE:
encounters are inserted already pointing at observations that follow in the same transaction,
which the DEFERRABLE INITIALLY DEFERRED constraint allows. So no ``updated_at`` trigger fires
and no superuser-only ``session_replication_role`` is needed.

Data is synthetic: names are drawn from lists and recombined, e-mail domains are example.*,
phone numbers are in the fictional 555-01xx range, IPs come from documentation ranges and
NPIs start with 9 (real NPIs start with 1 or 2). Row values are never logged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

from migration_assets.devstack.seed_sql import (
    INSERT_ALIASES,
    INSERT_APPOINTMENTS,
    INSERT_AUDIT,
    INSERT_ENCOUNTERS,
    INSERT_LOINC,
    INSERT_OBSERVATIONS,
    INSERT_PATIENTS,
    INSERT_PRESCRIPTIONS,
    INSERT_PROVIDERS,
)
from migration_assets.devstack.vocabulary import (
    ALLERGIES,
    APPOINTMENT_STATUSES,
    AUDIT_ACTIONS,
    AUDIT_ENTITIES,
    AUDIT_REASONS,
    CITIES,
    CODE_ALIASES,
    COUNTRIES,
    CREDENTIALS,
    DRUG_DOSES,
    DRUG_UNITS,
    DRUGS,
    DURATIONS,
    FAMILY_NAMES,
    FREQUENCIES,
    GIVEN_NAMES,
    IPV4_NETS,
    LOCATIONS,
    LOINC,
    NOTE_SENTENCES,
    OBSERVATION_TEXTS,
    REASONS,
    ROUTES,
    SPECIALTIES,
    STREETS,
    TLDS,
    USER_AGENTS,
    _loinc_values,
)

# Tables in load order with their serial/identity column, if any (sequences are set to max).
TABLES: list[tuple[str, str | None]] = [
    ("reference.loinc_codes", None),
    ("reference.code_aliases", None),
    ("public.providers", "id"),
    ("public.patients", None),
    ("public.encounters", "id"),
    ("public.observations", "id"),
    ("public.prescriptions", None),
    ("public.appointments", None),
    ("public.audit_log", "id"),
]


def plan_sizes(patients: int) -> dict[str, int]:
    """Row-count drivers derived from the patient count (encounters follow from hashes)."""
    return {
        "patients": patients,
        "providers": min(400, max(20, patients // 40)),
        "appointments": patients // 2,
        "audit": patients // 2,
    }


def _params(seed: int, patients: int) -> dict[str, Any]:
    """Every value the statements bind: sizes, hash prefixes and vocabularies."""
    tags = {
        f"t_{name}": f"{seed}:{name}:"
        for name in (
            "providers",
            "patients",
            "encounters",
            "observations",
            "prescriptions",
            "appointments",
            "audit_log",
        )
    }
    return {
        **plan_sizes(patients),
        **tags,
        "encounters": 0,  # both filled in as the rows are inserted
        "observations": 0,
        "given": GIVEN_NAMES,
        "family": FAMILY_NAMES,
        "credentials": CREDENTIALS,
        "specialties": SPECIALTIES,
        "tlds": TLDS,
        "streets": STREETS,
        "cities": CITIES,
        "countries": COUNTRIES,
        "allergies": ALLERGIES,
        "reasons": REASONS,
        "notes": NOTE_SENTENCES,
        "obs_texts": OBSERVATION_TEXTS,
        "loinc_code": [c[0] for c in LOINC],
        "loinc_display": [c[1] for c in LOINC],
        "loinc_unit": [c[2] for c in LOINC],
        **{f"loinc_{key}": values for key, values in _loinc_values().items()},
        "alias": [a for a, _ in CODE_ALIASES],
        "alias_code": [c for _, c in CODE_ALIASES],
        "drugs": DRUGS,
        "drug_units": DRUG_UNITS,
        "drug_doses": DRUG_DOSES,
        "frequencies": FREQUENCIES,
        "routes": ROUTES,
        "appointment_statuses": APPOINTMENT_STATUSES,
        "durations": DURATIONS,
        "locations": LOCATIONS,
        "audit_actions": AUDIT_ACTIONS,
        "audit_entities": AUDIT_ENTITIES,
        "user_agents": USER_AGENTS,
        "audit_reasons": AUDIT_REASONS,
        "ipv4_nets": IPV4_NETS,
    }


def _check_empty(cur: psycopg.Cursor[Any]) -> None:
    """Refuse to run unless every table exists (alembic head) and holds no rows."""
    for table, _ in TABLES:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        row = cur.fetchone()
        if row is None or not row[0]:
            raise RuntimeError(f"{table} does not exist: run `alembic upgrade head` first")
        schema, name = table.split(".")
        cur.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(schema, name)))
        row = cur.fetchone()
        if row is not None and row[0]:
            raise RuntimeError(f"{table} already has rows: seed expects an empty database")


_STEPS = [
    ("reference.loinc_codes", INSERT_LOINC),
    ("reference.code_aliases", INSERT_ALIASES),
    ("public.providers", INSERT_PROVIDERS),
    ("public.patients", INSERT_PATIENTS),
    ("public.encounters", INSERT_ENCOUNTERS),
    ("public.observations", INSERT_OBSERVATIONS),
    ("public.prescriptions", INSERT_PRESCRIPTIONS),
    ("public.appointments", INSERT_APPOINTMENTS),
    ("public.audit_log", INSERT_AUDIT),
]


def _set_aside_fks_and_indexes(cur: psycopg.Cursor[Any]) -> list[sql.SQL | sql.Composed]:
    """Drop the seeded tables' FKs and secondary indexes; return the statements restoring them.

    pg_restore's order: per-row FK checks and incremental index inserts cost about half the
    load time, while one validating join and one sorted index build per object after the
    load are cheap. Definitions come from pg_get_constraintdef/pg_get_indexdef, so the
    restored objects are identical (same names, same DEFERRABLE flags). Primary keys and
    unique constraints stay: FKs depend on them. Skipped (returns []) unless the current
    role owns every table, so a seed by a non-owner still works, only slower.
    """
    tables = [t for t, _ in TABLES]
    cur.execute(
        "SELECT bool_and(pg_has_role(relowner, 'USAGE')) FROM pg_class"
        " WHERE oid = ANY(%s::regclass[])",
        (tables,),
    )
    row = cur.fetchone()
    if row is None or not row[0]:
        return []
    cur.execute(
        """
        SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint AS k
        JOIN pg_class AS c ON c.oid = k.conrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE k.contype = 'f' AND k.conrelid = ANY(%s::regclass[])
        ORDER BY k.oid
        """,
        (tables,),
    )
    fks = cur.fetchall()
    cur.execute(
        """
        SELECT n.nspname, x.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index AS i
        JOIN pg_class AS x ON x.oid = i.indexrelid
        JOIN pg_namespace AS n ON n.oid = x.relnamespace
        WHERE i.indrelid = ANY(%s::regclass[])
          AND NOT EXISTS (SELECT FROM pg_constraint AS k WHERE k.conindid = i.indexrelid)
        ORDER BY i.indexrelid
        """,
        (tables,),
    )
    indexes = cur.fetchall()
    restore: list[sql.SQL | sql.Composed] = []
    for schema, table, name, _definition in fks:
        cur.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(schema, table), sql.Identifier(name)
            )
        )
    for schema, name, definition in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        restore.append(sql.SQL(definition))  # server-generated CREATE INDEX statement
    for schema, table, name, definition in fks:
        restore.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
            )
        )
    return restore


def seed(
    conn: psycopg.Connection[Any], *, patients: int = 10_000, seed: int = 42
) -> dict[str, int]:
    """Fill an empty database at alembic head; return rows inserted per table.

    Runs in one transaction (a savepoint if the caller already opened one): a failure
    leaves the database as it was, FKs and indexes included.
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    params = _params(seed, patients)
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        # Local settings only: no fsync wait at commit, no JIT compile time, room for the window
        # sorts that number encounters and observations and for the index builds.
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute("SET LOCAL jit = off")
        cur.execute("SET LOCAL work_mem = '256MB'")
        cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        _check_empty(cur)
        restore = _set_aside_fks_and_indexes(cur)
        for table, statement in _STEPS:
            cur.execute(statement, params)
            counts[table] = cur.rowcount
            if table in ("public.encounters", "public.observations"):
                params[table.removeprefix("public.")] = cur.rowcount
        for ddl in restore:
            cur.execute(ddl)
        for table, column in TABLES:
            if column is None:
                continue
            schema, name = table.split(".")
            cur.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({table}, {column}),"
                    " coalesce(max({col}), 1), max({col}) IS NOT NULL) FROM {ident}"
                ).format(
                    table=sql.Literal(table),
                    column=sql.Literal(column),
                    col=sql.Identifier(column),
                    ident=sql.Identifier(schema, name),
                )
            )
        # Fresh statistics, so pg_class.reltuples (the planner's and the plan file's row
        # estimates) match what was loaded.
        cur.execute(
            sql.SQL("ANALYZE {}").format(
                sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t, _ in TABLES)
            )
        )
    return counts


def _connect_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: libpq only knows postgresql:// and postgres://."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("postgresql+"):
        return "postgresql://" + rest
    return url


def main(argv: list[str] | None = None) -> int:
    """CLI: seed a database and print rows per table (never values, never the URL)."""
    parser = argparse.ArgumentParser(
        prog="python -m migration_assets.devstack.seed",
        description="Fill an empty, migrated clinic database with deterministic synthetic data.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("DATABASE_URL"),
        help="postgresql:// URL of the database (default: $DATABASE_URL)",
    )
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url is required (or set DATABASE_URL)")
    started = time.perf_counter()
    with psycopg.connect(_connect_url(args.url)) as conn:
        counts = seed(conn, patients=args.patients, seed=args.seed)
    elapsed = time.perf_counter() - started
    width = max(len(t) for t in counts)
    for table, rows in counts.items():
        print(f"{table:<{width}}  {rows:>12,}")
    print(f"{'total':<{width}}  {sum(counts.values()):>12,}  ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
