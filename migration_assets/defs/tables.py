"""One partitioned asset per table: materializing a partition makes that slice of the target
equal to the source's, verified on both servers before COMMIT.

The partition key is the slice's index and fingerprint ("003-1f2e3d4c"): a re-planned slice
is a new key, so the UI, `status` and `migrate` all see it as missing, and an unchanged one
keeps its status. A slice that already equals the source's is left untouched, so "Materialize
all" again is a cheap resync; `force` (run config) re-copies regardless.
"""

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
from dagster import AssetExecutionContext

from migration_assets.db.copy import (
    CopyTarget,
    SliceMismatchError,
    SliceResult,
    copy_slice,
    describe_result,
)
from migration_assets.db.errors import MigrationError
from migration_assets.defs.failures import as_failure
from migration_assets.defs.keys import (
    KINDS,
    SCHEMA_KEY,
    SLICE_CHECKSUM,
    SLICE_ROW_COUNT,
    TARGET_POOL,
    VERIFY_JOB,
)
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.plan import TablePlan, dagster_name


class SliceConfig(dg.Config):
    """Set in the launchpad (or by `migrate --force`) to re-copy an equal slice."""

    force: bool = False


def table_description(table: TablePlan) -> str:
    refs = sorted({fk.ref_qualified for fk in table.foreign_keys})
    lines = [
        table.describe(),
        "",
        f"Columns: {len(table.columns)}; size on the source at planning: "
        f"{table.size_bytes / 1e6:.1f} MB.",
    ]
    if refs:
        lines.append("References: " + ", ".join(refs) + ".")
    lines.append(
        "Materializing a partition compares that slice on both servers; unless equal, it "
        "deletes the slice on the target and copies it again in one transaction, then "
        "verifies row count and checksum on both sides before COMMIT."
    )
    if table.slicing.partitions == 1:
        lines.append(
            "One slice: a run that materializes it runs its whole-table checks right after "
            "it, before the finishing steps of the same run."
        )
    lines.append(
        f"After a backfill, launch the job {VERIFY_JOB} (Jobs): it runs every whole-table "
        "check of every table and writes the audit report, in one click."
    )
    return "\n".join(lines)


def _column_schema(table: TablePlan) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                description="generated on the target" if c.generated else None,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in table.columns
        ]
    )


def _partitioned_check(
    name: str, key: dg.AssetKey, partitions: dg.PartitionsDefinition, text: str
) -> dg.AssetCheckSpec:
    """The one preview API we use on purpose (see build.py): only its own warning is muted,
    here, so any other preview or deprecation warning still reaches the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=key, partitions_def=partitions, description=text)


def build_table_asset(*, table: TablePlan, owners: list[str] | None = None) -> dg.AssetsDefinition:
    key = dg.AssetKey(table.asset_path)
    partitions = dg.StaticPartitionsDefinition(table.partition_keys)
    checks = [
        _partitioned_check(name, key, partitions, text)
        for name, text in (
            (SLICE_ROW_COUNT, "Rows in this slice equal on source and target."),
            (SLICE_CHECKSUM, "Checksum of this slice's rows equal on source and target."),
        )
    ]

    @dg.asset(
        key=key,
        partitions_def=partitions,
        deps=[SCHEMA_KEY],
        group_name=f"tables_{dagster_name(table.schema_name)}",
        kinds=KINDS,
        owners=owners,
        description=table_description(table),
        check_specs=checks,
        pool=TARGET_POOL,
        metadata={
            "dagster/column_schema": _column_schema(table),
            "dagster/table_name": table.qualified,
            "key": ", ".join(table.key) or "none",
            "slice_strategy": table.slicing.strategy.value,
            "partitions": table.slicing.partitions,
            "row_estimate": table.row_estimate,
            "references": ", ".join(sorted({fk.ref_qualified for fk in table.foreign_keys}))
            or "none",
        },
        name=None,
    )
    def _table(
        context: AssetExecutionContext,
        config: SliceConfig,
        source: SourceDatabase,
        target: TargetDatabase,
    ) -> Iterator[Any]:
        pk = context.partition_key
        outcome = materialize_slice(table, pk, source, target, force=config.force)
        if outcome.failure is not None:  # the verdict is evidence too: record it, then fail
            yield from outcome.checks
            raise outcome.failure
        if not outcome.result.copied:
            context.log.info(f"{table.qualified} {pk}: already equal, kept")
        yield dg.MaterializeResult(metadata=outcome.metadata)
        yield from outcome.checks

    return _table


@dataclass(frozen=True)
class SliceOutcome:
    """What materializing one partition found: the copy's result and, when the slice did not
    verify, the failure to raise once its checks are recorded."""

    result: SliceResult
    failure: dg.Failure | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        """The partition's materialization metadata: numbers, never row values."""
        return {"dagster/row_count": self.result.target.rows, **describe_result(self.result)}

    @property
    def checks(self) -> list[dg.AssetCheckResult]:
        """The slice's own checks (`slice_row_count`, `slice_checksum`)."""
        source, target = self.result.source, self.result.target
        return [
            dg.AssetCheckResult(
                check_name=SLICE_ROW_COUNT,
                passed=source.rows == target.rows,
                metadata={"source_rows": source.rows, "target_rows": target.rows},
            ),
            dg.AssetCheckResult(
                check_name=SLICE_CHECKSUM,
                passed=source.digest == target.digest,
                metadata={"source_checksum": source.digest, "target_checksum": target.digest},
            ),
        ]


def materialize_slice(
    table: TablePlan,
    partition_key: str,
    source: SourceDatabase,
    target: TargetDatabase,
    *,
    force: bool = False,
) -> SliceOutcome:
    """Make one slice of the target equal to the source's, verified on both servers: the
    partition's step and the cutover's final delta both do it through here, so a slice the
    cutover re-copies is recorded exactly as a partition run records it. A database error
    leaves as a `dg.Failure` without row values; a slice that did not verify comes back with
    its failure, for the caller to record its checks first."""
    spec = table.slice(partition_key)
    job = CopyTarget(spec, table.copy_columns, table.hash_columns, table.binary_safe)
    try:
        with source.lend() as src, target.lend() as tgt:  # a packed run's steps share them
            limit = target.statement_timeout
            return SliceOutcome(copy_slice(src, tgt, job, force=force, statement_timeout=limit))
    except SliceMismatchError as exc:
        failed = SliceOutcome(exc.result)
        return SliceOutcome(exc.result, dg.Failure(description=str(exc), metadata=failed.metadata))
    except (MigrationError, psycopg.Error) as exc:
        with as_failure(table.qualified):
            raise exc
    raise AssertionError("as_failure always raises")  # for the type checker
