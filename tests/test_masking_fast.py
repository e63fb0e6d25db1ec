"""The bulk paths of masking give exactly what the cell-by-cell reference
gives (issue #15): a column's clues found in bulk equal each cell's own
clues; the bulk ``email``/``last4``/``redact``/``null`` over a column equal
the operator on each value; a batch of rows equals the rows masked one by
one; generated batches hold values that straddle the NUL separator,
unicode (digits, case folds), bytes, ``None`` and very long strings.
"""

from __future__ import annotations

import datetime
import decimal
import sqlite3
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardeddb.masking import DETECTORS, MaskPlan, MaskRun, Scanner
from guardeddb.masking.detectors import _CELL_SEP, _clues, _column_clues
from guardeddb.masking.operators import REDACTED, email, last4, null, partial, redact
from guardeddb.masking.plan import _operator_column

from .test_detectors_batch import CORPUS, PIECES, Tagged, cell_text

SCANNER = Scanner(DETECTORS)
OPERATORS = [email, last4, redact, null, partial()]

long_text = st.tuples(st.sampled_from(CORPUS + PIECES), st.integers(17, 3000)).map(
    lambda t: (t[0] * t[1])[:20_000]
)
# A clue looked for only in text of 17 characters or more, in text of 15-19.
NEEDLES = ["eyJ", "AKIA", "aws", "ghp_", "sk-", "xk_live_", "sk_live_", "sg.", "hooks.slack"]
near_17 = st.tuples(st.sampled_from(NEEDLES), st.integers(15, 19), st.booleans()).map(
    lambda t: ("7" * (t[1] - len(t[0])) + t[0]) if t[2] else (t[0] + "." * (t[1] - len(t[0])))
)
text = st.one_of(
    cell_text,
    long_text,
    near_17,
    st.text(alphabet="@._-+ 0123456789abcxyz\x00\n\u0663\u017f\u0130", max_size=60),
    st.emails(),
)
value = st.one_of(
    text,
    text,
    st.none(),
    text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=20),
    text.map(Tagged),
    st.integers(),
    st.floats(allow_nan=False),
    st.just(decimal.Decimal("1.5")),
    st.just(datetime.date(2024, 1, 2)),
)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(text, min_size=1, max_size=40))
def test_column_clues_equal_each_cells_clues(cells: list[str]) -> None:
    """Clues found in bulk over the joined column are each cell's clues
    (for a column without NUL, the only one scan_many joins)."""
    cells = [c.replace(_CELL_SEP, "") for c in cells]
    joined = _CELL_SEP.join(cells)
    want = {i: c for i, cell in enumerate(cells) if (c := _clues(cell))}
    assert _column_clues(cells, joined) == want


@SETTINGS
@given(st.lists(text, max_size=40))
def test_scan_many_equals_scan(cells: list[str]) -> None:
    """A column of text (long cells, NULs, unicode) scanned in one pass is
    each cell scanned alone, with the same count."""
    results = [SCANNER.scan(c) for c in cells]
    masked, n = SCANNER.scan_many(cells)
    assert list(masked) == [t for t, _ in results]
    assert n == sum(k for _, k in results)


def _reference(op: Any, values: list[Any]) -> tuple[list[Any], int]:
    out = [v if v is None else op(v) for v in values]
    return out, sum(v is not None for v in values)


@SETTINGS
@given(st.sampled_from(OPERATORS), st.lists(value, max_size=40))
def test_operator_column_equals_operator_per_value(op: Any, values: list[Any]) -> None:
    """Any column: the bulk operator gives each value what ``op`` gives it."""
    masked, n = _operator_column(op)(values)
    want, count = _reference(op, values)
    assert list(masked) == want
    assert [type(v) for v in masked] == [type(v) for v in want]
    assert n == count


@SETTINGS
@given(st.sampled_from(OPERATORS), st.lists(text, min_size=1, max_size=40))
def test_operator_column_of_plain_text(op: Any, values: list[str]) -> None:
    """A column of plain ``str`` (the bulk path): the same text as ``op``."""
    masked, n = _operator_column(op)(values)
    assert (list(masked), n) == _reference(op, values)


def test_bulk_operators_never_return_the_value() -> None:
    """Cells the bulk forms cannot shape (no ``@``, a NUL, non-ASCII digits)
    are masked as the operator masks them, never passed through."""
    cells = ["ada@example.com", "@x", "x@", "no at", "a\x00b@c.d", "\u0663\u0664\u0665\u0666\u0667"]
    assert _operator_column(email)(cells)[0] == [
        "a***@example.com",
        REDACTED,
        REDACTED,
        REDACTED,
        "a***@c.d",
        REDACTED,
    ]
    got = _operator_column(last4)(["4111 1111 1111 1111", "12", "a\x00b", "\u0663" * 8])[0]
    assert got == ["************1111", "**", "***", "****\u0663\u0663\u0663\u0663"]
    assert _operator_column(redact)([1, 2.5, None, datetime.date(2024, 1, 2)]) == (
        [None, None, None, None],
        3,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(), value, text, value, st.floats()), min_size=16, max_size=40),
    st.sampled_from(["tuple", "list", "sqlite3.Row", "dict"]),
)
def test_batch_of_rows_equals_rows_one_by_one(rows: list[tuple[Any, ...]], kind: str) -> None:
    """A fetched batch masked column by column (bulk operators, bulk scan)
    equals each row masked alone, row type and count included."""
    db = sqlite3.connect(":memory:")
    names = ("id", "name", "email", "note", "amount")
    cursor = db.execute("SELECT 1 AS id, 2 AS name, 3 AS email, 4 AS note, 5 AS amount")
    make: Any = {
        "tuple": tuple,
        "list": list,
        "sqlite3.Row": lambda r: sqlite3.Row(cursor, tuple(r)),
        "dict": lambda r: dict(zip(names, r, strict=True)),
    }[kind]
    plan = MaskPlan([(2, email), (1, last4), (4, redact)], [3], SCANNER, names)
    batch = MaskRun(plan, cursor, cast(Any, None))
    single = MaskRun(plan, cursor, cast(Any, None))
    got = batch.rows([make(r) for r in rows])
    want = [single.row(make(r)) for r in rows]
    assert [type(r) for r in got] == [type(r) for r in want]
    cells = [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in got]
    assert cells == [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in want]
    assert batch.count == single.count
    db.close()


digit_text = st.one_of(
    st.text(alphabet="0123456789 -.()+_x\u0663", min_size=7, max_size=40),
    st.tuples(
        st.sampled_from(["", "SSN ", "tel ", "Social Security no ", "\u017fsn ", "cell: "]),
        st.one_of(
            st.from_regex(r"\+?\(?\d{3}\)?[ .-]?\d{2,3}[ .-]?\d{4}", fullmatch=True),
            st.sampled_from(
                [
                    "(212) 555-0142",
                    "(212)555-0142",
                    "+44 20 7946 0958",
                    "212 555 0142",
                    "212.555.0142",
                ]
            ),
            st.tuples(  # SSNs, with the area numbers never issued
                st.sampled_from(["000", "666", "912", "078", "123"]),
                st.sampled_from("- ."),
                st.sampled_from(["00", "05", "45"]),
                st.sampled_from(["0000", "1120", "6789"]),
            ).map(lambda t: f"{t[0]}{t[1]}{t[2]}{t[1]}{t[3]}"),
        ),
        st.sampled_from(["", " x", "1", "\x00"]),
    ).map("".join),
)


@SETTINGS
@given(st.lists(digit_text, min_size=8, max_size=40))
def test_digit_columns_in_one_pass(cells: list[str]) -> None:
    """Columns of numbers, phones and SSNs (scanned joined, by the keyword-
    less patterns where no cell has a keyword): each cell as scan leaves it."""
    results = [SCANNER.scan(c) for c in cells]
    masked, n = SCANNER.scan_many(cells)
    assert list(masked) == [t for t, _ in results]
    assert n == sum(k for _, k in results)
