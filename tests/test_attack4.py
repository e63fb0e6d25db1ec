"""Bypasses found by attack review attack4 (masking filters, guardrails, audit).

Each test states the SAFE outcome and fails while its bypass works, so each
is marked ``xfail(strict=True)``: the day a fix lands the mark must go. They
judge by what the caller sees (rows, row counts, error classes) or by the
server's state, never by guardeddb's own decision.

The masked identity is an agent that sees ``ssn`` redacted under a rule
with ``filter: deny`` or ``filter: equality``; its policy extends
``agent-safe`` (the default), so it may INSERT and UPDATE with a WHERE.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_shop import CUSTOMERS, Shop, seeded

AGENT = Identity(user="mallory@example.com", agent="attack4-bot", roles=frozenset({"support"}))
SSN1 = CUSTOMERS[0][4]  # 123-45-6789
_CHARSET = "0123456789-"


def _policy(mode: str) -> dict[str, Any]:
    """agent-safe (implied) plus an SSN rule with the given filter."""
    return {
        "version": 1,
        "masking": {
            "rules": [
                {"columns": ["*.ssn"], "operator": "redact", "filter": mode},
                {"columns": ["*.email"], "operator": "email"},
            ],
            "unmask": {"roles": ["compliance"]},
        },
    }


@contextlib.contextmanager
def _guarded(backend: Backend, mode: str) -> Iterator[tuple[Any, Shop]]:
    with seeded(backend) as shop:
        conn = guardeddb.connect(backend.url, policy=_policy(mode))
        try:
            with guardeddb.identity(AGENT):
                yield conn, shop
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()


def _run(conn: Any, sql: str) -> tuple[int, list[tuple[Any, ...]]] | None:
    """(rowcount, rows) of ``sql``, rolled back; None when it was refused or failed."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        return cur.rowcount, rows
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()


def _recover(oracle: Callable[[str], bool | None]) -> str | None:
    """The masked value, character by character, from a ``LIKE 'prefix%'``
    oracle; None as soon as the oracle is refused."""
    known = ""
    for _ in range(len(SSN1) + 2):
        for ch in _CHARSET:
            hit = oracle(known + ch)
            if hit is None:
                return None
            if hit:
                known += ch
                break
        else:
            return known
    return known


# -- 1. INSERT's ON CONFLICT / ON DUPLICATE KEY UPDATE / RETURNING / WITH ------


def test_pg_on_conflict_where_recovers_a_denied_ssn(pg_backend: Backend) -> None:
    """``INSERT ... ON CONFLICT (id) DO UPDATE SET name = t.name WHERE t.ssn
    LIKE 'p%' RETURNING id`` returns the row only when the existing row's SSN
    starts with ``p``: a filter: deny column recovered whole, one character
    at a time, with no change to the data (name = name, rolled back).
    _Judge.statement judges only an INSERT's source query, not its
    ON CONFLICT clause."""
    with _guarded(pg_backend, "deny") as (conn, shop):

        def oracle(prefix: str) -> bool | None:
            got = _run(
                conn,
                shop.sql(
                    "INSERT INTO {c} AS t (id, name) VALUES (1, 'x') ON CONFLICT (id) "
                    f"DO UPDATE SET name = t.name WHERE t.ssn LIKE '{prefix}%' RETURNING id"
                ),
            )
            return None if got is None else bool(got[1])

        assert _recover(oracle) != SSN1


def test_pg_insert_returning_subquery_recovers_a_denied_ssn(pg_backend: Backend) -> None:
    """``INSERT INTO payments ... RETURNING (SELECT count(*) FROM customers
    WHERE id = 1 AND ssn LIKE 'p%')``: a filter: deny predicate inside
    RETURNING is never judged; the count answers (the insert is rolled back).
    RETURNING (SELECT 1 / (ascii(ssn) - 49) ...) likewise answers by the
    error class (DivisionByZero), whose text only is withheld."""
    with _guarded(pg_backend, "deny") as (conn, shop):

        def oracle(prefix: str) -> bool | None:
            got = _run(
                conn,
                shop.sql(
                    "INSERT INTO {p} (id, customer_id) VALUES (100, 1) RETURNING "
                    f"(SELECT count(*) FROM {{c}} WHERE id = 1 AND ssn LIKE '{prefix}%')"
                ),
            )
            return None if got is None else got[1] == [(1,)]

        assert _recover(oracle) != SSN1


def test_pg_with_insert_cte_recovers_a_denied_ssn(pg_backend: Backend) -> None:
    """``WITH x AS (SELECT id FROM customers WHERE ssn LIKE 'p%') INSERT INTO
    payments SELECT ... FROM x``: a CTE attached to the INSERT is never
    walked, so its WHERE on a filter: deny column answers by the row count."""
    with _guarded(pg_backend, "deny") as (conn, shop):

        def oracle(prefix: str) -> bool | None:
            got = _run(
                conn,
                shop.sql(
                    f"WITH x AS (SELECT id FROM {{c}} WHERE id = 1 AND ssn LIKE '{prefix}%') "
                    "INSERT INTO {p} (id, customer_id) SELECT 200 + id, id FROM x"
                ),
            )
            return None if got is None else got[0] == 1

        assert _recover(oracle) != SSN1


def test_mysql_on_duplicate_key_update_recovers_a_denied_ssn(mysql_backend: Backend) -> None:
    """``INSERT INTO customers (id, name) VALUES (1, 'x') ON DUPLICATE KEY
    UPDATE name = COALESCE((SELECT 'hit' FROM DUAL WHERE ssn LIKE 'p%'),
    name)``: the row count is 2 when the prefix matches and 0 when not, and
    the transaction is rolled back. A filter: deny SSN recovered whole."""
    with _guarded(mysql_backend, "deny") as (conn, shop):

        def oracle(prefix: str) -> bool | None:
            got = _run(
                conn,
                shop.sql(
                    "INSERT INTO {c} (id, name) VALUES (1, 'x') ON DUPLICATE KEY UPDATE "
                    f"name = COALESCE((SELECT 'hit' FROM DUAL WHERE ssn LIKE '{prefix}%'), name)"
                ),
            )
            return None if got is None else got[0] == 2

        assert _recover(oracle) != SSN1


# -- 2. MySQL numeric comparison through a column of a subquery -----------------


def _numbers(lo: int, hi: int) -> str:
    """A derived table of the numbers lo..hi-1 as column x."""
    return " UNION ALL ".join(f"SELECT {i} AS x" for i in range(lo, hi))


def test_mysql_equality_in_subquery_of_numbers_reads_leading_digits(
    mysql_backend: Backend,
) -> None:
    """filter: equality refuses ``ssn = 123`` on MySQL (compared as numbers:
    the leading digits), but ``ssn IN (SELECT x FROM (SELECT 0 AS x UNION ALL
    ... ) t)`` compares with a number column too: _text_value accepts any
    column, and masked_peers checks only a column compared directly. A
    binary search over ranges of numbers (10 queries) reads the leading
    digits of customer 1's SSN; ``ssn IN (SELECT 0 ...)`` alone tells
    whether a value starts with a digit at all."""
    with _guarded(mysql_backend, "equality") as (conn, shop):
        lo, hi = 0, 1000
        while hi - lo > 1:
            mid = (lo + hi) // 2
            got = _run(
                conn,
                shop.sql(
                    "SELECT id FROM {c} WHERE id = 1 AND ssn IN (SELECT x FROM ("
                    + _numbers(lo, mid)
                    + ") t)"
                ),
            )
            if got is None:
                return  # refused: safe
            lo, hi = (lo, mid) if got[1] else (mid, hi)
        assert lo != int(SSN1[:3]), lo


def test_mysql_equality_join_using_a_number_reads_leading_digits(mysql_backend: Backend) -> None:
    """``JOIN (SELECT 123 AS ssn) t USING (ssn)`` (or NATURAL JOIN) is an
    equality the text never writes; condition_or_using refuses it only under
    deny, and never checks that the other side is a string on MySQL, where
    '123-45-6789' = 123 holds. Customer 1 comes back: its SSN starts 123."""
    with _guarded(mysql_backend, "equality") as (conn, shop):
        got = _run(conn, shop.sql("SELECT c.id FROM {c} c JOIN (SELECT 123 AS ssn) t USING (ssn)"))
        assert got is None or got[1] == [], got


# -- 3. MySQL UPDATE / DELETE ... ORDER BY masked LIMIT 1 ------------------------


def test_mysql_update_order_by_limit_recovers_a_denied_ssn(mysql_backend: Backend) -> None:
    """MySQL's ``UPDATE customers SET name = 'lo' WHERE id IN (1, 99) ORDER
    BY ssn, id DESC LIMIT 1`` changes the row with the smaller SSN. With a
    row 99 the agent inserted holding a chosen SSN (a literal, not a copy),
    it compares customer 1's filter: deny SSN with any string: a binary
    search recovers it whole; each probe is rolled back. _as_select reads
    an UPDATE / DELETE as a SELECT of its FROM and WHERE but drops its
    ORDER BY and LIMIT, so the ORDER BY on the column is never judged."""
    with _guarded(mysql_backend, "deny") as (conn, shop):

        def below(guess: str) -> bool | None:
            """Whether customer 1's SSN sorts strictly before ``guess``."""
            cur = conn.cursor()
            try:
                cur.execute(
                    shop.sql("INSERT INTO {c} (id, name, ssn) VALUES (99, 'probe', %s)"), (guess,)
                )
                cur.execute(
                    shop.sql(
                        "UPDATE {c} SET name = 'lo' WHERE id IN (1, 99) "
                        "ORDER BY ssn, id DESC LIMIT 1"
                    )
                )
                cur.execute(shop.sql("SELECT name FROM {c} WHERE id = 1"))
                return bool(cur.fetchone()[0] == "lo")
            except Exception:
                return None
            finally:
                conn.rollback()

        known = ""
        for _ in range(len(SSN1) + 1):
            nxt = None
            for ch in "-0123456789":  # ascending in the server's collation
                b = below(known + ch)
                if b is None:
                    return  # refused: safe
                if b:
                    break
                nxt = ch
            if nxt is None:
                break
            known += nxt
        assert known != SSN1, known


# -- 4. Driver surface: forwarded attributes that reach around the guard --------


def test_pymysql_encoders_turn_a_parameter_into_sql(mysql_backend: Backend) -> None:
    """``conn.encoders`` is 'forward' (read-only), but it is the driver's own
    dict: ``conn.encoders[int] = lambda v, m=None: '<any SQL>'`` changes how
    PyMySQL renders an int parameter. The analysis judged ``SELECT %s`` (a
    value) and ``UPDATE ... WHERE id = %s``; the server ran a subquery that
    reads the masked SSN unmasked (reversed, so no detector sees it), and an
    UPDATE of every row. The statement judged is not the statement sent."""
    with seeded(mysql_backend) as shop:
        conn = guardeddb.connect(mysql_backend.url, policy=_policy("deny"))
        try:
            with pytest.raises(TypeError):  # a read-only view now
                conn.encoders[int] = lambda v, mapping=None: (
                    f"(SELECT REVERSE(ssn) FROM {shop.customers} WHERE id = {v})"
                )
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                cur.execute("SELECT %s AS x", (1,))
                leaked = cur.fetchall()
                with pytest.raises(TypeError):
                    conn.encoders[int] = lambda v, mapping=None: "0 OR 1 = 1"
                cur.execute(shop.sql("UPDATE {c} SET name = 'pwned' WHERE id = %s"), (1,))
                conn.commit()
        finally:
            conn.close()
        names = mysql_backend.rows(shop.sql("SELECT name FROM {c} ORDER BY id"))
        assert names.count(("pwned",)) <= 1, names
        assert SSN1[::-1] not in repr(leaked), leaked


def test_pymysql_decoders_see_masked_cells_raw(mysql_backend: Backend) -> None:
    """psycopg's ``adapters`` are refused while masking applies ('a loader
    would see raw values'); PyMySQL's ``conn.decoders`` is the same thing,
    forwarded as a mutable dict: a decoder installed through the guarded
    connection receives the SSN before masking runs."""
    from pymysql.constants import FIELD_TYPE

    seen: list[Any] = []

    def spy(value: Any) -> Any:
        seen.append(value)
        return value

    with seeded(mysql_backend) as shop:
        conn = guardeddb.connect(mysql_backend.url, policy=_policy("deny"))
        try:
            for t in (FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.VARCHAR):
                with pytest.raises(TypeError):  # a read-only view now
                    conn.decoders[t] = spy
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                cur.execute(shop.sql("SELECT id, ssn FROM {c} WHERE id = 1"))
                rows = cur.fetchall()
        finally:
            conn.close()
        assert "[REDACTED]" in repr(rows)
        assert SSN1 not in repr(seen), seen


def test_psycopg_connect_opens_an_unguarded_connection(pg_backend: Backend) -> None:
    """``connect`` is in the psycopg connection's 'forward' table; it is a
    classmethod, so ``conn.connect(conn.info.dsn)`` on a guarded, read-only
    connection returns a raw psycopg.Connection (PyMySQL's ``connect`` is
    refused for less). Through it a readonly agent drops a table: no rule,
    no read-only session, no audit record."""
    name = f"attack4_victim_{uuid.uuid4().hex[:8]}"
    raw = pg_backend.connect_raw()
    try:
        raw.cursor().execute(f"CREATE TABLE {name} (id INTEGER)")
        raw.commit()
        conn = guardeddb.connect(pg_backend.url, policy="readonly")
        try:
            with guardeddb.identity(AGENT), contextlib.suppress(Exception):
                other = conn.connect(conn.info.dsn, autocommit=True)
                other.execute(f"DROP TABLE {name}")
                other.close()
        finally:
            conn.close()
        left = pg_backend.rows(f"SELECT count(*) FROM pg_class WHERE relname = '{name}'")
        assert left == [(1,)], "the readonly agent dropped the table"
    finally:
        raw.cursor().execute(f"DROP TABLE IF EXISTS {name}")
        raw.commit()
        raw.close()


# -- 5. Audit: a commit the trail does not have ----------------------------------


def test_mysql_set_autocommit_commits_without_a_record(
    mysql_backend: Backend, tmp_path: Path
) -> None:
    """On MariaDB ``SET autocommit = 1`` (an allowlisted setting) commits the
    open transaction, like PyMySQL's ``autocommit(True)`` which guardeddb
    judges and records as a COMMIT. The SQL form is not in
    _IMPLICIT_COMMIT_KINDS: the trail reads UPDATE, SET, rollback, and a
    reader concludes the UPDATE was undone, while it is durable."""
    trail = tmp_path / "audit.jsonl"
    with seeded(mysql_backend) as shop:
        conn = guardeddb.connect(
            mysql_backend.url, policy={"version": 1, "audit": {"jsonl": str(trail)}}
        )
        try:
            with guardeddb.identity(user="alice@example.com"):
                cur = conn.cursor()
                cur.execute(shop.sql("UPDATE {c} SET name = 'draft' WHERE id = 2"))
                cur.execute("SET autocommit = 1")
                conn.rollback()
        finally:
            conn.close()
        durable = mysql_backend.rows(shop.sql("SELECT name FROM {c} WHERE id = 2")) == [("draft",)]
    events = [json.loads(line)["event"] for line in trail.read_text().splitlines()]
    assert not durable or "commit" in events, events


# -- 6. psycopg: '%%' before an identifier hides a column from the analysis ------


def test_pg_percent_percent_hides_a_column_from_masking(pg_backend: Backend) -> None:
    """With parameters given (even ``()``), psycopg turns ``%%`` into ``%``:
    the server reads ``999 %% s`` as ``999 % s``, s a column. sqlglot reads
    the second ``%`` and ``s`` as a pyformat placeholder, a value: the
    output ``999 %% s`` has no masked lineage and is returned raw. With
    ``s = 1000 - ascii(substr(ssn, g, 1))`` it is the character code minus
    one: every customer's SSN, whole, in one readonly query. (Under filter:
    deny a numeric masked column aliased ``s`` leaks the same way, and
    ``WHERE 0 = 10 %% s`` is an unjudged predicate.)"""
    policy = {
        "version": 1,
        "extends": ["readonly"],
        "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact"}]},
    }
    with seeded(pg_backend) as shop:
        conn = guardeddb.connect(pg_backend.url, policy=policy)
        try:
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                cur.execute(
                    shop.sql(
                        "SELECT t.id, 999 %% s FROM (SELECT c.id, g, "
                        "1000 - ascii(substr(c.ssn, g, 1)) AS s "
                        "FROM {c} c, (VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10), "
                        "(11)) v(g)) t ORDER BY t.id, t.g"
                    ),
                    (),
                )
                rows = cur.fetchall()
        finally:
            conn.close()
    chars = [chr(int(x) + 1) for i, x in rows if i == 1 and isinstance(x, int)]
    assert "".join(chars) != SSN1, rows


# -- 7. Approvals: the approved impact is not the impact that runs ---------------


def test_approval_runs_with_a_larger_impact_than_approved(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """A review rule holds ``DELETE FROM payments WHERE amount > 1000`` with
    its dry-run impact (2 rows); a person approves that. The agent then
    moves a third row into the WHERE with an UPDATE the policy allows, and
    runs the approved text: request_hash binds identity, database, SQL and
    parameters, not the impact the person saw, and the rule's count is
    measured again only to be overridden by the approval. 3 rows went; now
    the approval is measured again, superseded, and the DELETE held again."""
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
        delete = shop.sql("DELETE FROM {p} WHERE amount > 1000")
        try:
            with guardeddb.identity(AGENT):
                with pytest.raises(guardeddb.ApprovalRequired) as held:
                    conn.cursor().execute(delete)
                conn.rollback()
                ApprovalStore(store).decide(held.value.request_id, True, "dba", "2 rows, fine")
                cur = conn.cursor()
                cur.execute(shop.sql("UPDATE {p} SET amount = 5000 WHERE id = 2"))
                conn.commit()
                try:
                    cur.execute(delete)
                    conn.commit()
                except guardeddb.ApprovalRequired:  # held again, showing 3 rows: safe
                    conn.rollback()
        finally:
            conn.close()
        left = pg_backend.rows(shop.sql("SELECT count(*) FROM {p}"))
    assert left[0][0] >= 1, f"approved 2 rows, deleted {3 - left[0][0]}"


def test_pg_percent_percent_hides_a_column_from_a_block_rule(pg_backend: Backend) -> None:
    """The same differential against a guardrail: a rule blocks every
    statement that reads ``*.amount``; ``SELECT 0 = 1200 %% s.amount ...
    FROM payments s`` (parameters ``()``) is read by sqlglot as a
    placeholder followed by ``.amount``, by the server as the column
    payments.amount: the rule never matches, and the WHERE answers."""
    policy = {
        "version": 1,
        "rules": [{"id": "no-amount", "match": {"columns": ["*.amount"]}, "action": "block"}],
    }
    with seeded(pg_backend) as shop:
        conn = guardeddb.connect(pg_backend.url, policy=policy)
        try:
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                with contextlib.suppress(guardeddb.QueryBlocked):
                    cur.execute(shop.sql("SELECT amount FROM {p}"))
                    pytest.fail("the rule does not block the plain read")
                try:
                    cur.execute(shop.sql("SELECT id FROM {p} s WHERE 0 = 1200 %% s.amount"), ())
                    rows = [tuple(r) for r in cur.fetchall()]
                except guardeddb.QueryBlocked:
                    rows = []
        finally:
            conn.close()
    assert rows == [], f"payments whose amount divides 1200: {rows}"
