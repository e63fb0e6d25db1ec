"""Bypasses found by attack review attack6 (shapes, pyformat conversion,
masking filters, MariaDB autocommit, approvals).

Each test states the SAFE outcome and fails while its bypass works, so each
is marked ``xfail(strict=True)``: the day a fix lands the mark must go. They
judge by what the caller sees or by the server's state, never by
guardeddb's own decision.
"""

from __future__ import annotations

import contextlib
import sqlite3
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
@pytest.mark.parametrize("join", ["ON c.ssn = g.ssn", "USING (ssn)"])
def test_mysql_equality_join_with_a_numeric_ssn_column_reads_leading_digits(
    mysql_backend: Backend, join: str
) -> None:
    """Attack: under ``*.ssn`` ``filter: equality`` on MariaDB, the agent
    creates ``attack6_guess (ssn BIGINT, k BIGINT)`` holding 0..999 in both
    columns, then ``SELECT c.id, g.k FROM customers c JOIN attack6_guess g ON
    c.ssn = g.ssn``. MariaDB compares the VARCHAR ssn with the BIGINT ssn as
    numbers, so ``'123-45-6789' = 123``: ``k`` (not masked) is the first
    digits of each customer's SSN, in one query.

    Impact: the masked SSN's leading digits (all digits for an SSN stored
    without dashes) reach a caller that may only see it redacted, the exact
    oracle the MySQL ``equality`` rule says it closes. ``JOIN ... USING
    (ssn)`` and ``c.ssn IN (SELECT ssn FROM attack6_guess)`` do the same.

    Root cause: ``masking/filters.py`` ``_Judge.text``/``same_rule`` (and
    ``using_text`` for USING) accepts
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
                f"SELECT c.id, g.k FROM attack6_cust c JOIN attack6_guess g {join} ORDER BY c.id"
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


def _pg_raw(backend: Backend, *sql: str) -> None:
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        for s in sql:
            cur.execute(s)
        raw.commit()
    finally:
        raw.close()


def _pg_count(backend: Backend, table: str) -> int:
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])
    finally:
        raw.close()


_BULK_DELETE_BLOCKED: dict[str, Any] = {
    "version": 1,
    "extends": [],
    "rules": [
        {
            "id": "bulk-delete",
            "match": {"statements": ["delete", "update"], "affected_rows": {"gt": 5}},
            "action": "block",
        }
    ],
}


@pytest.mark.pg
def test_pg_affected_rows_counts_a_data_modifying_cte_by_its_select(pg_backend: Backend) -> None:
    """Attack: ``affected_rows: {gt: 5}`` blocks ``DELETE FROM t WHERE id > 0``
    (50 rows). The agent sends ``WITH d AS (DELETE FROM t WHERE id > 0
    RETURNING 1) SELECT count(*) FROM d`` instead: the dry run's count is the
    driver's rowcount, the outer SELECT's one row, so the rule (and an
    approval request, which shows and re-measures the same count) sees 1.
    ``WITH d AS (DELETE ...) DELETE FROM t2 WHERE id = -1`` counts 0 the same way.

    Impact: every row of the table deleted past a rule that blocks (or holds
    for a person) deletes of more than 5 rows.

    Root cause: ``drivers.Driver.dry_run`` returns the rowcount of the
    statement as a whole; ``_pipeline._changes_rows`` measures any single
    statement whose kinds include a row change, including one whose writes
    sit in a CTE the rowcount does not count.
    """
    _pg_raw(
        pg_backend,
        "DROP TABLE IF EXISTS attack6_big",
        "CREATE TABLE attack6_big (id int)",
        "INSERT INTO attack6_big SELECT generate_series(1, 50)",
    )
    conn = guardeddb.connect(pg_backend.url, policy=_BULK_DELETE_BLOCKED)
    try:
        cur = conn.cursor()
        with guardeddb.identity(AGENT), contextlib.suppress(guardeddb.Error):
            cur.execute(
                "WITH d AS (DELETE FROM attack6_big WHERE id > 0 RETURNING 1) "
                "SELECT count(*) FROM d"
            )
            conn.commit()
    finally:
        conn.close()
    left = _pg_count(pg_backend, "attack6_big")
    _pg_raw(pg_backend, "DROP TABLE IF EXISTS attack6_big")
    assert left > 44, f"{50 - left} rows deleted past affected_rows > 5"


@pytest.mark.pg
@pytest.mark.xfail(
    strict=True,
    reason="attack6: ON DELETE CASCADE rows are not in the dry run's count",
)
def test_pg_affected_rows_misses_rows_deleted_by_a_cascade(pg_backend: Backend) -> None:
    """Attack: the same ``affected_rows: {gt: 5}`` rule; ``DELETE FROM parent
    WHERE id = 1`` deletes one parent row, and its foreign key's ON DELETE
    CASCADE deletes its 50 children in the same statement. The dry run counts
    the driver's rowcount, 1 (PostgreSQL counts the statement's own rows).

    Impact: 51 rows deleted past a rule that blocks (or holds for a person,
    showing "1 row") deletes of more than 5 rows.

    Root cause: ``drivers.Driver.dry_run`` measures ``cursor.rowcount`` only;
    rows changed by cascades (and triggers) are not in it.
    """
    _pg_raw(
        pg_backend,
        "DROP TABLE IF EXISTS attack6_child",
        "DROP TABLE IF EXISTS attack6_par",
        "CREATE TABLE attack6_par (id int PRIMARY KEY)",
        "CREATE TABLE attack6_child (id int, p int REFERENCES attack6_par(id) ON DELETE CASCADE)",
        "INSERT INTO attack6_par VALUES (1)",
        "INSERT INTO attack6_child SELECT g, 1 FROM generate_series(1, 50) g",
    )
    conn = guardeddb.connect(pg_backend.url, policy=_BULK_DELETE_BLOCKED)
    try:
        cur = conn.cursor()
        with guardeddb.identity(AGENT), contextlib.suppress(guardeddb.Error):
            cur.execute("DELETE FROM attack6_par WHERE id = 1")
            conn.commit()
    finally:
        conn.close()
    left = _pg_count(pg_backend, "attack6_child")
    _pg_raw(pg_backend, "DROP TABLE IF EXISTS attack6_child", "DROP TABLE IF EXISTS attack6_par")
    assert left > 44, f"{50 - left} child rows deleted past affected_rows > 5"


def test_sqlite_percent_glued_to_a_masked_column_hides_it_from_the_filter() -> None:
    """Attack: under ``*.ssn`` ``filter: deny`` on SQLite (no parameters),
    ``SELECT id FROM c WHERE (SELECT 200 %ssn) = 200``. SQLite reads
    ``200 % ssn`` (``ssn`` cast to its numeric prefix, 123 for
    '123-45-6789'), so the row comes back iff that prefix is over 200: a
    range oracle, binary-searchable, on a column whose rule allows it only
    as itself in a select list (``WHERE ssn > '2'`` is refused). ``ORDER BY
    (SELECT 0 - 1000000 %ssn)`` orders by it the same way.

    Impact: the leading digits of every masked SSN (all of them when stored
    without dashes) through row presence or order.

    Root cause: ``masking/channels.py`` ``parsed`` re-parses
    ``_PYFORMAT.sub(mark, analysis.text)`` for every dialect and every text,
    executed with parameters or not: ``%ssn`` becomes ``NULLsn`` (an alias
    of a constant), so the filter judge (``filters.filters_masked``) and
    ``carries_masked`` never see the column the analysis and SQLite read.
    """
    raw = sqlite3.connect(":memory:")
    raw.execute("CREATE TABLE attack6_c (id INTEGER PRIMARY KEY, ssn TEXT)")
    raw.executemany("INSERT INTO attack6_c VALUES (?, ?)", [(1, SSN1), (2, SSN2)])
    raw.commit()
    policy = {
        "version": 1,
        "extends": ["readonly"],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact", "filter": "deny"}]},
    }
    conn = guardeddb.wrap(raw, policy=policy, identity=AGENT)
    try:
        cur = conn.cursor()
        with pytest.raises(guardeddb.QueryBlocked):
            cur.execute("SELECT id FROM attack6_c WHERE ssn > '2'")
        answers = []
        for bound in (100, 200):
            with contextlib.suppress(guardeddb.Error):
                cur.execute(f"SELECT id FROM attack6_c WHERE (SELECT {bound} %ssn) = {bound}")
                answers.append([r[0] for r in cur.fetchall()])
    finally:
        conn.close()
    # [[1, 2], [2]]: both prefixes over 100, only customer 2's over 200
    assert answers != [[1, 2], [2]], answers


@pytest.mark.mysql
def test_mysql_percent_glued_to_a_masked_column_hides_it_from_the_filter(
    mysql_backend: Backend,
) -> None:
    """Attack: the SQLite attack above on MariaDB through PyMySQL, no
    parameters (PyMySQL sends the text as written): ``SELECT id FROM t WHERE
    200 %ssn = 200`` under ``filter: deny``. MariaDB reads ``200 % ssn``,
    ``ssn`` as its numeric prefix; the filter judge reads ``200 ?sn``.

    Impact: a range oracle on the masked column (row presence), the leading
    digits of every SSN by binary search.

    Root cause: ``masking/channels.py`` ``parsed``: ``_PYFORMAT.sub("?",
    analysis.text)`` also rewrites a ``%s`` that is no placeholder (the
    analysis, ``_placeholders``, read ``%ssn`` as a modulo and ``ssn``).
    """
    raw = mysql_backend.connect_raw()
    cur = raw.cursor()
    cur.execute("DROP TABLE IF EXISTS attack6_pct")
    cur.execute("CREATE TABLE attack6_pct (id INT PRIMARY KEY, ssn VARCHAR(20))")
    cur.execute(f"INSERT INTO attack6_pct VALUES (1, '{SSN1}'), (2, '{SSN2}')")
    raw.commit()
    policy = {
        "version": 1,
        "extends": ["readonly"],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact", "filter": "deny"}]},
    }
    conn = guardeddb.wrap(raw, policy=policy, identity=AGENT)
    answers = []
    try:
        gc = conn.cursor()
        for bound in (100, 200):
            with contextlib.suppress(guardeddb.Error):
                gc.execute(f"SELECT id FROM attack6_pct WHERE {bound} %ssn = {bound} ORDER BY id")
                answers.append([r[0] for r in gc.fetchall()])
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
        raw2 = mysql_backend.connect_raw()
        with contextlib.suppress(Exception):
            raw2.cursor().execute("DROP TABLE IF EXISTS attack6_pct")
        raw2.close()
    assert answers != [[1, 2], [2]], answers


@pytest.mark.pg
def test_pg_unicode_escaped_identifier_hides_a_masked_column_from_the_filter(
    pg_backend: Backend,
) -> None:
    """Attack: under ``*.ssn`` ``filter: deny`` on PostgreSQL, ``SELECT id
    FROM t WHERE U&"\\0073sn" > '2'`` (``WHERE ssn > '2'`` is refused).
    PostgreSQL reads ``U&"\\0073sn"`` as the identifier ``ssn``; so does the
    analysis (``normalize_tokens`` decodes it). ``ORDER BY U&"\\0073sn"``
    sorts by it the same way.

    Impact: a range/sort oracle on the masked column: customers whose SSN is
    over '2' come back, and binary search reads every character.

    Root cause: ``masking/channels.py`` ``parsed`` re-parses the raw text
    with ``sqlglot.parse``, whose tokenizer reads ``U & "\\0073sn"`` (a
    column named ``\\0073sn``): the trees the filter judge
    (``filters.filters_masked``) and ``carries_masked`` walk are not the
    ones the analysis built from the normalized tokens.
    """
    _pg_raw(
        pg_backend,
        "DROP TABLE IF EXISTS attack6_u",
        "CREATE TABLE attack6_u (id int PRIMARY KEY, ssn text)",
        f"INSERT INTO attack6_u VALUES (1, '{SSN1}'), (2, '{SSN2}')",
    )
    policy = {
        "version": 1,
        "extends": ["readonly"],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact", "filter": "deny"}]},
    }
    conn = guardeddb.connect(pg_backend.url, policy=policy)
    rows: list[Any] = []
    try:
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            with pytest.raises(guardeddb.QueryBlocked):
                cur.execute("SELECT id FROM attack6_u WHERE ssn > '2'")
            conn.rollback()
            with contextlib.suppress(guardeddb.Error):
                cur.execute("SELECT id FROM attack6_u WHERE U&\"\\0073sn\" > '2'")
                rows = list(cur.fetchall())
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
        _pg_raw(pg_backend, "DROP TABLE IF EXISTS attack6_u")
    assert rows != [(2,)], rows


@pytest.mark.pg
def test_pg_unicode_escaped_identifier_copies_a_masked_column_out(pg_backend: Backend) -> None:
    """Attack: ``*.ssn`` masked (``redact``, default filter), an identity
    that may write. ``INSERT INTO notes SELECT id, ssn FROM t`` is refused
    (``masking-side-channel``: it would copy the masked column), but
    ``INSERT INTO notes SELECT id, U&"\\0073sn" FROM t`` runs, and ``SELECT
    txt FROM notes`` returns every SSN in clear (``CREATE TABLE ... AS``
    does the same).

    Impact: masked values reach the caller unmasked, the core promise of
    masking, for any identity allowed to write one table.

    Root cause: ``masking/channels.py`` ``carries_masked`` walks the trees
    of ``parsed``, which re-parses the raw text with sqlglot's tokenizer
    (``U & "\\0073sn"``: no column ssn) instead of the analysis's
    normalized tokens, where ``U&"\\0073sn"`` is ``ssn``.
    """
    _pg_raw(
        pg_backend,
        "DROP TABLE IF EXISTS attack6_uc",
        "DROP TABLE IF EXISTS attack6_notes",
        "CREATE TABLE attack6_uc (id int PRIMARY KEY, ssn text)",
        "CREATE TABLE attack6_notes (id int, txt text)",
        f"INSERT INTO attack6_uc VALUES (1, '{SSN1}'), (2, '{SSN2}')",
    )
    policy = {
        "version": 1,
        "extends": [],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact"}]},
    }
    conn = guardeddb.connect(pg_backend.url, policy=policy)
    seen: list[Any] = []
    try:
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            with pytest.raises(guardeddb.QueryBlocked):
                cur.execute("INSERT INTO attack6_notes SELECT id, ssn FROM attack6_uc")
            conn.rollback()
            with contextlib.suppress(guardeddb.Error):
                cur.execute('INSERT INTO attack6_notes SELECT id, U&"\\0073sn" FROM attack6_uc')
                conn.commit()
            cur.execute("SELECT txt FROM attack6_notes")
            seen = [r[0] for r in cur.fetchall()]
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
        _pg_raw(pg_backend, "DROP TABLE IF EXISTS attack6_uc", "DROP TABLE IF EXISTS attack6_notes")
    assert SSN1 not in seen, seen


@pytest.mark.pg
def test_pg_empty_commented_statement_shifts_the_filter_judge(pg_backend: Backend) -> None:
    """Attack: under ``*.ssn`` ``filter: deny`` on PostgreSQL, with a policy
    that does not refuse stacked statements (psycopg without parameters runs
    them all): ``SELECT 1; /* c */ ; SELECT 2; SELECT 3; SELECT id FROM t
    WHERE id = 2 AND ssn > '2'``. The analysis drops the empty ``/* c */ ;``
    statement (4 statements); ``sqlglot.parse`` returns a Semicolon and a
    None for it (6 trees), so the 4th statement is judged on the tree of
    ``SELECT 2``. The last result set has a row iff customer 2's SSN is over
    '2' (its cells come back as None, the row count does not).

    Impact: a range oracle on the masked column by row count, one bit per
    query: every SSN by binary search.

    Root cause: ``masking/filters.py`` ``filters_masked``: ``tree =
    trees[i]`` with ``trees = channels.parsed(analysis)``, whose statements
    are not ``analysis.statements`` (``analysis._chunks`` leaves out a
    chunk holding only a semicolon and its comment; sqlglot keeps two nodes).
    """
    _pg_raw(
        pg_backend,
        "DROP TABLE IF EXISTS attack6_m",
        "CREATE TABLE attack6_m (id int PRIMARY KEY, ssn text)",
        f"INSERT INTO attack6_m VALUES (1, '{SSN1}'), (2, '{SSN2}')",
    )
    policy = {
        "version": 1,
        "extends": [],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact", "filter": "deny"}]},
    }
    conn = guardeddb.connect(pg_backend.url, policy=policy)
    counts: list[int] = []
    try:
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            with pytest.raises(guardeddb.QueryBlocked):
                cur.execute("SELECT id FROM attack6_m WHERE id = 2 AND ssn > '2'")
            conn.rollback()
            for who in (1, 2):
                with contextlib.suppress(guardeddb.Error):
                    cur.execute(
                        "SELECT 1; /* c */ ; SELECT 2; SELECT 3; "
                        f"SELECT id FROM attack6_m WHERE id = {who} AND ssn > '2'"
                    )
                    last = cur.fetchall()
                    while cur.nextset():
                        last = cur.fetchall()
                    counts.append(len(last))
                conn.rollback()
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
        _pg_raw(pg_backend, "DROP TABLE IF EXISTS attack6_m")
    # [0, 1]: customer 1's SSN is not over '2', customer 2's is
    assert counts != [0, 1], counts


@pytest.mark.pg
def test_pg_empty_commented_statement_copies_a_masked_column_out(pg_backend: Backend) -> None:
    """Attack: ``*.ssn`` masked (``redact``), a policy that allows writes and
    does not refuse stacked statements: ``INSERT INTO notes SELECT id, ssn
    FROM t`` alone is refused (``masking-side-channel``), but ``SELECT 1;
    /* c */ ; SELECT 2; SELECT 3; INSERT INTO notes SELECT id, ssn FROM t``
    runs, and ``SELECT txt FROM notes`` returns every SSN in clear.

    Impact: masked values reach the caller unmasked.

    Root cause: ``masking/channels.py`` ``carries_masked``: ``tree =
    trees[i]`` over ``parsed(analysis)``, which has two more entries (a
    Semicolon, a None) for the empty ``/* c */ ;`` statement that
    ``analysis._chunks`` leaves out; the INSERT is judged on ``SELECT 2``.
    """
    _pg_raw(
        pg_backend,
        "DROP TABLE IF EXISTS attack6_sm",
        "DROP TABLE IF EXISTS attack6_sn",
        "CREATE TABLE attack6_sm (id int PRIMARY KEY, ssn text)",
        "CREATE TABLE attack6_sn (id int, txt text)",
        f"INSERT INTO attack6_sm VALUES (1, '{SSN1}'), (2, '{SSN2}')",
    )
    policy = {
        "version": 1,
        "extends": [],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact"}]},
    }
    conn = guardeddb.connect(pg_backend.url, policy=policy)
    seen: list[Any] = []
    try:
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            with pytest.raises(guardeddb.QueryBlocked):
                cur.execute("INSERT INTO attack6_sn SELECT id, ssn FROM attack6_sm")
            conn.rollback()
            with contextlib.suppress(guardeddb.Error):
                cur.execute(
                    "SELECT 1; /* c */ ; SELECT 2; SELECT 3; "
                    "INSERT INTO attack6_sn SELECT id, ssn FROM attack6_sm"
                )
                conn.commit()
            cur.execute("SELECT txt FROM attack6_sn")
            seen = [r[0] for r in cur.fetchall()]
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
        _pg_raw(pg_backend, "DROP TABLE IF EXISTS attack6_sm", "DROP TABLE IF EXISTS attack6_sn")
    assert SSN1 not in seen, seen


def test_sqlite_executescript_empty_statement_copies_a_masked_column_out() -> None:
    """Attack: the PostgreSQL attack above through ``cursor.executescript``
    on SQLite (any policy without a stacked-statement rule): ``SELECT 1;
    /* c */ ; SELECT 2; SELECT 3; INSERT INTO n SELECT id, ssn FROM c``.

    Impact: the SSN lands in ``n.txt`` (not masked) and is read in clear.

    Root cause: ``masking/channels.py`` ``carries_masked`` pairs
    ``analysis.statements[i]`` with ``parsed(analysis)[i]``.
    """
    raw = sqlite3.connect(":memory:")
    raw.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, ssn TEXT)")
    raw.execute("CREATE TABLE n (id INT, txt TEXT)")
    raw.execute("INSERT INTO c VALUES (1, ?)", (SSN1,))
    raw.commit()
    policy = {
        "version": 1,
        "extends": [],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact"}]},
    }
    conn = guardeddb.wrap(raw, policy=policy, identity=AGENT)
    try:
        cur = conn.cursor()
        with pytest.raises(guardeddb.QueryBlocked):
            cur.execute("INSERT INTO n SELECT id, ssn FROM c")
        with contextlib.suppress(guardeddb.Error):
            cur.executescript(
                "SELECT 1; /* c */ ; SELECT 2; SELECT 3; INSERT INTO n SELECT id, ssn FROM c"
            )
            conn.commit()
        cur.execute("SELECT txt FROM n")
        seen = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    assert SSN1 not in seen, seen
