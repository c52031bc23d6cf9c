"""`migration-assets demo` as a new user runs it, checked by an independent comparison.

Whatever it points at must be there: every path it prints exists when it has exited, its
audit reports outlive the servers, and its way into the Dagster UI reaches this very run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from migration_assets_tests.helpers import assert_equal_databases

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# An absolute path as the CLI prints it: not part of a URL, a ratio or an asset key.
PRINTED_PATH = re.compile(r"(?<![\w:/.\-])(/[\w.\-/]+)")


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
    reports = [Path(p) for p in re.findall(r"audit report: (\S+\.md)", output)]
    try:
        assert proc.returncode == 0, output
        assert "every partition verified" in output
        missing = [p for p in PRINTED_PATH.findall(output) if not Path(p).exists()]
        assert not missing, f"printed but not there: {missing}"
        values = _env_file_values(env_file)
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        for secret in (values["DAGSTER_PG_PASSWORD"],):
            assert secret not in output, "the demo printed a password"
        digests = assert_equal_databases(values["SOURCE_DATABASE_URL"], values["SUPABASE_DB_URL"])
        assert digests["public.patients"][0] == 800
        _assert_the_ui_hint_reaches_this_run(output, env_file, values, tmp_path)
        _assert_the_kept_chain_checks(output, reports, values, tmp_path)
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
    # the reports it printed (migrate's, then the one after verify) outlive the servers
    assert len(reports) == 2, output
    for report in reports:
        assert report.parent.parent == tmp_path / "migration-demo", report
        assert report.is_file(), report
        assert report.with_suffix(".json").is_file(), report


def _assert_the_ui_hint_reaches_this_run(
    output: str, env_file: Path, values: dict[str, str], cwd: Path
) -> None:
    """The printed commands name the env file, and its settings find this run's history:
    `status`, from the instance the UI would serve, counts every partition materialized."""
    assert f"set -a; . {env_file}; set +a\n  migration-assets ui" in output, output
    status = _cli(["status"], values, cwd)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "public/patients" in status.stdout, status.stdout


def _assert_the_kept_chain_checks(
    output: str, reports: list[Path], values: dict[str, str], cwd: Path
) -> None:
    """With --keep, the chain's secret and both anchors stay: the check it names passes."""
    folder = reports[-1].parent
    assert f"`migration-assets report --check {folder}`" in " ".join(output.split()), output
    checked = _cli(["report", "--check", str(folder)], values, cwd)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _cli(args: list[str], values: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command as a user runs it after `set -a; . stack.env`: only the env file's settings."""
    return subprocess.run(
        [sys.executable, "-m", "migration_assets.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
        env={**os.environ, **values},
    )
