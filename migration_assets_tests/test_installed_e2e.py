"""The wheel as a user installs it: built, installed into a fresh venv, run far from the checkout.

A checkout hides what a wheel lacks: files found beside the package, modules served by the
editable install. So this test builds the wheel from the checkout's files, installs it with
the pinned constraints into a new venv (from the package registry; pip's cache makes it
quick) and, from an empty directory, does what a user does: `migration-assets demo`, then
loads the code location `migration-assets ui` serves. Last, the wheel must hold exactly the
package's files and the top-level files the tool reads (`alembic.ini`, `alembic/`,
`workspace.yaml`), so a new module or data file left out of pyproject.toml fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from migration_assets.settings import SETTING_NAMES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SHIPPED_IN = "migration_assets/shipped/"  # where the wheel carries the top-level files
TOP_LEVEL = ("alembic.ini", "workspace.yaml", "alembic")  # what the tool reads beside the package
# An absolute path as the CLI prints it: not part of a URL, a ratio or an asset key.
PRINTED_PATH = re.compile(r"(?<![\w:/.\-])(/[\w.\-/]+)")
UI_COMMAND = (
    "import json; from migration_assets.cli.ui import dagster_dev_command; "
    "print(json.dumps(dagster_dev_command(3000)))"
)


def _run(args: Sequence[str | Path], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run to the end; fail with what it printed unless it exits 0."""
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(str(a) for a in args[:4])} …: {output}"
    return output


@contextmanager
def _searchable_dir() -> Iterator[Path]:
    """For the venv: as root the demo's servers run as another account, which must reach the
    venv's PostgreSQL binaries (under pytest's 0700 tmp it would copy them to /tmp each run)."""
    path = Path(tempfile.mkdtemp(prefix="migration-assets-wheel-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _source_tree(dest: Path) -> Path:
    """The files a commit of this checkout would hold: tracked, or new and not ignored
    (no .venv, no build/ left over from an older build)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the worktree is not there
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _user_env(venv: Path) -> dict[str, str]:
    """An activated venv with none of the suite's settings, paths or interpreter."""
    drop = {*SETTING_NAMES, "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _install(source: Path, dist: Path, venv: Path) -> Path:
    """`pip wheel`, a venv of the interpreter running the suite, `pip install -c` into it."""
    env = _user_env(venv)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source],
        cwd=source,
        env=env,
        timeout=300,
    )
    (wheel,) = dist.glob("migration_assets-*.whl")
    _run([sys.executable, "-m", "venv", venv], cwd=dist, env=env, timeout=120)
    _run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            source / "constraints.txt",
            wheel,
        ],
        cwd=dist,
        env=env,
        timeout=900,
    )
    return wheel


def _expected_files(source: Path) -> set[str]:
    """The package's files and, under SHIPPED_IN, the top-level files the tool reads."""

    def files(top: Path) -> set[str]:
        paths = top.rglob("*") if top.is_dir() else [top]
        return {p.relative_to(source).as_posix() for p in paths if p.is_file()}

    shipped = set().union(*(files(source / name) for name in TOP_LEVEL))
    return files(source / "migration_assets") | {SHIPPED_IN + name for name in shipped}


def _wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {n for n in archive.namelist() if ".dist-info/" not in n}


def _assert_evidence_kept(output: str, elsewhere: Path, env: dict[str, str], venv: Path) -> None:
    """Every path the demo printed is still there; its two reports (migrate's, then the one
    after verify) are private, in ./migration-demo; the summary says the UI history went
    with the servers and how to keep it."""
    printed = [Path(p) for p in PRINTED_PATH.findall(output)]
    missing = [str(p) for p in printed if not p.exists()]
    assert not missing, f"the demo printed paths that are gone: {missing}\n{output}"
    reports = [Path(p) for p in re.findall(r"audit report: (\S+\.md)", output)]
    assert len(reports) == 2, output
    folder = reports[-1].parent
    assert folder.parent == elsewhere / "migration-demo", output
    for path in (folder.parent, folder):
        assert oct(path.stat().st_mode & 0o777) == "0o700", path
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {"0o600"}
    # The chain is keyed with the demo's secret, which went with its servers (DAGSTER_HOME):
    # nobody can authenticate it now, and the check says so instead of passing it.
    checked = subprocess.run(
        [str(venv / "bin" / "migration-assets"), "report", "--check", str(folder)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "MIGRATION_KEY_SECRET" in checked.stdout + checked.stderr
    assert "`migration-assets demo --keep`" in output, output


@pytest.mark.timeout(1800)
def test_the_installed_wheel_runs_the_demo_and_loads_anywhere(tmp_path: Path) -> None:
    with _searchable_dir() as scratch:
        venv = scratch / "venv"
        source = _source_tree(tmp_path / "source")
        wheel = _install(source, tmp_path / "dist", venv)
        env = _user_env(venv)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        output = _run(
            [venv / "bin" / "migration-assets", "demo", "--patients", "200"],
            cwd=elsewhere,
            env=env,
            timeout=600,
        )
        assert re.search(r"\b(\d+) of \1 checks passed", output), output
        _assert_evidence_kept(output, elsewhere, env, venv)
        command = json.loads(
            _run([venv / "bin" / "python", "-c", UI_COMMAND], cwd=elsewhere, env=env, timeout=60)
        )
        served = command[command.index("dev") + 1 : command.index("--host")]
        if served[0] == "-w":  # the workspace `ui` serves is the installed package's
            assert Path(served[1]).is_relative_to(venv), served
        for target in (["-m", "migration_assets.definitions"], served):
            _run(
                [venv / "bin" / "dagster", "definitions", "validate", *target],
                cwd=elsewhere,
                env=env,
                timeout=300,
            )
        assert _wheel_files(wheel) == _expected_files(source)
