"""Reflect the source into a plan: tables, keys, slices and their bounds, FK edges.

Run once by `migration-assets plan`; the plan file it writes is then reviewed, and the
Dagster definitions load from it alone.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

from migration_assets.db.catalog import Catalog, TableInfo, count_exactly, read_catalog
from migration_assets.db.dsn import mask_dsn
from migration_assets.db.errors import MigrationError
from migration_assets.db.keyhash import database_assigned
from migration_assets.db.left_out import extension_configuration
from migration_assets.db.preflight import row_security_problems
from migration_assets.db.session import DEFAULT_TIMEOUTS, Connection, Timeouts, connect
from migration_assets.db.slices import Strategy, compute_bounds, range_cast_type
from migration_assets.plan import (
    DEFAULT_MIN_PARTITIONS,
    DEFAULT_ROWS_PER_PARTITION,
    MAX_PARTITIONS,
    MIN_ROWS_TO_SPLIT,
    SCHEMA_OWNED_TABLES,
    WIDE_ROW_BYTES,
    AppQuery,
    ColumnPlan,
    ForeignKeyPlan,
    MigrationPlan,
    SequencePlan,
    SlicingPlan,
    TablePlan,
    save_plan,
)


def partitions_for(
    rows: int, rows_per_partition: int, min_partitions: int, split_above: int = MIN_ROWS_TO_SPLIT
) -> int:
    """Small tables get one slice; big ones ~rows_per_partition each, at least min_partitions."""
    if rows < split_above:
        return 1
    wanted = max(min_partitions, math.ceil(rows / rows_per_partition))
    return min(MAX_PARTITIONS, wanted)


def write_plan(
    source_dsn: str,
    out: Path,
    *,
    rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION,
    min_partitions: int = DEFAULT_MIN_PARTITIONS,
    split_above: int = MIN_ROWS_TO_SPLIT,
    schemas: list[str] | None = None,
    app_queries: list[AppQuery] | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> MigrationPlan:
    """Reflect the source over its own connection and save the plan: `plan`, `ui --demo` and
    `demo` write theirs the same way."""
    with connect(source_dsn, setting="SOURCE_DATABASE_URL", timeouts=timeouts) as conn:
        plan = build_plan(
            conn,
            source_dsn=source_dsn,
            rows_per_partition=rows_per_partition,
            min_partitions=min_partitions,
            split_above=split_above,
            schemas=schemas,
        )
    if app_queries:
        plan = plan.model_copy(update={"app_queries": app_queries})
    save_plan(plan, out)
    return plan


def build_plan(
    conn: Connection,
    *,
    source_dsn: str,
    rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION,
    min_partitions: int = DEFAULT_MIN_PARTITIONS,
    split_above: int = MIN_ROWS_TO_SPLIT,
    schemas: list[str] | None = None,
    exclude: frozenset[str] = SCHEMA_OWNED_TABLES,
) -> MigrationPlan:
    """Reflect the source into a plan; no table is silently dropped (see `skipped`)."""
    catalog = read_catalog(conn)
    if schemas:
        catalog = catalog.in_schemas(schemas)
    sizing = _Sizing(rows_per_partition, min_partitions, split_above)
    planned = [info for name, info in sorted(catalog.tables.items()) if name not in exclude]
    _refuse_hidden_rows(conn, planned)
    count_exactly(conn, planned, below=MIN_ROWS_TO_SPLIT)
    tables = [_table_plan(conn, info, sizing) for info in planned]
    skipped = dict(catalog.skipped)
    skipped.update({name: "owned by the schema step" for name in exclude if name in catalog.tables})
    skipped.update(extension_configuration(conn))  # in any schema: the rows are the database's
    return MigrationPlan(
        app_queries=_lookup_queries(tables),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source=mask_dsn(source_dsn),
        source_server_version=catalog.server_version,
        source_encoding=_server_encoding(conn),
        tables=tables,
        sequences=_sequence_plans(catalog),
        enums={k: list(v) for k, v in catalog.enums.items()},
        skipped=skipped,
    )


def _refuse_hidden_rows(conn: Connection, tables: list[TableInfo]) -> None:
    """Slicing reads each table's keys: name every table whose policies hide rows from this
    role at once, rather than fail on the first one PostgreSQL refuses."""
    problems = row_security_problems(conn, [(t.schema, t.name) for t in tables])
    if problems:
        raise MigrationError(
            "nothing was planned; fix these first:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _server_encoding(conn: Connection) -> str:
    row = conn.execute("SHOW server_encoding").fetchone()
    return str(row[0]) if row else "UTF8"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lookup_queries(tables: list[TablePlan], count: int = 3) -> list[AppQuery]:
    """By default the app's reads are 'fetch one row by key' on the largest tables; edit the
    plan to put the application's real queries here."""
    keyed = [t for t in tables if len(t.key) == 1]
    keyed.sort(key=lambda t: -t.row_estimate)
    queries = []
    for t in keyed[:count]:
        rel, key = f"{_quote(t.schema_name)}.{_quote(t.name)}", _quote(t.key[0])
        wide = t.size_bytes > WIDE_ROW_BYTES * max(1, t.row_estimate)
        queries.append(
            AppQuery(  # rows of megabytes would time the network, not the database
                name=f"{t.qualified} by key" + (" (key only: wide rows)" if wide else ""),
                sql=f"SELECT {key if wide else '*'} FROM {rel} WHERE {key} = %s",
                sample_sql=f"SELECT {key} FROM {rel} LIMIT 50",
            )
        )
    return queries


def _sequence_plans(catalog: Catalog) -> list[SequencePlan]:
    return [
        SequencePlan(
            schema=s.schema,
            name=s.name,
            table=f"{s.owner_schema}.{s.owner_table}" if s.owner_table else None,
            column=s.owner_column,
        )
        for s in catalog.sequences
    ]


@dataclass(frozen=True)
class _Sizing:
    rows_per_partition: int
    min_partitions: int
    split_above: int

    def partitions(self, rows: int) -> int:
        return partitions_for(rows, self.rows_per_partition, self.min_partitions, self.split_above)


def _table_plan(conn: Connection, info: TableInfo, sizing: _Sizing) -> TablePlan:
    columns = [
        ColumnPlan(
            name=c.name,
            type=c.type,
            nullable=not c.not_null,
            generated=c.generated,
            binary_safe=c.binary_safe,
            database_assigned=database_assigned(c.identity, c.default),
        )
        for c in info.columns
    ]
    return TablePlan(
        schema=info.schema,
        name=info.name,
        key=list(info.primary_key),
        key_source=info.key_source,
        columns=columns,
        slicing=_slicing(conn, info, sizing.partitions(info.reltuples)),
        foreign_keys=[
            ForeignKeyPlan(
                name=fk.name,
                columns=list(fk.columns),
                ref_schema=fk.ref_schema,
                ref_table=fk.ref_table,
                ref_columns=list(fk.ref_columns),
            )
            for fk in info.foreign_keys
        ],
        row_estimate=info.reltuples,
        size_bytes=info.size_bytes,
        partitioned=info.kind == "p",
    )


def _slicing(conn: Connection, info: TableInfo, wanted: int) -> SlicingPlan:
    copyable = [c.name for c in info.columns if not c.generated]
    if wanted == 1:
        return SlicingPlan(strategy=Strategy.SINGLE, key=list(info.primary_key or copyable))
    if len(info.primary_key) == 1:
        column = next(c for c in info.columns if c.name == info.primary_key[0])
        cast = range_cast_type(column.type)
        # bounds are key values, written into the plan: only a key the database assigns
        if cast is not None and database_assigned(column.identity, column.default):
            bounds = compute_bounds(
                conn,
                info.schema,
                info.name,
                column.name,
                wanted,
                rows=info.reltuples,
                partitioned=info.kind == "p",
            )
            return SlicingPlan(
                strategy=Strategy.RANGE,
                key=[column.name],
                key_type=cast,
                bounds=bounds,
                partitions=len(bounds) + 1,
            )
    return SlicingPlan(
        strategy=Strategy.HASH, key=list(info.primary_key or copyable), partitions=wanted
    )
