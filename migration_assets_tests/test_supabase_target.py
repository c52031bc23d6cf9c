"""A target shaped like Supabase: its statement timeouts and the schemas it owns.

Supabase caps statements (two minutes for every role, seconds for the API roles) and
ships `auth`, `storage` and `extensions`, owned by another role. Our sessions set their
own timeout (MIGRATION_STATEMENT_TIMEOUT), a cancelled statement is reported as what it
is, and the migration leaves Supabase's schemas alone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from migration_assets.db.schema import alembic_upgrade
from migration_assets.devstack.stack import TARGET_ROLE, TARGET_SUPERUSER, DevStack
from migration_assets.plan import load_plan
from migration_assets.settings import SettingsError, load_settings
from migration_assets_tests.conftest import ALEMBIC_INI, Databases, Migration, MigrationFactory
from migration_assets_tests.faults import slow_down, speed_up, wait_for_copy
from migration_assets_tests.helpers import (
    PLAN_ARGS,
    assert_equal_databases,
    cli_process,
    dbname,
    run_cli,
)

pytestmark = pytest.mark.integration

SLOW_TABLE = "public.patients"  # 300 seeded rows: at 10 ms a row, a slice takes seconds
SLOW_SECONDS_PER_ROW = 0.01
LOST = "connection was lost"


def _prepare_slow(m: Migration) -> None:
    """Plan, the schema on the target, and slices of SLOW_TABLE that take seconds to load."""
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    alembic_upgrade(m.target_url, sslrootcert=str(m.ca_file), config_path=ALEMBIC_INI)
    slow_down(m.target_url, SLOW_TABLE, SLOW_SECONDS_PER_ROW)


def _migrate() -> tuple[int, str]:
    return run_cli(["migrate", "--workers", "1"])


def _role_timeout(stack: DevStack, url: str, value: str | None) -> None:
    """ALTER ROLE postgres IN DATABASE ... SET (or RESET) statement_timeout, as superuser."""
    assert stack.target is not None
    db, role = sql.Identifier(dbname(url)), sql.Identifier(TARGET_ROLE)
    with psycopg.connect(stack.target.admin_conninfo(), autocommit=True) as conn:
        if value is None:
            conn.execute(
                sql.SQL("ALTER ROLE {} IN DATABASE {} RESET statement_timeout").format(role, db)
            )
        else:
            conn.execute(
                sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = {}").format(
                    role, db, sql.Literal(value)
                )
            )


# ------------------------------------------------------------------ statement timeouts


def test_statement_timeout_values() -> None:
    from migration_assets.db.session import parse_statement_timeout

    assert parse_statement_timeout("") == 0
    assert parse_statement_timeout("0") == 0
    assert parse_statement_timeout("600") == 600_000
    assert parse_statement_timeout("0.25") == 250
    assert parse_statement_timeout("0.0001") == 1, "a tiny limit must not become 'no limit'"
    assert parse_statement_timeout("500ms") == 500
    assert parse_statement_timeout("30min") == 1_800_000
    for bad in ("soon", "-1", "1e3", "10 weeks", "999999999"):
        with pytest.raises(ValueError, match="MIGRATION_STATEMENT_TIMEOUT"):
            parse_statement_timeout(bad)
    with pytest.raises(SettingsError, match="MIGRATION_STATEMENT_TIMEOUT='soon'"):
        load_settings(env_file=None, MIGRATION_STATEMENT_TIMEOUT="soon")


def test_a_role_timeout_on_the_target_does_not_cancel_the_migration(
    migration: MigrationFactory, stack: DevStack
) -> None:
    m = migration()
    _prepare_slow(m)
    _role_timeout(stack, m.target_url, "500ms")
    with psycopg.connect(m.target_url) as conn:  # the role's limit is really in force
        assert conn.execute("SHOW statement_timeout").fetchone() == ("500ms",)
    code, output = _migrate()
    assert code == 0, output
    assert "every partition verified" in output
    code, output = run_cli(["verify"])
    assert code == 0, output
    _role_timeout(stack, m.target_url, None)  # for the independent comparison below
    assert_equal_databases(m.source_url, m.target_url)


def test_our_statement_timeout_is_reported_as_a_timeout_naming_the_setting(
    migration: MigrationFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = migration()
    _prepare_slow(m)
    monkeypatch.setenv("MIGRATION_STATEMENT_TIMEOUT", "0.5")
    code, output = _migrate()
    assert code == 1, output
    assert "statement timeout" in output
    assert "MIGRATION_STATEMENT_TIMEOUT=0.5" in output
    assert LOST not in output
    # what the message says to do works: a longer limit (here none at all)
    monkeypatch.setenv("MIGRATION_STATEMENT_TIMEOUT", "0")
    code, output = _migrate()
    assert code == 0, output
    assert_equal_databases(m.source_url, m.target_url)


def test_a_cancelled_statement_is_not_called_a_lost_connection(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    m = migration()
    _prepare_slow(m)
    proc = cli_process(["migrate", "--workers", "1"], m.env(), isolated_cwd)
    assert stack.target is not None
    assert stack.target is not None
    pid = wait_for_copy(stack.target.admin_conninfo(), dbname(m.target_url), into=SLOW_TABLE)
    stack.target.admin(f"SELECT pg_cancel_backend({int(pid)})")
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 1, output
    assert "cancelled on request" in output
    assert LOST not in output
    speed_up(m.target_url, SLOW_TABLE)
    code, output = _migrate()
    assert code == 0, output
    assert_equal_databases(m.source_url, m.target_url)


# ------------------------------------------------------------------ Supabase's schemas


def test_the_target_is_shaped_like_supabase(databases: Databases) -> None:
    target = databases.target()
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("2min",)
        limits: dict[str, list[str]] = dict(
            conn.execute(
                "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s "
                "JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = 0"
            ).fetchall()
        )
        assert "statement_timeout=3s" in limits["anon"]
        assert "statement_timeout=8s" in limits["authenticated"]
        owners: dict[str, str] = dict(
            conn.execute(
                "SELECT n.nspname, pg_get_userbyid(n.nspowner) FROM pg_namespace n "
                "WHERE n.nspname IN ('auth', 'storage', 'extensions')"
            ).fetchall()
        )
        assert owners == dict.fromkeys(("auth", "storage", "extensions"), TARGET_SUPERUSER)
        extensions = conn.execute(
            "SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE n.nspname = 'extensions' ORDER BY 1"
        ).fetchall()
        assert extensions == [("pgcrypto",)]
        digest = conn.execute("SELECT extensions.digest('x', 'sha256') IS NOT NULL").fetchone()
        assert digest == (True,)
        assert conn.execute("SELECT auth.uid()").fetchone() == (None,)
        conn.execute("CREATE TABLE public.fresh (id int)")  # Supabase's default privileges
        assert conn.execute(
            "SELECT has_table_privilege('anon', 'public.fresh', 'SELECT')"
        ).fetchone() == (True,)
        for statement in (
            "SELECT count(*) FROM auth.users",
            "INSERT INTO auth.users (email) VALUES ('x@example.org')",
            "ALTER TABLE auth.users ADD COLUMN mine int",
            "SELECT count(*) FROM storage.objects",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())


def test_migrate_and_verify_leave_supabase_schemas_alone(
    migration: MigrationFactory, databases: Databases, stack: DevStack
) -> None:
    source = databases.source()
    assert stack.source is not None
    # some clinics keep extensions (and a table or two) in a schema named `extensions` too
    stack.source.admin(
        "CREATE SCHEMA extensions; CREATE EXTENSION pgcrypto SCHEMA extensions; "
        "CREATE TABLE extensions.local_notes (id int PRIMARY KEY, note text); "
        "INSERT INTO extensions.local_notes VALUES (1, 'kept on the source')",
        dbname=dbname(source),
    )
    m = migration(source_url=source)
    assert stack.target is not None
    stack.target.admin(
        "INSERT INTO auth.users (email) VALUES ('someone@example.org')",
        dbname=dbname(m.target_url),
    )
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    schemas = {t.schema_name for t in load_plan(m.plan_path).tables}
    assert schemas == {"public", "reference"}
    code, output = _migrate()
    assert code == 0, output
    code, output = run_cli(["verify"])
    assert code == 0, output
    for word in ("auth.", "storage.", "extensions."):
        assert word not in output, f"verify reported Supabase's own objects: {output}"
    assert_equal_databases(source, m.target_url)
    with psycopg.connect(stack.target.admin_conninfo(dbname(m.target_url))) as conn:
        assert conn.execute("SELECT count(*) FROM auth.users").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('extensions.local_notes')").fetchone() == (None,)
