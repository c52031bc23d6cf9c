"""Cutover against real servers, with an application stand-in writing to the source."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from dagster import DagsterEventType

from migration_assets.db.freeze import is_frozen
from migration_assets.devstack.standin import StandIn, assert_journal_on
from migration_assets_tests.conftest import Migration, MigrationFactory
from migration_assets_tests.helpers import (
    PLAN_ARGS,
    assert_equal_databases,
    cli_process,
    dbname,
    open_first,
    plan_and_migrate,
    readme_engine_queries,
    run_cli,
)
from migration_assets_tests.waiting import process_gone, wait_until

pytestmark = pytest.mark.integration


def _source_frozen(m: Migration) -> bool:
    """Asked from the server's `postgres` database, as a DBA would watch: the freeze ends
    every session of the source database opened before it, and this poll, once opened just
    before, was ended mid-query ("server closed the connection unexpectedly")."""
    with psycopg.connect(m.source_url, dbname="postgres") as conn:
        return is_frozen(conn, dbname(m.source_url))


def _last_report(m: Migration) -> dict[str, Any]:
    reports = sorted((m.dagster_home / "audit").glob("audit-*.json"))
    assert reports, "no audit report was written"
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    return report


def _env_file(path: Path) -> dict[str, str]:
    lines = [x for x in path.read_text().splitlines() if x and not x.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_cutover_with_the_app_writing_loses_no_acknowledged_write(
    migration: MigrationFactory, isolated_cwd: Path
) -> None:
    app_env = isolated_cwd / "app.env"
    m = migration()
    with StandIn(m.source_url) as app:
        app.wait_until(lambda: len(app.acks()) >= 20, 60, "the app's first writes")
        _plan_and_migrate(m)
        code, output = run_cli(["cutover", "--yes", "--app-env", str(app_env)])
        assert code == 0, output
        acked_at_cutover = len(app.acks())
        refused = app.refused
        app.wait_until(lambda: app.refused >= refused + 10, 60, "writes refused after cutover")
        assert len(app.acks()) == acked_at_cutover, "the frozen source acknowledged a write"
    journal = app.acked()
    assert len(journal) >= 20
    assert_equal_databases(m.source_url, m.target_url)
    assert assert_journal_on(m.target_url, journal) == len(journal)
    assert _source_frozen(m), "after cutover the source stays frozen until a rollback"

    evidence = _last_report(m)
    assert evidence["verdict"] == {"complete": True, "problems": []}, evidence["verdict"]
    cutover = evidence["cutover"]
    assert cutover["state"] == "cut over"
    assert cutover["write_tuples_at_freeze"] == cutover["write_tuples_at_end"]
    assert cutover["slices_recopied"] >= 1, "the app's writes were not re-copied"
    assert 0 < cutover["window_seconds"] < 600

    assert app_env.stat().st_mode & 0o777 == 0o600
    settings = _env_file(app_env)
    assert m.pooler_url, "the cutover writes the pooler URL: pgbouncer must run"
    pooler = psycopg.conninfo.conninfo_to_dict(m.pooler_url)
    assert f"@{pooler['host']}:{pooler['port']}/" in settings["DATABASE_URL"]
    assert "sslmode=verify-full" in settings["DATABASE_URL"]
    password = pooler.get("password")
    assert password
    assert str(password) not in output, "the password was printed"
    assert readme_engine_queries(settings["DATABASE_URL"], settings["DATABASE_SSLROOTCERT"]) == [
        i + 1 for i in range(30)
    ]

    code, output = run_cli(["cutover", "--yes"])
    assert code == 1, output
    assert "cut over already" in output
    code, output = run_cli(["cutover", "--rollback"])
    assert code == 0, output
    assert not _source_frozen(m)
    assert _last_report(m)["cutover"]["state"] == "rolled back"
    with StandIn(m.source_url, connections=1) as again:
        again.wait_until(lambda: len(again.acks()) >= 3, 60, "writes after the rollback")


def _plan_and_migrate(m: Migration) -> None:
    plan_and_migrate(m.plan_path, workers=2)
    run_cli(["verify"])  # the app's writes make whole tables differ meanwhile: no matter


def test_no_freeze_while_the_app_writes_is_refused_and_changes_nothing(
    migration: MigrationFactory,
) -> None:
    m = migration()
    _plan_and_migrate(m)
    with StandIn(m.source_url, connections=2) as app:
        app.wait_until(lambda: len(app.acks()) >= 10, 60, "the app's first writes")
        code, output = run_cli(["cutover", "--yes", "--no-freeze"])
        acked = len(app.acks())
        app.wait_until(lambda: len(app.acks()) >= acked + 5, 60, "the app still writing")
    assert code == 1, output
    assert "still being written" in " ".join(output.split()), output
    assert not _source_frozen(m)
    assert app.refused == 0


def test_not_ready_is_refused_before_anything_changes(migration: MigrationFactory) -> None:
    m = migration()
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    code, output = run_cli(["cutover", "--yes"])
    assert code == 1, output
    assert "not ready for cutover, nothing changed" in " ".join(output.split()), output
    assert "partitions not verified" in output
    assert not _source_frozen(m)


def test_a_cutover_killed_after_the_freeze_is_finished_by_the_next_one(
    migration: MigrationFactory, isolated_cwd: Path
) -> None:
    """SIGKILL once the source is frozen (the final delta under way): the source says it is
    frozen, and `cutover` again resumes from the recorded freeze and finishes."""
    m = migration()
    _plan_and_migrate(m)
    with StandIn(m.source_url, connections=2) as app:
        app.wait_until(_rows_enough(app), 60, "the app's first rows")
        proc = cli_process(["cutover", "--yes"], m.env(), isolated_cwd)
        wait_until(lambda: _source_frozen(m) or proc.poll() is not None, 180, "the freeze")
        assert _source_frozen(m), proc.communicate()[0] if proc.poll() is not None else ""
        proc.send_signal(signal.SIGKILL)
        process_gone(proc, 30)
        state = json.loads((m.dagster_home / "cutover" / "state.json").read_text())
        assert state["phase"] in {"freezing", "frozen"}, state
        code, output = run_cli(["status"])
        assert "frozen by an unfinished cutover" in " ".join(output.split()), output
        code, output = run_cli(["cutover", "--yes"])
        assert code == 0, output
        assert "resuming" in output or _last_report(m)["cutover"]["state"] == "cut over"
    assert_equal_databases(m.source_url, m.target_url)
    assert assert_journal_on(m.target_url, app.acked()) >= 10
    code, output = run_cli(["cutover", "--rollback"])
    assert code == 0, output
    assert not _source_frozen(m)


def _rows_enough(app: StandIn) -> Callable[[], bool]:
    """Enough rows acknowledged for the journal check (`>= 10` rows at the end). Waiting
    counted writes: several writes to one row are one journal entry, and on a loaded machine
    the journal once held 9. A row whose last write is in doubt when the freeze ends a
    session leaves the journal: at most one per connection."""
    return lambda: len(app.acked()) >= 10 + app.connections


def _kill_at_step(m: Migration, args: list[str], job: str, step: str, cwd: Path) -> str:
    """Start `migration-assets *args`, SIGKILL its whole process group as soon as the
    instance records that `step` of `job` started; the killed run's phase in the state file."""
    instance = open_first(m.dagster_home)
    proc = cli_process(args, m.env(), cwd)

    def started() -> bool:
        assert proc.poll() is None, f"ended before {step} started: {proc.communicate()[0]}"
        return _step_started(instance, job, step)

    try:
        wait_until(started, 240, f"{step} to start", every=0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        process_gone(proc, 30)
    finally:
        instance.dispose()
    state_file = m.dagster_home / "cutover" / "state.json"
    return str(json.loads(state_file.read_text())["phase"]) if state_file.exists() else ""


def _step_started(instance: dg.DagsterInstance, job: str, step: str) -> bool:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job), limit=1)
    if not runs:
        return False
    events = instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_START)
    return any(e.step_key == step for e in events)


def _status_is_truthful(m: Migration) -> None:
    """Whatever a kill left, `status` says so when the source is frozen."""
    _, output = run_cli(["status"])
    text = " ".join(output.split())
    if _source_frozen(m):
        assert "frozen by an unfinished cutover" in text or "stays read-only" in text, output


CUTOVER_STEPS = [  # as the run names them: the final delta is a graph of four steps
    "source_frozen",
    "final_delta.slices_compared",
    "final_delta.slices_recopied",
    "final_delta.target_finished",
    "final_delta.tables_rechecked",
    "switch_application",
]


@pytest.mark.parametrize("step", CUTOVER_STEPS)
def test_a_cutover_killed_at_each_step_is_finished_by_the_next_one(
    migration: MigrationFactory, isolated_cwd: Path, step: str
) -> None:
    """SIGKILL as each step of the cutover job starts: the source never stays frozen without
    `status` saying so, `cutover` again finishes with both sides equal, and `cutover
    --rollback`, itself killed once as it starts, finishes when run again."""
    m = migration()
    _plan_and_migrate(m)
    phase = _kill_at_step(m, ["cutover", "--yes"], "migration_cutover", step, isolated_cwd)
    assert phase in {"", "freezing", "frozen", "switched"}, phase
    _status_is_truthful(m)
    code, output = run_cli(["cutover", "--yes"])
    if phase == "switched":  # the kill came after the switch was recorded: it is done
        assert code == 1, output
        assert "cut over already" in " ".join(output.split()), output
    else:
        assert code == 0, output
    assert _source_frozen(m)
    assert _last_report(m)["cutover"]["state"] == "cut over"
    assert_equal_databases(m.source_url, m.target_url)
    rollback = ["cutover", "--rollback"]
    _kill_at_step(m, rollback, "migration_cutover_rollback", "source_unfrozen", isolated_cwd)
    _status_is_truthful(m)
    code, output = run_cli(rollback)
    assert code == 0, output
    assert not _source_frozen(m)
    assert _last_report(m)["cutover"]["state"] == "rolled back"


def _metadata_keys(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """What a table partition's materialization recorded in a run: the table asset's keys."""
    for event in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        mat = event.asset_materialization
        if mat is not None and mat.partition is not None:
            return set(mat.metadata)
    return set()


def test_cutover_is_one_run_whose_steps_record_the_table_assets_evidence(
    migration: MigrationFactory,
) -> None:
    """No run is launched from inside a run: during `cutover` the instance gains exactly one
    run, the job migration_cutover's, and the slices it re-copied and the checks it re-ran are
    recorded there as materializations of the tables' partitions (with the table asset's own
    metadata) and as check evaluations, so `status`, `verify` and the audit report see a
    migration that is whole."""
    m = migration()
    _plan_and_migrate(m)
    instance = dg.DagsterInstance.from_config(str(m.dagster_home))
    try:
        recorded = (_metadata_keys(instance, r.run_id) for r in instance.get_runs())
        by_migrate = next(keys for keys in recorded if keys)  # a partition run's
        with StandIn(m.source_url, connections=2) as app:
            app.wait_until(_rows_enough(app), 60, "the app's first rows")
            before = {r.run_id for r in instance.get_runs()}
            code, output = run_cli(["cutover", "--yes"])
            assert code == 0, output
        new = [r for r in instance.get_runs() if r.run_id not in before]
        jobs = Counter(r.job_name for r in new)
        assert [r.job_name for r in new] == ["migration_cutover"], f"runs made: {dict(jobs)}"
        run = new[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        evidence = _last_report(m)
        assert evidence["cutover"]["state"] == "cut over"
        assert evidence["cutover"]["slices_recopied"] >= 1, "the app's writes were not re-copied"
        assert evidence["verdict"] == {"complete": True, "problems": []}, evidence["verdict"]

        materialized = [
            e.asset_materialization
            for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        ]
        slices = [x for x in materialized if x is not None and x.partition is not None]
        assert len(slices) >= evidence["cutover"]["slices_recopied"]
        assert _metadata_keys(instance, run.run_id) == by_migrate
        evaluations = [
            event.dagster_event.asset_check_evaluation_data
            for event in instance.all_logs(
                run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
            )
            if event.dagster_event is not None
        ]
        rechecked = {(e.asset_key.to_user_string(), e.check_name) for e in evaluations if e.passed}
        for recopied in {x.asset_key.to_user_string() for x in slices}:
            assert (recopied, "table_checksum") in rechecked, (recopied, sorted(rechecked))
    finally:
        instance.dispose()
    code, output = run_cli(["status"])
    assert code == 0, output
    code, output = run_cli(["verify"])
    assert code == 0, output
    assert_equal_databases(m.source_url, m.target_url)
    assert assert_journal_on(m.target_url, app.acked()) >= 10
