"""Files and directories only their owner may read, whatever the umask.

Plans, reports, env files with passwords, Dagster's instance directory (its storage holds
every event and metadata entry of the migration) are written by a tool that handles patient
data on shared machines: under the usual umask (022) they would be readable by every local
user. Every file the tool writes goes through here: created 0600 under a fresh, unguessable
name in its directory (O_EXCL: never through a name someone else prepared), then renamed
into place, so a reader sees the old file or the whole new one, never a part.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path | str) -> Path:
    """`path` and any missing parents created, and `path` itself 0700 (an existing one
    too: what is put in it is as private as the directory)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(directory, DIR_MODE)
    return directory


def write_private(path: Path | str, content: str | bytes) -> Path:
    """`content` into `path`, 0600, through a fresh temporary file renamed into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    data = content.encode("utf-8") if isinstance(content, str) else content
    aside = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)  # a umask can only take bits away: set them
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(aside, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()
        raise
    return target
