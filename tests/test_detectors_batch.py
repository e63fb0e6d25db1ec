"""Scanning a fetched column in one pass finds exactly what scanning each
cell finds (issue #15): the same masked text and the same count per cell,
for cells built from the labelled corpus and from the pieces detectors key
on (separators, NUL, newlines, unicode digits and case folds, huge cells),
and for columns of bytes, ``str`` subclasses, NULLs and numbers.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections import namedtuple
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardeddb.masking import DETECTORS, MaskPlan, MaskRun, Scanner
from guardeddb.masking.operators import email, last4, redact

from .detector_corpus import negatives, positives

SCANNER = Scanner(DETECTORS)
CORPUS = [s.text for s in positives(per_entity=6) + negatives(per_kind=6)]
PIECES = [
    "\x00",
    "\n",
    " ",
    "-",
    ".",
    ":",
    "=",
    "@",
    "->",
    "4111 1111 1111 1111",
    "4539578763621486",
    "123-45-6789",
    "ssn ",
    "SSN:",
    "+44 20 7946 0958",
    "phone ",
    "(212) 555-0142",
    "GB82 WEST 1234 5698 7654 32",
    "192.168.0.1",
    "fe80::1",
    "ada@example.com",
    "password=",
    "hunter2",
    "authorization: bearer ",
    "https://u:p@h",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "PuTTY-User-Key-File-2:",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    "AKIAIOSFODNN7EXAMPLE",
    "aws_secret=",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_" + "a" * 36,
    "\u0663\u0664\u0665\u0666\u0667\u0668\u0669",  # Arabic-Indic digits
    "\uff11\uff12\uff13",  # fullwidth digits
    "\u0130",  # İ: lower() makes it two characters
    "\u017f",  # long s, which (?i) folds to s
    "\u212a",  # Kelvin sign
    "Customer 12",
    "London",
]

cell_text = st.one_of(
    st.sampled_from(CORPUS),
    st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=8).map("".join),
    st.text(alphabet="0123456789 .-/:@=\x00\nABCDEFabcdef+", max_size=40),
    st.tuples(st.sampled_from(CORPUS + PIECES), st.integers(1, 400)).map(lambda t: t[0] * t[1]),
)


class Tagged(str):
    """A ``str`` subclass (as a driver's adapter may return) lying in __str__."""

    def __str__(self) -> str:
        return "nothing here"


cell_value = st.one_of(
    cell_text,
    cell_text,
    st.none(),
    cell_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    cell_text.map(lambda t: bytearray(t.encode("utf-8", "surrogatepass"))),
    st.binary(max_size=30),
    cell_text.map(Tagged),
    st.integers(),
    st.just(datetime.date(2024, 1, 2)),
)


def _per_cell(cells: list[str]) -> tuple[list[str], int]:
    results = [SCANNER.scan(c) for c in cells]
    return [t for t, _ in results], sum(n for _, n in results)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cell_text, max_size=40))
def test_batch_scan_equals_per_cell_scan(cells: list[str]) -> None:
    masked, n = SCANNER.scan_many(cells)
    assert (list(masked), n) == _per_cell(cells)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cell_value, max_size=30))
def test_column_scan_equals_value_scan(values: list[Any]) -> None:
    masked, n = SCANNER.scan_column(values)
    want = [SCANNER.scan_value(v) for v in values]
    assert list(masked) == [v for v, _ in want]
    assert [type(v) for v in masked] == [type(v) for v, _ in want]
    assert n == sum(k for _, k in want)


def test_the_labelled_corpus_in_one_batch() -> None:
    """The whole corpus as one column: every cell as scan() leaves it."""
    cells = [s.text for s in positives() + negatives()]
    masked, n = SCANNER.scan_many(cells)
    assert (list(masked), n) == _per_cell(cells)
    assert n > 500


def test_scan_value_fails_closed_for_text_it_did_not_expect() -> None:
    """bytes, bytearray, memoryview and str subclasses are scanned too."""
    card = "card 4111 1111 1111 1111 ok"
    assert SCANNER.scan_value(card.encode()) == (b"card ************1111 ok", 1)
    assert SCANNER.scan_value(bytearray(card.encode())) == (
        bytearray(b"card ************1111 ok"),
        1,
    )
    assert SCANNER.scan_value(memoryview(card.encode())) == (b"card ************1111 ok", 1)
    assert SCANNER.scan_value(Tagged(card)) == ("card ************1111 ok", 1)
    raw = b"\xff\xfe 4111111111111111"  # not UTF-8: the rest stays byte for byte
    assert SCANNER.scan_value(raw) == (b"\xff\xfe ************1111", 1)
    assert SCANNER.scan_value(12345678901234) == (12345678901234, 0)
    column = [None, 4, b"ada@example.com", "x"]
    assert SCANNER.scan_column(column) == ([None, 4, b"a***@example.com", "x"], 1)


Point = namedtuple("Point", "id name email note")


def _cells(row: Any) -> tuple[Any, ...]:
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(), cell_value, cell_value, cell_value), max_size=30),
    st.sampled_from(["tuple", "list", "namedtuple", "sqlite3.Row", "dict"]),
)
def test_masking_rows_in_a_batch_equals_row_by_row(
    raw_rows: list[tuple[Any, ...]], kind: str
) -> None:
    """MaskRun.rows (column by column) == MaskRun.row on each row, and the count too."""
    db = sqlite3.connect(":memory:")
    cursor = db.execute("SELECT 1 AS id, 2 AS name, 3 AS email, 4 AS note")
    make: Any = {
        "tuple": tuple,
        "list": list,
        "namedtuple": Point._make,
        "sqlite3.Row": lambda r: sqlite3.Row(cursor, tuple(r)),
        "dict": lambda r: dict(zip(Point._fields, r, strict=True)),
    }[kind]
    plan = MaskPlan([(2, email), (0, last4)], [1, 3], SCANNER, ("id", "name", "email", "note"))
    batch = MaskRun(plan, cursor, cast(Any, None))
    single = MaskRun(plan, cursor, cast(Any, None))
    got = batch.rows([make(r) for r in raw_rows])
    want = [single.row(make(r)) for r in raw_rows]
    assert [type(r) for r in got] == [type(r) for r in want]
    assert list(map(_cells, got)) == list(map(_cells, want))
    assert batch.count == single.count
    plan_redact = MaskPlan([(1, redact)], [], None, ("id", "name", "email", "note"))
    run = MaskRun(plan_redact, cursor, cast(Any, None))
    assert [_cells(r)[1] for r in run.rows([make(r) for r in raw_rows])] == [
        redact(r[1]) for r in raw_rows
    ]
    db.close()


def test_no_value_is_found_across_two_cells() -> None:
    """Halves of a value in neighbouring cells are not one value: the NUL
    between cells stops every pattern (``\\W``, ``\\s`` and negated classes)."""
    pairs = [
        ["ssn", "123456789"],
        ["password:", "hunter2"],
        ["password", "=hunter2"],
        ["aws key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
        ["4111 1111", "1111 1111"],
        ["phone", "2125550142"],
        ["-----BEGIN RSA PRIVATE KEY-----", "MIIE"],
        ["https://user:", "pw@host"],
    ]
    for pair in pairs:
        cells = [*pair, "filler 1234567"] * 6  # enough cells with clues to be joined
        masked, n = SCANNER.scan_many(cells)
        assert (list(masked), n) == _per_cell(cells), pair
