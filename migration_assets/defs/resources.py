"""One resource per database; each hands out pinned connections and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import PrivateAttr

from migration_assets.db.dsn import judge_target_tls, mask_dsn
from migration_assets.db.errors import MigrationError
from migration_assets.db.session import Connection, connect


class SourceDatabase(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The clinic's current database; we only read from it."""

    url: str

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[Connection]:
        with connect(self.url, setting="SOURCE_DATABASE_URL", autocommit=autocommit) as conn:
            yield conn

    @property
    def shown(self) -> str:
        return mask_dsn(self.url)


class TargetDatabase(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Supabase over the direct connection; TLS rules are enforced before any connect."""

    url: str
    sslrootcert: str = ""
    pooler_url: str = ""
    _checked: bool = PrivateAttr(default=False)

    def _ensure_safe(self) -> None:
        if self._checked:
            return
        cert = self.sslrootcert or None
        for setting, value in (
            ("SUPABASE_DB_URL", self.url),
            ("SUPABASE_POOLER_URL", self.pooler_url),
        ):
            if value:
                verdict = judge_target_tls(value, setting=setting, sslrootcert=cert)
                if not verdict.ok:
                    raise MigrationError(verdict.problem)
        self._checked = True

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[Connection]:
        self._ensure_safe()
        with connect(
            self.url,
            setting="SUPABASE_DB_URL",
            sslrootcert=self.sslrootcert or None,
            autocommit=autocommit,
            guard_server=True,
        ) as conn:
            yield conn

    @contextmanager
    def connect_pooler(self) -> Iterator[Connection]:
        """Through the transaction pooler, as the application will: no prepared statements."""
        self._ensure_safe()
        if not self.pooler_url:
            raise MigrationError(
                "SUPABASE_POOLER_URL is not set: give the transaction pooler URL (port 6543)"
            )
        with connect(
            self.pooler_url,
            setting="SUPABASE_POOLER_URL",
            sslrootcert=self.sslrootcert or None,
            autocommit=True,
            pin=False,
            prepare_threshold=None,
        ) as conn:
            yield conn

    @property
    def shown(self) -> str:
        return mask_dsn(self.url)
