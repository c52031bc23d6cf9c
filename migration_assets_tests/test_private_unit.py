"""Owner-only files and directories, whatever the umask, never through a planted name."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from migration_assets import private
from migration_assets.db.keyhash import SECRET_FILE, load_secret

pytestmark = pytest.mark.unit

UMASKS = [0o000, 0o022, 0o277]


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for one test, restored afterwards."""
    previous = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("umask", UMASKS, indirect=True, ids=oct)
def test_write_private_makes_the_file_and_every_directory_it_creates_owner_only(
    umask: int, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "new" / "deeper" / "plan.json"
    private.write_private(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / "deeper") == 0o700
    assert _mode(tmp_path) == 0o755, "a directory that existed is not ours to change"


@pytest.mark.parametrize("umask", UMASKS, indirect=True, ids=oct)
def test_private_dir_makes_a_new_or_existing_directory_owner_only(
    umask: int, tmp_path: Path
) -> None:
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    private.private_dir(existing)
    assert _mode(existing) == 0o700
    made = private.private_dir(tmp_path / "a" / "b")
    assert _mode(made) == 0o700
    assert _mode(tmp_path / "a") == 0o700


def test_a_planted_symlink_at_the_name_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    path = tmp_path / "app.env"
    path.symlink_to(victim)
    private.write_private(path, "DATABASE_URL=secret\n")
    assert victim.read_text() == "not yours\n"
    assert not path.is_symlink()
    assert path.read_text() == "DATABASE_URL=secret\n"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.env", "victim"], "a leftover"


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_name_planted_in_advance_cannot_be_used_for_the_temporary_file(
    planted: str, tmp_path: Path
) -> None:
    """The temporary file is created with O_EXCL: a name someone prepared (a symlink to a
    file of theirs, or a file they can read) is refused, and nothing is written through it."""
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    aside = tmp_path / ".plan.json.0123456789abcdef.tmp"
    if planted == "symlink":
        aside.symlink_to(victim)
    else:
        aside.write_text("")
    with pytest.raises(FileExistsError):
        private.create_exclusive(aside)
    assert victim.read_text() == "not yours\n"
    assert aside.is_symlink() is (planted == "symlink")
    if planted == "file":
        assert aside.read_text() == ""


def test_a_failed_write_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    in_the_way = tmp_path / "report.json"
    in_the_way.mkdir()  # os.replace onto a directory fails after the temporary file exists
    with pytest.raises(IsADirectoryError):
        private.write_private(in_the_way, "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert list(in_the_way.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022], indirect=True, ids=oct)
def test_the_generated_key_secret_and_its_directory_are_owner_only(
    umask: int, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    secret = load_secret("", home)
    assert len(secret) >= 16
    assert _mode(home) == 0o700
    assert _mode(home / SECRET_FILE) == 0o600
    assert load_secret("", home, create=False) == secret
    assert sorted(p.name for p in home.iterdir()) == [SECRET_FILE]
