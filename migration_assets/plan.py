"""The plan: a reviewed, versioned description of what to move and how to slice it.

`migration-assets plan` reflects the source once and writes this file; Dagster
definitions load from it alone, so the UI loads while every database is down, and a
check fails when the source drifts away from what was reviewed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from migration_assets.db.catalog import Catalog, TableInfo, read_catalog
from migration_assets.db.dsn import mask_dsn
from migration_assets.db.session import Connection
from migration_assets.db.slices import (
    RANGE_TYPES,
    SliceSpec,
    Strategy,
    compute_bounds,
    range_cast_type,
)

PLAN_FORMAT = 1
DEFAULT_ROWS_PER_PARTITION = 250_000
DEFAULT_MIN_PARTITIONS = 4
MIN_ROWS_TO_SPLIT = 10_000
MAX_PARTITIONS = 512
WIDE_ROW_BYTES = 64 * 1024
# Owned by the schema step, not copied as data: Alembic writes its own revision.
SCHEMA_OWNED_TABLES = frozenset({"public.alembic_version"})


class PlanError(ValueError):
    """A plan file that cannot be used; the message says how to get a good one."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnPlan(_Model):
    name: str
    type: str
    nullable: bool = True
    generated: bool = False
    binary_safe: bool = True


class ForeignKeyPlan(_Model):
    name: str
    columns: list[str]
    ref_schema: str
    ref_table: str
    ref_columns: list[str]

    @property
    def ref_qualified(self) -> str:
        return f"{self.ref_schema}.{self.ref_table}"


# key_type is cast to in SQL (`bound::key_type`): only these spellings are accepted
KNOWN_RANGE_TYPES = frozenset(RANGE_TYPES | {"numeric"})


class SlicingPlan(_Model):
    """People edit plans: whatever reaches SQL is checked here, when the plan loads."""

    strategy: Strategy
    key: list[str]
    key_type: str | None = None
    bounds: list[str] = Field(default_factory=list)
    partitions: int = Field(default=1, ge=1)

    @field_validator("key_type")
    @classmethod
    def _known_range_type(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_RANGE_TYPES:
            raise ValueError(
                f"{value!r} is not a known range type "
                f"(one of {', '.join(sorted(KNOWN_RANGE_TYPES))})"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SlicingPlan:
        if self.strategy is Strategy.RANGE:
            if len(self.key) != 1 or self.key_type is None:
                raise ValueError("a range slicing needs one key column and its key_type")
            if len(self.bounds) != self.partitions - 1:
                raise ValueError(
                    f"a range slicing of {self.partitions} partitions needs "
                    f"{self.partitions - 1} bounds, the plan has {len(self.bounds)}"
                )
        elif self.bounds:
            raise ValueError(f"a {self.strategy.value} slicing takes no bounds")
        if self.strategy is Strategy.SINGLE and self.partitions != 1:
            raise ValueError("a single slicing has exactly 1 partition")
        return self


class TablePlan(_Model):
    schema_name: str = Field(alias="schema")
    name: str
    key: list[str]
    key_source: str
    columns: list[ColumnPlan]
    slicing: SlicingPlan
    foreign_keys: list[ForeignKeyPlan] = Field(default_factory=list)
    row_estimate: int = 0
    size_bytes: int = 0
    api_grants_allowed: bool = False
    # declaratively partitioned (relkind 'p'): read whole; any other table reads its own
    # rows only (ONLY), since inheritance children are planned as tables of their own
    partitioned: bool = False

    @model_validator(mode="after")
    def _columns_exist(self) -> TablePlan:
        names = {c.name for c in self.columns}
        used = [("key", self.key), ("slicing.key", self.slicing.key)]
        used += [(f"foreign key {fk.name}", fk.columns) for fk in self.foreign_keys]
        for where, columns in used:
            unknown = [c for c in columns if c not in names]
            if unknown:
                raise ValueError(
                    f"{self.schema_name}.{self.name}: {where} names {', '.join(map(repr, unknown))}"
                    ", which is not among the table's columns"
                )
        return self

    @property
    def key_types(self) -> list[str]:
        """The key columns' types, in key order (a surrogate key is listed plainly)."""
        types = {c.name: c.type for c in self.columns}
        return [types[k] for k in self.key]

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"

    @property
    def asset_path(self) -> list[str]:
        return [dagster_name(self.schema_name), dagster_name(self.name)]

    @property
    def copy_columns(self) -> list[str]:
        """Generated columns are left to the target to compute."""
        return [c.name for c in self.columns if not c.generated]

    @property
    def checksum_columns(self) -> list[str]:
        """Generated columns too: equal values prove the target computes them the same way."""
        return [c.name for c in self.columns]

    @property
    def binary_safe(self) -> bool:
        return all(c.binary_safe for c in self.columns if not c.generated)

    @property
    def partition_keys(self) -> list[str]:
        return [partition_key(i) for i in range(self.slicing.partitions)]

    def slice(self, index: int | str) -> SliceSpec:
        i = int(index)
        if not 0 <= i < self.slicing.partitions:
            raise PlanError(
                f"{self.qualified} has partitions 000..{self.slicing.partitions - 1:03d}, "
                f"not {index}"
            )
        return SliceSpec(
            schema=self.schema_name,
            table=self.name,
            strategy=self.slicing.strategy,
            key=tuple(self.slicing.key),
            key_type=self.slicing.key_type,
            bounds=tuple(self.slicing.bounds),
            partitions=self.slicing.partitions,
            index=i,
            partitioned=self.partitioned,
        )

    def describe(self) -> str:
        key = ", ".join(self.key) if self.key else "no key (whole-row hash)"
        return (
            f"{self.qualified}: ~{self.row_estimate:,} rows, key {key} ({self.key_source}); "
            f"{self.slicing.partitions} {self.slicing.strategy.value} slice(s)"
        )


class SequencePlan(_Model):
    schema_name: str = Field(alias="schema")
    name: str
    table: str | None = None  # qualified owner table
    column: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"


class SecurityPlan(_Model):
    data_api_schemas: list[str] = Field(default_factory=lambda: ["public"])
    api_roles: list[str] = Field(default_factory=lambda: ["anon", "authenticated"])
    harden: bool = True
    # MIGRATION_SCHEMA_MODE=existing: the schema is someone else's; lock it down only if asked
    harden_existing_schema: bool = False


class AppQuery(_Model):
    """A query the application runs, timed through the pooler by the pooler_ready check."""

    name: str
    sql: str  # one %s parameter
    sample_sql: str  # returns candidate values for that parameter


class MigrationPlan(_Model):
    format: int = PLAN_FORMAT
    created_at: str
    source: str  # masked
    source_server_version: int
    # the source's server_encoding; rows arrive as UTF-8 and are hashed as UTF-8 either way
    source_encoding: str = "UTF8"
    tables: list[TablePlan]
    sequences: list[SequencePlan] = Field(default_factory=list)
    enums: dict[str, list[str]] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    security: SecurityPlan = Field(default_factory=SecurityPlan)
    app_queries: list[AppQuery] = Field(default_factory=list)
    # shown in the UI on every asset; Dagster wants e-mail addresses or "team:<name>"
    owners: list[str] = Field(default_factory=lambda: ["team:data-platform"])

    @property
    def schemas(self) -> list[str]:
        return sorted(
            {t.schema_name for t in self.tables} | {s.schema_name for s in self.sequences}
        )

    def table(self, qualified: str) -> TablePlan:
        for table in self.tables:
            if table.qualified == qualified:
                return table
        raise PlanError(f"{qualified} is not in the plan")

    def total_partitions(self) -> int:
        return sum(t.slicing.partitions for t in self.tables)


_DAGSTER_NAME = re.compile(r"[A-Za-z0-9_]+")


def dagster_name(name: str) -> str:
    """A name Dagster accepts (^[A-Za-z0-9_]+$), stable and unique for any table name.

    Ordinary names are kept; others ("Odd Table", "Ärzte", "a.b") get their invalid
    characters replaced and a short hash of the real name, so two names never collide.
    """
    if _DAGSTER_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9_]", "_", name) + "_" + digest


def partition_key(index: int) -> str:
    return f"{index:03d}"


def load_plan(path: Path | str) -> MigrationPlan:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(
            f"plan file {path} does not exist: run `migration-assets plan --out {path}`"
        ) from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"plan file {path} is not valid JSON (line {exc.lineno})") from None
    if raw.get("format") != PLAN_FORMAT:
        raise PlanError(
            f"plan file {path} has format {raw.get('format')!r}, this version reads "
            f"{PLAN_FORMAT}: write a new one with `migration-assets plan --out {path}`"
        )
    try:
        return MigrationPlan.model_validate(raw)
    except ValidationError as exc:
        raise PlanError(f"plan file {path} is invalid: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    """One line per problem, `tables[3].slicing.key_type: why`; never pydantic's dump of
    the input (a plan holds no row values, but the lines stay short and readable)."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.get("loc", ()))
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"{path.lstrip('.')}: {message}" if path else message)
    return "; ".join(lines)


def save_plan(plan: MigrationPlan, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = plan.model_dump(mode="json", by_alias=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def partitions_for(
    rows: int, rows_per_partition: int, min_partitions: int, split_above: int = MIN_ROWS_TO_SPLIT
) -> int:
    """Small tables get one slice; big ones ~rows_per_partition each, at least min_partitions."""
    if rows < split_above:
        return 1
    wanted = max(min_partitions, math.ceil(rows / rows_per_partition))
    return min(MAX_PARTITIONS, wanted)


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
    catalog = read_catalog(conn, exact_counts_below=MIN_ROWS_TO_SPLIT)
    if schemas:
        catalog = catalog.in_schemas(schemas)
    sizing = _Sizing(rows_per_partition, min_partitions, split_above)
    tables = [
        _table_plan(conn, info, sizing)
        for name, info in sorted(catalog.tables.items())
        if name not in exclude
    ]
    skipped = dict(catalog.skipped)
    skipped.update({name: "owned by the schema step" for name in exclude if name in catalog.tables})
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
        if cast is not None:
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


def plan_summary(plan: MigrationPlan) -> list[dict[str, Any]]:
    return [
        {
            "table": t.qualified,
            "rows": t.row_estimate,
            "key": ", ".join(t.key) or "-",
            "strategy": t.slicing.strategy.value,
            "partitions": t.slicing.partitions,
        }
        for t in plan.tables
    ]
