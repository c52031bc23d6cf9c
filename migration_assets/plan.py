"""The plan: a reviewed, versioned description of what to move and how to slice it.

`migration-assets plan` reflects the source once and writes this file; Dagster
definitions load from it alone, so the UI loads while every database is down, and a
check fails when the source drifts away from what was reviewed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from migration_assets.db.slices import (
    RANGE_TYPES,
    WHOLE_TABLE_FINGERPRINT,
    SliceSpec,
    Strategy,
)
from migration_assets.private import write_private

PLAN_FORMAT = 1
FINGERPRINT_CHARS = 8
DEFAULT_ROWS_PER_PARTITION = 250_000
DEFAULT_MIN_PARTITIONS = 2
MIN_ROWS_TO_SPLIT = 200_000
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
    # the database gives it its values (identity, sequence or random uuid default): only a
    # key made of such columns is no patient data, and may be shown or written down
    database_assigned: bool = False


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

    @model_validator(mode="after")
    def _bounds_hold_no_row_value(self) -> TablePlan:
        """Range bounds are values of the key: written down only for a key the database
        assigns. Any other key is patient data and is sliced by hash instead."""
        if self.slicing.strategy is Strategy.RANGE and not self._assigned(self.slicing.key):
            raise ValueError(
                f"{self.schema_name}.{self.name}: range slicing writes values of "
                f"{', '.join(self.slicing.key)} into the plan, which only a key the database "
                "assigns (identity, sequence, random uuid) may be; write a new plan with "
                "`migration-assets plan`, which slices such a table by hash"
            )
        return self

    def _assigned(self, names: list[str]) -> bool:
        assigned = {c.name for c in self.columns if c.database_assigned}
        return bool(names) and all(n in assigned for n in names)

    @property
    def plain_key(self) -> bool:
        """Every key column is assigned by the database: its values are shown as they are.
        Any other key, and a key-less table's whole row, is shown only as a keyed hash."""
        return self._assigned(self.key)

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
    def hash_columns(self) -> list[tuple[str, str]]:
        """The checksum's columns with their types, which say how each is hashed."""
        return [(c.name, c.type) for c in self.columns]

    @property
    def rows_per_slice(self) -> int:
        """Estimated, at planning: what one partition run of this table moves."""
        return self.row_estimate // max(1, self.slicing.partitions)

    @property
    def binary_safe(self) -> bool:
        return all(c.binary_safe for c in self.columns if not c.generated)

    @property
    def partition_keys(self) -> list[str]:
        """ "003-1f2e3d4c": the slice's index and what it means (see SliceSpec.fingerprint)."""
        return [partition_key(i, self._spec(i).fingerprint) for i in range(self.slicing.partitions)]

    def slice(self, key: int | str) -> SliceSpec:
        """The slice a partition key (or a bare index) means under this plan; a key from an
        older plan whose slice means other rows now is refused, not silently reinterpreted."""
        index, _, fingerprint = str(key).partition("-")
        try:
            i = int(index)
        except ValueError:
            raise PlanError(f"{self.qualified}: {key!r} is not a partition key") from None
        if not 0 <= i < self.slicing.partitions:
            raise PlanError(
                f"{self.qualified} has partitions 000..{self.slicing.partitions - 1:03d}, not {key}"
            )
        spec = self._spec(i)
        if fingerprint and not spec.fingerprint.startswith(fingerprint):
            raise PlanError(
                f"{self.qualified} partition {key} belongs to an older plan: that slice now "
                f"means other rows ({partition_key(i, spec.fingerprint)})"
            )
        return spec

    def _spec(self, i: int) -> SliceSpec:
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


def partition_key(index: int, fingerprint: str) -> str:
    return f"{index:03d}-{fingerprint[:FINGERPRINT_CHARS]}"


WHOLE_TABLE_KEY = partition_key(0, WHOLE_TABLE_FINGERPRINT)  # every one-slice table's key


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
    """0600 through a fresh file: a plan names every table, key and schema of a clinic's
    database, and a reader must never see half of one."""
    data = plan.model_dump(mode="json", by_alias=True)
    return write_private(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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
