"""The seed's hash fields: every value of a row is a digit of its md5 digests.

A row's digests are read as 60-bit numbers: n0, n1 from `h`, n2, n3 from `h1`
(h1 = md5(h || ':1')), and so on; `Fields` hands out independent digits of those numbers in
order of use, so no field is correlated with another or with the row's id.
"""

from __future__ import annotations

from collections.abc import Sequence

# --------------------------------------------------------------------------------------------
# Hash fields. A row's md5 digests are read as 60-bit numbers: n0, n1 from `h`, n2, n3 from `h1`
# (h1 = md5(h || ':1')), and so on. `Fields` hands out independent digits of those numbers in
# order of use, so no field is correlated with another or with the row's id.
# Each layer of a statement ends in OFFSET 0: that stops the planner from inlining md5() into
# every expression that reads a number, so each hash is computed once per row.

MAX_PROVIDERS = 400
MAX_ROWS = 1 << 30  # upper bound of a row-number field (a patient, an encounter, ...)
TEN_YEARS = 315_360_000  # seconds
ONE_YEAR = 31_536_000
EPOCH = "2015-01-01 00:00:00+00"


class Fields:
    """Independent fields of a row's hash numbers, handed out in order of use.

    A field in 0..n-1 is the next mixed-radix digit: mod(number / (sizes before it), n). It is
    uniform while at least 2^8 of headroom is left, so a number is retired before that.
    Changing the order of allocation changes the data (deterministically), not its shape.
    """

    _LIMIT = 1 << 52

    def __init__(self, *numbers: str) -> None:
        self.numbers = numbers
        self._index = 0
        self._used = 1

    def num(self, n: int | str, bound: int | None = None) -> str:
        """SQL for a field in 0..n-1; `bound` is the largest n when n is an SQL expression."""
        size = n if bound is None else bound
        if not isinstance(size, int) or size < 1:
            raise TypeError("a field needs an integer size (pass bound= for SQL sizes)")
        if self._used * size > self._LIMIT:
            self._index += 1
            self._used = 1
            if self._index == len(self.numbers):
                raise ValueError("hash exhausted: give the statement another hash")
        var = self.numbers[self._index]
        expr = f"mod({var}, {n})" if self._used == 1 else f"mod({var} / {self._used}, {n})"
        self._used *= size
        return expr

    def pct(self) -> str:
        """A field in 0..99, for "in p percent of rows"."""
        return self.num(100)

    def pick(self, param: str, values: Sequence[object]) -> str:
        """An element of the list `values`, bound as the text[] parameter `param`."""
        return f"(%({param})s::text[])[1 + {self.num(len(values))}]"


def hash_numbers(*hashes: str) -> str:
    """Select-list items reading each hex digest as two 60-bit numbers: n0, n1, then n2, ..."""
    names = (f"n{k}" for k in range(2 * len(hashes)))
    return ", ".join(
        f"('x' || substr({h}, {start}, 15))::bit(60)::bigint AS {next(names)}"
        for h in hashes
        for start in (1, 16)
    )


def hash_rows(tag: str, count: str, hashes: int = 1, index: str = "i") -> str:
    """FROM item: `index` = 1..count with h = md5('<seed>:<table>:' || index) and numbers."""
    extra = "".join(f", md5(h || ':{k}') AS h{k}" for k in range(1, hashes))
    numbers = hash_numbers("h", *(f"h{k}" for k in range(1, hashes)))
    return f"""(
        SELECT s.*, {numbers}
        FROM (SELECT s.*{extra}
              FROM (SELECT {index}, md5(%({tag})s || {index}) AS h
                    FROM generate_series(1, {count}) AS {index} OFFSET 0) AS s
              OFFSET 0) AS s
        OFFSET 0)"""


def uuid_of(h: str) -> str:
    """A version-4-shaped uuid from the 32 hex digits of `h`."""
    return (
        f"(substr({h}, 1, 12) || '4' || substr({h}, 14, 3)"
        f" || substr('89ab', 1 + mod(('x' || substr({h}, 17, 1))::bit(4)::int, 4), 1)"
        f" || substr({h}, 18, 15))::uuid"
    )


def at_seconds(seconds: str, base: str = EPOCH) -> str:
    """`base` plus whole seconds: unlike days or months, seconds never depend on TimeZone."""
    return f"(timestamptz '{base}' + make_interval(secs => {seconds}))"


# Shared by every statement that needs a patient: its uuid, primary provider, encounter count.
# Fields come from h1..h3 only: h is the uuid, so uuid-range slices stay uncorrelated.
PATIENT = Fields("n2", "n3", "n4", "n5", "n6", "n7")
PATIENT_ROWS = hash_rows("t_patients", "%(patients)s", hashes=4)
PATIENT_ID = uuid_of("h")
PATIENT_PROVIDER = (
    f"CASE WHEN {PATIENT.pct()} < 85"
    f" THEN 1 + {PATIENT.num('%(providers)s', bound=MAX_PROVIDERS)} END"
)
PATIENT_N_ENCOUNTERS = f"(1 + {PATIENT.num(5)})"

# Shared by every statement that needs an encounter, read from its n0, n1 only (the encounter
# statement itself adds n2, n3 for the fields nothing else needs).
ENC = Fields("n0", "n1")
ENC_ROWS = hash_rows("t_encounters", "%(encounters)s", index="enc")
ENC_N_OBS = f"(1 + {ENC.num(4)})"
ENC_STATUS_PCT = ENC.pct()
ENC_FINISHED = f"({ENC_STATUS_PCT} < 70)"
ENC_STATUS = f"""(CASE
        WHEN {ENC_STATUS_PCT} < 70 THEN 'finished'
        WHEN {ENC_STATUS_PCT} < 78 THEN 'cancelled'
        WHEN {ENC_STATUS_PCT} < 84 THEN 'no_show'
        WHEN {ENC_STATUS_PCT} < 92 THEN 'planned'
        WHEN {ENC_STATUS_PCT} < 95 THEN 'arrived'
        ELSE 'in_progress' END)::public.encounter_status"""
# Seconds after EPOCH: visits span ten years (2015-2024); planned ones lie in the year after.
ENC_START_SECS = f"""(CASE WHEN {ENC_STATUS_PCT} BETWEEN 84 AND 91
        THEN {TEN_YEARS} + {ENC.num(ONE_YEAR)}
        ELSE {ENC.num(TEN_YEARS)} END)"""
ENC_HAS_RX = f"({ENC_FINISHED} AND {ENC.pct()} < 15)"
ENC_N_RX = f"(1 + {ENC.num(4)})"
