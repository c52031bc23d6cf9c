"""Every file the tool writes is its owner's alone, whatever the umask it was started with:
plans, DAGSTER_HOME and what Dagster puts there, the audit reports, the app's env file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from migration_assets.devstack.stack import DevStack
from migration_assets_tests.conftest import Databases, MigrationFactory

pytestmark = pytest.mark.integration

WARD = """
CREATE SCHEMA ward;
CREATE TABLE ward.beds (id int PRIMARY KEY, label text NOT NULL, occupied boolean);
"""
WARD_ROWS = "INSERT INTO ward.beds SELECT i, 'bed ' || i, i % 2 = 0 FROM generate_series(1, 60) i"


def _exposed(*roots: Path) -> list[str]:
    """Every path under `roots` (themselves included) that anyone but its owner may use."""
    found = []
    for root in roots:
        for path in [root, *root.rglob("*")]:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                found.append(f"{path} {stat.S_IMODE(mode):o}")
    return found


def _cli(args: list[str], cwd: Path) -> None:
    """The console script's code path in its own process, started under the usual umask."""
    proc = subprocess.run(
        [sys.executable, "-m", "migration_assets.cli", *args],
        cwd=cwd,
        umask=0o022,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{args[0]}: {proc.stdout}\n{proc.stderr}"


def test_every_file_the_cli_writes_is_owner_only_under_umask_022(
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
    isolated_cwd: Path,
) -> None:
    source, target = databases.existing_pair(WARD, WARD_ROWS, monkeypatch)
    m = migration(source_url=source, target_url=target)
    assert m.pooler_url, "the app env file needs the pooler (pgbouncer)"
    m.dagster_home.chmod(0o755)  # made by someone else's tooling: as the umask leaves it
    plan = isolated_cwd / "plans" / "plan.json"
    app_env = isolated_cwd / "deploy" / "app.env"
    monkeypatch.setenv("MIGRATION_PLAN", str(plan))
    _cli(["plan", "--out", str(plan)], isolated_cwd)
    _cli(["migrate", "--workers", "1"], isolated_cwd)
    _cli(["verify"], isolated_cwd)
    _cli(["cutover", "--no-freeze", "--yes", "--app-env", str(app_env)], isolated_cwd)
    assert plan.is_file()
    assert app_env.is_file()
    audit = m.dagster_home / "audit"
    assert any(audit.glob("*.json")), "the report chain is where the tests look for it"
    assert (m.dagster_home / "dagster.yaml").is_file()
    assert any(m.dagster_home.rglob("*.db")), "Dagster's own storage is checked too"
    assert _exposed(plan.parent, m.dagster_home, audit, app_env.parent) == []


def test_the_stack_env_file_is_private_and_never_written_through_a_planted_link(
    stack: DevStack, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    env_file = tmp_path / "kept" / "stack.env"
    env_file.parent.mkdir()
    env_file.symlink_to(victim)
    previous = os.umask(0o022)
    try:
        written = stack.write_env_file(env_file)
    finally:
        os.umask(previous)
    assert written == env_file
    untouched = victim.read_text() == "not yours\n"  # compared here: the file holds passwords
    assert untouched, "the env file was written through a planted link"
    assert not env_file.is_symlink()
    assert "export SOURCE_DATABASE_URL=" in env_file.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in env_file.parent.iterdir()) == ["stack.env"]
