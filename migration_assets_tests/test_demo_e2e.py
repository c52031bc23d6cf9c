"""`migration-assets demo` as a new user runs it, checked by an independent comparison."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from migration_assets_tests.helpers import assert_equal_databases

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, raw = line.removeprefix("export ").partition("=")
        values[key] = raw.strip("'")
    return values


def test_demo_ends_with_every_table_equal(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "migration_assets.cli",
            "demo",
            "--patients",
            "800",
            "--keep",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )
    output = proc.stdout + proc.stderr
    match = re.search(r"are in (\S+/stack\.env)", output)
    assert match, output
    env_file = Path(match.group(1))
    try:
        assert proc.returncode == 0, output
        assert "every partition verified" in output
        values = _env_file_values(env_file)
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        for secret in (values["DAGSTER_PG_PASSWORD"],):
            assert secret not in output, "the demo printed a password"
        digests = assert_equal_databases(values["SOURCE_DATABASE_URL"], values["SUPABASE_DB_URL"])
        assert digests["public.patients"][0] == 800
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "migration_assets.cli", "stack", "down", str(env_file.parent)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert down.returncode == 0, down.stdout + down.stderr
    assert not env_file.parent.exists()
