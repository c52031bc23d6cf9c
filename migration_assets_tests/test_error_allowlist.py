"""PostgreSQL's words pass through an allowlist: a data error, or anything a trigger or a
function raises, reaches logs, Dagster's event log, exceptions and reports only as its
SQLSTATE, the objects' names and a fixed explanation of ours.

Each table below holds one recognisable value; on the target an ALWAYS trigger (it fires
under the load's session_replication_role = replica) turns that value into one kind of error
PostgreSQL would write it into: out of range, invalid input, enum input, unique, foreign
key, check and not-null violations, and a trigger's own RAISE, in its message and DETAIL.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from migration_assets.db.errors import DATA_ERRORS, safe_message
from migration_assets_tests.conftest import Databases, MigrationFactory
from migration_assets_tests.helpers import run_cli

pytestmark = pytest.mark.integration

# table -> (the value it holds, the SQLSTATE its load must end in, what the trigger does)
CASES: dict[str, tuple[str, str, str]] = {
    "integer_range": ("9191919191", "22003", "PERFORM NEW.v::int"),
    "float_range": ("7.31e777", "22003", "PERFORM NEW.v::float8"),
    "bad_syntax": ('MRN-QX"7731', "22P02", "PERFORM NEW.v::int"),
    "enum_input": ("grumpy-4711", "22P02", "PERFORM NEW.v::lab.mood"),
    "unique_key": ("jane.roe@example.org", "23505", "INSERT INTO lab.seen VALUES (NEW.v)"),
    "foreign_key": (
        "MRN-0077-FK",
        "23503",
        "PERFORM set_config('session_replication_role', 'origin', true); "
        "INSERT INTO lab.child VALUES (NEW.v)",
    ),
    "check_rule": ("MRN-5151-CK", "23514", "INSERT INTO lab.checked VALUES (NEW.v)"),
    "not_null": ("MRN-6262-NN", "23502", "INSERT INTO lab.required VALUES (NEW.v, NULL)"),
    "raised": (
        "MRN-8383-RX",
        "P0001",
        "RAISE EXCEPTION 'patient % refused', NEW.v USING DETAIL = 'mrn ' || NEW.v",
    ),
    "raised_other": (
        "MRN-9494-PV",
        "42501",
        "RAISE EXCEPTION 'no access to %', NEW.v USING ERRCODE = '42501'",
    ),
}

SOURCE_DDL = "CREATE SCHEMA lab; CREATE TYPE lab.mood AS ENUM ('calm', 'tense');" + "".join(
    f"CREATE TABLE lab.{t} (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);"
    for t in CASES
)
SOURCE_ROWS = "".join(
    f"INSERT INTO lab.{t} (v) VALUES ($v${v}$v$);" for t, (v, _, _) in CASES.items()
)
TARGET_ONLY = """
CREATE TABLE lab.seen (v text UNIQUE);
INSERT INTO lab.seen VALUES ('jane.roe@example.org');
CREATE TABLE lab.parent (v text PRIMARY KEY);
CREATE TABLE lab.child (v text REFERENCES lab.parent);
CREATE TABLE lab.checked (v text CHECK (v = 'ok'));
CREATE TABLE lab.required (v text NOT NULL, w text NOT NULL);
"""


def _triggers() -> str:
    return "".join(
        f"CREATE FUNCTION lab.{t}_load() RETURNS trigger LANGUAGE plpgsql AS "
        f"$f$ BEGIN {body}; RETURN NEW; END $f$;"
        f"CREATE TRIGGER {t}_load BEFORE INSERT ON lab.{t} "
        f"FOR EACH ROW EXECUTE FUNCTION lab.{t}_load();"
        f"ALTER TABLE lab.{t} ENABLE ALWAYS TRIGGER {t}_load;"
        for t, (_, _, body) in CASES.items()
    )


def _everything_written(home: Path, audit: Path) -> dict[str, bytes]:
    """Every byte the migration left: Dagster's instance (its SQLite event log, every run's
    events and metadata) and the audit report's files."""
    return {
        str(path): path.read_bytes()
        for root in (home, audit)
        for path in root.rglob("*")
        if path.is_file()
    }


def test_no_value_of_a_failed_load_reaches_output_event_log_or_report(
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
    isolated_cwd: Path,
) -> None:
    source, target = databases.existing_pair(SOURCE_DDL, SOURCE_ROWS, monkeypatch)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(TARGET_ONLY)
        conn.execute(_triggers())
    m = migration(source_url=source, target_url=target)
    code, output = run_cli(["plan", "--out", str(m.plan_path)])
    assert code == 0, output
    code, migrated = run_cli(["migrate", "--workers", "1"])
    assert code == 1, migrated
    code, verified = run_cli(["verify"])
    assert code == 1, verified
    code, reported = run_cli(["report", "--out", str(isolated_cwd / "audit")])
    assert code == 1, reported

    flat = " ".join(migrated.split())
    for table, (_, sqlstate, _) in CASES.items():
        said = re.search(rf"lab\.{table} slice 000: \[{sqlstate}\] ", flat)
        assert said, f"lab.{table} did not fail with {sqlstate}: {flat}"
    assert DATA_ERRORS["23505"] in flat, "a data error is explained in our words"
    assert "raised in function lab.raised_load" in flat, "the function is named"

    written = {"migrate": migrated, "verify": verified, "report": reported}
    stored = _everything_written(m.dagster_home, isolated_cwd / "audit")
    assert any(name.endswith(".md") for name in stored), "the report was written"
    assert any("runs" in name or name.endswith(".db") for name in stored), stored.keys()
    for table, (value, _, _) in CASES.items():
        for where, text in written.items():
            assert value not in text, f"{table}'s value reached the {where} output"
        for where, data in stored.items():
            assert value.encode() not in data, f"{table}'s value reached {where}"


@pytest.mark.parametrize(
    ("statement", "sqlstate"),
    [
        ("SELECT 'MRN-1212'::int", "22P02"),
        ("SELECT '99999999999'::int", "22003"),
        ("SELECT 'MRN-1212'::uuid", "22P02"),
        ("SELECT 1 / 0", "22012"),
        ("DO $$ BEGIN RAISE EXCEPTION 'MRN-1212 %', 'refused'; END $$", "P0001"),
    ],
)
def test_the_server_s_own_words_are_withheld_for_data_errors(
    databases: Databases, statement: str, sqlstate: str
) -> None:
    with psycopg.connect(databases.target()) as conn, pytest.raises(psycopg.Error) as raised:
        conn.execute(statement.encode())
    message = safe_message(raised.value)
    assert message.startswith(f"[{sqlstate}] "), message
    assert "MRN-1212" not in message
    assert "99999999999" not in message
    assert "withheld" in message
