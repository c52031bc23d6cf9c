"""Connections with pinned session settings and errors a person can act on.

Row text (and so every checksum) depends on TimeZone, DateStyle, IntervalStyle,
extra_float_digits, bytea_output and lc_monetary: the same rows gave different sums under
another TimeZone. Both servers get the same pins before any query runs.

`row_security = off` is pinned too, as pg_dump does: a table whose policies apply to our role
would show it only some rows, and the copy and its checksum would agree on those. With the
pin, PostgreSQL refuses such a query instead of filtering it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from migration_assets.db.dsn import mask_dsn, parse_dsn, with_params
from migration_assets.db.errors import (
    STATEMENT_TIMEOUT_ENV,
    ConnectionFailedError,
    MigrationError,
    safe_message,
)

Connection = psycopg.Connection[Any]

SESSION_PINS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "client_encoding": "UTF8",
    "row_security": "off",  # a policy that would hide rows raises instead (module docstring)
    # the text of a regclass or regtype value (and a column's type, as the schema check reads
    # it) names its schema unless the search_path makes it visible, and each role has its own
    # ("$user" differs): one path on both servers, Supabase's without "$user"
    "search_path": "public, extensions",
}
LIST_PINS = frozenset({"search_path"})  # a list of names: each quoted on its own


@dataclass(frozen=True)
class Timeouts:
    """How long a silent network (seconds) and one statement of ours may take. Explicit in
    every connect: the settings (MIGRATION_NETWORK_TIMEOUT, MIGRATION_STATEMENT_TIMEOUT) and
    the resources built from them carry these, and their defaults are these."""

    network: int = 60
    statement: str = "0"  # as the user gave it: seconds or a PostgreSQL duration; 0: none

    @property
    def statement_ms(self) -> int:
        """MigrationError, not ValueError, for a value that did not pass through Settings."""
        try:
            return parse_statement_timeout(self.statement)
        except ValueError as exc:
            raise MigrationError(str(exc)) from None


DEFAULT_TIMEOUTS = Timeouts()
MIN_NETWORK_TIMEOUT = 3  # keepalive probes are whole seconds, a third and a ninth of it


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|min|h|d)?")
_MS_PER_UNIT = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_TIMEOUT_MS = 2**31 - 1  # PostgreSQL's limit for statement_timeout


def parse_statement_timeout(raw: str) -> int:
    """Seconds (`600`, `0.5`) or a PostgreSQL duration (`500ms`, `30min`) as milliseconds.

    Empty or 0 means no limit. Raises ValueError naming the setting for anything else.
    """
    if not raw.strip():
        return 0
    match = _DURATION.fullmatch(raw.strip())
    if match is None:
        raise ValueError(
            f"{STATEMENT_TIMEOUT_ENV}={raw!r} is not a duration: give seconds (600) or a "
            "PostgreSQL duration ('500ms', '30min'); 0 means no limit"
        )
    millis = float(match.group(1)) * _MS_PER_UNIT[match.group(2) or "s"]
    if millis > _MAX_TIMEOUT_MS:
        raise ValueError(f"{STATEMENT_TIMEOUT_ENV}={raw!r} is longer than PostgreSQL allows")
    return max(1, round(millis)) if millis > 0 else 0


def tcp_guards(timeout: int) -> dict[str, str]:
    """Client side: a hung network ends in an error within about `timeout` seconds."""
    return {
        "connect_timeout": str(min(10, timeout)),
        "keepalives": "1",
        "keepalives_idle": str(max(1, timeout // 3)),
        "keepalives_interval": str(max(1, timeout // 9)),
        "keepalives_count": "3",
        "tcp_user_timeout": str(timeout * 1000),
    }


def server_guards(timeout: int) -> dict[str, str]:
    """Server side: a vanished client's transaction (and its slice locks) ends soon too,
    instead of after the kernel's two-hour keepalive default."""
    return {
        "tcp_keepalives_idle": str(max(1, timeout // 3)),
        "tcp_keepalives_interval": str(max(1, timeout // 9)),
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": str(timeout * 1000),
        # our transactions are never idle for long (the source checksum is the longest
        # pause); one that is has lost its client and must not keep holding slice locks
        "idle_in_transaction_session_timeout": str(timeout * 10 * 1000),
    }


def pin_session(conn: Connection, timeouts: Timeouts, extra: dict[str, str] | None = None) -> None:
    """One round trip: every pin as a plain SET so poolers in session mode keep them.

    statement_timeout comes first: the role's own (Supabase: 2 min, or less) must not cancel
    the rest, and it replaces the server's limit for the whole session.
    """
    pins = {"statement_timeout": str(timeouts.statement_ms), **SESSION_PINS, **(extra or {})}
    statements = "; ".join(
        f"SET {name} TO "
        + ", ".join(f"'{v}'" for v in (value.split(", ") if name in LIST_PINS else [value]))
        for name, value in pins.items()
    )
    conn.execute(statements.encode())


@contextmanager
def connect(dsn: str, *, setting: str, **options: Any) -> Iterator[Connection]:
    """A pinned connection, closed afterwards (`open_pinned` says which options there are)."""
    conn = open_pinned(dsn, setting=setting, **options)
    try:
        yield conn
    finally:
        conn.close()


def open_pinned(
    dsn: str,
    *,
    setting: str,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    sslrootcert: str | None = None,
    autocommit: bool = False,
    application_name: str = "migration_assets",
    pin: bool = True,
    guard_server: bool = False,
    prepare_threshold: int | None = 5,
) -> Connection:
    """A pinned connection; connection failures become `ConnectionFailedError` naming the fix."""
    timeout = timeouts.network
    conninfo = with_params(
        dsn, sslrootcert=sslrootcert, application_name=application_name, **tcp_guards(timeout)
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, prepare_threshold=prepare_threshold)
    except psycopg.OperationalError as exc:
        raise ConnectionFailedError.from_libpq(
            exc, setting=setting, shown=mask_dsn(dsn), tls_reason=_tls_reason(exc, conninfo)
        ) from None
    try:
        if pin:
            pin_session(conn, timeouts, server_guards(timeout) if guard_server else None)
            if not autocommit:
                conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


class Spare:
    """One idle connection kept between uses, so the steps of one run (a packed run's small
    tables) connect once. A connection costs several round trips (TLS, SCRAM, the session
    pins): against a remote server, more than a small table's copy.

    Only a connection handed back idle, outside any transaction, is kept; one that raised is
    closed. Before it is lent again one round trip proves it is still alive (a server that
    restarted in between gets a new connection, not an error)."""

    def __init__(self) -> None:
        self._conn: Connection | None = None

    @contextmanager
    def lend(self, open_new: Callable[[], Connection]) -> Iterator[Connection]:
        conn, self._conn = self._conn, None
        if conn is None or not _alive(conn):
            conn = open_new()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if conn.closed or not idle or self._conn is not None:
            conn.close()
        else:
            self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _alive(conn: Connection) -> bool:
    if conn.closed:
        return False
    autocommit = conn.autocommit
    try:
        conn.autocommit = True  # the probe opens no transaction
        conn.execute("SELECT 1")
        conn.autocommit = autocommit
        return True
    except psycopg.Error:
        conn.close()
        return False


def _tls_reason(exc: psycopg.OperationalError, conninfo: str) -> str | None:
    """For a failed certificate check only: look at the certificate and say why."""
    if "certificate verify failed" not in str(exc):
        return None
    from migration_assets.db.tlsdiag import diagnose

    params = parse_dsn(conninfo)
    host = params.get("host", "").split(",")[0]
    try:
        port = int(params.get("port", "5432").split(",")[0])
    except ValueError:
        return None
    return diagnose(host, port, params.get("sslrootcert"))


def server_major(conn: Connection) -> int:
    return conn.info.server_version // 10000


def describe_endpoint(dsn: str) -> str:
    """host:port/db for messages, without user or password."""
    params = parse_dsn(dsn)
    return f"{params.get('host', 'local socket')}:{params.get('port', '5432')}/" + params.get(
        "dbname", ""
    )


MIN_SERVER_VERSION = 120000  # generated columns (attgenerated); tested from 14 to 18


def refuse_old_server(version: int) -> None:
    """Older catalogs lack what is read here: say so, rather than fail on a missing column."""
    if version < MIN_SERVER_VERSION:
        raise MigrationError(
            f"the source runs PostgreSQL {_major(version)}: "
            f"this tool reads PostgreSQL {MIN_SERVER_VERSION // 10000} or newer. Upgrade it "
            "first (pg_upgrade, or dump and restore into a newer server), then plan from that"
        )


def _major(version: int) -> str:
    """10 and later number their major release once (110022: 11), 9.x twice (90624: 9.6)."""
    return (
        str(version // 10000) if version >= 100000 else f"{version // 10000}.{version // 100 % 100}"
    )


__all__ = [
    "DEFAULT_TIMEOUTS",
    "SESSION_PINS",
    "Connection",
    "Timeouts",
    "connect",
    "describe_endpoint",
    "parse_statement_timeout",
    "pin_session",
    "refuse_old_server",
    "safe_message",
    "server_major",
]
