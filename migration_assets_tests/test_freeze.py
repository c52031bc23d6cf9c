"""The source freeze for cutover (issue 12), against a real source server and a writing app."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from migration_assets.db.dsn import parse_dsn
from migration_assets.db.errors import MigrationError
from migration_assets.db.freeze import (
    FreezeRecord,
    freeze,
    freeze_problem,
    is_frozen,
    prior_setting,
    unfreeze,
)
from migration_assets.db.quiescence import quiescent, write_position
from migration_assets.devstack.stack import SOURCE_ROLE, DevStack
from migration_assets.devstack.standin import StandIn, assert_journal_on
from migration_assets_tests.conftest import Databases, unique
from migration_assets_tests.waiting import sessions_gone, wait_until

pytestmark = pytest.mark.integration


def _admin(stack: DevStack, url: str) -> psycopg.Connection[Any]:
    """The source's superuser on the database of `url` (as a cutover run by a superuser)."""
    assert stack.source is not None
    dbname = str(parse_dsn(url)["dbname"])
    return psycopg.connect(stack.source.admin_conninfo(dbname), autocommit=True)


@pytest.fixture
def source(databases: Databases) -> str:
    return databases.source()


@pytest.fixture
def admin(stack: DevStack, source: str) -> Iterator[psycopg.Connection[Any]]:
    with _admin(stack, source) as conn:
        yield conn


def _setting_rows(conn: psycopg.Connection[Any]) -> list[str]:
    """The database-wide settings exactly as stored."""
    row = conn.execute(
        "SELECT setconfig FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase ="
        " (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return [] if row is None or row[0] is None else sorted(row[0])


def _can_write(url: str) -> str | None:
    """None if a new session may write, else the SQLSTATE it got."""
    try:
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE providers SET full_name = full_name WHERE false")
            return None
    except psycopg.Error as exc:
        return exc.sqlstate


@pytest.mark.parametrize("prior", [None, "off"])
def test_freeze_stops_the_apps_writes_and_unfreeze_restores_the_exact_setting(
    source: str, admin: psycopg.Connection[Any], prior: str | None
) -> None:
    if prior is not None:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(str(parse_dsn(source)["dbname"])), sql.Literal(prior)
            )
        )
    before = _setting_rows(admin)
    with StandIn(source, connections=3, rate=20) as app:
        app.wait_until(lambda: len(app.acks()) >= 15, 30, "the app's first writes")
        record = freeze(admin, wait_seconds=10)
        returned_at = time.monotonic()
        assert record.prior_setting == prior
        assert record.terminated >= 1, "the app's open sessions were not ended"
        assert is_frozen(admin)
        assert FreezeRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record

        refused = app.refused
        app.wait_until(lambda: app.refused >= refused + 9, 30, "refused writes after freeze")
        late = [a for a in app.acks() if a.started >= returned_at]
        assert not late, f"{len(late)} writes acknowledged after freeze returned"
        still, now = quiescent(admin, record.position, settle_seconds=2.0)
        assert still, f"write position moved while frozen: {record.position} -> {now}"

        ended = unfreeze(admin, record)
        assert ended >= 1, "sessions opened while frozen stay read-only unless ended"
        assert _setting_rows(admin) == before
        assert prior_setting(admin) == prior
        assert not is_frozen(admin)
        acked = len(app.acks())
        app.wait_until(lambda: len(app.acks()) >= acked + 15, 30, "writes after unfreeze")
    assert unfreeze(admin, record) == 0  # idempotent
    assert _setting_rows(admin) == before
    assert app.counters().in_doubt + len(app.acked()) > 0
    assert assert_journal_on(source, app.acked()) > 0


def test_quiescent_is_false_while_the_app_writes_and_true_once_it_stops(
    source: str, admin: psycopg.Connection[Any]
) -> None:
    with StandIn(source, connections=2, rate=20) as app:
        app.wait_until(lambda: len(app.acks()) >= 5, 30, "the app's first writes")
        since = write_position(admin)
        app.wait_until(lambda: not quiescent(admin, since, 0.2)[0], 30, "a moved position")
    # Its sessions' last counts reach the statistics when they end: poll, do not sleep.
    since = write_position(admin)

    def still() -> bool:
        nonlocal since
        settled, since = quiescent(admin, since, settle_seconds=1.5)
        return settled

    wait_until(still, 30, "the write position to stop moving after the app stopped", every=0)


def _as_role(admin: psycopg.Connection[Any], role: str) -> str | None:
    admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        return freeze_problem(admin)
    finally:
        admin.execute("RESET ROLE")


def test_freeze_problem_names_the_grants_a_role_lacks(
    stack: DevStack, source: str, admin: psycopg.Connection[Any]
) -> None:
    role = unique("Mig")  # mixed case: the SQL must quote it
    quoted = '"' + role + '"'
    database = str(parse_dsn(source)["dbname"])  # lower case: quote_ident leaves it bare
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        # another role's session is open (a superuser's): ending it needs pg_signal_backend
        with _admin(stack, source) as other:
            other_pid = other.info.backend_pid
            problem = _as_role(admin, role)
            assert problem is not None
            assert f"GRANT pg_signal_backend TO {quoted};" in problem
            assert f"ALTER DATABASE {database} OWNER TO {quoted};" in problem

            admin.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(role)))
            problem = _as_role(admin, role)
            assert problem is not None
            assert "GRANT pg_signal_backend" not in problem
            assert f"ALTER DATABASE {database} OWNER TO {quoted};" in problem

            admin.execute(
                sql.SQL("GRANT {} TO {}").format(*map(sql.Identifier, (SOURCE_ROLE, role)))
            )
            assert _as_role(admin, role) is None  # the owner's privileges are enough
            owner_problem = _as_role(admin, SOURCE_ROLE)
            assert owner_problem is not None
            assert f"GRANT pg_signal_backend TO {SOURCE_ROLE};" in owner_problem
            assert freeze_problem(admin) is None  # superuser
        # only its own role's sessions open: the owner ends those itself, nothing to grant
        sessions_gone(admin, [other_pid], what="the other role's")
        assert _as_role(admin, SOURCE_ROLE) is None
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_session_freeze_may_not_end_makes_it_refuse_and_leave_nothing_frozen(
    stack: DevStack, source: str
) -> None:
    with _admin(stack, source) as superuser, psycopg.connect(source, autocommit=True) as owner:
        superuser.execute("SET application_name = 'psql'")
        with pytest.raises(MigrationError) as raised:
            freeze(owner, wait_seconds=1)  # the owner may not end a superuser's session
        message = str(raised.value)
        assert "1 session(s)" in message
        assert '"postgres" (1)' in message or "postgres (1)" in message
        assert "not frozen" in message
        assert not is_frozen(owner)
        assert _can_write(source) is None


_FREEZE_AND_DIE = """
import json, os, sys, psycopg
from migration_assets.db.freeze import freeze
conn = psycopg.connect(sys.argv[1], autocommit=True)
print(json.dumps(freeze(conn, wait_seconds=10).to_dict()), flush=True)
os.kill(os.getpid(), 9)
"""


def test_unfreeze_from_a_new_process_after_the_freezer_died(stack: DevStack, source: str) -> None:
    assert stack.source is not None
    dbname = str(parse_dsn(source)["dbname"])
    done = subprocess.run(
        [sys.executable, "-c", _FREEZE_AND_DIE, stack.source.admin_conninfo(dbname)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    record = FreezeRecord.from_dict(json.loads(done.stdout))
    assert record.prior_setting is None
    assert _can_write(source) == "25006"
    # The database owner, in a session that is itself read-only, undoes it.
    with psycopg.connect(source, autocommit=True) as owner:
        assert is_frozen(owner)
        unfreeze(owner, record)
        assert not is_frozen(owner)
        assert _setting_rows(owner) == []
    assert _can_write(source) is None


def test_freeze_refuses_what_it_could_not_trust_or_undo(
    source: str, admin: psycopg.Connection[Any]
) -> None:
    database = sql.Identifier(str(parse_dsn(source)["dbname"]))
    admin.execute(
        sql.SQL("ALTER ROLE {} IN DATABASE {} SET default_transaction_read_only = off").format(
            sql.Identifier(SOURCE_ROLE), database
        )
    )
    try:
        with pytest.raises(MigrationError, match=f"roles {SOURCE_ROLE} set .* overrides"):
            freeze(admin, wait_seconds=5)
        assert not is_frozen(admin)
        assert _setting_rows(admin) == []
    finally:
        admin.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} RESET default_transaction_read_only").format(
                sql.Identifier(SOURCE_ROLE), database
            )
        )
    admin.execute(
        sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database)
    )
    with pytest.raises(MigrationError, match="already read-only"):
        freeze(admin, wait_seconds=5)  # recording 'on' as the prior would make rollback a no-op
    assert _setting_rows(admin) == ["default_transaction_read_only=on"]
