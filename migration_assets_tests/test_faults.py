"""Faults: whatever breaks mid-run, a plain `migrate` afterwards ends equal, nothing lost.

Each test slows the copy into one table with a trigger that changes nothing (so the fault
lands inside a COPY), breaks something, lets the run end, repairs, runs `migrate` again
and compares source and target independently.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from migration_assets.db.schema import alembic_upgrade
from migration_assets.db.session import Connection, Spare, open_pinned
from migration_assets.devstack.stack import DevStack
from migration_assets.plan import load_plan
from migration_assets_tests.conftest import (
    ALEMBIC_INI,
    Databases,
    Migration,
    MigrationFactory,
    unique,
)
from migration_assets_tests.faults import (
    TcpProxy,
    blackhole,
    slow_down,
    speed_up,
    wait_for_copy,
)
from migration_assets_tests.helpers import (
    PLAN_ARGS,
    assert_equal_databases,
    cli_process,
    dbname,
    open_first,
    run_cli,
)
from migration_assets_tests.waiting import process_gone, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_TABLE = "public.observations"


def _prepare(m: Migration, *, slow: float = 0.004) -> None:
    """Plan, schema on the target, and a slow table so faults land mid-COPY."""
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    alembic_upgrade(m.target_url, sslrootcert=str(m.ca_file), config_path=ALEMBIC_INI)
    slow_down(m.target_url, SLOW_TABLE, slow)


def _finish(m: Migration) -> None:
    """Repair, migrate again, prove equality."""
    speed_up(m.target_url, SLOW_TABLE)
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    assert_equal_databases(m.source_url, m.target_url)


def _start(
    m: Migration, cwd: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return cli_process(["migrate", "--workers", "1", *extra], {**m.env(), **(env or {})}, cwd)


def _output(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _start_mid_copy(
    m: Migration, stack: DevStack, cwd: Path, **env: str
) -> tuple[subprocess.Popen[str], int]:
    """A migrate that is inside a COPY into the target: (process, that backend's pid)."""
    proc = _start(m, cwd, env=env or None)
    assert stack.target is not None
    return proc, wait_for_copy(stack.target.admin_conninfo(), dbname(m.target_url))


def test_target_backend_terminated_mid_copy(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    m = migration()
    _prepare(m)
    proc, pid = _start_mid_copy(m, stack, isolated_cwd)
    assert stack.target is not None
    stack.target.admin(f"SELECT pg_terminate_backend({pid})")
    code, output = _output(proc)
    assert code == 1, output
    assert "connection was lost" in output
    assert "nothing of this slice was committed" in output
    _finish(m)


def test_runner_killed_during_a_slice(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    m = migration()
    _prepare(m)
    proc, _ = _start_mid_copy(m, stack, isolated_cwd)
    os.killpg(proc.pid, signal.SIGKILL)
    process_gone(proc, 30)
    _finish(m)


def test_a_run_killed_while_indexes_are_deferred_gets_them_back(
    migration: MigrationFactory,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATION_DEFER_INDEXES_ABOVE", "1")
    m = migration()
    _prepare(m)
    proc, _ = _start_mid_copy(m, stack, isolated_cwd, MIGRATION_DEFER_INDEXES_ABOVE="1")
    os.killpg(proc.pid, signal.SIGKILL)
    process_gone(proc, 30)
    with psycopg.connect(m.target_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM migration_assets_state.deferred_indexes"
        ).fetchone()
        present = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'observations_encounter_id_idx'"
        ).fetchone()
    assert left is not None
    assert left[0] > 0, "the dropped indexes must be on record"
    assert present == (0,)
    _finish(m)
    with psycopg.connect(m.target_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'observations_encounter_id_idx'"
        ).fetchone() == (1,)
        assert conn.execute("SELECT to_regnamespace('migration_assets_state')").fetchone() == (
            None,
        )
    assert run_cli(["verify"])[0] == 0


def test_two_migrates_at_once_the_second_refuses(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    m = migration()
    # Slices of ~16 s: the second command's check (a few seconds after its imports) lands
    # while one of the first's runs is beating, on a busy machine too.
    _prepare(m, slow=0.02)
    first, _ = _start_mid_copy(m, stack, isolated_cwd)
    second = _start(m, isolated_cwd)
    code, output = _output(second, timeout=60)
    assert code == 2, output
    assert "another migration is running" in output
    assert "run(s) in progress, e.g. " in output, "the message should name a run to look at"
    code, output = _output(first)
    assert code == 0, output
    _finish(m)


def test_source_changes_during_the_run_are_caught_and_resynced(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    m = migration()
    _prepare(m, slow=0.002)
    plan = load_plan(m.plan_path)
    patients = plan.table("public.patients")
    instance = open_first(m.dagster_home)
    proc = _start(m, isolated_cwd)
    key = dg.AssetKey(patients.asset_path)
    partitions = dg.StaticPartitionsDefinition(patients.partition_keys)

    def first_slice_verified() -> bool:
        status = instance.get_status_by_partition(key, patients.partition_keys, partitions)
        first_slice = (status or {}).get(patients.partition_keys[0])
        return first_slice is not None and first_slice.value == "MATERIALIZED"

    wait_until(first_slice_verified, 120, "patients' first slice verified", every=0.1)
    with psycopg.connect(m.source_url, autocommit=True) as conn:
        first = conn.execute("SELECT id FROM patients ORDER BY id LIMIT 1").fetchone()
        conn.execute(
            "UPDATE patients SET phone = '555-0199' WHERE id = %s", [first[0] if first else None]
        )
        conn.execute(
            "DELETE FROM prescriptions WHERE (encounter_id, line_no) = "
            "(SELECT encounter_id, line_no FROM prescriptions ORDER BY 1, 2 LIMIT 1)"
        )
        conn.execute(
            "INSERT INTO providers (id, npi, full_name, specialty, created_at, updated_at) "
            "VALUES (888888, '9888888888', 'Late Provider', 'Cardiology', now(), now())"
        )
    code, output = _output(proc)
    assert code == 0, output  # each slice is consistent with the snapshot it was read from
    speed_up(m.target_url, SLOW_TABLE)
    code, output = run_cli(["verify"])
    assert code == 1, "the change to an already-copied slice must be caught"
    assert "public/patients" in output
    code, output = run_cli(["migrate", "--resync"])
    assert code == 0, output
    assert "re-copied" in output
    assert run_cli(["verify"])[0] == 0
    assert_equal_databases(m.source_url, m.target_url)


def test_network_cut_mid_copy(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    assert stack.target is not None
    with TcpProxy(("127.0.0.1", stack.target.port)) as proxy:
        name = unique("tgt")
        stack.create_target_database(name)
        url = stack.target_url_for(name).replace(f":{stack.target.port}/", f":{proxy.port}/")
        m = migration(target_url=url)
        _prepare(m)
        proc = _start(m, isolated_cwd)
        wait_for_copy(stack.target.admin_conninfo(), name)
        proxy.cut()
        code, output = _output(proc)
        assert code == 1, output
        assert "connection was lost" in output
        _finish(m)


def test_a_hung_network_is_bounded_by_timeouts(
    migration: MigrationFactory, stack: DevStack, isolated_cwd: Path
) -> None:
    assert stack.target is not None
    timeout = 6
    with TcpProxy(("127.0.0.1", stack.target.port)) as proxy:
        name = unique("tgt")
        stack.create_target_database(name)
        url = stack.target_url_for(name).replace(f":{stack.target.port}/", f":{proxy.port}/")
        m = migration(target_url=url)
        _prepare(m)
        proc = _start(m, isolated_cwd, env={"MIGRATION_NETWORK_TIMEOUT": str(timeout)})
        wait_for_copy(stack.target.admin_conninfo(), name)
        hung_at = time.monotonic()
        with blackhole(proxy.port):
            code, output = _output(proc, timeout=20 * timeout)
            waited = time.monotonic() - hung_at
        assert code == 1, output
        assert waited < 10 * timeout, f"a silent network held the run for {waited:.0f}s"
        assert "stopped early" in output or "connection was lost" in output
        proxy.cut()  # the server side of the silent connections ends too
        speed_up(m.target_url, SLOW_TABLE)
        code, output = run_cli(["migrate", "--workers", "1"])
        assert code == 0, (
            f"{output}\nproxy: {proxy.events}; "
            f"sockets {_sockets(proxy.port)}; "
            f"{_target_sessions(stack)}; target log: {_log_tail(stack.target.log_file)}"
        )
        assert_equal_databases(m.source_url, m.target_url)


def test_a_proxy_leaves_no_thread_behind_to_serve_the_next_ones_port() -> None:
    """A proxy's accept thread left blocked after its exit kept a descriptor number that the
    next proxy's listener was given: it accepted that proxy's connections and reset them
    (the hung-network test's last `migrate` failed so, only after other tests' proxies)."""
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        before = set(threading.enumerate())
        for round_ in range(3):
            with (
                TcpProxy(upstream.getsockname()[:2]) as proxy,
                socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client,
            ):
                served, _ = upstream.accept()
                with served:
                    client.sendall(b"ping")
                    assert served.recv(4) == b"ping"
                    proxy.cut()
                    with pytest.raises(ConnectionResetError):
                        client.recv(1)
            left = set(threading.enumerate()) - before
            assert not left, f"round {round_}: threads still running {left}"


def _target_sessions(stack: DevStack) -> str:
    """What the target holds, for a failure's message: sessions by user and state."""
    assert stack.target is not None
    with psycopg.connect(stack.target.admin_conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT usename, state, count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 3 DESC"
        ).fetchall()
    return f"target sessions {rows}; open fds here {len(os.listdir('/proc/self/fd'))}"


def _sockets(port: int) -> str:
    """The kernel's view of the proxy's port, for a failure's message."""
    if shutil.which("ss") is None:
        return "(no ss here)"
    found = subprocess.run(
        ["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True
    )
    return found.stdout.strip().replace("\n", " | ")


def _log_tail(path: Path, lines: int = 12) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def own_stack() -> Iterator[DevStack]:
    """Stopping a server would break the shared stack: this module gets its own."""
    with DevStack(pooler=False) as started:
        yield started


def test_target_server_stopped_mid_run_and_started_again(
    own_stack: DevStack, isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from migration_assets.cli.demo import prepare_source
    from migration_assets_tests.conftest import Migration as Pair

    prepare_source(own_stack, patients=300, seed=11)
    home = isolated_cwd / "home"
    home.mkdir()
    m = Pair(
        own_stack.source_url,
        own_stack.target_url,
        isolated_cwd / "plan.json",
        home,
        own_stack.ca_file,
    )
    for k, v in m.env().items():
        monkeypatch.setenv(k, v)
    _prepare(m)
    proc = _start(m, isolated_cwd)
    assert own_stack.target is not None
    wait_for_copy(own_stack.target.admin_conninfo(), dbname(m.target_url))
    own_stack.target.stop("fast")
    code, output = _output(proc)
    assert code == 1, output
    assert "stopped early" in output, output
    own_stack.target.start()
    _finish(m)


def test_a_spare_connection_is_reused_and_replaced_once_the_server_dropped_it(
    databases: Databases, stack: DevStack
) -> None:
    """A run's table steps share a connection in turn: one the server dropped in between is
    replaced before it is lent, and one that raised or was left mid-transaction is closed."""
    url = databases.source(seeded=False)
    spare = Spare()

    def open_new() -> Connection:
        return open_pinned(url, setting="SOURCE_DATABASE_URL")

    with spare.lend(open_new) as first:
        pid = first.info.backend_pid
        first.execute("SELECT 1")
        first.commit()
    with spare.lend(open_new) as again:
        assert again.info.backend_pid == pid, "an idle connection was not kept"
    assert stack.source is not None
    stack.source.admin(f"SELECT pg_terminate_backend({int(pid)}, 10000)")
    with spare.lend(open_new) as replaced:
        assert replaced.info.backend_pid != pid
        assert replaced.execute("SELECT 1").fetchone() == (1,)
        replaced.commit()
    with pytest.raises(RuntimeError), spare.lend(open_new) as failed:
        raise RuntimeError("a step failed")
    assert failed.closed
    with spare.lend(open_new) as left_open:
        left_open.execute("SELECT 1")  # a transaction left open
    assert left_open.closed
    spare.close()
