"""The daemon path beside the local one: the same small database, the same servers, one run.

`migrate` executes the graph in its own process; `migrate --submit` hands it to the
instance's daemon as a backfill, which is also what the UI's "Materialize all" does. On the
small database of `run.py` (14 tables, about 3,400 rows) fixed costs are all there is, so
this measures what a user waits for on each path, and prints the daemon path's time as a
ratio to local `migrate` measured in the same run:

    .venv/bin/python benchmarks/daemon_path.py [--repeats 1]

Each repeat gets a fresh empty target and a fresh DAGSTER_HOME on the stack's Dagster
server (PostgreSQL storage, the queued run coordinator with the target pool, as
`deploy/dagster.yaml`), and for the daemon path a `dagster-daemon run` started beforehand
(off the clock: a production daemon is always up). The clock runs from the command's start
to its exit; both must end with every table's rows equal to the source's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` as a package

from benchmarks.run import (
    Bench,
    BenchmarkError,
    _cli_checked,
    check_counts,
    cli_env,
    fresh_dagster_home,
    fresh_target,
    prepare_small,
)
from migration_assets.defs.shipped import shipped_file
from migration_assets.devstack.stack import DevStack

DAEMON_START_SECONDS = 180


@contextlib.contextmanager
def daemon(bench: Bench, env: dict[str, str]) -> Iterator[None]:
    """`dagster-daemon run` on the instance of `env`, up and beating before it yields."""
    import dagster as dg

    binary = Path(sys.executable).parent / "dagster-daemon"
    log = (bench.work / f"{bench.name('daemon')}.log").open("w")
    proc = subprocess.Popen(
        [str(binary), "run", "-w", str(shipped_file("workspace.yaml"))],
        env=env,
        cwd=bench.work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        deadline = time.monotonic() + DAEMON_START_SECONDS
        while "BACKFILL" not in instance.get_daemon_heartbeats():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"the daemon did not start; see {log.name}")
            time.sleep(0.5)
        instance.dispose()
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def timed(bench: Bench, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    _cli_checked(bench, args, env)
    return time.perf_counter() - started


def measure(bench: Bench, repeats: int) -> dict[str, list[float]]:
    small = prepare_small(bench)
    seconds: dict[str, list[float]] = {"local": [], "daemon": []}
    for _ in range(repeats):
        with fresh_target(small) as url, fresh_dagster_home(small) as home:
            seconds["local"].append(timed(small, ["migrate"], cli_env(small, url, home)))
            check_counts(small, url, "local migrate")
        with fresh_target(small) as url, fresh_dagster_home(small) as home:
            env = cli_env(small, url, home)
            with daemon(small, env):
                seconds["daemon"].append(timed(small, ["migrate", "--submit"], env))
            check_counts(small, url, "migrate --submit")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"
    with DevStack(pooler=False) as stack, tempfile.TemporaryDirectory() as work:
        os.environ["DAGSTER_PG_PASSWORD"] = stack.passwords["dagster"]  # for our own reads
        bench = Bench(
            stack=stack, work=Path(work), workers=args.workers, dagster_storage="postgres"
        )
        seconds = measure(bench, args.repeats)
    local, daemon_s = statistics.median(seconds["local"]), statistics.median(seconds["daemon"])
    print("| path | seconds (median) | ratio to local migrate |")
    print("|---|---:|---:|")
    print(f"| local `migrate` | {local:.1f} | 1.00x |")
    print(f"| `migrate --submit` (daemon, backfill) | {daemon_s:.1f} | {daemon_s / local:.2f}x |")
    print(f"runs: local {seconds['local']}, daemon {seconds['daemon']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
