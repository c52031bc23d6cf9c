"""Copy one slice source -> target in one target transaction, verified before COMMIT.

DELETE the slice, COPY it again, count and checksum it on both sides (the source in the
REPEATABLE READ snapshot it was read from, the target before COMMIT), and roll back on
any difference. A retry never duplicates; a crash leaves the slice as it was.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.copy import QueuedLibpqWriter

from migration_assets.db.checksum import Checksum, RowHash, slice_checksum
from migration_assets.db.constraints import held_for_load, put_back
from migration_assets.db.errors import MigrationError, raised_in_function, safe_message
from migration_assets.db.session import Connection, server_major
from migration_assets.db.slices import SliceSpec, text_bytes

CHUNK_BYTES = 64 * 1024
QUEUED_CHUNKS = 64  # 4 MB in flight per copy: enough to overlap reading and writing


class _BoundedWriter(QueuedLibpqWriter):
    """psycopg's queued writer holds up to 1,024 chunks: with a slow target that is 64 MB
    per worker. A short queue keeps the overlap and bounds the memory."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        super().__init__(cursor)
        self._queue = type(self._queue)(maxsize=QUEUED_CHUNKS)  # psycopg's own Queue class


LOCK_NAMESPACE = 0x6D61  # "ma": keeps our advisory locks apart from the application's


@dataclass(frozen=True)
class SliceResult:
    rows: int
    bytes: int
    seconds: float
    deleted: int
    binary: bool
    source: Checksum
    target: Checksum
    copied: bool = True  # False: the target's slice already equalled the source's
    row_hash: str = "text"  # how both checksums hashed a row (RowHash.method)

    @property
    def verified(self) -> bool:
        return self.source == self.target

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float(self.rows)


class SliceMismatchError(MigrationError):
    """The target slice differs from the source after the copy; nothing was committed."""

    def __init__(self, spec: SliceSpec, result: SliceResult, cause: str = "") -> None:
        self.result = result
        super().__init__(
            f"{spec.schema}.{spec.table} slice {spec.index:03d} did not verify: source "
            f"{result.source}, target {result.target}. The copy was rolled back; the slice "
            "is as it was. "
            + (
                cause
                or "If the source is being written to, this is expected: re-run the partition "
                "(or `migration-assets migrate`) once writes stop."
            )
        )


class SliceBusyError(MigrationError):
    """Another run holds this slice; two writers must never interleave on one slice."""


@dataclass(frozen=True)
class CopyTarget:
    spec: SliceSpec
    copy_columns: list[str]
    hash_columns: list[tuple[str, str]]  # the checksum's (name, type)
    binary_safe: bool


SLICE_LOCK_WAIT = "30s"  # long enough for a vanished client's transaction to be ended


def slice_lock(spec: SliceSpec) -> sql.Composed:
    return sql.SQL("SELECT pg_advisory_xact_lock({}, hashtext({}))").format(
        sql.Literal(LOCK_NAMESPACE), sql.Literal(f"{spec.schema}.{spec.table}/{spec.index}")
    )


def use_binary(source: Connection, target: Connection, job: CopyTarget) -> bool:
    """Binary COPY only between equal major versions and for OID-free column types."""
    return job.binary_safe and server_major(source) == server_major(target)


def copy_slice(
    source: Connection,
    target: Connection,
    job: CopyTarget,
    *,
    force: bool = False,
    statement_timeout: str | None = None,
) -> SliceResult:
    """Make the target's slice equal the source's, verified; raises SliceMismatchError (after
    rollback) when they differ after the copy.

    A slice that already holds rows is compared first (both checksums, the source's in the
    snapshot a copy would read): an equal one is left untouched, so materializing every
    partition again (a UI "Materialize all", `migrate --resync`, the cutover's final delta)
    moves only what changed. `force` re-copies regardless. `statement_timeout`, the limit
    both sessions were given, lets a cancelled statement's message name it.
    """
    binary = use_binary(source, target, job)
    rows_hash = RowHash.between(source, target, job.hash_columns)
    started = time.perf_counter()
    source.isolation_level = IsolationLevel.REPEATABLE_READ
    source.read_only = True
    try:
        with source.transaction(), target.transaction():
            _prepare_target(target, job.spec)
            src_sum = None
            if not force:
                before = slice_checksum(target, job.spec, rows_hash)
                if before.rows:
                    src_sum = slice_checksum(source, job.spec, rows_hash)
                    if src_sum == before:
                        return _unchanged(binary, started, before, rows_hash.method)
            held = held_for_load(target, job.spec.schema, job.spec.table)
            deleted = _delete_slice(target, job.spec)
            rows, nbytes = _stream(source, target, job, binary)
            put_back(target, held)
            src_sum, tgt_sum = _checksums(source, target, job.spec, rows_hash, src_sum)
            result = SliceResult(
                rows=rows,
                bytes=nbytes,
                seconds=time.perf_counter() - started,
                deleted=deleted,
                binary=binary,
                source=src_sum,
                target=tgt_sum,
                row_hash=rows_hash.method,
            )
            if not result.verified:
                raise SliceMismatchError(job.spec, result)
    except SliceMismatchError as exc:
        raise SliceMismatchError(job.spec, exc.result, _trigger_cause(target, job.spec)) from None
    except psycopg.Error as exc:
        explained = _explain(exc, job.spec, statement_timeout)
        if isinstance(exc, psycopg.OperationalError):  # no target to ask
            raise explained from None
        cause = _trigger_cause(target, job.spec)
        raise (MigrationError(f"{explained} {cause}") if cause else explained) from None
    finally:
        source.read_only = False
        source.isolation_level = None
    return result


def _checksums(
    source: Connection,
    target: Connection,
    spec: SliceSpec,
    rows_hash: RowHash,
    known: Checksum | None,
) -> tuple[Checksum, Checksum]:
    """Both sides' checksums of the slice, computed by the two servers at once (each scans
    and hashes its own rows; this process only waits): the copy's verification costs the
    slower of the two, not their sum. `known`: the source's, already taken in this snapshot."""
    if known is not None:
        return known, slice_checksum(target, spec, rows_hash)
    with ThreadPoolExecutor(max_workers=1) as pool:
        src = pool.submit(slice_checksum, source, spec, rows_hash)
        tgt = slice_checksum(target, spec, rows_hash)
        return src.result(), tgt


def _unchanged(binary: bool, started: float, both: Checksum, row_hash: str) -> SliceResult:
    return SliceResult(
        rows=0,
        bytes=0,
        seconds=time.perf_counter() - started,
        deleted=0,
        binary=binary,
        source=both,
        target=both,
        copied=False,
        row_hash=row_hash,
    )


def _prepare_target(target: Connection, spec: SliceSpec) -> None:
    """Take the slice's lock, waiting a little: after a network cut the old transaction may
    hold it until the server notices its client is gone."""
    target.execute(f"SET LOCAL lock_timeout = '{SLICE_LOCK_WAIT}'")
    try:
        target.execute(slice_lock(spec))
    except psycopg.errors.LockNotAvailable:
        raise SliceBusyError(
            f"{spec.schema}.{spec.table} slice {spec.index:03d} is being written by another "
            f"run (waited {SLICE_LOCK_WAIT}); wait for it to finish (see the Dagster UI) and "
            "retry."
        ) from None
    target.execute("SET LOCAL lock_timeout = 0")
    # Triggers (updated_at, append-only guards) and FK checks must not touch migrated rows;
    # integrity is proven afterwards by the FK orphan check.
    target.execute("SET LOCAL session_replication_role = replica")


def _delete_slice(target: Connection, spec: SliceSpec) -> int:
    """The slice's own rows only: a parent's DELETE would also empty its children."""
    cur = target.execute(
        sql.SQL("DELETE FROM {} WHERE {}").format(spec.own_rows, spec.predicate(text_bytes(target)))
    )
    return max(cur.rowcount, 0)


def _stream(
    source: Connection, target: Connection, job: CopyTarget, binary: bool
) -> tuple[int, int]:
    """Rows flow in chunks; the whole slice is never held in memory. The source is read
    through a SELECT (own rows: a parent's children are tables of their own), and arrives
    as UTF-8 whatever the source's encoding (sessions pin client_encoding)."""
    spec = job.spec
    fmt = sql.SQL("(FORMAT binary)" if binary else "(FORMAT text)")
    columns = sql.SQL(", ").join(map(sql.Identifier, job.copy_columns))
    copy_out = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT {}").format(
        columns, spec.own_rows, spec.predicate(text_bytes(source)), fmt
    )
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN {}").format(spec.relation, columns, fmt)
    nbytes = 0
    with source.cursor() as scur, target.cursor() as tcur:
        with scur.copy(copy_out) as out, tcur.copy(copy_in, writer=_BoundedWriter(tcur)) as sink:
            buffer = bytearray()
            for chunk in out:
                buffer += chunk
                if len(buffer) >= CHUNK_BYTES:
                    sink.write(bytes(buffer))
                    nbytes += len(buffer)
                    buffer.clear()
            if buffer:
                sink.write(bytes(buffer))
                nbytes += len(buffer)
        rows = max(tcur.rowcount, 0)
    return rows, nbytes


_PRIVILEGE_HINT = {
    "session_replication_role": (
        "the migration role may not set session_replication_role. As a superuser run: "
        "GRANT SET ON PARAMETER session_replication_role TO <migration role>; "
        "(PostgreSQL 15+; Supabase's postgres role already has it)"
    ),
}


def _explain(exc: psycopg.Error, spec: SliceSpec, statement_timeout: str | None) -> MigrationError:
    """A database error as a message with no row values and, where we know one, a fix."""
    message = safe_message(exc, statement_timeout=statement_timeout)
    where = f"{spec.schema}.{spec.table} slice {spec.index:03d}"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) and not raised_in_function(exc):
        for needle, hint in _PRIVILEGE_HINT.items():
            if needle in message:
                return MigrationError(f"{where}: {hint}. [{message}]")
        return MigrationError(
            f"{where}: the migration role lacks a privilege it needs (SELECT on the source; "
            f"INSERT and DELETE on the target table). Grant it and retry. [{message}]"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):  # an OperationalError, yet not a loss
        return MigrationError(f"{where}: nothing of this slice was committed. [{message}]")
    if isinstance(exc, psycopg.OperationalError):
        return MigrationError(
            f"{where}: the connection was lost mid-copy; nothing of this slice was committed. "
            f"Re-run it (`migration-assets migrate` picks up failed slices). [{message}]"
        )
    return MigrationError(f"{where}: {message}")


# Triggers that fire while rows load: the copy sets session_replication_role = replica, which
# holds back ordinary (ORIGIN) triggers but not ALWAYS ones, and wakes REPLICA ones. Those of a
# partition fire for rows routed into it, so a partition counts for its table.
_LOAD_TRIGGERS = """
SELECT tr.tgname, tr.tgenabled::text, c.oid <> r.oid, n.nspname, c.relname
FROM pg_class r
JOIN pg_class c ON c.oid = r.oid OR pg_partition_root(c.oid) = r.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_trigger tr ON tr.tgrelid = c.oid
WHERE r.oid = %s::regclass AND NOT tr.tgisinternal AND tr.tgenabled IN ('A', 'R')
ORDER BY c.relname, tr.tgname
"""


def load_triggers(target: Connection, spec: SliceSpec) -> list[str]:
    """The table's triggers that fire as the copy loads rows, each with the ALTER TABLE that
    holds it back. Asked only once a slice failed: such a trigger that rewrites rows, or adds
    some elsewhere, fails the slice on every retry, and the failure alone does not say why."""
    rows = target.execute(_LOAD_TRIGGERS, [spec.relation.as_string(target)]).fetchall()
    target.rollback()
    found = []
    for trigger, mode, on_partition, schema, relation in rows:
        always = mode == "A"
        name = f"{schema}.{relation}" if on_partition else f"{spec.schema}.{spec.table}"
        fix = sql.SQL("ALTER TABLE {} {} TRIGGER {};").format(
            sql.Identifier(schema, relation),
            sql.SQL("ENABLE" if always else "DISABLE"),
            sql.Identifier(trigger),
        )
        found.append(
            f"trigger {trigger} on {name} is ENABLE {'ALWAYS' if always else 'REPLICA'}, so it "
            "fires while rows load (the copy sets session_replication_role = replica, which "
            "holds ordinary triggers back) and may change them or add rows elsewhere: for the "
            f"migration, run on the target {fix.as_string(target)} and set it back after cutover"
        )
    return found


def _trigger_cause(target: Connection, spec: SliceSpec) -> str:
    """The table's load-firing triggers as a failed slice's likely cause; "" if none."""
    try:
        causes = load_triggers(target, spec)
    except psycopg.Error:  # the target went away: the error says so already
        return ""
    return ("Likely cause: " + "; ".join(causes) + ".") if causes else ""


def describe_result(result: SliceResult) -> dict[str, Any]:
    """What a person (and the audit report) needs of a slice: numbers, never row values."""
    return {
        "rows": result.rows,
        "bytes": result.bytes,
        "seconds": round(result.seconds, 3),
        "rows_per_second": round(result.rows_per_second, 1),
        "deleted_before_copy": result.deleted,
        "copy_format": "binary" if result.binary else "text",
        "source_rows": result.source.rows,
        "target_rows": result.target.rows,
        "source_checksum": result.source.digest,
        "target_checksum": result.target.digest,
        "row_hash": result.row_hash,
        "copied": result.copied,
    }
