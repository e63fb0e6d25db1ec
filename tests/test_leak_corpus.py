"""The masking leak corpus (issue #11), run on the real databases.

Each entry of ``leak_corpus.CORPUS`` runs as a masked identity under a policy
that masks email, ssn, card_number, phone, iban and the API token, over
tables seeded with known secrets, and is judged by everything the caller can
see (``fix_leak.LeakDb``): cells, exception text, spans and audit records.
The union of what all the queries of a dialect reveal is judged too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .fix_leak import MARKS, WINDOW, LeakDb
from .fix_shop import SECRETS
from .leak_corpus import CORPUS, DIALECTS, RAISES

PER_DIALECT = 250
#: Entries that still leak, with why (strict: fixing one must remove it here).
KNOWN_LEAKS: dict[tuple[str, str], str] = {}


def _params() -> list[Any]:
    out = []
    for n, (dialect, sql) in enumerate(CORPUS):
        marks: list[Any] = list(MARKS[dialect])
        if (dialect, sql) in KNOWN_LEAKS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_LEAKS[(dialect, sql)]))
        out.append(pytest.param(dialect, sql, marks=marks, id=f"{dialect}-{n:03d}"))
    return out


def test_corpus_is_large_enough() -> None:
    """At least 250 queries on each database (issue #11)."""
    for dialect in DIALECTS:
        assert sum(d == dialect for d, _ in CORPUS) >= PER_DIALECT, dialect
    assert len(set(CORPUS)) == len(CORPUS)


@pytest.mark.parametrize(("dialect", "sql"), _params())
def test_query_reveals_no_secret(leakdbs: Callable[[str], LeakDb], dialect: str, sql: str) -> None:
    leakdb = leakdbs(dialect)
    cells, other, failure = leakdb.run(sql)
    seen = leakdb.shown[sql] = cells + other
    key = (leakdb.backend.name, sql)
    if failure is not None:
        assert key in RAISES, (sql, failure)
        assert "withheld" in str(failure)
    else:
        assert key not in RAISES, sql
    bad = leakdb.exposed(seen)
    assert bad == [], (sql, [leakdb.where(seen, w) for w in bad])


@pytest.mark.parametrize("dialect", [pytest.param(d, marks=MARKS[d]) for d in DIALECTS])
def test_corpus_together_reveals_no_secret(leakdbs: Callable[[str], LeakDb], dialect: str) -> None:
    """The union of what every query of the corpus shows covers no secret, nor
    a window of one beyond the baseline."""
    leakdb = leakdbs(dialect)
    learned: list[str] = []
    for dialect, sql in CORPUS:
        if dialect == leakdb.backend.name and (dialect, sql) not in KNOWN_LEAKS:
            if sql not in leakdb.shown:
                cells, other, _ = leakdb.run(sql)
                leakdb.shown[sql] = cells + other
            learned += leakdb.shown[sql]
    assert leakdb.exposed(learned) == []
    text = "\n".join(learned).lower()
    for secret in SECRETS:
        low = secret.lower()
        covered: set[int] = set()
        for i in range(len(low) - WINDOW + 1):
            if low[i : i + WINDOW] in text:
                covered.update(range(i, i + WINDOW))
        assert len(covered) < len(low), secret
