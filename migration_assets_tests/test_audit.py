"""Proof for the auditor: checks fail on corruption, bisection names keys, no PHI, chains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from dagster._serdes import serialize_value

from migration_assets.db.keyhash import label, load_secret
from migration_assets.defs.keys import (
    DATA_API_LOCKED_DOWN,
    FOREIGN_KEYS_INTACT,
    NO_API_GRANTS,
    RLS_ENABLED,
    SEQUENCES_AHEAD,
    TABLE_CHECKSUM,
    TABLE_ROW_COUNT,
)
from migration_assets.devstack.stack import DevStack
from migration_assets.engine.session import Session
from migration_assets.engine.work import slice_run
from migration_assets.settings import load_settings
from migration_assets_tests.conftest import Databases, Migration, MigrationFactory
from migration_assets_tests.helpers import migrated_and_verified, plan_and_migrate, run_cli

pytestmark = pytest.mark.integration


def _migrated(migration: MigrationFactory) -> Migration:
    m = migration()
    plan_and_migrate(m.plan_path, workers=1)
    return m


def _runner(m: Migration) -> Session:
    return Session.open(load_settings(env_file=None), m.plan_path)


def _failures(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for e in result.get_asset_check_evaluations():
        if not e.passed:
            meta = {k: getattr(v, "value", v) for k, v in e.metadata.items()}
            out[(e.asset_key.to_user_string(), e.check_name)] = meta
    return out


def test_every_check_passes_clean_and_fails_on_its_corruption(
    migration: MigrationFactory,
) -> None:
    m = _migrated(migration)
    code, output = run_cli(["verify"])
    assert code == 0, output
    assert "FAIL" not in output
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # as an intruder would
        deleted = conn.execute("SELECT max(id) FROM audit_log").fetchone()
        conn.execute("DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)")
        encounter = conn.execute("SELECT min(id) FROM encounters").fetchone()
        conn.execute(
            "INSERT INTO observations (id, encounter_id, code, observed_at) "
            "VALUES (987654321, %s, '8867-4', now())",
            [encounter[0] if encounter else 1],
        )
        patient = conn.execute("SELECT id FROM patients ORDER BY id LIMIT 1").fetchone()
        conn.execute(
            "UPDATE patients SET email = 'changed@example.org' WHERE id = %s",
            [patient[0] if patient else None],
        )
        conn.execute(
            "INSERT INTO prescriptions (encounter_id, line_no, drug_name, dose, dose_unit, "
            "frequency, prescribed_on) VALUES (99999999, 1, 'orphan', 1, 'mg', 'daily', "
            "'2020-01-01')"
        )
        conn.execute("SELECT setval('encounters_id_seq', 1)")
        conn.execute("ALTER TABLE appointments DISABLE ROW LEVEL SECURITY")
        conn.execute("GRANT SELECT ON providers TO anon")
    failures = _failures(_runner(m).run_checks())
    assert deleted is not None
    assert patient is not None
    assert failures[("public/audit_log", TABLE_ROW_COUNT)]["table"] == "public.audit_log"
    assert f"missing {deleted[0]}" in failures[("public/audit_log", TABLE_CHECKSUM)]["keys"]
    assert "extra 987654321" in failures[("public/observations", TABLE_CHECKSUM)]["keys"]
    assert f"different {patient[0]}" in failures[("public/patients", TABLE_CHECKSUM)]["keys"]
    orphans = failures[("public/prescriptions", FOREIGN_KEYS_INTACT)]["orphans"]
    # (encounter_id, line_no) is assigned by the application: named by its keyed hash
    secret = load_secret("", m.dagster_home, create=False)
    assert label("(99999999,1)", secret) in orphans
    assert "99999999" not in orphans
    assert "encounters" in orphans
    assert "encounters_id_seq" in failures[("supabase_sequences", SEQUENCES_AHEAD)]["behind"]
    assert failures[("public/appointments", RLS_ENABLED)]["table"] == "public.appointments"
    assert "anon: SELECT" in failures[("public/providers", NO_API_GRANTS)]["grants"]
    expected = {
        ("public/audit_log", TABLE_ROW_COUNT),
        ("public/audit_log", TABLE_CHECKSUM),
        ("public/observations", TABLE_ROW_COUNT),
        ("public/observations", TABLE_CHECKSUM),
        ("public/patients", TABLE_CHECKSUM),
        ("public/prescriptions", TABLE_ROW_COUNT),
        ("public/prescriptions", TABLE_CHECKSUM),
        ("public/prescriptions", FOREIGN_KEYS_INTACT),
        ("supabase_sequences", SEQUENCES_AHEAD),
        ("public/appointments", RLS_ENABLED),
        ("public/providers", NO_API_GRANTS),
        ("supabase_schema", DATA_API_LOCKED_DOWN),  # the same exposure, judged before a load
    }
    assert set(failures) == expected, "a check failed that should not have, or vice versa"
    code, output = run_cli(["verify", "--tables", "public.providers"])
    assert code == 1
    assert "no_api_grants" in output


def test_bisection_names_exactly_the_changed_keys(migration: MigrationFactory) -> None:
    m = _migrated(migration)
    runner = _runner(m)
    table = runner.plan.table("public.observations")
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM observations ORDER BY md5(id::text)")]
    for changes in (1, 5, 25):
        changed = sorted(ids[:changes])
        with psycopg.connect(m.target_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE observations SET unit = coalesce(unit, '') || '~' WHERE id = ANY(%s)",
                [changed],
            )
        result = runner.run_checks([table])
        meta = _failures(result)[("public/observations", TABLE_CHECKSUM)]
        listed = [line.removeprefix("- different ") for line in meta["keys"].splitlines()]
        assert meta["differing_rows"] == changes
        assert len(listed) == min(changes, 20)
        assert set(listed) <= {str(i) for i in changed}
        if changes <= 20:
            assert sorted(int(k) for k in listed) == changed
        with psycopg.connect(m.target_url, autocommit=True) as conn:  # put them back
            conn.execute(
                "UPDATE observations SET unit = nullif(left(unit, -1), '') WHERE id = ANY(%s)",
                [changed],
            )
    assert not _failures(runner.run_checks([table]))


def test_no_patient_data_or_secret_anywhere_even_after_a_duplicate_key(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    m = _migrated(migration)
    with psycopg.connect(m.source_url) as conn:
        people = conn.execute(
            "SELECT mrn, email, display_name, phone, id FROM patients ORDER BY id"
        ).fetchall()
        victim = people[-1]  # highest id: the last slice
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        # The victim's MRN moves to a row in the first slice: re-copying the last slice
        # then collides on the unique MRN, and PostgreSQL's DETAIL quotes the MRN.
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE patients SET mrn = 'moved-aside' WHERE id = %s", [victim[4]])
        conn.execute(
            "INSERT INTO patients (id, mrn, given_name, family_name, birth_date, created_at, "
            "updated_at) VALUES ('00000000-0000-4000-8000-000000000000', %s, 'x', 'y', "
            "'2000-01-01', now(), now())",
            [victim[0]],
        )
    runner = _runner(m)
    last = runner.plan.table("public.patients").partition_keys[-1]
    outcome = runner.execute(slice_run(runner.plan.table("public.patients"), last))
    assert not outcome.ok
    assert "23505" in outcome.message, "the duplicate key must be reported by its SQLSTATE"
    assert "patients_mrn_key" in outcome.message
    code, output = run_cli(["verify"])
    assert code == 1
    code, _ = run_cli(["report", "--out", str(isolated_cwd / "audit")])
    assert code == 1, "the report must say the migration is incomplete"
    needles = {str(v) for row in people for v in row[:4] if v and len(str(v)) > 5}
    needles |= set(stack.passwords.values())
    haystacks = {"verify output": output, "failure": outcome.message}
    instance = dg.DagsterInstance.from_config(str(m.dagster_home))
    for run in instance.get_runs():
        haystacks[f"run {run.run_id}"] = "\n".join(
            serialize_value(event) for event in instance.all_logs(run.run_id)
        )
        # what Dagster stores of a run's resources: their config (a config value of a
        # resource lands in the job's snapshot; the URLs are a plain object, never config)
        assert run.job_snapshot_id is not None
        snapshot = instance.get_job_snapshot(run.job_snapshot_id)
        haystacks[f"run {run.run_id}'s job"] = serialize_value(snapshot)
        assert "network_timeout" in haystacks[f"run {run.run_id}'s job"], "no resource config"
        haystacks[f"run {run.run_id}'s config"] = json.dumps(run.run_config, default=str)
    for path in (isolated_cwd / "audit").iterdir():
        haystacks[path.name] = path.read_text()
    assert len(haystacks) > 5
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"patient data or a secret leaked into {where}"


def test_migrate_ends_with_the_audit_report_after_the_sequences_checks(
    migration: MigrationFactory,
) -> None:
    """The report is the graph's last asset: `migrate` writes it as the UI's "Materialize
    all" does, in the run with the sequences, after that run's own checks on them. Until the
    whole-table checks run it says so, and only that; after `verify` it is complete."""
    m = _migrated(migration)
    report = json.loads((m.dagster_home / "audit" / "audit-0001.json").read_text())
    problems = report["verdict"]["problems"]
    assert report["verdict"]["complete"] is False
    assert problems
    whole_table = (TABLE_ROW_COUNT, TABLE_CHECKSUM, FOREIGN_KEYS_INTACT, RLS_ENABLED)
    for problem in problems:  # tables materialized, not judged since: left to `verify`
        assert problem.endswith("not run since its asset last changed"), problem
        assert any(f"check {name} " in problem for name in (*whole_table, NO_API_GRANTS))
    sequences_run = report["statistics"]["run_id"]
    assert sequences_run is not None
    checks = {c["name"]: c for c in report["global_checks"]}
    assert checks[SEQUENCES_AHEAD]["passed"] is True
    assert checks[SEQUENCES_AHEAD]["run_id"] == sequences_run, "read before the check ran"
    instance = dg.DagsterInstance.from_config(str(m.dagster_home))
    record = instance.get_latest_materialization_event(dg.AssetKey("migration_audit_report"))
    assert record is not None
    assert record.run_id == sequences_run
    assert run_cli(["verify"])[0] == 0
    code, output = run_cli(["report", "--out", str(m.dagster_home / "audit")])
    assert code == 0, output
    final = json.loads((m.dagster_home / "audit" / "audit-0002.json").read_text())
    assert final["verdict"] == {"complete": True, "problems": []}
    assert final["previous_digest"] == report["digest"]
    # every slice materialized again (compared, kept): each table's verdicts judged older data
    code, output = run_cli(["migrate", "--resync", "--workers", "1"])
    assert code == 0, output
    resynced = json.loads((m.dagster_home / "audit" / "audit-0003.json").read_text())
    stale = [p for p in resynced["verdict"]["problems"] if "not run since" in p]
    assert len(stale) == sum(len(t["checks"]) for t in resynced["tables"]), resynced["verdict"]


ORPHAN_DDL = """
CREATE SCHEMA ward;
CREATE TABLE ward.ward (id int PRIMARY KEY);
CREATE TABLE ward.bed (id int PRIMARY KEY, ward_id int);
"""
ORPHAN_ROWS = """
INSERT INTO ward.ward VALUES (1), (2);
INSERT INTO ward.bed VALUES (1, 1), (2, 2), (3, 99);
"""
# NOT VALID: the key holds for new rows only, so the source keeps its orphan (bed 3)
NOT_VALID_FK = (
    "ALTER TABLE ward.bed ADD CONSTRAINT bed_ward FOREIGN KEY (ward_id) REFERENCES ward.ward "
    "NOT VALID"
)


def _bed_foreign_keys(m: Migration) -> dg.AssetCheckEvaluation:
    result = _runner(m).run_checks()
    found = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey(["ward", "bed"]) and e.check_name == FOREIGN_KEYS_INTACT
    ]
    assert len(found) == 1
    return found[0]


def test_orphans_the_source_has_too_are_listed_not_failed(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A faithful copy of a source's orphans (under a NOT VALID key) is no loss: failing it
    left the audit incomplete for good. An orphan the copy made still fails."""
    source, target = databases.existing_pair(ORPHAN_DDL, ORPHAN_ROWS, monkeypatch)
    for url in (source, target):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(NOT_VALID_FK)
    m = migration(source_url=source, target_url=target)
    migrated_and_verified(m.plan_path, "--schema", "ward")
    clean = _bed_foreign_keys(m)
    assert clean.passed
    listed = str(clean.metadata["as_on_source"].value)
    assert "bed_ward -> ward.ward: 1 orphan row(s), as on the source (1)" in listed

    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM ward.ward WHERE id = 2")  # bed 2 loses its ward here only
    broken = _bed_foreign_keys(m)
    assert not broken.passed
    assert "2 orphan row(s) (1 on the source)" in str(broken.metadata["orphans"].value)
