"""Bypasses found by attack review attack5 (pyformat conversion, shapes,
masking filters, console, approvals).

Each test states the SAFE outcome and fails while its bypass works, so each
is marked ``xfail(strict=True)``: the day a fix lands the mark must go. They
judge by what the caller (or a browser) sees or by the server's state, never
by guardeddb's own decision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_shop import CUSTOMERS, Shop, seeded

AGENT = Identity(user="mallory@example.com", agent="attack5-bot", roles=frozenset({"support"}))
SSN1 = CUSTOMERS[0][4]  # 123-45-6789
REDACTED_POLICY: dict[str, Any] = {
    "version": 1,
    "extends": ["readonly"],
    "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact", "filter": "deny"}]},
}


@contextlib.contextmanager
def _guarded(backend: Backend, policy: dict[str, Any]) -> Iterator[tuple[Any, Shop]]:
    with seeded(backend) as shop:
        conn = guardeddb.connect(backend.url, policy=policy)
        try:
            with guardeddb.identity(AGENT):
                yield conn, shop
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()


# -- 1. the text analyzed vs the text psycopg sends --------------------------


def test_pg_executemany_none_batch_reads_ssn_in_a_string(pg_backend: Backend) -> None:
    """Attack: ``cur.executemany(q, [None], returning=True)`` on psycopg's
    default (server-binding) Cursor. The guard sees a parameter sequence and
    analyzes ``q`` converted (``%(...)s`` as a value), but psycopg sends each
    None set's text as written. ``regexp%(length(')s`` is, for sqlglot and
    pglast, ``regexp ?``/``regexp$1`` followed by a string literal holding
    ``... ssn AS c FROM customers ... --``; for PostgreSQL it is
    ``regexp % (length(')s ...'))``: the quote opens inside the placeholder,
    so the "string" is SQL that reads the customers table
    (``reverse(ssn)``: a cell the value detectors do not recognise).

    Impact: a readonly agent with ssn masked (filter: deny) reads every SSN
    raw; the statement's audit record names no table.

    Root cause: ``Guard.begin`` (``_pipeline.py``) sets ``converted`` from
    ``params is not None`` where params is executemany's ``(seq,)``; psycopg
    converts per set and sends a None set unconverted. ``mixed_placement`` only
    guards client-side cursors (``_ClientParams``), not psycopg's Cursor.
    """
    with _guarded(pg_backend, REDACTED_POLICY) as (conn, shop):
        cur = conn.cursor()
        q = (
            "SELECT regexp%(length(')s AS a, ')) AS a, reverse(ssn) AS c "
            f"FROM {shop.customers}, (SELECT 1 AS regexp) q ORDER BY 1 --' AS c "
            "FROM (SELECT 1 AS regexp) q"
        )
        try:
            cur.executemany(q, [None], returning=True)
            rows = cur.fetchall()
        except guardeddb.Error:
            rows = []
    # reversed, so the value detectors do not recognise an SSN in the cell
    assert SSN1 not in [str(r[1])[::-1] for r in rows], rows


def test_mysql_executemany_none_batch_reads_ssn_in_a_string(mysql_backend: Backend) -> None:
    """Attack: ``cur.executemany(q, [None])`` on PyMySQL, which runs
    ``execute(q, None)`` per set (no ``%`` formatting) and keeps the last
    result to fetch. The guard analyzes ``q`` converted: ``any%(length(')s``
    is sqlglot's ``ANY ?`` and a string literal after it; MariaDB reads
    ``any % (length(')s ...'))`` (``any`` a column of a derived table), so
    the "string" is SQL reading ``reverse(ssn)`` from the customers table.

    Impact: a readonly agent with ssn masked (filter: deny) reads every SSN.

    Root cause: ``Guard.begin`` (``_pipeline.py``) judges on the converted
    analysis because executemany's params ``(seq,)`` is not None;
    ``_ClientParams._self_placed`` checks a batch of only None sets against
    the unconverted analysis (placement), but the decision and masking plan
    come from the converted one.
    """
    with _guarded(mysql_backend, REDACTED_POLICY) as (conn, shop):
        cur = conn.cursor()
        q = (
            "SELECT any%(length(')s AS a, ')) AS a, reverse(ssn) AS c "
            f"FROM {shop.customers}, (SELECT 1 AS any) q ORDER BY 1 -- ' AS c "
            "FROM (SELECT 1 AS any) q"
        )
        try:
            cur.executemany(q, [None])
            rows = list(cur.fetchall())
        except guardeddb.Error:
            rows = []
    assert SSN1 not in [str(r[1])[::-1] for r in rows], rows


def test_pg_executemany_none_batch_deletes_every_row(pg_backend: Backend) -> None:
    """Attack: the same desync as above, for guardrails: under the default
    policy (agent-safe) ``DELETE FROM customers`` is blocked
    (write-needs-where), but ``cur.executemany(q, [None], returning=True)``
    with ``q`` = ``WITH q AS (SELECT 1 AS regexp), x AS (SELECT
    regexp%(length(')s AS a, ')) AS a FROM q), d AS (DELETE FROM customers
    RETURNING 1) SELECT count(*) FROM d -- ' AS b FROM q) SELECT a FROM x``
    is analyzed (and checked by pglast) as one SELECT of constants, and runs
    on PostgreSQL as a data-modifying CTE deleting every row.

    Impact: any guardrail (blocked, held for approval) is bypassed by a
    single statement; the audit record says a read of no table.

    Root cause: as above, ``Guard.begin`` ``converted = params is not None``
    while psycopg sends a None parameter set as written.
    """
    with seeded(pg_backend) as shop:
        conn = guardeddb.connect(pg_backend.url)
        try:
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                q = (
                    "WITH q AS (SELECT 1 AS regexp), x AS (SELECT regexp%(length(')s AS a, '"
                    f")) AS a FROM q), d AS (DELETE FROM {shop.customers} RETURNING 1) "
                    "SELECT count(*) FROM d -- ' AS b FROM q) SELECT a FROM x"
                )
                with contextlib.suppress(guardeddb.Error):
                    cur.executemany(q, [None], returning=True)
                conn.commit()
        finally:
            conn.close()
        raw = pg_backend.connect_raw()
        try:
            check = raw.cursor()
            check.execute(f"SELECT count(*) FROM {shop.customers}")
            left = check.fetchone()[0]
        finally:
            raw.close()
    assert left == len(CUSTOMERS)


MASKED_POLICY: dict[str, Any] = {
    "version": 1,
    "extends": ["readonly"],
    "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact"}]},
}


@pytest.mark.parametrize("client", [False, True], ids=["Cursor", "ClientCursor"])
def test_pg_placeholder_glued_to_a_name_reads_an_unmasked_column(
    pg_backend: Backend, client: bool
) -> None:
    """Attack: ``SELECT regexp%s ... FROM (SELECT reverse(ssn) AS "regexp$1"
    FROM customers) q`` with parameters. The analysis reads the converted
    text ``regexp ? `` (``pyformat.convert`` spaces every placeholder) as
    sqlglot's REGEXP over a value: an output with no lineage, not masked.
    psycopg's Cursor sends ``regexp$1`` and its ClientCursor ``regexp1``
    (the int 1 spliced in): one identifier, the derived table's column that
    carries ``reverse(ssn)``. pglast sees the same identifier but compares
    only relations and functions. (``$1`` itself is unreferenced there; a
    second ``%s::int`` gives the bind its one typed parameter.)

    Impact: every SSN, reversed, through a readonly identity whose ssn is
    masked: masked columns reach the caller unmasked, with the ordinary
    ``execute(sql, params)`` call on both cursor classes.

    Root cause: ``sql/pyformat.py`` ``convert`` writes `` ? `` where the
    driver writes ``$n`` or a literal with no space: a placeholder glued to
    an identifier character is a different token for the server.
    """
    import psycopg

    kw: dict[str, Any] = {"cursor_factory": psycopg.ClientCursor} if client else {}
    with seeded(pg_backend) as shop:
        conn = guardeddb.connect(pg_backend.url, policy=MASKED_POLICY, **kw)
        try:
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                if client:
                    q = "SELECT regexp%s AS a FROM (SELECT reverse(ssn) AS regexp1 FROM {c}) q"
                    params: tuple[int, ...] = (1,)
                else:
                    q = (
                        "SELECT regexp%s, %s::int "
                        'FROM (SELECT reverse(ssn) AS "regexp$1" FROM {c}) q'
                    )
                    params = (1, 2)
                try:
                    cur.execute(q.replace("{c}", shop.customers), params)
                    rows = cur.fetchall()
                except guardeddb.Error:
                    rows = []
        finally:
            conn.close()
    assert SSN1 not in [str(r[0])[::-1] for r in rows], rows


@pytest.mark.parametrize("word", ["any", "distinct", "not", "interval", "binary"])
def test_mysql_placeholder_glued_to_a_name_reads_an_unmasked_column(
    mysql_backend: Backend, word: str
) -> None:
    """Attack: PyMySQL, ``SELECT any%s AS a FROM (SELECT reverse(ssn) AS any1
    FROM customers) q`` with ``(1,)``. The analysis reads ``ANY ?`` (or
    ``DISTINCT ?``, ``NOT ?``, ``INTERVAL ?``, ``BINARY ?``): a value, no
    lineage, not masked; PyMySQL sends ``any1``, the derived table's column
    carrying ``reverse(ssn)``. ``_surface.placement`` passes it: the
    placeholder is where the analysis saw a value.

    Impact: every SSN (reversed) through a masked readonly identity with the
    ordinary ``execute(sql, params)``.

    Root cause: ``sql/pyformat.py`` ``convert`` spaces the placeholder
    (`` ? ``); PyMySQL splices the escaped value with no space, so a value
    glued to a name is part of that name.
    """
    with _guarded(mysql_backend, MASKED_POLICY) as (conn, shop):
        cur = conn.cursor()
        q = f"SELECT {word}%s AS a FROM (SELECT reverse(ssn) AS {word}1 FROM {shop.customers}) q"
        try:
            cur.execute(q, (1,))
            rows = list(cur.fetchall())
        except guardeddb.Error:
            rows = []
    assert SSN1 not in [str(r[0])[::-1] for r in rows], rows


# -- 4. approvals: the re-measured impact is not the impact that runs ---------


@pytest.mark.xfail(
    strict=True, reason="attack5: a seeded random() makes the re-measure differ from the run"
)
def test_approved_two_rows_deletes_three_with_a_seeded_random(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """Attack: a review rule holds deletes touching more than one row. The
    agent runs ``SELECT setseed(0.0005)`` then ``DELETE FROM payments WHERE
    id > 0 AND random() < 0.5``: the dry run counts 2 rows and the request
    shows 2; a person approves 2 rows. The agent runs ``SELECT
    setseed(0.008)`` and the same DELETE: the re-measure (in a savepoint)
    draws the next three numbers and counts at most 2, so the approval is
    used; the run itself draws the three after those and deletes all 3.
    ``setseed``'s generator state is not undone by ROLLBACK TO SAVEPOINT.

    Impact: an approval for N rows runs on more than N; the re-measurement
    added by the approvimpact change is only as good as the statement is
    deterministic (random(), clock_timestamp(), nextval() of any sequence).

    Root cause: ``Guard.approval`` (``_pipeline.py``, "measured again, it
    applies to at most that many rows") trusts a dry run of a statement with
    volatile functions to predict its run; nothing bounds the run's own
    rowcount (or refuses volatile functions in a held statement).
    """
    from guardeddb.approvals import ApprovalStore

    store = f"sqlite:///{tmp_path}/approvals.db"
    policy = {
        "version": 1,
        "rules": [
            {
                "id": "bulk-delete",
                "match": {"statements": ["delete"], "affected_rows": {"gt": 1}},
                "action": "review",
            }
        ],
        "approvals": {"store": store},
    }
    with seeded(pg_backend) as shop:
        conn = guardeddb.connect(pg_backend.url, policy=policy)
        delete = shop.sql("DELETE FROM {p} WHERE id > 0 AND random() < 0.5")
        try:
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                cur.execute("SELECT setseed(0.0005)")
                with pytest.raises(guardeddb.ApprovalRequired) as held:
                    cur.execute(delete)
                conn.rollback()
                shown = ApprovalStore(store).get(held.value.request_id)
                assert shown is not None and shown.impact == 2
                ApprovalStore(store).decide(held.value.request_id, True, "dba", "2 rows, fine")
                cur.execute("SELECT setseed(0.008)")
                try:
                    cur.execute(delete)
                    conn.commit()
                except guardeddb.Error:  # held again or refused: safe
                    conn.rollback()
        finally:
            conn.close()
        left = pg_backend.rows(shop.sql("SELECT count(*) FROM {p}"))
    assert left[0][0] >= 1, f"approved 2 rows, deleted {3 - left[0][0]}"
