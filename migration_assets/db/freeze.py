"""Stop writes to the source database and prove that they stopped (the cutover's freeze).

A database made read-only with `ALTER DATABASE ... SET default_transaction_read_only = on`
affects new sessions only: open ones keep writing. So freezing is three steps: new sessions
read-only, the application's open sessions ended (its pool reconnects, read-only), and a
wait until no session older than the freeze remains. The proof that no write happened
afterwards is a `WritePosition` taken at the freeze and compared later.

The setting is soft: a session may still `SET default_transaction_read_only = off` or
`BEGIN READ WRITE`. An application does not do that by accident, and if one does, the write
position moves and the comparison says so. Connections passed in must have no open
transaction: each step commits on its own, so new sessions see it at once.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any, Self

import psycopg
from psycopg import sql

from migration_assets.db.errors import MigrationError
from migration_assets.db.quiescence import (
    Connection,
    WritePosition,
    own_transaction,
    write_position,
)

READ_ONLY = "default_transaction_read_only"
KEEP_APPLICATION = "migration_assets"
POLL_SECONDS = 0.05


def _scalar(conn: Connection, query: str, params: Any = None) -> Any:
    found = conn.execute(query, params).fetchone()
    return None if found is None else found[0]


def _database(conn: Connection) -> str:
    with own_transaction(conn):
        return str(_scalar(conn, "SELECT current_database()"))


def _name(conn: Connection, name: str) -> str:
    """An identifier quoted by the server's quote_ident: only where needed, as a DBA types it."""
    with own_transaction(conn):
        return str(_scalar(conn, "SELECT quote_ident(%s)", [name]))


# --- 1. privileges -----------------------------------------------------------------------


def freeze_problem(conn: Connection) -> str | None:
    """What freezing needs and this role lacks, with the SQL that grants it; None if nothing.

    Freezing ALTERs the database (its owner, a role with the owner's privileges, or a
    superuser may) and terminates the sessions open on it: those of roles this one is a
    member of it may end itself; other roles' need pg_signal_backend (or superuser), asked
    for only when such sessions are there. Asked before anything changes, so a cutover can
    refuse with the fix instead of failing half way (a session of another role that opens
    after this question makes the freeze itself refuse and undo).
    """
    with own_transaction(conn):
        row = conn.execute(
            "SELECT current_user, current_database(), r.rolsuper,"
            " pg_has_role(current_user, d.datdba, 'USAGE'), d.datdba::regrole::text,"
            " pg_has_role(current_user, 'pg_signal_backend', 'USAGE'),"
            " (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = current_database()"
            "  AND a.pid <> pg_backend_pid() AND a.usesysid IS NOT NULL"
            "  AND coalesce(a.backend_type, 'client backend') = 'client backend'"
            "  AND NOT pg_has_role(current_user, a.usesysid, 'MEMBER'))"
            " FROM pg_database d, pg_roles r"
            " WHERE d.datname = current_database() AND r.rolname = current_user"
        ).fetchone()
    assert row is not None
    user, database, superuser, owns, owner, signals, foreign = row
    signals = signals or not foreign
    if superuser or (owns and signals):
        return None
    role, db = _name(conn, str(user)), _name(conn, str(database))
    missing, fixes = [], []
    if not signals:
        missing.append("ending other roles' sessions (membership in pg_signal_backend)")
        fixes.append(f"GRANT pg_signal_backend TO {role};")
    if not owns:
        missing.append(f"changing database {db}'s settings (ownership; the owner is {owner})")
        fixes.append(f"ALTER DATABASE {db} OWNER TO {role};")
    return (
        f"freezing the source needs {' and '.join(missing)}, which role {role} lacks: "
        f"run as a superuser: {' '.join(fixes)} (or run cutover as a superuser, or stop the "
        "application yourself and run cutover --no-freeze)"
    )


# --- 3-5. freeze, unfreeze, is_frozen ----------------------------------------------------


@dataclass(frozen=True)
class FreezeRecord:
    """What a freeze changed and what it saw: enough to undo it exactly, from any process."""

    database: str
    prior_setting: str | None
    frozen_at: str
    terminated: int
    position: WritePosition

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "position": self.position.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        prior = data.get("prior_setting")
        return cls(
            database=str(data["database"]),
            prior_setting=None if prior is None else str(prior),
            frozen_at=str(data["frozen_at"]),
            terminated=int(data["terminated"]),
            position=WritePosition.from_dict(data["position"]),
        )


def prior_setting(conn: Connection, database: str | None = None) -> str | None:
    """The database-level default_transaction_read_only (None if unset) of `database`, by
    default the connection's own.

    Only the database-wide entry (setrole = 0) is ours to change and restore.
    """
    with own_transaction(conn):
        value = _scalar(
            conn,
            "SELECT substr(c, length(%(name)s) + 2) FROM pg_db_role_setting s"
            " JOIN pg_database d ON d.oid = s.setdatabase,"
            " unnest(s.setconfig) AS c"
            " WHERE d.datname = coalesce(%(database)s, current_database()) AND s.setrole = 0"
            " AND c LIKE %(name)s || '=%%'",
            {"name": READ_ONLY, "database": database},
        )
    return None if value is None else str(value)


def is_frozen(conn: Connection, database: str | None = None) -> bool:
    """The database-level setting makes new sessions read-only (whatever any record says).
    Asked from another database of the server (`database` named), the asking session is
    not one the freeze ends: it ends every session of the frozen database."""
    value = prior_setting(conn, database)
    return value is not None and value.lower() in {"on", "true", "yes", "1", "t", "y"}


def _overriding_roles(conn: Connection) -> list[str]:
    """Roles whose own setting beats the database's: their sessions would not be read-only."""
    with own_transaction(conn):
        rows = conn.execute(
            "SELECT DISTINCT s.setrole::regrole::text FROM pg_db_role_setting s,"
            " unnest(s.setconfig) AS c WHERE s.setrole <> 0 AND c LIKE %(name)s || '=%%'"
            " AND (s.setdatabase = 0 OR s.setdatabase ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())) ORDER BY 1",
            {"name": READ_ONLY},
        ).fetchall()
    return [str(r[0]) for r in rows]


def _set_database(conn: Connection, value: str | None) -> None:
    """Set (or RESET for None) the database-level setting, from a read-write session."""
    with own_transaction(conn):
        # A session opened on a frozen database is read-only itself: ALTER would fail.
        conn.execute(sql.SQL("SET {} = off").format(sql.Identifier(READ_ONLY)))
    database = sql.Identifier(_database(conn))
    with own_transaction(conn):
        if value is None:
            stmt = sql.SQL("ALTER DATABASE {} RESET {}").format(database, sql.Identifier(READ_ONLY))
        else:
            stmt = sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                database, sql.Identifier(READ_ONLY), sql.Literal(value)
            )
        conn.execute(stmt)


def freeze(
    conn: Connection, *, wait_seconds: float, keep_application: str = KEEP_APPLICATION
) -> FreezeRecord:
    """Make the source read-only for new sessions, end the old ones, and record it.

    Sessions whose application_name starts with `keep_application` (the migration's own)
    are kept. If sessions opened before the freeze remain after `wait_seconds` (a
    superuser's, which we may not end) or prepared transactions wait to commit, the prior
    setting is restored and MigrationError says who is left: a half freeze is no freeze.
    """
    prior = prior_setting(conn)
    database = _database(conn)
    _refuse_unfreezable(conn, database, prior)
    _set_database(conn, "on")
    cutoff = _cutoff(conn)
    try:
        terminated = _end_sessions(conn, cutoff, keep_application, wait_seconds)
    except MigrationError as exc:
        _set_database(conn, prior)
        raise MigrationError(
            f"{exc}. The source was not frozen (its setting is restored)"
        ) from None
    return FreezeRecord(
        database=database,
        prior_setting=prior,
        frozen_at=cutoff[0].astimezone(UTC).isoformat(),
        terminated=terminated,
        position=write_position(conn),
    )


def _refuse_unfreezable(conn: Connection, database: str, prior: str | None) -> None:
    """Refuse before changing anything when the freeze could not be trusted or undone."""
    db = _name(conn, database)
    if is_frozen(conn):
        raise MigrationError(
            f"database {db} is already read-only for new sessions ({READ_ONLY}={prior}): if "
            "an earlier cutover froze it, roll that cutover back (its record holds the setting "
            f"to restore); otherwise run ALTER DATABASE {db} RESET {READ_ONLY}; and try again"
        )
    roles = _overriding_roles(conn)
    if roles:
        reset = f"RESET {READ_ONLY};"
        fixes = " ".join(
            f"ALTER ROLE {r} IN DATABASE {db} {reset} ALTER ROLE {r} {reset}" for r in roles
        )
        raise MigrationError(
            f"roles {', '.join(roles)} set {READ_ONLY} themselves, which overrides the "
            f"database's setting: their sessions would keep writing after a freeze. "
            f"Remove those settings ({fixes}) or stop the application and use --no-freeze"
        )


# Without pg_read_all_stats, another role's backend_start and application_name read NULL:
# such a session counts as old if it was there at the cutoff (`hidden`), never as kept.
_OLD_SESSIONS = (
    "SELECT pid, usename::text FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND coalesce(backend_type, 'client backend') = 'client backend'"
    " AND (backend_start < %(cutoff)s"
    " OR (backend_start IS NULL AND pid = ANY(%(hidden)s::int[])))"
    " AND NOT starts_with(coalesce(application_name, ''), %(keep)s)"
)
_CUTOFF = (
    "SELECT clock_timestamp(), coalesce(array_agg(pid) FILTER (WHERE backend_start IS NULL),"
    " '{}') FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid()"
)


def _cutoff(conn: Connection) -> tuple[Any, list[int]]:
    """The server's time now and the sessions whose start we may not see (see above)."""
    with own_transaction(conn):
        row = conn.execute(_CUTOFF).fetchone()
    assert row is not None
    return row[0], [int(p) for p in row[1]]


def _end_sessions(
    conn: Connection, cutoff: tuple[Any, list[int]], keep: str, wait_seconds: float
) -> int:
    """Terminate the sessions opened before the freeze until none is left; how many ended.

    Terminating again on every poll also catches a session that was starting up at the
    moment of the freeze (it read the old setting but was not listed yet).
    """
    ended: set[int] = set()
    deadline = time.monotonic() + wait_seconds
    while True:
        with own_transaction(conn):
            old = conn.execute(
                _OLD_SESSIONS, {"cutoff": cutoff[0], "hidden": cutoff[1], "keep": keep}
            ).fetchall()
            prepared = _scalar(
                conn,
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            )
        if not old and not prepared:
            return len(ended)
        if time.monotonic() > deadline:
            raise MigrationError(_remaining_message(conn, old, int(prepared), wait_seconds))
        for pid, _role in old:
            if _terminate(conn, int(pid)):
                ended.add(int(pid))
        time.sleep(POLL_SECONDS)


def _terminate(conn: Connection, pid: int) -> bool:
    """End one session; False if we may not (a superuser's) or it is gone already."""
    try:
        with own_transaction(conn):
            return bool(_scalar(conn, "SELECT pg_terminate_backend(%s)", [pid]))
    except psycopg.errors.InsufficientPrivilege:
        return False


def _remaining_message(
    conn: Connection, old: list[tuple[Any, ...]], prepared: int, wait_seconds: float
) -> str:
    """Who is still there, by count and role (never what they run)."""
    roles: dict[str, int] = {}
    for _pid, role in old:
        roles[str(role)] = roles.get(str(role), 0) + 1
    parts = []
    if old:
        named = ", ".join(f"{_name(conn, r)} ({n})" for r, n in sorted(roles.items()))
        parts.append(
            f"{len(old)} session(s) opened before the freeze are still connected after "
            f"{wait_seconds:g} s (roles: {named}) and could still write; end them as a "
            "superuser (pg_terminate_backend) or stop that client"
        )
    if prepared:
        parts.append(
            f"{prepared} prepared transaction(s) of this database could still commit; "
            "COMMIT PREPARED or ROLLBACK PREPARED them"
        )
    return "; ".join(parts) + ", then run cutover again"


def unfreeze(
    conn: Connection, record: FreezeRecord, *, keep_application: str = KEEP_APPLICATION
) -> int:
    """Restore exactly the setting the freeze replaced; harmless on an unfrozen database.

    Sessions opened while the database was frozen stay read-only for life (the setting is
    read at session start), so an application's pool would keep failing after a rollback:
    they are ended (as many as we may) so the pool reconnects read-write. Returns how many.
    """
    database = _database(conn)
    if database != record.database:
        raise MigrationError(
            f"this freeze record is for database {_name(conn, record.database)}, but the "
            f"connection is to {_name(conn, database)}: connect to the frozen source"
        )
    was_frozen = is_frozen(conn)
    _set_database(conn, record.prior_setting)
    if not was_frozen:
        return 0
    at, hidden = _cutoff(conn)
    with own_transaction(conn):
        old = conn.execute(
            _OLD_SESSIONS, {"cutoff": at, "hidden": hidden, "keep": keep_application}
        )
        pids = [int(r[0]) for r in old.fetchall()]
    return sum(_terminate(conn, pid) for pid in pids)
