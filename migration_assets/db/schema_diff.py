"""How the target's schema differs from the source's (or the plan's), named for people.

Whatever way the schema reached the target (MIGRATION_SCHEMA_MODE), this comparison decides
whether data may flow, and after the load whether every index came back valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from migration_assets.db.catalog import Catalog, PartitionIndex, TableInfo


@dataclass(frozen=True)
class Difference:
    """One way the target's schema differs from the source's (or the plan's)."""

    subject: str  # qualified table, type or sequence
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


# ---------------------------------------------------------------- comparison


def compare_catalogs(
    source: Catalog, target: Catalog, tables: Iterable[str], enums: Iterable[str] = ()
) -> list[Difference]:
    """Every difference that matters to the data or the application, named."""
    found: list[Difference] = []
    for name in tables:
        src = source.tables.get(name)
        tgt = target.tables.get(name)
        if src is None:
            found.append(Difference(name, "missing on the source"))
        elif tgt is None:
            found.append(Difference(name, "table missing on the target"))
        else:
            found.extend(_compare_table(src, tgt))
    for enum in enums:
        src_labels = source.enums.get(enum)
        tgt_labels = target.enums.get(enum)
        if tgt_labels is None:
            found.append(Difference(enum, "enum type missing on the target"))
        elif src_labels is not None and src_labels != tgt_labels:
            found.append(
                Difference(
                    enum,
                    f"enum labels {list(src_labels)} on the source, "
                    f"{list(tgt_labels)} on the target",
                )
            )
    return found


def _compare_table(src: TableInfo, tgt: TableInfo) -> list[Difference]:
    name = src.qualified
    found: list[Difference] = []
    src_cols = {c.name: c for c in src.columns}
    tgt_cols = {c.name: c for c in tgt.columns}
    for col, s in src_cols.items():
        t = tgt_cols.get(col)
        if t is None:
            found.append(Difference(name, f"column {col} missing on the target"))
            continue
        if s.type != t.type:
            found.append(
                Difference(name, f"column {col} is {s.type} on the source, {t.type} on the target")
            )
        if s.not_null != t.not_null:
            found.append(
                Difference(
                    name,
                    f"column {col} is {_null(s.not_null)} on the source, "
                    f"{_null(t.not_null)} on the target",
                )
            )
        if s.generated != t.generated:
            found.append(Difference(name, f"column {col} is generated on one side only"))
    for col, t in tgt_cols.items():
        if col not in src_cols:
            extra = "a NOT NULL column" if t.not_null and t.default is None else "a column"
            found.append(Difference(name, f"{extra} {col} exists only on the target"))
    found.extend(_compare_named(name, "constraint", src.constraints, tgt.constraints))
    found.extend(_compare_named(name, "index", src.indexes, tgt.indexes))
    found.extend(_compare_validity(src, tgt))
    found.extend(_compare_partition_indexes(name, src.partition_indexes, tgt.partition_indexes))
    return found


def _compare_validity(src: TableInfo, tgt: TableInfo) -> list[Difference]:
    """An invalid index is never used and, if unique, enforces nothing: never a match."""
    return [
        Difference(src.qualified, _invalid(f"index {index}", index in src.invalid_indexes))
        for index in sorted(tgt.invalid_indexes)
        if index in src.indexes
    ]


def _invalid(what: str, on_source_too: bool) -> str:
    if on_source_too:
        return f"{what} is invalid on the target, as on the source: rebuild or drop it there"
    return (
        f"{what} is invalid on the target: drop it and create it again (on a partitioned "
        "table without ON ONLY, so that every partition gets its index attached)"
    )


def _compare_partition_indexes(
    table: str, src: list[PartitionIndex], tgt: list[PartitionIndex]
) -> list[Difference]:
    """Every partition has each index the source's has, valid, defined alike.

    Matched by partition and by the table's index they are attached to (or their own name,
    for an index of one partition alone), not by their own names: PostgreSQL chooses those
    when an index is created through the parent, so they differ between a schema built by
    migrations and one restored from a dump without meaning anything.
    """
    theirs = {(p.partition, p.index): p for p in tgt}
    ours = {(p.partition, p.index) for p in src}
    found: list[Difference] = []
    for index in src:
        other = theirs.get((index.partition, index.index))
        where = f"partition {index.partition} index {index.index}"
        if other is None:
            found.append(Difference(table, f"{where} missing on the target"))
        elif other.definition != index.definition:
            found.append(
                Difference(
                    table,
                    f"{where} differs: {index.definition!r} on the source, "
                    f"{other.definition!r} on the target",
                )
            )
        elif not other.valid:
            found.append(Difference(table, _invalid(where, not index.valid)))
    found.extend(
        Difference(table, f"partition {p.partition} index {p.index} exists only on the target")
        for p in tgt
        if (p.partition, p.index) not in ours
    )
    return found


def _null(not_null: bool) -> str:
    return "NOT NULL" if not_null else "nullable"


def _compare_named(
    table: str, kind: str, src: dict[str, str], tgt: dict[str, str]
) -> list[Difference]:
    found = []
    for name, definition in src.items():
        if name not in tgt:
            found.append(Difference(table, f"{kind} {name} missing on the target"))
        elif tgt[name] != definition:
            found.append(
                Difference(
                    table,
                    f"{kind} {name} differs: {definition!r} on the "
                    f"source, {tgt[name]!r} on the target",
                )
            )
    found.extend(
        Difference(table, f"{kind} {name} exists only on the target")
        for name in tgt
        if name not in src
    )
    return found


def without_indexes(catalog: Catalog, indexes: Iterable[tuple[str, str]]) -> Catalog:
    """The catalog minus some (table, index) pairs and their partitions' indexes: what the
    target should hold while those indexes are deferred for a load."""
    drop: dict[str, set[str]] = {}
    for table, index in indexes:
        drop.setdefault(table, set()).add(index)
    tables = {}
    for name, info in catalog.tables.items():
        gone = drop.get(name, set())
        tables[name] = (
            dataclasses.replace(
                info,
                indexes={k: v for k, v in info.indexes.items() if k not in gone},
                partition_indexes=[p for p in info.partition_indexes if p.index not in gone],
            )
            if gone
            else info
        )
    return dataclasses.replace(catalog, tables=tables)


def without_constraints(
    catalog: Catalog, constraints: Iterable[tuple[str, str, str, str | None]]
) -> Catalog:
    """The catalog minus some (table, name, definition, NOT NULL column) constraints: what
    the target should hold while those are dropped for a load. Only a constraint defined as
    recorded is left out (one VALID on the source stays, and differs), and a NOT NULL
    constraint's column is nullable meanwhile."""
    drop: dict[str, dict[str, tuple[str, str | None]]] = {}
    for table, name, definition, column in constraints:
        drop.setdefault(table, {})[name] = (definition, column)
    tables = {}
    for name, info in catalog.tables.items():
        gone = {
            k: column
            for k, (definition, column) in drop.get(name, {}).items()
            if info.constraints.get(k) == definition
        }
        nullable = {column for column in gone.values() if column}
        tables[name] = (
            dataclasses.replace(
                info,
                constraints={k: v for k, v in info.constraints.items() if k not in gone},
                columns=[
                    dataclasses.replace(c, not_null=False) if c.name in nullable else c
                    for c in info.columns
                ],
            )
            if gone
            else info
        )
    return dataclasses.replace(catalog, tables=tables)


def plan_drift(
    planned: dict[str, list[tuple[str, str]]],
    source: Catalog,
    schemas: Iterable[str],
    ignore: Iterable[str] = (),
) -> list[Difference]:
    """Tables or columns that changed on the source since the plan was reviewed."""
    ignored = set(ignore)
    found: list[Difference] = []
    current = source.in_schemas(schemas)
    for name, columns in planned.items():
        info = current.tables.get(name)
        if info is None:
            found.append(Difference(name, "in the plan but no longer on the source"))
            continue
        now = [(c.name, c.type) for c in info.columns]
        if now != columns:
            found.append(
                Difference(name, "columns changed on the source since the plan was written")
            )
    for name in current.tables:
        if name not in planned and name not in ignored:
            found.append(Difference(name, "on the source but not in the plan"))
    return found
