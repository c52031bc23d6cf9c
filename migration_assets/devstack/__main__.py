"""`python -m migration_assets.devstack selfcheck`: start the stack, prove it, stop it.

Prints one JSON line (no secrets). The tests run it as root and, through a user
namespace, as a non-root user: the two paths PostgreSQL treats differently.
"""

from __future__ import annotations

import json
import os
import sys

import psycopg

from migration_assets.devstack.stack import DevStack


def selfcheck() -> dict[str, object]:
    with DevStack() as stack:
        assert stack.source
        assert stack.target
        assert stack.dagster
        with psycopg.connect(stack.target_url) as conn:
            row = conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        pid = int((stack.source.data_dir / "postmaster.pid").read_text().split()[0])
        result: dict[str, object] = {
            "euid": os.geteuid(),
            "server_uid": os.stat(f"/proc/{pid}").st_uid,
            "service_user": stack.user.name,
            "target_tls": bool(row and row[0]),
            "pooler": stack.bouncer is not None,
            "root": str(stack.home),
        }
    result["root_removed"] = not os.path.exists(str(result["root"]))
    return result


def main(argv: list[str]) -> int:
    if argv[:1] != ["selfcheck"]:
        print("usage: python -m migration_assets.devstack selfcheck", file=sys.stderr)
        return 2
    print(json.dumps(selfcheck()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
