"""Connection strings: parse, mask, judge their TLS.

Users hand us URLs with passwords in them. Everything that shows a DSN goes through
`mask_dsn`, and the TLS rules live here so settings, resources and the CLI agree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import psycopg.conninfo

from migration_assets.db.errors import MigrationError

MASK = "***"
TRANSACTION_POOLER_PORT = 6543


class DsnError(ValueError, MigrationError):
    """A connection string we cannot parse; the message never contains the password."""


def parse_dsn(dsn: str) -> dict[str, str]:
    """Both URL and key=value forms, as libpq reads them."""
    if dsn.startswith(("postgres://", "postgresql://")):
        authority = dsn.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
        if authority.count("@") > 1:
            # libpq would split at the first '@' and send the rest of the password to DNS
            # and into its error messages as a "host name".
            raise DsnError(
                "the URL has more than one '@' before the host: percent-encode special "
                "characters in the password ('@' as %40, ':' as %3A, '/' as %2F)"
            )
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise DsnError(
            "cannot parse the connection string (expected postgresql://user:password@host:port/db)"
        ) from exc
    return {k: str(v) for k, v in parsed.items() if v is not None}


def mask_dsn(dsn: str) -> str:
    """A URL that is safe to print: the password, if any, replaced by ***."""
    try:
        params = parse_dsn(dsn)
    except DsnError:
        return "<unparseable connection string>"
    return display_url(params)


def display_url(params: Mapping[str, str], *, mask: bool = True) -> str:
    """A postgresql:// URL from libpq parameters; `mask=False` only for 0600 env files."""
    user = params.get("user", "")
    auth = quote(user, safe="") if user else ""
    if "password" in params:
        auth += ":" + (MASK if mask else quote(params["password"], safe=""))
    host = params.get("host", "")
    shown_host = f"[{host}]" if ":" in host and not host.startswith("/") else host
    if host.startswith("/"):
        shown_host = ""
    port = params.get("port")
    netloc = (auth + "@" if auth else "") + shown_host + (f":{port}" if port else "")
    dbname = quote(params.get("dbname", ""), safe="")
    query = {
        k: v for k, v in params.items() if k not in {"user", "password", "host", "port", "dbname"}
    }
    if host.startswith("/"):
        query = {"host": host, **query}
    qs = "&".join(f"{k}={quote(v, safe='/')}" for k, v in sorted(query.items()))
    return f"postgresql://{netloc}/{dbname}" + (f"?{qs}" if qs else "")


def is_local_host(host: str) -> bool:
    """Unix sockets and loopback addresses never leave the machine."""
    if not host or host.startswith("/") or host.startswith("@"):
        return True
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TlsVerdict:
    """Whether a target DSN is acceptable, and if not exactly what to change."""

    ok: bool
    problem: str = ""


def judge_target_tls(dsn: str, *, setting: str, sslrootcert: str | None) -> TlsVerdict:
    """Non-local targets need verify-full with a CA file; anything weaker is refused.

    Supabase does not enforce TLS by default, so a client that asks for less can end up
    unencrypted or open to a man in the middle: we refuse instead of warning.
    """
    params = parse_dsn(dsn)
    hosts = [h for h in params.get("host", "").split(",") if h] or [""]
    remote = [h for h in hosts if not is_local_host(h)]
    if not remote:
        return TlsVerdict(ok=True)
    mode = params.get("sslmode", "prefer")
    if mode != "verify-full":
        return TlsVerdict(
            ok=False,
            problem=(
                f"{setting} points at {remote[0]} with sslmode={mode}; a non-local target must "
                f"use sslmode=verify-full. Add '?sslmode=verify-full' to {setting} and set "
                "SUPABASE_SSLROOTCERT to your project's CA certificate (Supabase dashboard: "
                "Database settings, SSL configuration, Download certificate)."
            ),
        )
    if not (params.get("sslrootcert") or sslrootcert):
        return TlsVerdict(
            ok=False,
            problem=(
                f"{setting} uses sslmode=verify-full but no CA certificate is given: set "
                "SUPABASE_SSLROOTCERT to the path of your project's CA certificate "
                "(or add sslrootcert=/path/to/ca.crt to the URL)."
            ),
        )
    return TlsVerdict(ok=True)


def is_transaction_pooler(dsn: str) -> bool:
    """Port 6543 is Supabase's transaction pooler: no session state, unfit for migrations."""
    return parse_dsn(dsn).get("port") == str(TRANSACTION_POOLER_PORT)


def with_params(dsn: str, **extra: str | None) -> str:
    """The DSN as key=value conninfo with `extra` added where the DSN does not set them."""
    params: dict[str, str] = parse_dsn(dsn)
    for key, value in extra.items():
        if value is not None and key not in params:
            params[key] = value
    return psycopg.conninfo.make_conninfo("", **params)


def sqlalchemy_url(dsn: str, *, sslrootcert: str | None = None) -> str:
    """A `postgresql+psycopg://` URL for SQLAlchemy/Alembic, keeping every libpq parameter."""
    params = parse_dsn(with_params(dsn, sslrootcert=sslrootcert))
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    host = params.pop("host", "")
    port = params.pop("port", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    auth = user + (":" + quote(password, safe="") if password is not None else "")
    if host.startswith("/"):
        params["host"] = host
        host = ""
    netloc = (auth + "@" if auth else "") + host + (f":{port}" if port else "")
    qs = "&".join(f"{k}={quote(v, safe='/')}" for k, v in sorted(params.items()))
    return f"postgresql+psycopg://{netloc}/{dbname}" + (f"?{qs}" if qs else "")
