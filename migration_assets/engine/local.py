"""Local execution: long-lived worker processes that execute runs, and nothing else.

A process per run (Dagster's default launcher) costs seconds of imports for a slice that
copies in a fraction of one, so on one machine workers load the definitions once and then
execute one run after another through Dagster's own execution API. Everything the
migration guarantees (what a slice means, its verification, index deferral, lost-run
recovery) lives in the graph; a worker that dies only loses the run it held, which its
missed heartbeat then fails.

This module imports nothing of Dagster when it loads: `migrate` starts its workers first,
so their second of imports runs beside its own rather than after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing as mp
import signal
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any

from migration_assets.db.errors import safe_message
from migration_assets.engine.driver import this_process
from migration_assets.engine.home import prepare_process
from migration_assets.settings import Settings

if TYPE_CHECKING:
    from migration_assets.engine.session import Outcome, Session
    from migration_assets.engine.work import RunSpec

ProgressFn = Callable[["Outcome"], None]


def lanes(settings: Settings, workers: int) -> int:
    """Runs at once: as asked, never more than the target connections allowed."""
    return max(1, min(workers, settings.migration_target_connections))


def start_workers(settings: Settings, plan_path: Path, workers: int) -> WorkerPool | None:
    """Workers started before this process imports Dagster, so their imports (about a
    second each) overlap its own; `migrate(pool=...)` releases or closes them."""
    others = lanes(settings, workers) - 1  # this process is one of the lanes
    if others < 1:
        return None
    prepare_process(settings)  # DAGSTER_HOME's config, before any worker opens it
    return WorkerPool(settings, plan_path, others)


def unreachable(outcome: Outcome) -> bool:
    """A connection that cannot even be opened: the server is down or the network is gone,
    so the remaining partitions would only fail the same way."""
    return "cannot connect to" in outcome.message


def run_inline(
    session: Session, specs: list[RunSpec], on_done: ProgressFn
) -> tuple[list[Outcome], str]:
    """Runs one after another in this process; stop once a database is unreachable."""
    outcomes = []
    for spec in specs:
        for outcome in _execute(session, spec):
            on_done(outcome)
            outcomes.append(outcome)
            if unreachable(outcome):
                return outcomes, outcome.message
    return outcomes, ""


class WorkerPool:
    """Worker processes started early, so importing Dagster overlaps this process's own
    start and the schema run. The process that owns the pool executes runs too: `workers`
    concurrent runs need only `workers - 1` more interpreters (each ~135 MB and about a
    second of imports). A worker opens the instance only once released (`release`): two
    first opens of an empty Dagster storage would race to create its tables."""

    def __init__(self, settings: Settings, plan_path: Path, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.todo: mp.Queue[RunSpec | None] = ctx.Queue()
        self.done: mp.Queue[list[Outcome]] = ctx.Queue()
        self.stop = ctx.Event()
        self.go = ctx.Event()
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(
                    str(plan_path),
                    settings,  # pickled to the worker: the settings themselves, not the env
                    this_process(),
                    self.todo,
                    self.done,
                    self.stop,
                    self.go,
                ),
                daemon=True,
            )
            for _ in range(count)
        ]
        for proc in self.procs:
            proc.start()
        self.closed = False

    def release(self) -> None:
        """This process has opened the instance, so its storage exists: workers may open it."""
        self.go.set()

    def run(
        self, specs: list[RunSpec], on_done: ProgressFn, *, session: Session | None = None
    ) -> tuple[list[Outcome], str]:
        """Every spec once, by the workers and (with `session`) by this process as well;
        an outcome per partition (a run of several small tables gives several)."""
        for spec in specs:
            self.todo.put(spec)
        for _ in range(len(self.procs) + (session is not None)):
            self.todo.put(None)  # one end marker per consumer
        outcomes: list[Outcome] = []
        aborted = ""
        finished = 0  # runs, where outcomes counts partitions

        def take(results: list[Outcome]) -> None:
            nonlocal aborted, finished
            finished += 1
            for outcome in results:
                outcomes.append(outcome)
                on_done(outcome)
                if unreachable(outcome) and not aborted:
                    aborted = outcome.message
                    self.stop.set()

        mine = session
        while finished < len(specs):
            if mine is not None and not self.stop.is_set():
                item = self.todo.get()
                if item is None:
                    mine = None
                else:
                    take(_execute(mine, item))
                while not self.done.empty():
                    take(self.done.get())
                continue
            try:
                results = self.done.get(timeout=1.0)
            except Empty:
                if not any(p.is_alive() for p in self.procs):
                    break
                continue
            take(results)
        if not aborted:
            _report_lost(specs, outcomes, on_done)
        return outcomes, aborted

    def close(self) -> None:
        """Workers are terminated, not asked to leave: every outcome is already in hand (or
        the migration is stopping), and a worker's interpreter teardown (Dagster loaded)
        costs most of a second. Waiting 0.2 s for a clean exit cost every migrate 0.2 s.
        Closing twice is a no-op."""
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        # Each queue and event holds named semaphores that multiprocessing's resource tracker
        # forgets only when they are freed; `migrate` leaves through os._exit, and a failed
        # run's traceback can keep this pool alive, so they are let go of here, or the
        # tracker prints "leaked semaphore objects" after the summary.
        del self.todo, self.done, self.stop, self.go


def _report_lost(specs: list[RunSpec], outcomes: list[Outcome], on_done: ProgressFn) -> None:
    """A worker that died took its run with it: report it, never hide it."""
    from migration_assets.engine.session import Outcome

    finished = {o.spec.label for o in outcomes}
    for spec in (s for run in specs for s in run.slices):
        if spec.label not in finished:
            lost = Outcome(spec, False, 0, 0.0, "the worker process died during this run")
            outcomes.append(lost)
            on_done(lost)


def _die_with_parent() -> None:
    """A worker must not outlive a killed migrate (Linux; elsewhere best effort)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker(
    plan_path: str, settings: Settings, driver: str, todo: Any, done: Any, stop: Any, go: Any
) -> None:
    _die_with_parent()
    from migration_assets.engine.session import Session

    for module in _STORAGE_MODULES:  # most of opening an instance is importing its storage
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    go.wait()
    session = Session.open(settings, Path(plan_path), driver=driver)
    while not stop.is_set() and (spec := todo.get()) is not None:
        done.put(_execute(session, spec))


# imported while waiting to be released: PostgreSQL storage brings Dagster's storage classes
# with it; without it (SQLite storage) they are only imported when the instance opens
_STORAGE_MODULES = ("dagster_postgres",)


def _execute(session: Session, spec: RunSpec) -> list[Outcome]:
    from migration_assets.engine.session import Outcome

    try:
        return session.execute_each(spec)
    except Exception as exc:  # never let one run take a worker (or the pool's owner) down
        limit = session.settings.migration_statement_timeout
        message = safe_message(exc, statement_timeout=limit)
        return [Outcome(s, False, 0, 0.0, message) for s in spec.slices]
