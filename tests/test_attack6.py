"""Bypasses found by attack review attack6 (shapes, pyformat conversion,
masking filters, MariaDB autocommit, approvals).

Each test states the SAFE outcome and fails while its bypass works, so each
is marked ``xfail(strict=True)``: the day a fix lands the mark must go. They
judge by what the caller sees or by the server's state, never by
guardeddb's own decision.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity

from .fix_db import Backend

AGENT = Identity(user="mallory@example.com", agent="attack6-bot", roles=frozenset({"support"}))
SSN1 = "123-45-6789"
SSN2 = "234-56-7891"


def _equality_policy() -> dict[str, Any]:
    return {
        "version": 1,
        "extends": [],
        "on_unparsed": "block",
        "masking": {
            "rules": [{"columns": ["*.ssn"], "operator": "redact", "filter": "equality"}],
            "unmask": {"roles": ["compliance"]},
        },
    }


@pytest.mark.mysql
@pytest.mark.xfail(
    strict=True,
    reason="attack6: MySQL equality filter trusts any column the rule covers, "
    "whatever its type; a numeric ssn column reads the masked string's leading digits",
)
def test_mysql_equality_join_with_a_numeric_ssn_column_reads_leading_digits(
    mysql_backend: Backend,
) -> None:
    """Attack: under ``*.ssn`` ``filter: equality`` on MariaDB, the agent
    creates ``attack6_guess (ssn BIGINT, k BIGINT)`` holding 0..999 in both
    columns, then ``SELECT c.id, g.k FROM customers c JOIN attack6_guess g ON
    c.ssn = g.ssn``. MariaDB compares the VARCHAR ssn with the BIGINT ssn as
    numbers, so ``'123-45-6789' = 123``: ``k`` (not masked) is the first
    digits of each customer's SSN, in one query.

    Impact: the masked SSN's leading digits (all digits for an SSN stored
    without dashes) reach a caller that may only see it redacted, the exact
    oracle the MySQL ``equality`` rule says it closes.

    Root cause: ``masking/filters.py`` ``_Judge.text``/``same_rule`` accepts
    a column as "provable text" when it is a base-table column the same
    masking rule covers, by name only (``*.ssn``): nothing knows its type,
    and any table may have a numeric column of that name.
    """
    raw = mysql_backend.connect_raw()
    cur = raw.cursor()
    for t in ("attack6_cust", "attack6_guess"):
        cur.execute(f"DROP TABLE IF EXISTS {t}")
    cur.execute("CREATE TABLE attack6_cust (id INT PRIMARY KEY, ssn VARCHAR(20))")
    cur.execute(f"INSERT INTO attack6_cust VALUES (1, '{SSN1}'), (2, '{SSN2}')")
    raw.commit()
    conn = guardeddb.wrap(raw, policy=_equality_policy(), identity=AGENT)
    seen: list[Any] = []
    try:
        gc = conn.cursor()
        with contextlib.suppress(guardeddb.Error):
            gc.execute("CREATE TABLE attack6_guess (ssn BIGINT, k BIGINT)")
            gc.execute(
                "INSERT INTO attack6_guess (ssn, k) VALUES "
                + ", ".join(f"({n}, {n})" for n in range(1000))
            )
            conn.commit()
            gc.execute(
                "SELECT c.id, g.k FROM attack6_cust c JOIN attack6_guess g ON c.ssn = g.ssn "
                "ORDER BY c.id"
            )
            seen = list(gc.fetchall())
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
        raw2 = mysql_backend.connect_raw()
        with contextlib.suppress(Exception):
            c2 = raw2.cursor()
            c2.execute("DROP TABLE IF EXISTS attack6_cust")
            c2.execute("DROP TABLE IF EXISTS attack6_guess")
        raw2.close()
    assert (1, 123) not in [tuple(r) for r in seen], seen
