"""One resource per database, handing out pinned connections; one for the non-secret knobs.

Values come from the one `Settings` model (environment or `.env`) of the process that builds
the definitions: the CLI, or the code location (and each run worker that loads it). Knobs
are config fields, shown with every run. Secrets are not: Dagster stores a resource's config
values in every run's job snapshot, so the URLs and the key secret travel as `Secrets`, a
plain object the databases depend on, which Dagster neither reads nor stores.
"""

# No `from __future__ import annotations`: Dagster reads `ResourceDependency` fields at runtime.

from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr, SecretStr

from migration_assets.db.dsn import (
    SOURCE_TLS_VERIFY,
    is_local_dsn,
    judge_source_tls,
    judge_target_tls,
    mask_dsn,
    with_params,
)
from migration_assets.db.errors import MigrationError
from migration_assets.db.keyhash import load_secret
from migration_assets.db.session import (
    DEFAULT_TIMEOUTS,
    Connection,
    Spare,
    Timeouts,
    connect,
    open_pinned,
)
from migration_assets.defs.liveness import Heartbeat
from migration_assets.defs.shipped import shipped_file
from migration_assets.settings import Settings


@dataclass(frozen=True)
class Secrets:
    """The settings that must never be stored with a run or shown (no repr): the URLs with
    their passwords, and the secret that names natural keys in reports."""

    source_url: str = field(default="", repr=False)
    target_url: str = field(default="", repr=False)
    pooler_url: str = field(default="", repr=False)
    key_secret: str = field(default="", repr=False)
    home: Path | None = None  # DAGSTER_HOME, where the key secret is kept when not given

    @classmethod
    def from_settings(cls, settings: Settings) -> "Secrets":
        def text(value: SecretStr | None) -> str:
            return value.get_secret_value() if value is not None else ""

        return cls(
            source_url=text(settings.source_database_url),
            target_url=text(settings.supabase_db_url),
            pooler_url=text(settings.supabase_pooler_url),
            key_secret=text(settings.migration_key_secret),
            home=settings.dagster_home,
        )

    def key(self) -> bytes:
        """MIGRATION_KEY_SECRET, else the secret kept in DAGSTER_HOME (created once)."""
        return load_secret(self.key_secret, self.home)


class MigrationOptions(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Non-secret knobs from the settings, shown with every run's resources. No defaults of
    their own: `Settings` defines each once (`from_settings`)."""

    schema_mode: str
    alembic_config: str = ""  # "": unset (the lookup in `alembic_ini`)
    pg_bin: str = ""  # "": unset (the bundled PostgreSQL)
    defer_indexes_above: int
    plan_path: str = ""  # the plan file the definitions were built from (MIGRATION_PLAN)
    settings_shown: dict[str, str] = {}  # every setting as it may be shown (masked)

    @classmethod
    def from_settings(cls, settings: Settings) -> "MigrationOptions":
        plan = settings.migration_plan  # `build_resources` sets it to the plan it was given
        return cls(
            schema_mode=settings.migration_schema_mode.value,
            alembic_config=str(settings.migration_alembic_config or ""),
            pg_bin=str(settings.migration_pg_bin or ""),
            defer_indexes_above=settings.migration_defer_indexes_above,
            plan_path=str(plan.resolve()) if plan else "",
            settings_shown=settings.describe(),
        )

    def alembic_ini(self) -> Path:
        """MIGRATION_ALEMBIC_CONFIG, else ./alembic.ini (the app being migrated is usually
        the working directory), else the clinic schema's that comes with this package."""
        if self.alembic_config:
            return Path(self.alembic_config)
        local = Path.cwd() / "alembic.ini"
        return local if local.is_file() else shipped_file("alembic.ini")


class _Database(dg.ConfigurableResource):  # type: ignore[type-arg]
    """What both databases' connections share: the limits every session of ours gets, from
    the settings (MIGRATION_NETWORK_TIMEOUT, MIGRATION_STATEMENT_TIMEOUT), shown with each
    run's resources; `db/` receives them as arguments."""

    network_timeout: int = DEFAULT_TIMEOUTS.network
    statement_timeout: str = DEFAULT_TIMEOUTS.statement

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(network=self.network_timeout, statement=self.statement_timeout)


class SourceDatabase(_Database):
    """The clinic's current database; we only read from it. A non-local one is reached with
    verified TLS unless `tls` is `unverified`, judged here before any connect (as the target
    is): a run's settings may come from elsewhere than the CLI that checked them."""

    secrets: dg.ResourceDependency[Secrets]
    sslrootcert: str = ""  # SOURCE_SSLROOTCERT, unless the URL names its own
    tls: str = SOURCE_TLS_VERIFY  # MIGRATION_SOURCE_TLS
    _checked: bool = PrivateAttr(default=False)
    _spare: Spare = PrivateAttr(default_factory=Spare)

    @property
    def url(self) -> str:
        return self.secrets.source_url

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._spare.close()

    @property
    def dsn(self) -> str:
        """The URL with the CA of SOURCE_SSLROOTCERT, for tools that connect on their own."""
        return with_params(self.url, sslrootcert=self.sslrootcert or None)

    @property
    def local(self) -> bool:
        return is_local_dsn(self.url)

    def _ensure_safe(self) -> None:
        if self._checked:
            return
        verdict = judge_source_tls(self.url, sslrootcert=self.sslrootcert or None, policy=self.tls)
        if not verdict.ok:
            raise MigrationError(verdict.problem)
        self._checked = True

    def _open(self, *, autocommit: bool = False) -> Connection:
        self._ensure_safe()
        return open_pinned(
            self.url,
            setting="SOURCE_DATABASE_URL",
            timeouts=self.timeouts,
            sslrootcert=self.sslrootcert or None,
            autocommit=autocommit,
        )

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[Connection]:
        with closing(self._open(autocommit=autocommit)) as conn:
            yield conn

    def lend(self) -> AbstractContextManager[Connection]:
        """The run's spare connection, for steps that run one after another (`Spare`)."""
        return self._spare.lend(self._open)

    @property
    def shown(self) -> str:
        return mask_dsn(self.url)


class TargetDatabase(_Database):
    """Supabase over the direct connection; TLS rules are enforced before any connect."""

    secrets: dg.ResourceDependency[Secrets]
    sslrootcert: str = ""
    _checked: bool = PrivateAttr(default=False)
    _heartbeat: Heartbeat | None = PrivateAttr(default=None)
    _spare: Spare = PrivateAttr(default_factory=Spare)

    @property
    def url(self) -> str:
        return self.secrets.target_url

    @property
    def pooler_url(self) -> str:
        return self.secrets.pooler_url

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run that may hold the target beats while it lives (see defs/liveness.py)."""
        if context.instance is not None and context.run is not None:
            self._heartbeat = Heartbeat(context.instance, context.run.run_id)
            self._heartbeat.start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._spare.close()
        if self._heartbeat is not None:
            self._heartbeat.stop()

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

    def _open(self, *, autocommit: bool = False) -> Connection:
        self._ensure_safe()
        return open_pinned(
            self.url,
            setting="SUPABASE_DB_URL",
            timeouts=self.timeouts,
            sslrootcert=self.sslrootcert or None,
            autocommit=autocommit,
            guard_server=True,
        )

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[Connection]:
        with closing(self._open(autocommit=autocommit)) as conn:
            yield conn

    def lend(self) -> AbstractContextManager[Connection]:
        """The run's spare connection, for steps that run one after another (`Spare`)."""
        return self._spare.lend(self._open)

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
            timeouts=self.timeouts,
            sslrootcert=self.sslrootcert or None,
            autocommit=True,
            pin=False,
            prepare_threshold=None,
        ) as conn:
            yield conn

    @property
    def shown(self) -> str:
        return mask_dsn(self.url)
