"""Files and directories only their owner may read, whatever the umask.

Plans, reports, env files with passwords, Dagster's instance directory (its storage holds
every event and metadata entry of the migration) are written by a tool that handles patient
data on shared machines: under the usual umask (022) they would be readable by every local
user. Every file the tool writes goes through here: created 0600 under a fresh, unguessable
name in its directory (O_EXCL: never through a name someone else prepared), then renamed
into place, so a reader sees the old file or the whole new one, never a part.

Modes are set explicitly (chmod after mkdir, fchmod after open): a umask can only take bits
away, so asking for 0700 under umask 0277 would give 0500.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def _make_missing(directory: Path) -> None:
    """Create `directory` and its missing parents, each 0700; leave existing ones as they
    are (the working directory a plan is written into is not ours to change)."""
    missing = []
    for candidate in [directory, *directory.parents]:
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            path.mkdir(mode=DIR_MODE)
            os.chmod(path, DIR_MODE)


def private_dir(path: Path | str) -> Path:
    """`path` and any missing parents created 0700, and `path` itself 0700 (an existing one
    too: what is put in it is as private as the directory)."""
    directory = Path(path)
    _make_missing(directory)
    os.chmod(directory, DIR_MODE)
    return directory


def create_exclusive(path: Path | str) -> BinaryIO:
    """A new file at `path`, 0600, open for writing; FileExistsError if anything (a file, a
    symlink, dangling or not) already has the name: nothing is ever written through it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    handle = os.fdopen(fd, "wb")
    os.fchmod(fd, FILE_MODE)  # a umask can only take bits away: set them
    return handle


def write_private(path: Path | str, content: str | bytes) -> Path:
    """`content` into `path`, 0600, through a fresh temporary file renamed into place (a
    symlink planted at `path` is replaced, not followed). Missing directories are made 0700."""
    target = Path(path)
    _make_missing(target.parent)
    data = content.encode("utf-8") if isinstance(content, str) else content
    aside = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    handle = create_exclusive(aside)  # before the cleanup below: a name in use is not ours
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(aside, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()
        raise
    return target
