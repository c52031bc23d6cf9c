"""Configuration from the environment or `.env`, validated before anything connects.

Every value is optional at load time: commands differ in what they need, and a user who
forgot three settings deserves one message naming all three (`Settings.require`).
Secrets are `SecretStr`; `Settings.describe` is the only way settings are shown.
"""

from __future__ import annotations

import urllib.parse
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from migration_assets.db.dsn import (
    SOURCE_TLS_UNVERIFIED,
    SOURCE_TLS_VERIFY,
    DsnError,
    is_transaction_pooler,
    judge_source_tls,
    judge_target_tls,
    mask_dsn,
    parse_dsn,
    with_params,
)
from migration_assets.db.keyhash import load_secret
from migration_assets.db.session import (
    DEFAULT_TIMEOUTS,
    MIN_NETWORK_TIMEOUT,
    Timeouts,
    parse_statement_timeout,
)


class SchemaMode(StrEnum):
    ALEMBIC = "alembic"
    EXISTING = "existing"
    PG_DUMP = "pg_dump"


class SourceTls(StrEnum):
    """How a non-local source must be reached: `verify` (verify-full with a CA, as the
    target) or `unverified` (accepted as it is, and recorded as such)."""

    VERIFY = SOURCE_TLS_VERIFY
    UNVERIFIED = SOURCE_TLS_UNVERIFIED


class SettingsError(Exception):
    """Configuration that cannot work; the message says what to set."""


HINTS: dict[str, str] = {
    "SOURCE_DATABASE_URL": "the clinic's current database (postgresql://user:pw@host:5432/db)",
    "SUPABASE_DB_URL": "the project's direct connection (port 5432) or session pooler URL",
    "SUPABASE_POOLER_URL": "the transaction pooler URL (port 6543) the application will use",
    "SUPABASE_SSLROOTCERT": "path of the project's CA certificate (prod-ca-2021.crt)",
    "SOURCE_SSLROOTCERT": "path of the CA certificate that signed the source server's",
    "MIGRATION_PLAN": "path of the plan file written by `migration-assets plan --out FILE`",
    "DAGSTER_HOME": "a directory for Dagster's run and check history (the audit trail)",
}


_NO_SESSION = (
    "uses port 6543, a transaction pooler: each statement may run on another server session, "
    "so the session settings, the snapshot a slice is read and checksummed in, and the locks "
    "a migration holds would not hold."
)
# The migration's own connections need a session of their own on either side.
POOLER_REFUSED: dict[str, str] = {
    "SOURCE_DATABASE_URL": (
        f"SOURCE_DATABASE_URL {_NO_SESSION} Connect to the database's own port (5432 by "
        "default) or to a pooler in session mode."
    ),
    "SUPABASE_DB_URL": (
        f"SUPABASE_DB_URL {_NO_SESSION} Use the direct connection (db.<ref>.supabase.co:5432) "
        "or the session pooler (port 5432 on the pooler host) for SUPABASE_DB_URL, and put "
        "the 6543 URL in SUPABASE_POOLER_URL."
    ),
}


class Settings(BaseSettings):
    """The names are a contract with users' shells and scripts: keep them exactly."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    source_database_url: SecretStr | None = Field(default=None, alias="SOURCE_DATABASE_URL")
    supabase_db_url: SecretStr | None = Field(default=None, alias="SUPABASE_DB_URL")
    supabase_pooler_url: SecretStr | None = Field(default=None, alias="SUPABASE_POOLER_URL")
    supabase_sslrootcert: Path | None = Field(default=None, alias="SUPABASE_SSLROOTCERT")
    source_sslrootcert: Path | None = Field(default=None, alias="SOURCE_SSLROOTCERT")
    # the CA of a non-local source's certificate (verify-full), as SUPABASE_SSLROOTCERT's
    migration_source_tls: SourceTls = Field(default=SourceTls.VERIFY, alias="MIGRATION_SOURCE_TLS")
    # `unverified`: a non-local source is accepted without verified TLS (and recorded so)
    migration_schema_mode: SchemaMode = Field(
        default=SchemaMode.ALEMBIC, alias="MIGRATION_SCHEMA_MODE"
    )
    migration_plan: Path | None = Field(default=None, alias="MIGRATION_PLAN")
    migration_key_secret: SecretStr | None = Field(default=None, alias="MIGRATION_KEY_SECRET")
    # HMAC secret naming natural keys in reports; unset: $DAGSTER_HOME/key_secret (keyhash.py)
    dagster_home: Path | None = Field(default=None, alias="DAGSTER_HOME")
    migration_target_connections: int = Field(
        default=4, ge=1, le=1000, alias="MIGRATION_TARGET_CONNECTIONS"
    )  # most connections the migration may hold on the target at once (UI pool limit)
    migration_defer_indexes_above: int = Field(
        default=100_000, alias="MIGRATION_DEFER_INDEXES_ABOVE"
    )  # cold tables with at least this many rows load without secondary indexes; -1: never
    migration_statement_timeout: str = Field(
        default=DEFAULT_TIMEOUTS.statement, alias="MIGRATION_STATEMENT_TIMEOUT"
    )
    # statement_timeout of every session of ours: seconds or a PostgreSQL duration; 0: none
    migration_network_timeout: int = Field(
        default=DEFAULT_TIMEOUTS.network, ge=MIN_NETWORK_TIMEOUT, alias="MIGRATION_NETWORK_TIMEOUT"
    )
    # seconds a silent network may take before a connection is given up
    migration_alembic_config: Path | None = Field(default=None, alias="MIGRATION_ALEMBIC_CONFIG")
    # the application's alembic.ini (default: ./alembic.ini, else this repository's)
    migration_pg_bin: Path | None = Field(default=None, alias="MIGRATION_PG_BIN")
    # a PostgreSQL bin directory for pg_dump/psql and the throwaway stack
    migration_webserver_url: str = Field(
        default="http://127.0.0.1:3000", alias="MIGRATION_WEBSERVER_URL"
    )  # the Dagster webserver (or `migration-assets ui`) that `migrate --submit` launches through

    @field_validator("migration_statement_timeout", mode="before")
    @classmethod
    def _valid_duration(cls, value: object) -> str:
        text = str(value).strip() or "0"
        parse_statement_timeout(text)  # ValueError names the setting and the forms it takes
        return text

    @field_validator("migration_webserver_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "MIGRATION_WEBSERVER_URL must be the http:// or https:// address the Dagster "
                "webserver serves, e.g. http://127.0.0.1:3000"
            )
        return value.strip()

    @model_validator(mode="after")
    def _refuse_unsafe_targets(self) -> Self:
        problems = self.problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def problems(self) -> list[str]:
        """Everything wrong with the values that are set; missing ones are `require`'s job."""
        found = self._missing_ca_files()
        for name, value in self._urls().items():
            try:
                parse_dsn(value)
            except DsnError as exc:
                found.append(f"{name}: {exc}")
                continue
            if name in POOLER_REFUSED and is_transaction_pooler(value):
                found.append(POOLER_REFUSED[name])
                continue
            verdict = (
                judge_source_tls(
                    value, sslrootcert=self.source_ca, policy=self.migration_source_tls.value
                )
                if name == "SOURCE_DATABASE_URL"
                else judge_target_tls(value, setting=name, sslrootcert=self.sslrootcert)
            )
            if not verdict.ok:
                found.append(verdict.problem)
        return found

    def _missing_ca_files(self) -> list[str]:
        fixes = {
            "SUPABASE_SSLROOTCERT": (
                self.supabase_sslrootcert,
                "download the CA certificate from the Supabase dashboard and point to it.",
            ),
            "SOURCE_SSLROOTCERT": (
                self.source_sslrootcert,
                "point it at the CA certificate that signed the source server's certificate.",
            ),
        }
        return [
            f"{name}={path} is not a readable file: {fix}"
            for name, (path, fix) in fixes.items()
            if path is not None and not path.is_file()
        ]

    def _urls(self) -> dict[str, str]:
        pairs = {
            "SOURCE_DATABASE_URL": self.source_database_url,
            "SUPABASE_DB_URL": self.supabase_db_url,
            "SUPABASE_POOLER_URL": self.supabase_pooler_url,
        }
        return {k: v.get_secret_value() for k, v in pairs.items() if v is not None}

    def require(self, *names: str) -> None:
        """Fail once, naming every missing setting and what it should hold."""
        missing = [n for n in names if getattr(self, n.lower()) in (None, "")]
        if missing:
            lines = [f"  {n}: {HINTS.get(n, '')}" for n in missing]
            raise SettingsError(
                "Missing settings (set them in the environment or in a .env file):\n"
                + "\n".join(lines)
            )

    @property
    def source_dsn(self) -> str:
        """The source's URL, with SOURCE_SSLROOTCERT as its `sslrootcert` unless the URL
        names one: every connection to the source verifies against the same CA."""
        self.require("SOURCE_DATABASE_URL")
        assert self.source_database_url is not None
        url = self.source_database_url.get_secret_value()
        return with_params(url, sslrootcert=self.source_ca) if self.source_ca else url

    @property
    def target_dsn(self) -> str:
        self.require("SUPABASE_DB_URL")
        assert self.supabase_db_url is not None
        return self.supabase_db_url.get_secret_value()

    @property
    def sslrootcert(self) -> str | None:
        return str(self.supabase_sslrootcert) if self.supabase_sslrootcert else None

    @property
    def source_ca(self) -> str | None:
        return str(self.source_sslrootcert) if self.source_sslrootcert else None

    def plan_path(self, override: Path | str | None = None) -> Path:
        """`--plan` wins over MIGRATION_PLAN; a missing file is named with the fix."""
        if override is not None:
            path = Path(override)
        else:
            self.require("MIGRATION_PLAN")
            assert self.migration_plan is not None
            path = self.migration_plan
        if not path.is_file():
            raise SettingsError(
                f"plan file {path} does not exist: write one with "
                f"`migration-assets plan --out {path}`, review it, then run again."
            )
        return path

    def timeouts(self) -> Timeouts:
        """The limits every session of ours gets, for `db/` and the database resources."""
        return Timeouts(
            network=self.migration_network_timeout, statement=self.migration_statement_timeout
        )

    def describe(self) -> dict[str, str]:
        """Every setting as it may be shown: URLs masked, paths as given."""
        shown: dict[str, str] = {k: mask_dsn(v) for k, v in self._urls().items()}
        shown["SUPABASE_SSLROOTCERT"] = self.sslrootcert or ""
        shown["SOURCE_SSLROOTCERT"] = self.source_ca or ""
        shown["MIGRATION_SOURCE_TLS"] = self.migration_source_tls.value
        shown["MIGRATION_SCHEMA_MODE"] = self.migration_schema_mode.value
        shown["MIGRATION_PLAN"] = str(self.migration_plan or "")
        shown["DAGSTER_HOME"] = str(self.dagster_home or "")
        shown["MIGRATION_TARGET_CONNECTIONS"] = str(self.migration_target_connections)
        shown["MIGRATION_STATEMENT_TIMEOUT"] = self.migration_statement_timeout
        shown["MIGRATION_NETWORK_TIMEOUT"] = str(self.migration_network_timeout)
        shown["MIGRATION_DEFER_INDEXES_ABOVE"] = str(self.migration_defer_indexes_above)
        shown["MIGRATION_ALEMBIC_CONFIG"] = str(self.migration_alembic_config or "")
        shown["MIGRATION_PG_BIN"] = str(self.migration_pg_bin or "")
        shown["MIGRATION_WEBSERVER_URL"] = http_origin(self.migration_webserver_url)
        return shown

    def as_environment(self) -> dict[str, str]:
        """Every setting that has a value, by its name: the environment of a child process
        (`dagster dev`) that must see what this one was given, `.env` or `--env-file`
        included. Never this process's own: its code reads the settings from this model."""
        env: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None or field.alias is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, StrEnum):
                value = value.value
            env[field.alias] = str(value)
        return env

    def key_secret(self, *, create: bool = True) -> bytes:
        """MIGRATION_KEY_SECRET, else the secret kept in DAGSTER_HOME (`db.keyhash`)."""
        given = self.migration_key_secret
        return load_secret(
            given.get_secret_value() if given is not None else "", self.dagster_home, create=create
        )


def http_origin(url: str) -> str:
    """Where a URL serves, and nothing it may also hold (a user, a password, a query)."""
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


SETTING_NAMES: tuple[str, ...] = tuple(
    str(field.alias) for field in Settings.model_fields.values() if field.alias
)  # every name users may set, for tools and tests that must clear or pass them all


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Settings, or a SettingsError whose lines a tired operator can act on."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        lines: list[str] = []
        for err in exc.errors(include_url=False, include_input=False):
            msg = str(err.get("msg", ""))
            msg = msg.removeprefix("Value error, ")
            loc = ".".join(str(p) for p in err.get("loc", ()))
            lines.append(f"{loc}: {msg}" if loc else msg)
        raise SettingsError("Invalid settings:\n" + "\n".join(f"  {ln}" for ln in lines)) from None
