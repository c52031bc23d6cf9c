"""Sequences: copied after the data, then proven ahead of the keys they feed.

Bulk COPY writes explicit ids and never advances a sequence, so without this step the
application's first INSERT on the target collides with a migrated row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from migration_assets.db.session import Connection


@dataclass(frozen=True)
class SequenceState:
    qualified: str
    last_value: int
    is_called: bool
    increment: int = 1  # negative: a descending sequence, whose keys grow downwards

    @property
    def next_value(self) -> int:
        """What nextval() returns next."""
        return self.last_value + self.increment if self.is_called else self.last_value

    def collides(self, extreme: int) -> bool:
        """Whether the next value is among the column's (at or past its max, or its min for a
        descending sequence): the application's next INSERT would reuse a migrated key."""
        return self.next_value <= extreme if self.increment > 0 else self.next_value >= extreme


@dataclass(frozen=True)
class SequenceLag:
    sequence: str
    column: str
    column_value: int  # its max, or its min under a descending sequence
    next_value: int

    def __str__(self) -> str:
        return (
            f"{self.sequence} would hand out {self.next_value} but {self.column} already "
            f"holds {self.column_value}"
        )


def _rel(qualified: str) -> sql.Composed:
    schema, name = qualified.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def read_sequences(conn: Connection, names: Iterable[str]) -> dict[str, SequenceState]:
    states = {}
    for name in names:
        row = conn.execute(
            sql.SQL(
                "SELECT s.last_value, s.is_called, p.seqincrement FROM {} s "
                "JOIN pg_catalog.pg_sequence p ON p.seqrelid = %s::regclass"
            ).format(_rel(name)),
            [_regclass_text(name)],
        ).fetchone()
        assert row is not None
        states[name] = SequenceState(name, int(row[0]), bool(row[1]), int(row[2]))
    return states


def write_sequences(conn: Connection, states: Iterable[SequenceState]) -> int:
    count = 0
    for state in states:
        conn.execute(
            "SELECT setval(%s::regclass, %s, %s)",
            [_regclass_text(state.qualified), state.last_value, state.is_called],
        )
        count += 1
    return count


def _regclass_text(qualified: str) -> str:
    schema, name = qualified.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name)).as_string()


def column_extreme(conn: Connection, table: str, column: str, state: SequenceState) -> int | None:
    """The column's value the sequence must stay beyond: its max, or its min for a
    descending sequence."""
    extreme = sql.SQL("max" if state.increment > 0 else "min")
    row = conn.execute(
        sql.SQL("SELECT {}({})::int8 FROM {}").format(extreme, sql.Identifier(column), _rel(table))
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def sync_sequences(
    source: Connection, target: Connection, sequences: Iterable[tuple[str, str | None, str | None]]
) -> tuple[int, list[str]]:
    """Copy each sequence's position; never leave one at or below its column's max.

    A source whose sequence is already behind its column (rows inserted with explicit ids)
    would hand the application a duplicate key on its first INSERT: such sequences are
    advanced to the column's max and named in the result.
    """
    triples = list(sequences)
    states = read_sequences(source, [name for name, _, _ in triples])
    advanced: list[str] = []
    for name, table, column in triples:
        state = states[name]
        top = column_extreme(target, table, column, state) if table and column else None
        if top is not None and state.collides(top):
            states[name] = SequenceState(name, top, True, state.increment)
            which = "max" if state.increment > 0 else "min"
            advanced.append(
                f"{name}: source at {state.last_value}, advanced to {top} "
                f"({table}.{column} {which})"
            )
    return write_sequences(target, states.values()), advanced


def lagging_sequences(conn: Connection, owned: Iterable[tuple[str, str, str]]) -> list[SequenceLag]:
    """(sequence, table, column) triples whose next value is not beyond the column's values
    (above its max; below its min for a descending sequence)."""
    found = []
    for sequence, table, column in owned:
        state = read_sequences(conn, [sequence])[sequence]
        top = column_extreme(conn, table, column, state)
        if top is not None and state.collides(top):
            found.append(SequenceLag(sequence, f"{table}.{column}", top, state.next_value))
    return found
