"""Connections with pinned session settings and errors a person can act on.

Row text (and so every checksum) depends on TimeZone, DateStyle, IntervalStyle,
extra_float_digits, bytea_output and lc_monetary: the same rows gave different sums under
another TimeZone. Both servers get the same pins before any query runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from migration_assets.db.dsn import mask_dsn, parse_dsn, with_params
from migration_assets.db.errors import ConnectionFailedError, safe_message

Connection = psycopg.Connection[Any]

SESSION_PINS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "client_encoding": "UTF8",
}

NETWORK_TIMEOUT_ENV = "MIGRATION_NETWORK_TIMEOUT"
DEFAULT_NETWORK_TIMEOUT = 60


def network_timeout() -> int:
    """Seconds a silent network may take before we give up (MIGRATION_NETWORK_TIMEOUT)."""
    raw = os.environ.get(NETWORK_TIMEOUT_ENV, "")
    try:
        return max(3, int(raw)) if raw else DEFAULT_NETWORK_TIMEOUT
    except ValueError:
        return DEFAULT_NETWORK_TIMEOUT


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


def pin_session(conn: Connection, extra: dict[str, str] | None = None) -> None:
    """One round trip: every pin as a plain SET so poolers in session mode keep them."""
    pins = {**SESSION_PINS, **(extra or {})}
    statements = "; ".join(f"SET {name} TO '{value}'" for name, value in pins.items())
    conn.execute(statements.encode())


@contextmanager
def connect(
    dsn: str,
    *,
    setting: str,
    sslrootcert: str | None = None,
    autocommit: bool = False,
    application_name: str = "migration_assets",
    pin: bool = True,
    guard_server: bool = False,
    prepare_threshold: int | None = 5,
) -> Iterator[Connection]:
    """A pinned connection; connection failures become `ConnectionFailedError` naming the fix."""
    timeout = network_timeout()
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
            pin_session(conn, server_guards(timeout) if guard_server else None)
            if not autocommit:
                conn.commit()
        yield conn
    finally:
        conn.close()


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


__all__ = [
    "SESSION_PINS",
    "Connection",
    "connect",
    "describe_endpoint",
    "pin_session",
    "safe_message",
    "server_major",
]
