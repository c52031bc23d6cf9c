"""Connections with pinned session settings and errors a person can act on.

Row text (and so every checksum) depends on TimeZone, DateStyle, IntervalStyle,
extra_float_digits, bytea_output and lc_monetary: the same rows gave different sums under
another TimeZone. Both servers get the same pins before any query runs.
"""

from __future__ import annotations

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

# A hung network must end in an error, not a wait without end.
TCP_GUARDS: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "15",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def pin_session(conn: Connection) -> None:
    """One round trip: every pin as a plain SET so poolers in session mode keep them."""
    statements = "; ".join(f"SET {name} TO '{value}'" for name, value in SESSION_PINS.items())
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
    prepare_threshold: int | None = 5,
) -> Iterator[Connection]:
    """A pinned connection; connection failures become `ConnectionFailedError` naming the fix."""
    conninfo = with_params(
        dsn, sslrootcert=sslrootcert, application_name=application_name, **TCP_GUARDS
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, prepare_threshold=prepare_threshold)
    except psycopg.OperationalError as exc:
        raise ConnectionFailedError.from_libpq(exc, setting=setting, shown=mask_dsn(dsn)) from None
    try:
        if pin:
            pin_session(conn)
            if not autocommit:
                conn.commit()
        yield conn
    finally:
        conn.close()


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
