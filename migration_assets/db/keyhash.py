"""Row labels for reports: keys the database assigns as they are, every other as keyed hash.

A key whose every column the database assigns (identity, sequence default, random uuid
default: `database_assigned`) says nothing about a patient, so reports list it plainly.
Any other key (a medical record number, an e-mail address, an account number the
application hands out, whatever its type) is one of HIPAA's identifiers, and a key-less
table's "key" is the whole row: neither may reach logs, Dagster metadata or reports, nor
the plan. They are named by an HMAC-SHA256 of their text under a secret that stays with the
operator, truncated (`key#3f9a1c2b7d4e`, `row#...`). Without the secret a label cannot be
confirmed by guessing (an unkeyed hash of a low-entropy MRN can); with it,
`migration-assets locate` streams the key text of a table, hashes it the same way and prints
where the row lives, never its value.

The secret is MIGRATION_KEY_SECRET if set (the same value on every machine that runs
checks or `locate`), else a random one generated once into `$DAGSTER_HOME/key_secret`
(mode 0600): checks run in Dagster processes, which all have DAGSTER_HOME.

The text hashed is the key's text as `slices.key_text` prints it (`col::text` for one
column, `ROW(a, b)::text` for several) under the pinned session settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from migration_assets.db.errors import MigrationError
from migration_assets.private import create_exclusive, private_dir

SECRET_ENV = "MIGRATION_KEY_SECRET"  # noqa: S105 (the setting's name)
SECRET_FILE = "key_secret"  # noqa: S105 (a file name)
MIN_SECRET_CHARS = 16
DIGEST_CHARS = 12
KEY_PREFIX = "key#"
ROW_PREFIX = "row#"
_LABEL = re.compile(rf"(?:(key|row)#)?([0-9a-f]{{{DIGEST_CHARS}}})")
# Defaults by which the database assigns a value (pg_get_expr's text, schema-qualified or
# not): a sequence (serial, bigserial) or a random uuid.
_ASSIGNING_DEFAULT = re.compile(
    r"""(?:nextval\(|(?:(?:\w+|"[^"]+")\.)?(?:gen_random_uuid|uuid_generate_v4|uuidv4)\(\)$)"""
)


def database_assigned(identity: str, default: str | None) -> bool:
    """Does the database, not the application, give the column its values?

    Only then is a key free of patient data: an identity column, a sequence default
    (`serial`), a random uuid default. Judged by meaning, not by type: an integer key the
    application assigns is a medical record number or an account number, an identifier
    under HIPAA like an e-mail address, and a date key is a date."""
    if identity in ("a", "d"):
        return True
    return default is not None and _ASSIGNING_DEFAULT.match(default.strip()) is not None


def label(key_text: str, secret: bytes, *, prefix: str = KEY_PREFIX) -> str:
    """`key#` (or `row#`) and the first 12 hex digits of HMAC-SHA256(secret, UTF-8 text)."""
    digest = hmac.new(secret, key_text.encode("utf-8"), hashlib.sha256).hexdigest()
    return prefix + digest[:DIGEST_CHARS]


def parse_label(text: str) -> tuple[str | None, str]:
    """('key' | 'row' | None, the hex digits) of a label as reported; ValueError otherwise."""
    match = _LABEL.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not a reported key hash: give it as printed, e.g. key#3f9a1c2b7d4e"
        )
    return match.group(1), match.group(2)


def unwrap_record(text: str) -> str:
    """The field of a one-field record's text, as `col::text` prints it: '("a b")' -> 'a b'.

    FK orphan samples come as ROW(...)::text; a one-column key must hash like the bisection's
    `col::text`. Quoting follows PostgreSQL's record_out (doubled quotes and backslashes).
    """
    inner = text[1:-1] if text.startswith("(") and text.endswith(")") else text
    if len(inner) < 2 or not (inner.startswith('"') and inner.endswith('"')):
        return inner
    chars, out, i = inner[1:-1], [], 0
    while i < len(chars):
        out.append(chars[i])
        doubled = chars[i] in '"\\' and chars[i + 1 : i + 2] == chars[i]
        i += 2 if doubled else 1
    return "".join(out)


def load_secret(given: str, home: Path | None, *, create: bool = True) -> bytes:
    """`given` (MIGRATION_KEY_SECRET), else `home/key_secret` (DAGSTER_HOME; created once,
    0600).

    `create=False` (for `locate`): a missing file is an error, since a fresh secret could
    not match any hash already reported."""
    if given:
        if len(given) < MIN_SECRET_CHARS:
            raise MigrationError(
                f"{SECRET_ENV} is shorter than {MIN_SECRET_CHARS} characters: use a random "
                "value, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return given.encode("utf-8")
    if home is None:
        raise MigrationError(
            f"natural keys are reported as keyed hashes, which need a secret: set {SECRET_ENV} "
            "(a random value you keep) or DAGSTER_HOME (a secret is then kept in "
            f"$DAGSTER_HOME/{SECRET_FILE})"
        )
    path = home / SECRET_FILE
    if not create and not path.exists():
        raise MigrationError(
            f"there is no {path}: the hashes were made with another secret. Use the "
            f"DAGSTER_HOME of the runs that reported them, or their {SECRET_ENV}"
        )
    return _secret_file(path)


def _secret_file(path: Path) -> bytes:
    """Read the secret, or create it: written aside, then linked into place, so two
    processes starting at once agree on one secret (the loser reads the winner's)."""
    if not path.exists():
        private_dir(path.parent)  # DAGSTER_HOME: what it holds is as private as the secret
        aside = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        with create_exclusive(aside) as handle:
            handle.write((secrets.token_hex(32) + "\n").encode())
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise MigrationError(
            f"{path} holds no usable secret: remove it (a new one is generated; earlier "
            f"reported hashes then cannot be located) or set {SECRET_ENV}"
        )
    return secret.encode("utf-8")
