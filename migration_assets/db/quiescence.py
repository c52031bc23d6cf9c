"""Has the source been written since? Positions of its write activity, and the comparison.

The cutover takes one at the freeze and compares at the end; `--no-freeze` compares two
taken a settle time apart. Connections passed in must have no open transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from migration_assets.db.errors import MigrationError

Connection = psycopg.Connection[Any]


@contextmanager
def own_transaction(conn: Connection) -> Iterator[None]:
    """One committed transaction of ours; refuses to ride on a caller's open one.

    Inside a caller's transaction our ALTER would be a savepoint that new sessions do not
    see until the caller commits, which would make "frozen" a lie.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError(
            "freezing needs a connection with no open transaction: commit or roll back first "
            "(or pass an autocommit connection)"
        )
    with conn.transaction():
        yield


@dataclass(frozen=True)
class WritePosition:
    """Evidence of write activity: equal positions mean no write happened in between.

    - `write_tuples`: rows inserted, updated and deleted in this database's user tables
      (pg_stat_user_tables). Per database and blind to catalog churn, so autovacuum's ANALYZE
      (which a busy app triggers, during the window too) does not move it. Backends report
      lazily (PG15+: at transaction end at most once a second, an idle one within seconds,
      and at session end); the freeze ends the app's sessions, which flushes theirs.
    - `next_xid`: information. Every write takes a transaction id, but it is cluster-wide:
      other databases and ANALYZE move it too, so equality of it would refuse quiet sources.
    - `wal_lsn`: information only; checkpoints and other databases move it.
    """

    next_xid: int
    write_tuples: int
    wal_lsn: str

    def same_writes(self, other: WritePosition) -> bool:
        """No write between the two positions, by the counters that prove it."""
        return self.write_tuples == other.write_tuples

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["next_xid"]), int(data["write_tuples"]), str(data["wal_lsn"]))


def write_position(conn: Connection) -> WritePosition:
    """This database's write position now (stats snapshot cleared, so it is fresh)."""
    snapshot = (
        "pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        if conn.info.server_version >= 130000
        else "txid_snapshot_xmax(txid_current_snapshot())"
    )
    with own_transaction(conn):
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            sql.SQL(
                "SELECT {}, (SELECT sum(n_tup_ins + n_tup_upd + n_tup_del)"
                " FROM pg_stat_user_tables),"
                " pg_current_wal_lsn()::text"
            ).format(sql.SQL(snapshot))
        ).fetchone()
    assert row is not None
    return WritePosition(int(row[0]), int(row[1] or 0), str(row[2]))


def quiescent(
    conn: Connection, since: WritePosition, settle_seconds: float = 1.5
) -> tuple[bool, WritePosition]:
    """Whether no write happened since `since`, and the position now.

    A position equal to `since` is read again after `settle_seconds`, because write counts
    reach pg_stat_user_tables late: a write committed just before the first read may show
    only in the second.
    """
    now = write_position(conn)
    if not now.same_writes(since):
        return False, now
    time.sleep(settle_seconds)  # the settle time is the point: stats flush lazily
    later = write_position(conn)
    return later.same_writes(since), later
