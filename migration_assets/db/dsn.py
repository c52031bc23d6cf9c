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


def remote_places(dsn: str) -> list[str]:
    """The hosts and addresses of `dsn` that are not on this machine; none means local.

    libpq connects to `hostaddr` when it is given and uses `host` for the certificate's name,
    so both must be local: `host=localhost&hostaddr=10.1.2.3` leaves the machine."""
    params = parse_dsn(dsn)
    hosts = [h for h in params.get("host", "").split(",") if h] or [""]
    addresses = [a for a in params.get("hostaddr", "").split(",") if a]
    return [p for p in hosts + addresses if not is_local_host(p)]


def is_local_dsn(dsn: str) -> bool:
    return not remote_places(dsn)


@dataclass(frozen=True)
class TlsVerdict:
    """Whether a DSN is acceptable, and if not exactly what to change."""

    ok: bool
    problem: str = ""


TARGET_CA_HELP = (
    "SUPABASE_SSLROOTCERT to your project's CA certificate (Supabase dashboard: Database "
    "settings, SSL configuration, Download certificate)"
)
SOURCE_TLS_VERIFY = "verify"
SOURCE_TLS_UNVERIFIED = "unverified"
SOURCE_TLS_HELP = (
    "a source on another host sends every row over the network. Add '?sslmode=verify-full' "
    "to SOURCE_DATABASE_URL and set SOURCE_SSLROOTCERT to the CA certificate that signed the "
    "source server's certificate (or add sslrootcert=/path/to/ca.crt to the URL). To accept "
    "this source without verified TLS knowingly, set MIGRATION_SOURCE_TLS=unverified: the "
    "tls_in_use check and the audit report then say so."
)


def _judge_tls(
    dsn: str, *, setting: str, what: str, sslrootcert: str | None, fix: str
) -> TlsVerdict:
    """Non-local: verify-full with a CA file (URL or setting), or a problem ending in `fix`."""
    remote = remote_places(dsn)
    if not remote:
        return TlsVerdict(ok=True)
    params = parse_dsn(dsn)
    mode = params.get("sslmode", "prefer")
    if mode != "verify-full":
        return TlsVerdict(
            ok=False,
            problem=f"{setting} points at {remote[0]} with sslmode={mode}; a non-local {what} "
            f"must use sslmode=verify-full: {fix}",
        )
    if not (params.get("sslrootcert") or sslrootcert):
        return TlsVerdict(
            ok=False,
            problem=f"{setting} uses sslmode=verify-full but no CA certificate is given: {fix}",
        )
    return TlsVerdict(ok=True)


def judge_target_tls(dsn: str, *, setting: str, sslrootcert: str | None) -> TlsVerdict:
    """Non-local targets need verify-full with a CA file; anything weaker is refused.

    Supabase does not enforce TLS by default, so a client that asks for less can end up
    unencrypted or open to a man in the middle: we refuse instead of warning.
    """
    fix = (
        f"add '?sslmode=verify-full' to {setting} and set {TARGET_CA_HELP} "
        "(or add sslrootcert=/path/to/ca.crt to the URL)."
    )
    return _judge_tls(dsn, setting=setting, what="target", sslrootcert=sslrootcert, fix=fix)


def judge_source_tls(dsn: str, *, sslrootcert: str | None, policy: str) -> TlsVerdict:
    """A non-local source needs what a target needs (verify-full with a CA), unless the
    operator set MIGRATION_SOURCE_TLS=unverified: a clinic's database on another host would
    otherwise send every patient row in clear, and nothing would say so."""
    if policy == SOURCE_TLS_UNVERIFIED:
        return TlsVerdict(ok=True)
    return _judge_tls(
        dsn,
        setting="SOURCE_DATABASE_URL",
        what="source",
        sslrootcert=sslrootcert,
        fix=SOURCE_TLS_HELP,
    )


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
