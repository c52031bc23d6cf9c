"""Test helpers: an independent comparison, CLI runners, small probes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from migration_assets.db.dsn import parse_dsn

if TYPE_CHECKING:
    import dagster as dg

SCHEMAS = ("public", "reference")
# Small slices: the seeded clinic's bigger tables split into several partitions each.
PLAN_ARGS = ["--rows-per-partition", "800", "--split-above", "300", "--min-partitions", "3"]
PINS = "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO'; SET extra_float_digits TO 3"


def user_tables(url: str, schemas: Iterable[str] = SCHEMAS) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(%s) "
            "AND tablename <> 'alembic_version' ORDER BY 1, 2",
            [list(schemas)],
        ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def digests(url: str, tables: Sequence[tuple[str, str]]) -> dict[str, tuple[int, str]]:
    """Not the project's checksum: md5 of every row's full text, sorted, per table."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(url) as conn:
        conn.execute(PINS)
        for schema, table in tables:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY "
                    "t::text), '')) FROM {} t"
                ).format(sql.Identifier(schema, table))
            ).fetchone()
            assert row is not None
            out[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
    return out


def assert_equal_databases(
    source_url: str, target_url: str, schemas: Iterable[str] = SCHEMAS
) -> dict[str, tuple[int, str]]:
    tables = user_tables(source_url, schemas)
    assert tables, "nothing to compare"
    src, tgt = digests(source_url, tables), digests(target_url, tables)
    different = {k: (src[k], tgt[k]) for k in src if src[k] != tgt[k]}
    assert not different, f"tables differ: {different}"
    return src


def row_locations(url: str, table: tuple[str, str]) -> str:
    """Physical row positions: a DELETE + COPY moves them, a no-op leaves them."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT md5(coalesce(string_agg(ctid::text, ',' ORDER BY ctid), '')) FROM {}"
            ).format(sql.Identifier(*table))
        ).fetchone()
    assert row is not None
    return str(row[0])


def dbname(url: str) -> str:
    """The database a URL names."""
    return parse_dsn(url)["dbname"]


def run_cli(args: Sequence[str]) -> tuple[int, str]:
    """The CLI in this process (for coverage and speed); returns exit code and output."""
    from migration_assets.cli import main

    buffer = io.StringIO()
    with redirect_stdout(buffer), redirect_stderr(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


def plan_and_migrate(plan_path: Path, *, workers: int) -> None:
    """The split plan written to `plan_path`, then one `migrate` that must succeed."""
    code, output = run_cli(["plan", "--out", str(plan_path), *PLAN_ARGS])
    assert code == 0, output
    code, output = run_cli(["migrate", "--workers", str(workers)])
    assert code == 0, output


def migrated_and_verified(plan_path: Path, *plan_args: str) -> None:
    """`plan` (with `plan_args`), then `migrate` and `verify`: each must succeed."""
    for args in (
        ["plan", "--out", str(plan_path), *plan_args],
        ["migrate", "--workers", "1"],
        ["verify"],
    ):
        code, output = run_cli(args)
        assert code == 0, output


def cli_process(args: Sequence[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """The CLI as its own process group, so a test can SIGKILL all of it."""
    return subprocess.Popen(
        [sys.executable, "-m", "migration_assets.cli", *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def readme_engine_queries(url: str, ca_file: str, count: int = 30) -> list[int]:
    """The README's app engine snippet, executed as documented, running `count` queries
    through `url` (enough to cross psycopg's default prepare threshold)."""
    import asyncio
    import re

    from sqlalchemy import text

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(from sqlalchemy.ext.asyncio.*?)```", readme, re.S)
    assert block, "the README must keep its app engine snippet"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own doc

    async def run() -> list[int]:
        engine = namespace["make_app_engine"](url, ca_file)
        results = []
        try:
            for i in range(count):
                async with engine.connect() as conn:
                    value = await conn.execute(text("SELECT CAST(:i AS int) + 1"), {"i": i})
                    results.append(int(value.scalar_one()))
        finally:
            await engine.dispose()
        return results

    return asyncio.run(run())


def open_first(home: Path) -> dg.DagsterInstance:
    """The instance at `home`, for a test to open *before* it starts a process that shares it.

    Dagster creates an empty home's SQLite storage on first open, and two first opens at
    once (this test and a `migrate` it just started) can stamp the storage's schema twice:
    every later open then fails with "alembic_version has more than one head". Seen once in
    a full run on a loaded machine. `migrate`'s own workers wait for the same reason."""
    import dagster as dg

    from migration_assets.engine.home import prepare_dagster_home

    prepare_dagster_home(home)
    return dg.DagsterInstance.from_config(str(home))


def tls_metadata(home: Path) -> dict[str, Any]:
    """What the latest `tls_in_use` recorded in the instance at `home`, values as plain
    Python; the check must have run and passed."""
    import dagster as dg

    from migration_assets.defs.keys import SCHEMA_KEY, TLS_IN_USE

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(SCHEMA_KEY, TLS_IN_USE)
        )
    finally:
        instance.dispose()
    assert record is not None, "tls_in_use did not run"
    assert record.event is not None
    assert record.event.dagster_event is not None
    evaluation = record.event.dagster_event.event_specific_data
    assert isinstance(evaluation, dg.AssetCheckEvaluation)
    assert evaluation.passed, evaluation.metadata
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def latest_check_outcomes(
    instance: dg.DagsterInstance, run_ids: Sequence[str] | None = None
) -> dict[str, bool]:
    """Each check's newest result ("<asset> <check>": passed), of every run or of `run_ids`
    (of a partitioned check, its newest for any partition)."""
    import dagster as dg

    filters = dg.RunsFilter(run_ids=list(run_ids)) if run_ids is not None else None
    events = [
        event
        for record in instance.get_run_records(filters=filters)
        for event in instance.all_logs(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
    ]
    outcomes: dict[str, bool] = {}
    for event in sorted(events, key=lambda e: e.timestamp):
        assert event.dagster_event is not None
        evaluation: Any = event.dagster_event.event_specific_data
        outcomes[f"{evaluation.asset_key.to_user_string()} {evaluation.check_name}"] = bool(
            evaluation.passed
        )
    return outcomes
