"""Table-level asset checks: re-runnable at any time, from the UI or `verify`, no copying.

One subsettable multi-check per table, so the UI can run a single check while a full
`verify` shares one scan between the row count and the checksum.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import psycopg
from dagster import AssetCheckExecutionContext

from migration_assets.db.audit import orphan_rows, security_posture
from migration_assets.db.bisect import KeyDiff, localise
from migration_assets.db.compare import TableComparison, compare_table
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.db.exposure import Exposure, describe
from migration_assets.db.keyhash import (
    KEY_PREFIX,
    ROW_PREFIX,
    label,
    unwrap_record,
)
from migration_assets.defs.keys import (
    FOREIGN_KEYS_INTACT,
    NO_API_GRANTS,
    RLS_ENABLED,
    TABLE_CHECKSUM,
    TABLE_ROW_COUNT,
    TARGET_POOL,
    VERIFY_JOB,
)
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.plan import ForeignKeyPlan, MigrationPlan, TablePlan, dagster_name

KEYS_LISTED = 20
# Dagster's run tags of a partition run and of a partition-range run (a UI backfill's), as
# the UI shows them: documented strings, not an import of Dagster's internal constants.
PARTITION_TAG = "dagster/partition"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

_DESCRIPTIONS = {
    TABLE_ROW_COUNT: "Row count of the whole table equal on source and target.",
    TABLE_CHECKSUM: "Checksum of the whole table equal; on a difference, the slices and up to "
    "20 keys that differ.",
    FOREIGN_KEYS_INTACT: (
        "No orphan rows on the target for any foreign key of this table, beyond those the "
        "source has too (a NOT VALID key there)."
    ),
    RLS_ENABLED: "Row level security is on (the table is in a schema the Data API exposes).",
    NO_API_GRANTS: "anon/authenticated hold no privileges on the table (unless the plan "
    "allows it).",
}


def check_names(table: TablePlan, plan: MigrationPlan) -> list[str]:
    """The table-level checks a table gets (security ones only where the Data API looks)."""
    names = [TABLE_ROW_COUNT, TABLE_CHECKSUM, FOREIGN_KEYS_INTACT]
    if table.schema_name in plan.security.data_api_schemas:
        names += [RLS_ENABLED, NO_API_GRANTS]
    return names


def build_table_checks(*, table: TablePlan, plan: MigrationPlan) -> dg.AssetChecksDefinition:
    key = dg.AssetKey(table.asset_path)
    # Blocking: in a run that also holds the finishing steps (the UI's one run of a graph
    # whose tables are each one slice), indexes, sequences and the report wait for these
    # verdicts, so the report that run writes has them; on a failed one they do not run.
    specs = [
        dg.AssetCheckSpec(name, asset=key, description=_DESCRIPTIONS[name], blocking=True)
        for name in check_names(table, plan)
    ]

    @dg.multi_asset_check(
        specs=specs,
        can_subset=True,
        pool=TARGET_POOL,
        name=f"{dagster_name(table.schema_name)}__{dagster_name(table.name)}__checks",
        description=f"Proof for {table.qualified}: data, integrity and security on the target.",
    )
    def _checks(
        context: AssetCheckExecutionContext, source: SourceDatabase, target: TargetDatabase
    ) -> Iterator[dg.AssetCheckResult]:
        if copies_part_only(context.run.tags, table.partition_keys):
            context.log.info(
                f"{table.qualified}: whole-table checks wait for the whole table; run them "
                f"after the backfill: the job {VERIFY_JOB} runs every table's and writes the "
                "audit report (or Checks tab, Execute all; or `migration-assets verify`)."
            )
            return
        selected = {k.name for k in context.selected_asset_check_keys}
        yield from table_check_results(table, plan, source, target, selected)

    return _checks


def table_check_results(
    table: TablePlan,
    plan: MigrationPlan,
    source: SourceDatabase,
    target: TargetDatabase,
    selected: set[str] | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """The table's checks (all of them, or those `selected`), each as soon as it is known: the
    Checks tab, `verify` and the cutover's final delta all judge a table through here. A
    database error leaves as a `dg.Failure` naming the table, never a row value."""
    names = set(check_names(table, plan) if selected is None else selected)
    try:
        yield from _run_checks(names, table, plan, source, target)
    except psycopg.Error as exc:
        raise dg.Failure(description=f"{table.qualified}: {safe_message(exc)}") from None
    except MigrationError as exc:
        raise dg.Failure(description=str(exc)) from None


def copies_part_only(tags: Mapping[str, str], keys: Sequence[str]) -> bool:
    """Whether a run's partition tags name only part of a table. The UI puts an asset's
    checks into every partition run it launches; a whole-table check there would judge a
    half-copied table, unless the run's partition (or range) is every slice the table has,
    as for each table below the split size: then its step ran first and the check is due."""
    if PARTITION_TAG in tags:
        return list(keys) != [tags[PARTITION_TAG]]
    if PARTITION_RANGE_START_TAG in tags:
        span = (tags[PARTITION_RANGE_START_TAG], tags.get(PARTITION_RANGE_END_TAG))
        return span != (keys[0], keys[-1])
    return False


def _run_checks(
    selected: set[str],
    table: TablePlan,
    plan: MigrationPlan,
    source: SourceDatabase,
    target: TargetDatabase,
) -> Iterator[dg.AssetCheckResult]:
    if selected & {TABLE_ROW_COUNT, TABLE_CHECKSUM}:
        comparison = compare_table(  # one run's table checks share its connections (`lend`)
            source.lend,
            target.lend,
            spec=table.slice(table.partition_keys[0]),
            columns=table.hash_columns,
            partition_keys=table.partition_keys,
        )
        if TABLE_ROW_COUNT in selected:
            yield _row_count_result(comparison)
        if TABLE_CHECKSUM in selected:
            labels = KeyLabels(table, target.secrets.key)
            diff = None
            if not comparison.equal:
                diff = _localise(source, target, table, comparison, labels)
            yield _checksum_result(comparison, diff, labels)
    if FOREIGN_KEYS_INTACT in selected:
        yield _foreign_keys_result(source, target, table, KeyLabels(table, target.secrets.key))
    with target.lend() as conn:
        if selected & {RLS_ENABLED, NO_API_GRANTS}:
            posture = security_posture(
                conn,
                schema=table.schema_name,
                table=table.name,
                api_roles=plan.security.api_roles,
            )
            allowed = table.api_grants_allowed
            exposure = Exposure(
                table.schema_name,
                table.name,
                posture.rls_enabled,
                "" if allowed else "; ".join(posture.api_grants),
                tuple(plan.security.api_roles),
            )
            # the same text as the blocking schema check and the report: what, and the SQL
            details = {"details": dg.MetadataValue.md(describe([exposure]))}
            if RLS_ENABLED in selected:
                yield dg.AssetCheckResult(
                    check_name=RLS_ENABLED,
                    passed=posture.rls_enabled,
                    metadata={
                        "rls_enabled": posture.rls_enabled,
                        "policies": posture.policies,
                        "table": table.qualified,
                        **(details if not posture.rls_enabled else {}),
                    },
                )
            if NO_API_GRANTS in selected:
                yield dg.AssetCheckResult(
                    check_name=NO_API_GRANTS,
                    passed=allowed or not posture.api_grants,
                    metadata={
                        "table": table.qualified,
                        "grants": ", ".join(posture.api_grants) or "none",
                        "allowed_by_plan": allowed,
                        **(details if exposure.grants else {}),
                    },
                )
        conn.rollback()  # only read: the next table's checks reuse this connection


def _row_count_result(c: TableComparison) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=TABLE_ROW_COUNT,
        passed=c.source.rows == c.target.rows,
        metadata={"table": c.table, "source_rows": c.source.rows, "target_rows": c.target.rows},
    )


class KeyLabels:
    """How one table's rows are named in metadata: keys the database assigns plainly; any
    other key and key-less rows as keyed hashes (db/keyhash.py), the secret read only when
    one is needed."""

    def __init__(self, table: TablePlan, secret: Callable[[], bytes]) -> None:
        self.keyed = bool(table.key)
        self.plain = table.plain_key
        self._load = secret
        self._secret: bytes | None = None

    def __call__(self, key_text: str) -> str:
        if self.plain:
            return key_text
        if self._secret is None:
            self._secret = self._load()
        return label(key_text, self._secret, prefix=KEY_PREFIX if self.keyed else ROW_PREFIX)

    def from_record(self, record_text: str, columns: int) -> str:
        """An FK sample key (ROW(...)::text): hashed as the bisection's key text is."""
        if self.plain:
            return record_text
        return self(unwrap_record(record_text) if columns == 1 else record_text)

    @property
    def kind(self) -> str:
        if self.plain:
            return "primary keys (assigned by the database)"
        what = "primary keys" if self.keyed else "whole rows (table has no key)"
        return f"keyed hashes of {what}: `migration-assets locate HASH` finds the row"


def _checksum_result(
    c: TableComparison, diff: KeyDiff | None, labels: KeyLabels
) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {
        "table": c.table,
        "source_checksum": c.source.digest,
        "target_checksum": c.target.digest,
        "row_hash": c.row_hash,
        "differing_slices": ", ".join(c.differing_slices) or "none",
    }
    if diff is not None:
        metadata["differing_rows"] = diff.total
        metadata["keys"] = dg.MetadataValue.md(
            "\n".join(f"- {k}" for k in diff.listed()) or "none found"
        )
        metadata["keys_are"] = labels.kind
    return dg.AssetCheckResult(check_name=TABLE_CHECKSUM, passed=c.equal, metadata=metadata)


def differing_slices(evaluation: dg.AssetCheckEvaluation | dg.AssetCheckResult) -> list[str]:
    """The partitions a failed table_checksum named (read back from its own metadata)."""
    if evaluation.check_name != TABLE_CHECKSUM or evaluation.passed:
        return []
    value = evaluation.metadata.get("differing_slices")
    text = str(getattr(value, "value", value or "none"))
    return [] if text == "none" else [pk.strip() for pk in text.split(",") if pk.strip()]


def _localise(
    source: SourceDatabase,
    target: TargetDatabase,
    table: TablePlan,
    c: TableComparison,
    labels: KeyLabels,
) -> KeyDiff:
    """Bisect the differing slices until KEYS_LISTED keys are named (all are counted).

    A key-less table is bisected on its whole row's text, as `localise` does, but named
    here, so its rows get the same keyed hash as natural keys (not an unkeyed sha256)."""
    total = KeyDiff(keyless=not table.key)
    with source.connect() as src, target.connect() as tgt:
        for pk in c.differing_slices:
            part = localise(
                src,
                tgt,
                table.slice(pk),
                key=table.key or table.copy_columns,
                checksum_columns=table.checksum_columns,
                copy_columns=table.copy_columns,
                limit=KEYS_LISTED,
            )
            for kind in ("missing", "extra", "different"):
                for ident in getattr(part, kind):
                    if len(total.listed()) < KEYS_LISTED:
                        getattr(total, kind).append(labels(ident))
            total.total += part.total
            total.scans += part.scans
    return total


def _foreign_keys_result(
    source: SourceDatabase, target: TargetDatabase, table: TablePlan, labels: KeyLabels
) -> dg.AssetCheckResult:
    """Orphans on the target fail the check unless the source has as many under the same key
    (a NOT VALID foreign key there): a faithful copy of those is no loss, and failing it
    would leave the audit incomplete for good. The source is asked only about a key with
    orphans on the target."""
    findings, inherited = [], []
    with target.lend() as tgt:
        found = [(fk, *_orphans(tgt, table, fk)) for fk in table.foreign_keys]
    for fk, count, keys in found:
        if not count:
            continue
        with source.lend() as src:
            on_source, _ = _orphans(src, table, fk)
        where = f"{fk.name} -> {fk.ref_qualified}: {count} orphan row(s)"
        if count <= on_source:
            inherited.append(f"{where}, as on the source ({on_source}): not made by the copy")
            continue
        shown = f"; keys {', '.join(_orphan_labels(keys, table.key, labels))}" if keys else ""
        findings.append(f"{where} ({on_source} on the source){shown}")
    return dg.AssetCheckResult(
        check_name=FOREIGN_KEYS_INTACT,
        passed=not findings,
        metadata={
            "table": table.qualified,
            "foreign_keys": len(table.foreign_keys),
            "orphans": dg.MetadataValue.md("\n".join(f"- {f}" for f in findings) or "none"),
            "as_on_source": dg.MetadataValue.md("\n".join(f"- {f}" for f in inherited) or "none"),
            "keys_are": labels.kind,
        },
    )


def _orphans(conn: Any, table: TablePlan, fk: ForeignKeyPlan) -> tuple[int, list[str]]:
    return orphan_rows(
        conn,
        schema=table.schema_name,
        table=table.name,
        key=table.key,
        columns=fk.columns,
        ref_schema=fk.ref_schema,
        ref_table=fk.ref_table,
        ref_columns=fk.ref_columns,
    )


def _orphan_labels(keys: Sequence[str], key: Sequence[str], labels: KeyLabels) -> list[str]:
    return [labels.from_record(k, len(key)) for k in keys]
