"""Natural keys are patient data: reports name them by keyed hash, `locate` finds the row.

A medical record number or an e-mail address used as a primary key must not reach the
verify output, Dagster's event log or the audit report; a surrogate (integer, uuid) key
still does, plainly. A reported hash leads back to the row through `migration-assets
locate`, which prints where the row is, never its key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._serdes import serialize_value

from migration_assets.db.errors import MigrationError
from migration_assets.db.keyhash import (
    is_surrogate,
    label,
    load_secret,
    parse_label,
    unwrap_record,
)
from migration_assets_tests.conftest import Databases, Migration, MigrationFactory
from migration_assets_tests.helpers import run_cli

SCHEMA = """
CREATE SCHEMA ward;
CREATE TABLE ward.charts (mrn text PRIMARY KEY, email text NOT NULL, note text);
CREATE TABLE ward.contacts (email text PRIMARY KEY, mrn text REFERENCES ward.charts (mrn));
CREATE TABLE ward.visits (
    id bigint PRIMARY KEY, mrn text NOT NULL REFERENCES ward.charts (mrn), note text
);
CREATE TABLE ward.tags (mrn text, tag text);
"""
ROWS = """
INSERT INTO ward.charts
SELECT 'MRN' || lpad(i::text, 8, '0'), 'patient' || i || '@clinic.example', 'note ' || i
FROM generate_series(1, 600) i;
INSERT INTO ward.contacts
SELECT 'kin' || i || '@family.example', 'MRN' || lpad(i::text, 8, '0')
FROM generate_series(1, 100) i;
INSERT INTO ward.visits SELECT i, 'MRN' || lpad((1 + i % 600)::text, 8, '0'), 'visit ' || i
FROM generate_series(1, 400) i;
INSERT INTO ward.tags SELECT 'MRN' || lpad(i::text, 8, '0'), 'allergy-' || i
FROM generate_series(1, 50) i;
ANALYZE;
"""
PLAN_ARGS = ["--rows-per-partition", "200", "--split-above", "100", "--min-partitions", "2"]
MISSING, CHANGED = "MRN00000017", "MRN00000421"
ORPHAN = "stranger@nowhere.example"


# ------------------------------------------------------------------ pure


def test_surrogate_keys_are_integers_and_uuids_only() -> None:
    assert is_surrogate(["integer"])
    assert is_surrogate(["bigint", "smallint"])  # composite of integers
    assert is_surrogate(["uuid"])
    assert not is_surrogate(["text"])
    assert not is_surrogate(["character varying(20)"])  # an MRN
    assert not is_surrogate(["bigint", "text"])  # composite with a natural column
    assert not is_surrogate(["date"])  # a birth date is an identifier too
    assert not is_surrogate(["numeric"])
    assert not is_surrogate([])  # no key: the "key" is the whole row


def test_labels_are_keyed_and_parse_back() -> None:
    one, other = b"s" * 32, b"t" * 32
    assert label("MRN1", one) == label("MRN1", one)
    assert label("MRN1", one) != label("MRN1", other), "without the secret, no guessing"
    assert label("MRN1", one).startswith("key#")
    assert label("MRN1", one, prefix="row#").startswith("row#")
    assert len(label("MRN1", one)) == len("key#") + 12
    assert parse_label(label("MRN1", one)) == ("key", label("MRN1", one)[4:])
    assert parse_label("3f9a1c2b7d4e") == (None, "3f9a1c2b7d4e")
    with pytest.raises(ValueError, match="not a reported key hash"):
        parse_label("MRN00000017")


def test_secret_is_the_setting_or_one_file_made_once(tmp_path: Path) -> None:
    env = {"DAGSTER_HOME": str(tmp_path)}
    with pytest.raises(MigrationError, match="there is no"):
        load_secret(env, create=False)
    first = load_secret(env)
    assert stat.S_IMODE(os.stat(tmp_path / "key_secret").st_mode) == 0o600
    assert load_secret(env) == first == load_secret(env, create=False)
    assert load_secret({**env, "MIGRATION_KEY_SECRET": "x" * 20}) == b"x" * 20
    with pytest.raises(MigrationError, match="shorter than 16"):
        load_secret({"MIGRATION_KEY_SECRET": "short"})
    with pytest.raises(MigrationError, match="MIGRATION_KEY_SECRET"):
        load_secret({})


# ------------------------------------------------------------------ real servers


@pytest.mark.integration
def test_record_text_unwraps_as_the_server_prints_the_column(databases: Databases) -> None:
    """FK samples arrive as ROW(k)::text, bisection keys as k::text: one hash for both."""
    values = ["plain", "a b", 'qu"ote', "back\\slash", "(paren)", "com,ma", "", ' "\\(,)" ']
    with psycopg.connect(databases.target()) as conn:
        for value in values:
            row = conn.execute("SELECT ROW(%s::text)::text, %s::text", [value, value]).fetchone()
            assert row is not None
            assert unwrap_record(row[0]) == row[1] == value


def _ward(migration: MigrationFactory, databases: Databases, mp: pytest.MonkeyPatch) -> Migration:
    source, target = databases.existing_pair(SCHEMA, ROWS, mp)
    m = migration(source_url=source, target_url=target)
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    code, output = run_cli(["verify"])
    assert code == 0, output
    return m


def _corrupt(m: Migration) -> None:
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM ward.visits WHERE mrn = %s", [MISSING])
        conn.execute("DELETE FROM ward.contacts WHERE mrn = %s", [MISSING])
        conn.execute("DELETE FROM ward.charts WHERE mrn = %s", [MISSING])
        conn.execute("UPDATE ward.charts SET note = 'edited' WHERE mrn = %s", [CHANGED])
        conn.execute("INSERT INTO ward.contacts VALUES (%s, 'MRN99999999')", [ORPHAN])
        conn.execute("UPDATE ward.visits SET note = 'edited' WHERE id = 123")
        conn.execute("UPDATE ward.tags SET tag = 'edited' WHERE tag = 'allergy-7'")


def _everything_written(m: Migration, report_dir: Path, verify_output: str) -> dict[str, str]:
    """Verify output, every event of every run in the instance, the report files."""
    haystacks = {"verify output": verify_output}
    instance = dg.DagsterInstance.from_config(str(m.dagster_home))
    for run in instance.get_runs():
        haystacks[f"run {run.run_id}"] = "\n".join(
            serialize_value(event) for event in instance.all_logs(run.run_id)
        )
    for path in report_dir.iterdir():
        haystacks[path.name] = path.read_text()
    return haystacks


@pytest.mark.integration
def test_natural_keys_are_reported_as_keyed_hashes_and_located(
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
    isolated_cwd: Path,
) -> None:
    m = _ward(migration, databases, monkeypatch)
    _corrupt(m)
    code, output = run_cli(["verify"])
    assert code == 1, output
    code, report_output = run_cli(["report", "--out", str(isolated_cwd / "audit")])
    assert code == 1, report_output

    with psycopg.connect(m.source_url) as conn:
        needles = {r[0] for r in conn.execute("SELECT mrn FROM ward.charts")}
        needles |= {r[0] for r in conn.execute("SELECT email FROM ward.charts")}
        needles |= {r[0] for r in conn.execute("SELECT email FROM ward.contacts")}
        needles |= {r[0] for r in conn.execute("SELECT tag FROM ward.tags")}
    needles.add(ORPHAN)
    haystacks = _everything_written(m, isolated_cwd / "audit", output)
    assert len(haystacks) > 5
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"a natural key or row value leaked into {where}"
    secret = load_secret({"DAGSTER_HOME": str(m.dagster_home)}, create=False)
    missing, changed = label(MISSING, secret), label(CHANGED, secret)
    orphan = label(ORPHAN, secret)
    everything = "\n".join(haystacks.values())
    for wanted in (missing, changed, orphan):
        assert wanted in haystacks["verify output"], f"{wanted} not reported by verify"
        assert wanted in everything
    assert missing in haystacks["audit-0001.json"], "the report names the row by its hash"
    assert orphan in haystacks["audit-0001.md"], "the report's problems name the orphan's hash"
    assert "row#" in haystacks["verify output"], "a key-less table's row is named by hash"
    assert "different 123" in haystacks["verify output"], "integer keys stay plain"

    # the operator turns a hash back into the row, on the source...
    code, located = run_cli(["locate", missing])
    assert code == 0, located
    assert MISSING not in located
    select = next(line.strip() for line in located.splitlines() if "WHERE ctid" in line)
    assert select.startswith("SELECT * FROM ONLY ward.charts WHERE ctid = '(")
    with psycopg.connect(m.source_url) as conn:
        assert conn.execute(select.encode()).fetchall()[0][0] == MISSING
    # ... and an orphan, which exists on the target only
    code, located = run_cli(["locate", orphan, "--on", "target", "--table", "ward.contacts"])
    assert code == 0, located
    assert ORPHAN not in located
    assert run_cli(["locate", orphan, "--table", "ward.contacts"])[0] == 1, "not on the source"
    code, located = run_cli(["locate", "key#000000000000"])
    assert code == 1
    assert "no row" in located
    code, located = run_cli(["locate", "123", "--table", "ward.visits"])
    assert code == 2, "a surrogate-key table has no hashes, nor is '123' one"
