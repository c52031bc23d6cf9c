"""benchmarks/run.py at a tiny scale, so the script cannot rot between real runs.

It asserts that the script works (every step ran, every copy moved every row, nothing
secret was printed), never how fast anything was: timings belong to the real runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
STEPS = {"baseline_a", "baseline_b", "migrate", "verify", "rerun"}
SETTING_PREFIXES = ("SOURCE_DATABASE_", "SUPABASE_", "MIGRATION_", "DAGSTER_")


def _run(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return json.loads(out.read_text()), output


def _assert_no_secrets(output: str) -> None:
    assert "password=" not in output
    assert "PGPASSWORD" not in output
    for line in output.splitlines():
        if "postgresql://" in line:
            assert ":***@" in line, line


def test_benchmark_runs_every_step_at_tiny_scale(tmp_path: Path) -> None:
    result, output = _run(tmp_path, "--rows", "3000", "--repeats", "1", "--workers", "2")
    steps = {s["key"]: s for s in result["steps"]}
    assert set(steps) == STEPS
    for step in steps.values():
        assert step["seconds"] > 0
        assert step["cpu_seconds"] > 0
        assert step["paired_ratio_to_baseline_a"] > 0
        assert len(step["runs"]) == 1
    assert steps["baseline_a"]["ratio_to_baseline_a"] == 1.0
    for key in ("baseline_a", "baseline_b", "migrate", "rerun"):
        assert steps[key]["row_check"] == "passed"
    assert result["row_checks_passed"] is True
    assert result["scale"]["rows"] > 2000
    assert result["rerun_copied_partitions"] == [0]
    for key in ("peak_tree_mb", "pss_at_peak_mb", "max_process_mb"):
        assert result["rss"][f"migrate_{key}"] > 0
    assert result["migrate_breakdown_median_repeat"]["partition_runs"] >= 1
    assert "| step | seconds (median) | rows/s | ratio to A |" in output
    small = result["small"]  # the 14-table database: every row moved, both steps timed
    assert (small["tables"], small["rows"]) == (14, 3400)
    assert small["migrate_seconds"] > 0
    assert small["baseline_a_seconds"] > 0
    assert "small database (14 tables, 3,400 rows" in output
    _assert_no_secrets(output)


def test_rss_scales_measures_migrate_at_each_scale(tmp_path: Path) -> None:
    result, output = _run(tmp_path, "--rss-scales", "1500,3000", "--workers", "1")
    scales = result["scales"]
    assert [s["requested_rows"] for s in scales] == [1500, 3000]
    assert scales[0]["rows"] < scales[1]["rows"]
    for scale in scales:
        assert scale["peak_tree_mb"] >= scale["pss_at_peak_mb"] > 0
        assert scale["migrate_seconds"] > 0
    assert result["row_checks_passed"] is True
    _assert_no_secrets(output)
