"""Find which rows differ, by bisecting on both servers, without moving the rows.

Like data-diff tools, compare (count, checksum) per sub-range on both sides and descend
only into sub-ranges that differ. The sub-ranges are ranges of md5(key): uniform for any
key type (text, composite, uuid v7, skewed integers), so 16-way splits shrink every
differing range evenly. At the leaves, only keys and 64-bit row hashes cross the wire.
For a table without a key the "key" is the whole row, which must not be reported: those
rows are named by a short hash instead.

Each server hashes the UTF-8 bytes of its text (`TextBytes`), so a LATIN1 source and a
UTF8 target put the same row in the same sub-range.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg import sql

from migration_assets.db.checksum import row_hash
from migration_assets.db.session import Connection
from migration_assets.db.slices import SliceSpec, key_text, text_bytes

LIST_LIMIT = 20
LEAF_ROWS = 256
MAX_DEPTH = 8


@dataclass
class KeyDiff:
    """Differing rows: keys listed up to `limit`, all of them counted."""

    missing: list[str] = field(default_factory=list)  # on the source, not on the target
    extra: list[str] = field(default_factory=list)  # on the target, not on the source
    different: list[str] = field(default_factory=list)  # on both, with other values
    total: int = 0
    keyless: bool = False  # entries are row-hash labels, not keys
    scans: int = 0

    def listed(self) -> list[str]:
        return (
            [f"missing {k}" for k in self.missing]
            + [f"extra {k}" for k in self.extra]
            + [f"different {k}" for k in self.different]
        )

    def add(self, kind: str, key: str, limit: int) -> None:
        self.total += 1
        if len(self.missing) + len(self.extra) + len(self.different) < limit:
            getattr(self, kind).append(key)


Sums = dict[str, tuple[int, str]]


@dataclass(frozen=True)
class _Probe:
    spec: SliceSpec
    key: tuple[str, ...]  # columns whose text identifies a row
    columns: tuple[str, ...]  # checksum columns

    def bucket(self, conn: Connection, depth: int) -> sql.Composable:
        md5 = text_bytes(conn).md5(key_text(self.key))
        return sql.SQL("substr({}, 1, {})").format(md5, sql.Literal(depth))

    def hashed(self, conn: Connection) -> sql.Composable:
        return row_hash(self.columns, text_bytes(conn))

    def groups(self, conn: Connection, depth: int, parents: Sequence[str]) -> Sums:
        where: sql.Composable = self.spec.predicate(text_bytes(conn))
        if depth > 1:
            where = sql.SQL("{} AND {} = ANY({})").format(
                where, self.bucket(conn, depth - 1), sql.Literal(list(parents))
            )
        query = sql.SQL(
            "SELECT {b}, count(*), sum({h})::text FROM {rel} WHERE {w} GROUP BY 1"
        ).format(b=self.bucket(conn, depth), h=self.hashed(conn), rel=self.spec.own_rows, w=where)
        return {str(b): (int(n), str(s)) for b, n, s in conn.execute(query)}

    def leaf_rows(self, conn: Connection, prefixes: Sequence[str]) -> Counter[tuple[str, int]]:
        rows: Counter[tuple[str, int]] = Counter()
        by_length: dict[int, list[str]] = {}
        for prefix in prefixes:
            by_length.setdefault(len(prefix), []).append(prefix)
        for length, group in by_length.items():
            query = sql.SQL("SELECT {i}, {h} FROM {rel} WHERE {w} AND {b} = ANY({p})").format(
                i=key_text(self.key),
                h=self.hashed(conn),
                rel=self.spec.own_rows,
                w=self.spec.predicate(text_bytes(conn)),
                b=self.bucket(conn, length),
                p=sql.Literal(group),
            )
            rows.update((str(i), int(h)) for i, h in conn.execute(query))
        return rows


def localise(
    source: Connection,
    target: Connection,
    spec: SliceSpec,
    *,
    key: Sequence[str],
    checksum_columns: Sequence[str],
    copy_columns: Sequence[str],
    limit: int = LIST_LIMIT,
) -> KeyDiff:
    """Keys of the rows that differ within one slice (missing, extra or different)."""
    keyless = not key
    probe = _Probe(spec, tuple(key or copy_columns), tuple(checksum_columns))
    result = KeyDiff(keyless=keyless)
    leaves = _descend(source, target, probe, result)
    src_rows = probe.leaf_rows(source, leaves)
    tgt_rows = probe.leaf_rows(target, leaves)
    result.scans += 2
    _classify(src_rows, tgt_rows, result, limit)
    return result


def _descend(source: Connection, target: Connection, probe: _Probe, result: KeyDiff) -> list[str]:
    frontier: list[str] = [""]
    leaves: list[str] = []
    for depth in range(1, MAX_DEPTH + 1):
        src = probe.groups(source, depth, frontier)
        tgt = probe.groups(target, depth, frontier)
        result.scans += 2
        differing = sorted(b for b in src.keys() | tgt.keys() if src.get(b) != tgt.get(b))
        frontier = []
        for bucket in differing:
            rows = max(src.get(bucket, (0, ""))[0], tgt.get(bucket, (0, ""))[0])
            (leaves if rows <= LEAF_ROWS else frontier).append(bucket)
        if not frontier:
            break
    return leaves + frontier


def _classify(
    src: Counter[tuple[str, int]], tgt: Counter[tuple[str, int]], out: KeyDiff, limit: int
) -> None:
    src_only, tgt_only = src - tgt, tgt - src
    src_keys: Counter[str] = Counter()
    tgt_keys: Counter[str] = Counter()
    for (ident, _), n in src_only.items():
        src_keys[ident] += n
    for (ident, _), n in tgt_only.items():
        tgt_keys[ident] += n
    for ident in sorted(src_keys.keys() | tgt_keys.keys()):
        label = _label(ident, out.keyless)
        both = min(src_keys[ident], tgt_keys[ident])
        for _ in range(both):
            out.add("different", label, limit)
        for _ in range(src_keys[ident] - both):
            out.add("missing", label, limit)
        for _ in range(tgt_keys[ident] - both):
            out.add("extra", label, limit)


def _label(ident: str, keyless: bool) -> str:
    """A key as text; for key-less tables a hash, since the 'key' is the row itself."""
    if not keyless:
        return ident
    return "row#" + hashlib.sha256(ident.encode()).hexdigest()[:12]
