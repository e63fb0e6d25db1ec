"""``%%`` in a statement executed with parameters (#12).

Given parameters, even ``()``, psycopg (``Cursor``, ``ClientCursor``) and
PyMySQL send ``%%`` as ``%``; psycopg's ``RawCursor`` and a call without
parameters send the text as written. guardeddb must analyze what is sent:
``999 %% s`` is ``999 % s`` (``s`` a column) to the server.

Judged by what the caller gets: the cells returned (masked or not), the rows
a blocked statement would have answered, or an error instead of rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity

from .fix_db import PERMISSIVE, Backend
from .fix_shop import CUSTOMERS, Shop, seeded

AGENT = Identity(user="pctfix@example.com", agent="pctfix-bot", roles=frozenset({"support"}))
SSN1 = CUSTOMERS[0][4]  # 123-45-6789
MASKED = {
    "version": 1,
    "extends": ["readonly"],
    "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact"}]},
}
NO_AMOUNT = {
    "version": 1,
    "rules": [{"id": "no-amount", "match": {"columns": ["*.amount"]}, "action": "block"}],
}


@contextlib.contextmanager
def _conn(backend: Backend, policy: dict[str, Any]) -> Iterator[tuple[Any, Shop]]:
    with seeded(backend) as shop:
        conn = guardeddb.connect(backend.url, policy=policy)
        try:
            with guardeddb.identity(AGENT):
                yield conn, shop
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()


def _rows(run: Callable[[], Any], cur: Any) -> list[tuple[Any, ...]] | None:
    """The rows a statement answers; None when guardeddb or the server refused it."""
    try:
        run()
        return [tuple(r) for r in cur.fetchall()]
    except guardeddb.QueryBlocked:
        return None
    except Exception as exc:  # the server's error: nothing answered
        if "guardeddb" in type(exc).__module__:
            raise
        cur.connection.rollback()  # PostgreSQL aborted the transaction
        return None


def _cursor(conn: Any, kind: str) -> Any:
    """psycopg's default cursor (bound on the server) or its ClientCursor."""
    return _client(conn) if kind == "client" else conn.cursor()


def _client(conn: Any) -> Any:
    import psycopg

    conn.cursor_factory = psycopg.ClientCursor
    return conn.cursor()


def _raw(conn: Any) -> Any:
    import psycopg

    conn.cursor_factory = psycopg.RawCursor
    return conn.cursor()


# The first character of the first SSN, as ``999 % (1000 - code)``: 48 for '1'.
_FIRST_CHAR = (
    "SELECT t.id, 999 %% s FROM (SELECT c.id, 1000 - ascii(substr(c.ssn, 1, 1)) AS s "
    "FROM {c} c) t ORDER BY t.id"
)
_LEAKED = 999 % (1000 - ord(SSN1[0]))


def _leaks(rows: list[tuple[Any, ...]] | None) -> bool:
    return rows is not None and any(r[0] == 1 and r[1] == _LEAKED for r in rows)


@pytest.mark.parametrize("kind", ["cursor", "client"])
def test_pg_modulo_of_a_masked_column_is_not_returned_raw(pg_backend: Backend, kind: str) -> None:
    with _conn(pg_backend, MASKED) as (conn, shop):
        cur = _cursor(conn, kind)
        rows = _rows(lambda: cur.execute(shop.sql(_FIRST_CHAR), ()), cur)
    assert not _leaks(rows), rows


@pytest.mark.parametrize("kind", ["cursor", "client"])
def test_pg_percent_percent_paren_name_is_a_column(pg_backend: Backend, kind: str) -> None:
    """``%%(s)s`` is ``%(s)s`` to the server: ``999 % (s) AS s``."""
    sql = _FIRST_CHAR.replace("999 %% s", "999 %%(s)s")
    with _conn(pg_backend, MASKED) as (conn, shop):
        cur = _cursor(conn, kind)
        rows = _rows(lambda: cur.execute(shop.sql(sql), ()), cur)
    assert not _leaks(rows), rows


def test_pg_raw_cursor_sends_percent_percent_as_written(pg_backend: Backend) -> None:
    """RawCursor converts nothing: ``%%`` is PostgreSQL's (absent) operator
    ``%%``, and ``%`` with ``$1`` is a modulo the analysis sees."""
    with _conn(pg_backend, MASKED) as (conn, shop):
        cur = _raw(conn)
        rows = _rows(lambda: cur.execute(shop.sql(_FIRST_CHAR), ()), cur)
        assert not _leaks(rows), rows
        sql = _FIRST_CHAR.replace("999 %% s", "999 % s").replace("ORDER", "WHERE t.id > $1 ORDER")
        rows = _rows(lambda: cur.execute(shop.sql(sql), (0,)), cur)
        assert not _leaks(rows), rows
        odd = shop.sql("SELECT id FROM {c} WHERE id % 2 = $1")
        rows = _rows(lambda: cur.execute(odd, (1,)), cur)
    assert rows == [(1,), (3,)]


@pytest.mark.parametrize("kind", ["cursor", "client"])
def test_pg_percent_percent_before_a_qualified_column_meets_the_rule(
    pg_backend: Backend, kind: str
) -> None:
    with _conn(pg_backend, NO_AMOUNT) as (conn, shop):
        cur = _cursor(conn, kind)
        sql = shop.sql("SELECT id FROM {p} s WHERE 0 = 1200 %% s.amount")
        rows = _rows(lambda: cur.execute(sql, ()), cur)
    assert not rows, f"payments whose amount divides 1200: {rows}"


def test_pg_executemany_with_params_by_keyword_meets_the_rule(pg_backend: Backend) -> None:
    with _conn(pg_backend, NO_AMOUNT) as (conn, shop):
        cur = conn.cursor()
        sql = shop.sql("SELECT id FROM {p} s WHERE 0 = 1200 %% s.amount")
        rows = _rows(lambda: cur.executemany(sql, params_seq=[()], returning=True), cur)
    assert not rows, f"payments whose amount divides 1200: {rows}"


def test_pg_copy_with_params_meets_the_rule(pg_backend: Backend) -> None:
    """psycopg's ``copy()`` converts its statement given parameters too.
    (No masking here: it would refuse COPY TO STDOUT for its own reason.)"""
    with _conn(pg_backend, {**NO_AMOUNT, "extends": []}) as (conn, shop):
        cur = conn.cursor()
        sql = shop.sql("COPY (SELECT id FROM {p} s WHERE 0 = 1200 %% s.amount) TO STDOUT")
        out: list[Any] = []
        with contextlib.suppress(guardeddb.QueryBlocked), cur.copy(sql, ()) as copy:
            out.extend(copy.rows())
    assert out == [], f"payments whose amount divides 1200: {out}"


@pytest.mark.parametrize("kind", ["cursor", "client"])
def test_pg_legit_percent_percent_keeps_working(pg_backend: Backend, kind: str) -> None:
    """A modulo written ``%%``, a LIKE pattern and a comment with ``%%``, with
    parameters: they run, and the masked column stays masked."""
    with _conn(pg_backend, MASKED) as (conn, shop):
        cur = _cursor(conn, kind)
        sql = shop.sql("SELECT id FROM {c} WHERE id %% 2 = %s")
        odd = _rows(lambda: cur.execute(sql, (1,)), cur)
        like = _rows(
            lambda: cur.execute(
                shop.sql("SELECT id, ssn FROM {c} WHERE name LIKE 'A%%' AND id > %s -- 100%%"),
                (0,),
            ),
            cur,
        )
        comment = _rows(
            lambda: cur.execute(shop.sql("SELECT ssn /* %% s */ FROM {c} WHERE id = %s"), (1,)),
            cur,
        )
    assert odd == [(1,), (3,)]
    assert like is not None and [r[0] for r in like] == [1, 3], like
    assert all(r[1] != CUSTOMERS[r[0] - 1][4] for r in like), like
    assert comment is not None and len(comment) == 1 and comment[0][0] != SSN1, comment


def test_pg_percent_percent_without_params_is_sent_as_written(pg_backend: Backend) -> None:
    """No parameters: ``%%`` reaches PostgreSQL as ``%%`` (no such operator)."""
    with _conn(pg_backend, MASKED) as (conn, shop):
        cur = conn.cursor()
        rows = _rows(lambda: cur.execute(shop.sql(_FIRST_CHAR)), cur)
        assert not _leaks(rows), rows
        ok = _rows(lambda: cur.execute(shop.sql("SELECT id FROM {c} WHERE id % 2 = 1")), cur)
    assert ok == [(1,), (3,)]


# -- PyMySQL: query % escaped_args whenever args is not None -------------------


@pytest.mark.parametrize("form", ["999 %% s", "999 %%(s)s", "999 %%s"])
def test_mysql_modulo_of_a_masked_column_is_not_returned_raw(
    mysql_backend: Backend, form: str
) -> None:
    sql = _FIRST_CHAR.replace("999 %% s", form)
    with _conn(mysql_backend, MASKED) as (conn, shop):
        cur = conn.cursor()
        rows = _rows(lambda: cur.execute(shop.sql(sql), ()), cur)
        assert not _leaks(rows), rows
        rows = _rows(lambda: cur.execute(shop.sql(sql), args=()), cur)
    assert not _leaks(rows), rows


def test_mysql_percent_percent_before_a_qualified_column_meets_the_rule(
    mysql_backend: Backend,
) -> None:
    with _conn(mysql_backend, NO_AMOUNT) as (conn, shop):
        cur = conn.cursor()
        sql = shop.sql("SELECT id FROM {p} s WHERE 0 = 1200 %% s.amount")
        rows = _rows(lambda: cur.execute(sql, ()), cur)
        assert not rows, f"payments whose amount divides 1200: {rows}"
        rows = _rows(lambda: cur.executemany(sql, [()]), cur)
    assert not rows, f"payments whose amount divides 1200: {rows}"


def test_mysql_legit_percent_percent_keeps_working(mysql_backend: Backend) -> None:
    with _conn(mysql_backend, MASKED) as (conn, shop):
        cur = conn.cursor()
        sql = shop.sql("SELECT id FROM {c} WHERE id %% 2 = %s")
        odd = _rows(lambda: cur.execute(sql, (1,)), cur)
        like = _rows(
            lambda: cur.execute(
                shop.sql("SELECT id, ssn FROM {c} WHERE name LIKE 'A%%' AND id > %s ORDER BY id"),
                (0,),
            ),
            cur,
        )
    assert odd == [(1,), (3,)]
    assert like is not None and [r[0] for r in like] == [1, 3], like
    assert all(r[1] != CUSTOMERS[r[0] - 1][4] for r in like), like


def test_mysql_batch_mixing_none_and_parameters_is_refused(mysql_backend: Backend) -> None:
    """PyMySQL sends the text as written for a None set and ``%%`` as ``%``
    for the others: no single analysis holds for both, so nothing runs."""
    with _conn(mysql_backend, NO_AMOUNT) as (conn, shop):
        cur = conn.cursor()
        sql = shop.sql("SELECT id FROM {p} WHERE id %% 2 = 1")
        with pytest.raises(guardeddb.QueryBlocked):
            cur.executemany(sql, [None, ()])


@pytest.mark.parametrize("kind", ["cursor", "client"])
def test_pg_batches_with_none_sets_are_judged_as_sent(pg_backend: Backend, kind: str) -> None:
    """A None set is sent as written: a batch of only None sets is judged as
    written (``%%`` kept), one mixing None and parameters is refused before
    anything runs, and a generator's None set is refused as it comes, before
    the driver sends it; the rows on the server say what ran."""
    with _conn(pg_backend, PERMISSIVE) as (conn, shop):
        cur = _cursor(conn, kind)
        insert = shop.sql("INSERT INTO {p} (id, amount) VALUES (%s, 1)")
        with pytest.raises(guardeddb.QueryBlocked, match="parameter-placement"):
            cur.executemany(insert.replace("%s", "900 %% 7"), [None, (901,)])
        with pytest.raises(guardeddb.QueryBlocked, match="parameter-placement"):
            cur.executemany(insert, ((i,) if i else None for i in (902, 0, 903)))
        conn.commit()
        ids = {r[0] for r in pg_backend.rows(shop.sql("SELECT id FROM {p} WHERE id >= 900"))}
    # at most the set before the None one (a ClientCursor reads them all
    # first); never the first batch, the None set or anything after it
    assert ids <= {902}


# -- the conversion itself: what psycopg's _split_query makes of a text --------


@pytest.mark.parametrize(
    ("text", "sent", "marks"),
    [
        ("SELECT 999 %% s", "SELECT 999 % s", ()),
        ("SELECT %s::int, 'a%%'", "SELECT  ? ::int, 'a%'", ((8, 7, "%s"),)),
        ("x = %(n)s AND y %%(c)s", "x =  ?  AND y %(c)s", ((5, 4, "%(n)s"),)),
        ("%%%s%", "% ? %", ((2, 2, "%s"),)),
        ("a % b %d %\n", "a % b %d %\n", ()),
    ],
)
def test_convert_spells_the_text_as_sent(
    text: str, sent: str, marks: tuple[tuple[int, int, str], ...]
) -> None:
    from guardeddb.sql.pyformat import convert

    got = convert(text)
    assert got.analyzed == sent
    assert got.placeholders == marks
    assert got.server == sent.replace(" ? ", "$1")
    for at, start, spec in got.placeholders:
        assert got.analyzed[at] == "?" and text[start : start + len(spec)] == spec
