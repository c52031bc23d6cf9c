"""Every setting put only in `.env` reaches the code that uses it, not only `Settings`.

One case per name in SETTING_NAMES: a setting added without a case here fails the test. Each
case writes a `.env` into an isolated working directory (the process environment holds no
setting), sets the one setting to a value other than its default (plus the settings the
command needs anyway), runs the command users run and observes the effect on the servers, the
plan, the instance or the connection options.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.db.keyhash import label
from migration_assets.defs.build import build_resources
from migration_assets.defs.keys import (
    POOLER_READY,
    SCHEMA_KEY,
    SEQUENCES_KEY,
    TARGET_POOL,
)
from migration_assets.devstack.binaries import pg_bin_dir
from migration_assets.devstack.cluster import LOOPBACK, free_port
from migration_assets.plan import load_plan
from migration_assets.settings import SETTING_NAMES, load_settings
from migration_assets_tests.conftest import REPO_ROOT, Migration, MigrationFactory
from migration_assets_tests.helpers import assert_equal_databases, run_cli, tls_metadata

pytestmark = pytest.mark.integration

# one small schema, one partition per table: the cases observe settings, not throughput
TINY_PLAN = ["--schema", "reference", "--min-partitions", "1"]
SECRET = "0123456789abcdef" * 4


@dataclass
class Case:
    m: Migration
    cwd: Path

    def write_env(self, values: dict[str, str]) -> None:
        """Single quotes: python-dotenv takes the value literally (URLs carry ? and &)."""
        lines = [f"{k}='{v}'" for k, v in values.items()]
        (self.cwd / ".env").write_text("\n".join(lines) + "\n")

    def configure(self, **extra: str) -> None:
        """Everything a migration needs, in `.env` only, plus the setting under test."""
        self.write_env({**self.m.env(), **extra})
        clear_settings()

    def plan(self) -> None:
        code, output = run_cli(["plan", "--out", str(self.m.plan_path), *TINY_PLAN])
        assert code == 0, output
        clear_settings()

    def migrate(self) -> tuple[int, str]:
        code, output = run_cli(["migrate", "--workers", "1"])
        clear_settings()
        return code, output

    def instance(self, home: Path | None = None) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(home or self.m.dagster_home))


def forget_settings() -> None:
    """The fixture put the settings in the environment; here they live in `.env` only."""
    for name in SETTING_NAMES:
        os.environ.pop(name, None)


def clear_settings() -> None:
    """Commands read `.env` into the one settings model and write none of it into
    os.environ (the test's own process: `run_cli` runs them here), so the next command
    again finds each setting in `.env` only."""
    written = sorted(name for name in SETTING_NAMES if name in os.environ)
    assert not written, f"a command wrote {written} into os.environ"


def target_table_exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def with_params(url: str, **changes: str) -> str:
    params = parse_dsn(url)
    params.update(changes)
    return display_url(params, mask=False)


def without_sslrootcert(url: str) -> str:
    params = parse_dsn(url)
    params.pop("sslrootcert", None)
    assert params.get("sslmode") == "verify-full", "the case needs a verify-full target URL"
    return display_url(params, mask=False)


# ------------------------------------------------------------------------- the cases

CASES: dict[str, Callable[[Case], None]] = {}


def case(name: str) -> Callable[[Callable[[Case], None]], Callable[[Case], None]]:
    def register(fn: Callable[[Case], None]) -> Callable[[Case], None]:
        CASES[name] = fn
        return fn

    return register


@case("SOURCE_DATABASE_URL")
def _source(c: Case) -> None:
    """`plan` reflects the database the .env names."""
    c.write_env({"SOURCE_DATABASE_URL": c.m.source_url})
    c.plan()
    assert {t.qualified for t in load_plan(c.m.plan_path).tables} == {
        "reference.code_aliases",
        "reference.loinc_codes",
    }


@case("SUPABASE_DB_URL")
def _target(c: Case) -> None:
    """`migrate` writes into the database the .env names."""
    c.configure()
    c.plan()
    code, output = c.migrate()
    assert code == 0, output
    assert_equal_databases(c.m.source_url, c.m.target_url, schemas=["reference"])


@case("SUPABASE_SSLROOTCERT")
def _sslrootcert(c: Case) -> None:
    """verify-full URLs without a CA in them: every run's connections take the .env's CA."""
    target = without_sslrootcert(c.m.target_url)
    pooler = without_sslrootcert(c.m.pooler_url or "")
    c.configure(SUPABASE_DB_URL=target, SUPABASE_POOLER_URL=pooler)
    c.plan()
    code, output = c.migrate()
    assert code == 0, output
    assert_equal_databases(c.m.source_url, c.m.target_url, schemas=["reference"])


@case("SOURCE_SSLROOTCERT")
def _source_sslrootcert(c: Case) -> None:
    """A verify-full source URL without a CA in it: `plan` and every run's connections to
    the source verify its certificate against the .env's CA (libpq has no other)."""
    source = with_params(c.m.source_url, sslmode="verify-full")
    c.configure(SOURCE_DATABASE_URL=source, SOURCE_SSLROOTCERT=str(c.m.ca_file))
    c.plan()
    code, output = c.migrate()
    assert code == 0, output
    meta = tls_metadata(c.m.dagster_home)
    assert meta["source_sslmode"] == "verify-full", meta
    assert str(meta["source_protocol"]).startswith("TLSv1."), meta


@case("MIGRATION_SOURCE_TLS")
def _source_tls(c: Case) -> None:
    """`unverified`: a source judged non-local (its host name; hostaddr reaches the loopback
    server) is accepted without TLS, and tls_in_use says so."""
    source = with_params(
        c.m.source_url, host="clinic-db.example.org", hostaddr="127.0.0.1", sslmode="disable"
    )
    c.configure(SOURCE_DATABASE_URL=source, MIGRATION_SOURCE_TLS="unverified")
    c.plan()
    code, output = c.migrate()
    assert code == 0, output
    meta = tls_metadata(c.m.dagster_home)
    assert meta["source_tls_policy"] == "unverified", meta
    assert meta["source_cipher"] == "none", meta
    assert meta["source_protocol"] == "none", meta
    assert str(meta["protocol"]).startswith("TLSv1."), "the target's keys are as they were"


@case("SUPABASE_POOLER_URL")
def _pooler(c: Case) -> None:
    """The pooler check connects through the .env's pooler (unset: a warning naming it)."""
    c.configure()
    c.plan()
    code, output = c.migrate()
    assert code == 0, output
    key = dg.AssetCheckKey(SEQUENCES_KEY, POOLER_READY)
    with c.instance() as instance:
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    assert records, "the pooler check did not run"
    event = records[0].event
    assert event is not None
    assert event.dagster_event is not None
    evaluation = event.dagster_event.event_specific_data
    assert isinstance(evaluation, dg.AssetCheckEvaluation)
    assert "connect_ms" in evaluation.metadata, evaluation.metadata
    assert evaluation.passed, evaluation.metadata


@case("MIGRATION_SCHEMA_MODE")
def _schema_mode(c: Case) -> None:
    """`existing`: the schema step applies nothing, so an empty target stays empty."""
    c.configure(MIGRATION_SCHEMA_MODE="existing")
    c.plan()
    code, output = c.migrate()
    assert code != 0, output
    assert not target_table_exists(c.m.target_url, "reference.loinc_codes"), (
        "the schema was applied although MIGRATION_SCHEMA_MODE=existing"
    )


@case("MIGRATION_PLAN")
def _plan(c: Case) -> None:
    """`status` without --plan reads the plan the .env names."""
    custom = c.cwd / "plans" / "reviewed.json"
    custom.parent.mkdir()
    c.configure(MIGRATION_PLAN=str(custom))
    code, output = run_cli(["plan", "--out", str(custom), *TINY_PLAN])
    assert code == 0, output
    clear_settings()
    code, output = run_cli(["status"])
    assert code in (0, 1), output
    assert "loinc_codes" in output, output


@case("MIGRATION_KEY_SECRET")
def _key_secret(c: Case) -> None:
    """`locate` finds a row by a hash made with the .env's secret (there is no DAGSTER_HOME
    to fall back on)."""
    c.write_env(
        {
            "SOURCE_DATABASE_URL": c.m.source_url,
            "MIGRATION_PLAN": str(c.m.plan_path),
            "MIGRATION_KEY_SECRET": SECRET,
        }
    )
    c.plan()
    with psycopg.connect(c.m.source_url) as conn:
        row = conn.execute("SELECT code::text FROM reference.loinc_codes LIMIT 1").fetchone()
    assert row is not None
    wanted = label(str(row[0]), SECRET.encode())
    code, output = run_cli(["locate", wanted, "--table", "reference.loinc_codes", "--on", "source"])
    assert code == 0, output
    assert "reference.loinc_codes on the source: ctid" in output


@case("DAGSTER_HOME")
def _dagster_home(c: Case) -> None:
    """`verify` records its run in the instance of the .env's DAGSTER_HOME."""
    home = c.cwd / "home_from_dotenv"
    c.configure(DAGSTER_HOME=str(home))
    c.plan()
    code, output = run_cli(["verify", "--tables", "reference.loinc_codes"])
    clear_settings()
    assert code in (0, 1), output
    with c.instance(home) as instance:
        assert instance.get_runs_count() == 1


@case("MIGRATION_TARGET_CONNECTIONS")
def _target_connections(c: Case) -> None:
    """`migrate` sets the instance's `supabase_target` pool to the .env's limit."""
    c.configure(MIGRATION_TARGET_CONNECTIONS="3")
    c.plan()
    code, output = c.migrate()
    assert code == 0, output
    with c.instance() as instance:
        assert instance.event_log_storage.supports_global_concurrency_limits
        info = instance.event_log_storage.get_concurrency_info(TARGET_POOL)
    assert info.slot_count == 3


@case("MIGRATION_DEFER_INDEXES_ABOVE")
def _defer_indexes(c: Case) -> None:
    """0: even these small cold tables load without their plain index, rebuilt afterwards."""
    c.configure(MIGRATION_DEFER_INDEXES_ABOVE="0")
    c.plan()
    code, output = c.migrate()
    assert code == 0, output
    with c.instance() as instance:
        event = instance.get_latest_materialization_event(SCHEMA_KEY)
    assert event is not None
    assert event.asset_materialization is not None
    deferred = event.asset_materialization.metadata["deferred_indexes"]
    assert "code_aliases_alias_idx" in str(deferred.value)
    with psycopg.connect(c.m.target_url) as conn:
        rebuilt = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'code_aliases_alias_idx'"
        ).fetchone()
    assert rebuilt == (1,)


def _shown_by_our_sessions(c: Case, show: str) -> tuple[dict[str, str], str]:
    """The client options and a server setting of a target session opened as a run's steps
    open theirs: through the target resource that the definitions build from the settings,
    here from `.env` alone (a command that connects outside a run passes the same settings'
    `timeouts()`)."""
    settings = load_settings()
    try:
        with (
            dg.build_resources(build_resources(settings)) as resources,
            resources.target.connect() as conn,
        ):
            options = parse_dsn(conn.info.dsn)
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(show))).fetchone()
    finally:
        clear_settings()
    assert row is not None
    return options, str(row[0])


@case("MIGRATION_STATEMENT_TIMEOUT")
def _statement_timeout(c: Case) -> None:
    c.configure(MIGRATION_STATEMENT_TIMEOUT="45s")
    _, shown = _shown_by_our_sessions(c, "statement_timeout")
    assert shown == "45s", f"statement_timeout {shown}"


@case("MIGRATION_NETWORK_TIMEOUT")
def _network_timeout(c: Case) -> None:
    c.configure(MIGRATION_NETWORK_TIMEOUT="90")
    options, shown = _shown_by_our_sessions(c, "idle_in_transaction_session_timeout")
    assert options.get("tcp_user_timeout") == "90000", options
    assert options.get("keepalives_idle") == "30", options
    assert shown == "15min", f"idle_in_transaction {shown}"


@case("MIGRATION_ALEMBIC_CONFIG")
def _alembic_config(c: Case) -> None:
    """The preflight reads the .env's alembic.ini: this one knows revision 0001 only, the
    repository's (the default here) goes to 0004, where the source is: refused, naming it,
    before anything is written."""
    app = c.cwd / "app"
    shutil.copytree(REPO_ROOT / "alembic", app / "alembic")
    shutil.copy(REPO_ROOT / "alembic.ini", app / "alembic.ini")
    for version in (app / "alembic" / "versions").glob("000[2-9]_*.py"):
        version.unlink()
    c.configure(MIGRATION_ALEMBIC_CONFIG=str(app / "alembic.ini"))
    c.plan()
    code, output = c.migrate()
    flat = " ".join(output.split())
    assert code == 2, output
    assert f"Alembic scripts of {app / 'alembic.ini'}" in flat, output
    assert "revision 0004, which those scripts do not know" in flat, output
    assert not target_table_exists(c.m.target_url, "public.alembic_version")


@case("MIGRATION_PG_BIN")
def _pg_bin(c: Case) -> None:
    """pg_dump schema mode runs pg_dump and psql from the .env's bin directory."""
    real, log = pg_bin_dir(), c.cwd / "tools.log"
    bin_dir = c.cwd / "pgbin"
    bin_dir.mkdir()
    for tool in ("pg_dump", "psql"):
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} "$1" >> "{log}"\nexec "{real / tool}" "$@"\n')
        wrapper.chmod(0o755)
    c.configure(MIGRATION_SCHEMA_MODE="pg_dump", MIGRATION_PG_BIN=str(bin_dir))
    c.plan()
    c.migrate()  # the plan's one schema leaves alembic_version behind: the check refuses that
    assert target_table_exists(c.m.target_url, "reference.loinc_codes")
    used = log.read_text().splitlines()
    assert "pg_dump --schema-only" in used, used
    assert any(line.startswith("psql ") for line in used), used


@case("MIGRATION_WEBSERVER_URL")
def _webserver(c: Case) -> None:
    """`migrate --submit` launches through the webserver the .env names: none serves there,
    so it says so, naming that address, before anything is launched or written."""
    port = free_port()
    c.configure(MIGRATION_WEBSERVER_URL=f"http://{LOOPBACK}:{port}")
    c.plan()
    code, output = run_cli(["migrate", "--submit"])
    clear_settings()
    flat = " ".join(output.split())
    assert code == 2, output
    assert f"cannot reach the Dagster webserver at http://{LOOPBACK}:{port}" in flat, output
    assert not target_table_exists(c.m.target_url, "reference.loinc_codes")


# ------------------------------------------------------------------------- the test


@pytest.fixture
def restored_environment() -> Iterator[None]:
    """Whatever a case sets in os.environ itself, the next test must not see it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("name", SETTING_NAMES)
def test_a_setting_only_in_dotenv_takes_effect(
    name: str,
    migration: MigrationFactory,
    isolated_cwd: Path,
    restored_environment: None,
) -> None:
    assert name in CASES, f"{name} has no case in {__name__}: add one that observes its effect"
    made = migration()
    forget_settings()
    CASES[name](Case(made, isolated_cwd))


def test_every_case_is_a_setting() -> None:
    assert set(CASES) <= set(SETTING_NAMES), set(CASES) - set(SETTING_NAMES)


@pytest.mark.parametrize("command", [["demo"], ["ui", "--demo"]])
def test_the_throwaway_stack_runs_postgresql_from_the_dotenv_s_bin_directory(
    command: list[str], isolated_cwd: Path, restored_environment: None
) -> None:
    """A demo reads no database setting from .env, but MIGRATION_PG_BIN says where this
    machine's PostgreSQL is: one without `postgres` is named, before any server starts."""
    elsewhere = isolated_cwd / "no postgres here"
    elsewhere.mkdir()
    (isolated_cwd / ".env").write_text(f'MIGRATION_PG_BIN="{elsewhere}"\n')
    extra = ["--port", str(free_port())] if command[0] == "ui" else []
    code, output = run_cli([*command, *extra])
    assert code == 2, output
    assert f"{elsewhere} has no 'postgres' and 'initdb'" in " ".join(output.split()), output
