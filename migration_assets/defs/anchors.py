"""The report chain's two anchors outside its directory: the target and the Dagster instance.

The report asset records each report's (chain, sequence, digest) on the target in the
transaction that writes its files (committed after them, so an anchor never names a report
that was not written), and in its own materialization's metadata. Either is out of reach
of whoever can only write the report directory. An unreachable target does not stop the
report (it is evidence of whatever went wrong): the metadata says the anchor is missing,
and `report --check` names the report as not anchored there.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from dagster import DagsterInstance

from migration_assets.db.anchor import WHERE, AnchorConflictError, record_anchor
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.defs.history import meta_text
from migration_assets.defs.keys import REPORT_KEY
from migration_assets.defs.resources import TargetDatabase
from migration_assets.report import PreparedReport

RECORDED = "recorded"
PAGE = 200


def anchored_in() -> list[str]:
    """Where a report is anchored when written, as the report itself says."""
    return [
        f"the target (table {WHERE})",
        f"the Dagster instance (metadata of the asset {REPORT_KEY.to_user_string()})",
    ]


def write_anchored(prepared: PreparedReport, target: TargetDatabase) -> tuple[Path, Path, str]:
    """The report's files and its anchor on the target: (JSON, Markdown, the anchor's
    state: "recorded" or "not recorded: why"). A conflicting anchor writes nothing."""
    written: tuple[Path, Path] | None = None
    try:
        with target.connect() as conn:
            record_anchor(
                conn,
                chain=prepared.chain,
                sequence=prepared.sequence,
                digest=prepared.digest,
                directory=str(prepared.directory.resolve()),
            )
            written = prepared.write()
            conn.commit()
    except AnchorConflictError:
        raise
    except (psycopg.Error, MigrationError) as exc:
        why = safe_message(exc) if isinstance(exc, psycopg.Error) else str(exc)
        if written is None:
            written = prepared.write()
        return *written, f"not recorded: {why.splitlines()[0] if why else 'error'}"
    return *written, RECORDED


def dagster_anchors(instance: DagsterInstance, chain: str) -> list[tuple[int, str]]:
    """Every (sequence, digest) of `chain` the report asset's materializations recorded."""
    found: list[tuple[int, str]] = []
    cursor = None
    while True:
        page = instance.fetch_materializations(REPORT_KEY, limit=PAGE, cursor=cursor)
        for record in page.records:
            mat = record.asset_materialization
            if mat is None or meta_text(mat.metadata, "chain") != chain:
                continue
            sequence = meta_text(mat.metadata, "sequence")
            if sequence.isdigit():
                found.append((int(sequence), meta_text(mat.metadata, "digest")))
        if not page.has_more:
            return found
        cursor = page.cursor
