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

    @property
    def next_value_floor(self) -> int:
        """The smallest value nextval() can return (for ascending sequences)."""
        return self.last_value + 1 if self.is_called else self.last_value


@dataclass(frozen=True)
class SequenceLag:
    sequence: str
    column: str
    column_max: int
    next_value: int

    def __str__(self) -> str:
        return (
            f"{self.sequence} would hand out {self.next_value} but {self.column} already "
            f"holds {self.column_max}"
        )


def _rel(qualified: str) -> sql.Composed:
    schema, name = qualified.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def read_sequences(conn: Connection, names: Iterable[str]) -> dict[str, SequenceState]:
    states = {}
    for name in names:
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(_rel(name))
        ).fetchone()
        assert row is not None
        states[name] = SequenceState(name, int(row[0]), bool(row[1]))
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


def column_max(conn: Connection, table: str, column: str) -> int | None:
    row = conn.execute(
        sql.SQL("SELECT max({})::int8 FROM {}").format(sql.Identifier(column), _rel(table))
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
        top = column_max(target, table, column) if table and column else None
        if top is not None and state.next_value_floor <= top:
            states[name] = SequenceState(name, top, True)
            advanced.append(
                f"{name}: source at {state.last_value}, advanced to {top} ({table}.{column} max)"
            )
    return write_sequences(target, states.values()), advanced


def lagging_sequences(conn: Connection, owned: Iterable[tuple[str, str, str]]) -> list[SequenceLag]:
    """(sequence, table, column) triples whose next value is not above the column's max."""
    found = []
    for sequence, table, column in owned:
        state = read_sequences(conn, [sequence])[sequence]
        top = column_max(conn, table, column)
        if top is not None and state.next_value_floor <= top:
            found.append(SequenceLag(sequence, f"{table}.{column}", top, state.next_value_floor))
    return found
