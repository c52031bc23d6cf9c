"""Issue 12's benchmark: how long the source is frozen during `migration-assets cutover`.

For each size, on one throwaway stack: a source at Alembic head seeded with N patients, a
fresh Supabase-like target, `plan`, a cold `migrate` (the baseline, in the same process on
the same servers), `verify`; then the application stand-in writes at a steady rate and
`cutover --yes` runs. The freeze window (freeze to proof, from the cutover's evidence) is
printed in seconds and as a ratio to that cold migrate, with where the final delta's time
went. The goal: under 30 s at 50,000. DAGSTER_HOME's storage is a fresh database on the
stack's Dagster server, as in `benchmarks/run.py` (`--dagster-storage sqlite` for Dagster's
default in an empty directory).

    .venv/bin/python benchmarks/cutover_window.py [--patients 10000,50000] [--rate 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import psycopg

from migration_assets.cli import main as cli
from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.db.schema import alembic_upgrade
from migration_assets.devstack.seed import seed
from migration_assets.devstack.stack import DevStack
from migration_assets.devstack.standin import StandIn

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
GOAL_SECONDS, GOAL_PATIENTS = 30.0, 50_000


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _run(args: list[str], log: Path) -> float:
    """The CLI in this process, its output to `log` (only the table goes to stdout)."""
    started = time.perf_counter()
    with log.open("a") as sink, redirect_stdout(sink), redirect_stderr(sink):
        code = cli(args)
    if code != 0:
        raise SystemExit(f"`migration-assets {' '.join(args)}` exited {code}: see {log}")
    return time.perf_counter() - started


def _pooler_for(stack: DevStack, dbname: str) -> str:
    assert stack.pooler_url is not None, "the benchmark needs pgbouncer (apt-get install pgbouncer)"
    params = parse_dsn(stack.pooler_url)
    params["dbname"] = dbname
    return display_url(params, mask=False)


def measure(
    stack: DevStack, work: Path, patients: int, rate: float, storage: str
) -> dict[str, Any]:
    name = f"cut_{patients}"
    source = stack.create_source_database(name)
    alembic_upgrade(source, sslrootcert=None, config_path=REPO_ROOT / "alembic.ini")
    with psycopg.connect(source) as conn:
        seed(conn, patients=patients, seed=42)
        conn.commit()
    target = stack.create_target_database(name)
    home = work / name
    if storage == "postgres":
        stack.dagster_home_for(home, name)
    os.environ.update(stack.env())  # the Dagster server's credentials, if its yaml reads them
    os.environ.update(
        SOURCE_DATABASE_URL=source,
        SUPABASE_DB_URL=target,
        SUPABASE_POOLER_URL=_pooler_for(stack, name),
        SUPABASE_SSLROOTCERT=str(stack.ca_file),
        MIGRATION_PLAN=str(work / f"{name}.json"),
        DAGSTER_HOME=str(home),
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log = RESULTS_DIR / f"cutover-{name}.log"  # the CLI's output; gitignored
    _run(["plan", "--out", str(work / f"{name}.json")], log)
    cold = _run(["migrate", "--workers", "2"], log)
    _run(["verify"], log)
    with StandIn(source, rate=rate) as app:
        app.wait_until(lambda: len(app.acks()) >= 50, 120, "the app's first writes")
        seconds = _run(["cutover", "--yes"], log)
        writes = len(app.acks())
    reports = sorted((home / "audit").glob("audit-*.json"))
    evidence = json.loads(reports[-1].read_text())["cutover"]
    window = float(evidence["window_seconds"])
    _say(f"{patients:,} patients: window {window:.1f} s, cold migrate {cold:.1f} s")
    return {
        "patients": patients,
        "cold_migrate_s": round(cold, 1),
        "cutover_s": round(seconds, 1),
        "window_s": window,
        "ratio": round(window / cold, 2),
        "slices_recopied": evidence["slices_recopied"],
        "rows_recopied": evidence["rows_recopied"],
        "app_writes": writes,
        "delta_time": evidence.get("delta_time", ""),
    }


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| patients | cold migrate s (baseline) | freeze window s | window / cold migrate "
        "| slices re-copied | rows re-copied | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = "n/a"
        if r["patients"] >= GOAL_PATIENTS:
            goal = "met" if r["window_s"] < GOAL_SECONDS else "NOT met"
        lines.append(
            f"| {r['patients']:,} | {r['cold_migrate_s']} | {r['window_s']} | {r['ratio']}x "
            f"| {r['slices_recopied']} | {r['rows_recopied']:,} | {goal} |"
        )
    lines += ["", "Where the final delta's time went:"]
    lines += [f"- {r['patients']:,} patients: {r['delta_time']}" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="10000,50000")
    parser.add_argument("--rate", type=float, default=20.0, help="writes/s per app connection")
    parser.add_argument("--dagster-storage", choices=("postgres", "sqlite"), default="postgres")
    args = parser.parse_args()
    stack = DevStack()
    stack.start()
    try:
        with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp:
            rows = [
                measure(stack, Path(tmp), int(n), args.rate, args.dagster_storage)
                for n in args.patients.split(",")
            ]
    finally:
        stack.stop()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
