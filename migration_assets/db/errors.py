"""Errors without patient data, and connection failures translated into fixes.

PostgreSQL puts row values into an error's DETAIL ("Key (mrn)=(...) already exists"),
its CONTEXT ("COPY patients, line 3: ...") and many primary messages ("value "..." is out of
range for type integer", "invalid input syntax for type uuid: ..."), and a trigger's RAISE
says whatever its author formatted into it. None of that may reach logs, Dagster metadata,
exceptions or reports. So PostgreSQL's words pass through an allowlist, never a blocklist:
for a data error (SQLSTATE classes 22 and 23) and for anything raised inside a trigger or
function, `safe_message` keeps only the SQLSTATE, the names of the objects involved and a
fixed explanation of ours. Other errors (privileges, timeouts, a lost connection) are about
the database, not its rows: their primary message is kept, quoted values still masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

import psycopg

VALUE_MASK = "<value withheld>"
STATEMENT_TIMEOUT_ENV = "MIGRATION_STATEMENT_TIMEOUT"
QUERY_CANCELED = "57014"

# `: "value"` at the end of a primary message, and bare `(...)=(...)` key pairs.
_TRAILING_VALUE = re.compile(
    r""":\s*(?:"(?:[^"\\]|\\.|"")*"|'(?:[^'\\]|\\.|'')*')\s*$""", re.DOTALL
)
_KEY_VALUE = re.compile(r"\(([^()]*)\)=\((?:[^()]|\([^()]*\))*\)")
_TRAILING_BARE = re.compile(r"(invalid input syntax for type [\w ]+|input is out of range):.*$")
# "invalid byte sequence for encoding "UTF8": 0xc3 0x28" (22021), "character with byte
# sequence 0xe2 0x80 0x9c in encoding ..." (22P05): the bytes are a piece of the value.
_BYTES = re.compile(r"0x[0-9a-fA-F]{2}(?:\s+0x[0-9a-fA-F]{2})*")

# What a data error means, in our words: the server's own carry the value.
DATA_ERRORS: dict[str, str] = {
    "22001": "a value is too long for its column's type",
    "22003": "a value is out of range for its column's type",
    "22007": "a date or time value is not valid for its column's type",
    "22008": "a date or time value is out of range for its column's type",
    "22012": "a division by zero",
    "22021": "a value's bytes are not valid in the database's encoding",
    "22P02": "a value is not valid input for its column's type (or enum)",
    "22P05": "a character has no equivalent in the target database's encoding",
    "23502": "a row has no value in a column that requires one",
    "23503": "a row refers to a key that does not exist (or a key is still referred to)",
    "23505": "a row's key or unique value exists already",
    "23514": "a row breaks a check constraint",
    "23P01": "a row conflicts with another under an exclusion constraint",
}
_DATA_CLASSES = {
    "22": "a value is not valid for its column's type",
    "23": "a row breaks an integrity constraint",
}
RAISED = "a trigger or function raised an error"
# function names in an error's CONTEXT (its other lines may quote statements and values)
_FUNCTION = re.compile(r"\b(?:PL/\w+|SQL) function ([^\s(]+)\(")
_RAISE = re.compile(r"\bfunction [^\n]* at RAISE\b")  # a RAISE statement's CONTEXT line


class MigrationError(Exception):
    """An error whose message is safe to log and names what to do next."""


def safe_message(exc: BaseException, *, statement_timeout: str | None = None) -> str:
    """The error as text that carries no row values (`cancel_hint` says what
    `statement_timeout` is for)."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's wrapper quotes statements and parameters
    if isinstance(orig, psycopg.Error):
        exc = orig
    if not isinstance(exc, psycopg.Error):
        return mask_values(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    diag = exc.diag
    code = diag.sqlstate or getattr(exc, "sqlstate", None) or ""
    functions = _FUNCTION.findall(diag.context or "")
    if _is_data_error(code, diag.context or ""):
        parts = [_explanation(code, functions)]
    else:
        primary = diag.message_primary or (str(exc).splitlines()[0] if str(exc) else "")
        parts = [mask_values(primary)]
    names = _object_names(diag)
    if names:
        parts.append("(" + ", ".join(names) + ")")
    hint = cancel_hint(exc, statement_timeout) or row_security_hint(exc)
    if hint:
        parts.append(f"- {hint}")
    return (f"[{code}] " if code else "") + " ".join(parts)


def raised_in_function(exc: BaseException) -> bool:
    """Was the error RAISEd by a trigger or function (someone else's code and words)?"""
    return isinstance(exc, psycopg.Error) and bool(_RAISE.search(exc.diag.context or ""))


def _is_data_error(code: str, context: str) -> bool:
    """About the rows, or said by code of someone else's: only our words may pass. An error
    PostgreSQL itself raised inside a function (a cancelled pg_sleep, a missing table) says
    nothing of rows and keeps its own words."""
    return code[:2] in _DATA_CLASSES or code.startswith("P0") or bool(_RAISE.search(context))


def _explanation(code: str, functions: list[str]) -> str:
    said = DATA_ERRORS.get(code) or _DATA_CLASSES.get(code[:2]) or RAISED
    if functions:
        said += f", raised in function {functions[0]}"
    return said + " (PostgreSQL's message is withheld: it can quote row values)"


def _object_names(diag: psycopg.errors.Diagnostic) -> list[str]:
    return [
        f"{label} {value}"
        for label, value in (
            ("schema", diag.schema_name),
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("constraint", diag.constraint_name),
            ("type", diag.datatype_name),
        )
        if value
    ]


def cancel_hint(exc: BaseException, statement_timeout: str | None = None) -> str | None:
    """For a cancelled statement (SQLSTATE 57014), what cancelled it and what to change.

    psycopg raises QueryCanceled as an OperationalError, so without this a statement timeout
    reads like a lost connection. The server's primary message tells a timeout from an
    operator's pg_cancel_backend; both share the SQLSTATE. `statement_timeout` is the limit
    our session set (MIGRATION_STATEMENT_TIMEOUT as given), when the caller knows it.
    """
    if not isinstance(exc, psycopg.Error) or exc.sqlstate != QUERY_CANCELED:
        return None
    primary = exc.diag.message_primary or str(exc)
    if "user request" in primary:
        return (
            "cancelled on request (pg_cancel_backend or a client's cancel), not by a timeout; "
            "the connection is fine and nothing was lost. Run again"
        )
    if "statement timeout" not in primary:
        return "a statement timeout or an operator cancelled it; nothing was lost. Run again"
    if statement_timeout is None:
        return (
            f"a statement timeout cancelled it: ours ({STATEMENT_TIMEOUT_ENV}; 0 = no limit) or, "
            "through the transaction pooler, the server's for this role. Raise the one in "
            "force and run again"
        )
    if re.fullmatch(r"[0.]*\s*(us|ms|s|min|h|d)?", statement_timeout.strip()):  # no limit
        return (
            "the server's statement_timeout for this role or database cancelled it "
            f"({STATEMENT_TIMEOUT_ENV}=0 sets no limit of ours; connections "
            "through the transaction pooler keep the server's). Make the statement "
            "faster or raise that role's statement_timeout"
        )
    return (
        f"the statement ran longer than {STATEMENT_TIMEOUT_ENV}={statement_timeout}. "
        f"Raise {STATEMENT_TIMEOUT_ENV} (seconds, or a duration like '30min'; 0 = no "
        "limit) and run again"
    )


ROW_SECURITY_FIX = (
    "Connect as a role that sees every row: a superuser, or one with BYPASSRLS (as a "
    "superuser: ALTER ROLE <role> BYPASSRLS), or, if the role owns the table, have it run "
    "ALTER TABLE <table> NO FORCE ROW LEVEL SECURITY for the migration"
)


def row_security_hint(exc: BaseException) -> str | None:
    """For a query refused under `row_security = off` (or a COPY FROM refused by policies):
    the table's policies apply to this role, which would read or write only some rows."""
    if not isinstance(exc, psycopg.Error):
        return None
    if "row-level security" not in (exc.diag.message_primary or ""):
        return None
    return f"row-level security binds this role: it would see only some rows. {ROW_SECURITY_FIX}"


def mask_values(text: str) -> str:
    text = _KEY_VALUE.sub(lambda m: f"({m.group(1)})=({VALUE_MASK})", text)
    text = _TRAILING_VALUE.sub(f': "{VALUE_MASK}"', text)
    text = _BYTES.sub(VALUE_MASK, text)
    return _TRAILING_BARE.sub(lambda m: f"{m.group(1)}: {VALUE_MASK}", text)


@dataclass
class _Rule:
    needle: str
    what: str
    fix: str


_RULES = [
    _Rule(
        "password authentication failed",
        "the password (or user) was rejected",
        "check the user and password in {setting}",
    ),
    _Rule(
        "failed to resolve host",
        "the host name does not resolve",
        "check the host in {setting} (for Supabase: db.<project-ref>.supabase.co, which is "
        "IPv6-only without the IPv4 add-on; the session pooler host works over IPv4)",
    ),
    _Rule(
        "could not translate host name",
        "the host name does not resolve",
        "check the host in {setting} (for Supabase: db.<project-ref>.supabase.co, which is "
        "IPv6-only without the IPv4 add-on; the session pooler host works over IPv4)",
    ),
    _Rule(
        "Connection refused",
        "nothing is listening at that host and port",
        "check the port in {setting} and that the server is running",
    ),
    _Rule(
        "timeout expired",
        "the server did not answer within the connect timeout",
        "check the host, the port and any firewall between here and the server",
    ),
    _Rule(
        "server does not support SSL",
        "the server does not offer TLS",
        "enable TLS on the server; patient data must not travel unencrypted",
    ),
    _Rule(
        "certificate has expired",
        "the server's TLS certificate has expired",
        "renew the server certificate; do not weaken sslmode",
    ),
    _Rule(
        "does not match host name",
        "the server's TLS certificate is not valid for this host name",
        "connect with the host name the certificate names (the one in the Supabase "
        "dashboard), not an IP address or alias",
    ),
    _Rule(
        "certificate verify failed",
        "the server's TLS certificate is not signed by the given CA",
        "point SUPABASE_SSLROOTCERT at the project's CA certificate from the dashboard",
    ),
    _Rule(
        "root certificate file",
        "the CA certificate file cannot be read",
        "point SUPABASE_SSLROOTCERT at an existing, readable CA certificate file",
    ),
    _Rule(
        "no encryption",
        "the server refuses connections without TLS",
        "add sslmode=verify-full and the CA certificate to {setting}",
    ),
    _Rule(
        "no pg_hba.conf entry",
        "the server does not allow this user/host/database combination",
        "ask the server's administrator to allow it, or check the database name in {setting}",
    ),
    _Rule(
        "does not exist",
        "the database or role does not exist",
        "check the database name and user in {setting}",
    ),
]


class ConnectionFailedError(MigrationError):
    """A connection that could not be opened: what failed, where, and what to change."""

    def __init__(self, setting: str, shown: str, what: str, fix: str, detail: str) -> None:
        self.setting = setting
        self.shown = shown
        self.what = what
        self.fix = fix
        self.detail = detail
        super().__init__(f"cannot connect to {setting} ({shown}): {what}. Fix: {fix}. [{detail}]")

    @classmethod
    def from_libpq(
        cls,
        exc: psycopg.OperationalError,
        *,
        setting: str,
        shown: str,
        tls_reason: str | None = None,
    ) -> Self:
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = mask_values(lines[-1] if lines else type(exc).__name__)
        if tls_reason and "certificate verify failed" in text:
            fix = (
                "renew the server certificate"
                if "expired" in tls_reason or "not valid yet" in tls_reason
                else "fix the host name or SUPABASE_SSLROOTCERT as said"
            )
            return cls(setting, shown, tls_reason, f"{fix}; never weaken sslmode", detail)
        for rule in _RULES:
            if rule.needle in text:
                return cls(setting, shown, rule.what, rule.fix.format(setting=setting), detail)
        return cls(
            setting,
            shown,
            "the connection failed",
            f"check {setting}; the server said what is in brackets",
            detail,
        )
