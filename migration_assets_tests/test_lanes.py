"""`in_lanes`, the spreading of the finish steps' statements over connections: pure logic,
so stand-in connections (the real ones are exercised by every migrate's index rebuild and
ANALYZE, and their limit by `test_migrate_never_holds_more_target_connections_...`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest

from migration_assets.db.lanes import in_lanes
from migration_assets.db.session import Connection


class Lane:
    """Stands in for a connection: records what ran on it, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ran: list[str] = []


class Opener:
    def __init__(self) -> None:
        self.opened: list[Lane] = []
        self.closed = 0

    @contextmanager
    def __call__(self) -> Iterator[Connection]:
        lane = Lane(f"extra {len(self.opened)}")
        self.opened.append(lane)
        try:
            yield cast(Connection, lane)
        finally:
            self.closed += 1


def _record(conn: Any, item: str) -> None:
    conn.ran.append(item)


def test_each_group_runs_in_order_on_one_connection_and_everything_runs_once() -> None:
    first, more = Lane("first"), Opener()
    groups = [["a1", "a2", "a3"], ["b1", "b2"], ["c1"], ["d1", "d2"]]
    in_lanes(cast(Connection, first), more, 2, groups, _record)
    lanes = [first, *more.opened]
    assert len(more.opened) == 1
    assert more.closed == 1
    everything = [item for group in groups for item in group]
    assert sorted(item for lane in lanes for item in lane.ran) == sorted(everything)
    for group in groups:
        holder = [lane for lane in lanes if group[0] in lane.ran]
        assert len(holder) == 1
        ran = holder[0].ran
        assert ran[ran.index(group[0]) : ran.index(group[0]) + len(group)] == group


def test_no_more_connections_than_groups_and_one_lane_opens_none() -> None:
    more = Opener()
    in_lanes(cast(Connection, Lane("first")), more, 8, [["a"], ["b"]], _record)
    assert len(more.opened) == 1
    single = Opener()
    first = Lane("first")
    in_lanes(cast(Connection, first), single, 1, [["a"], ["b"], ["c"]], _record)
    assert single.opened == []
    assert first.ran == ["a", "b", "c"]


def test_two_lanes_really_run_at_once() -> None:
    """Each of the two groups waits for the other to start: one lane would never get past."""
    both = threading.Barrier(2, timeout=30)

    def meet(conn: Any, item: str) -> None:
        both.wait()
        conn.ran.append(item)

    in_lanes(cast(Connection, Lane("first")), Opener(), 2, [["a"], ["b"]], meet)
    assert not both.broken


def test_a_failure_is_raised_and_no_lane_starts_another_group() -> None:
    first, more = Lane("first"), Opener()
    groups = [["boom"], *[[f"later {i}"] for i in range(20)]]
    started: list[str] = []

    def work(conn: Any, item: str) -> None:
        started.append(item)
        if item == "boom":
            raise RuntimeError("the server said no")

    with pytest.raises(RuntimeError, match="the server said no"):
        in_lanes(cast(Connection, first), more, 1, groups, work)
    assert started == ["boom"]
    assert more.closed == len(more.opened)
