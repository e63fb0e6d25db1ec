"""Stars and positional column lists resolved from the catalog (issue #11).

``SELECT *`` and positional lists over a star (``WITH x(a, b) AS (SELECT *
...)``, ``AS t(i, n, e)``) are resolved by the columns the database's
catalog lists, read once per connection and table and forgotten after DDL:
an output that is one masked column keeps that column's operator, instead
of being redacted whole or trusted by the name the driver reports.
"""

from __future__ import annotations

from typing import Any

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_shop import CUSTOMERS, SHOP_POLICY, Shop

AGENT = Identity(user="u-stars", agent="support-bot", roles=frozenset({"support"}))
POLICY: dict[str, Any] = {**SHOP_POLICY, "extends": []}
EMAILS = ["a***@example.com", "g***@example.net", "a***@example.org"]
CARDS = ["************1111", "************4444", "***********0005"]
NAMES = [c[1] for c in CUSTOMERS]
ALL9 = "c1, c2, c3, c4, c5, c6, c7, c8, c9"


def _column(conn: Any, shop: Shop, sql: str, at: int = 0) -> list[Any]:
    cur = conn.cursor()
    cur.execute(shop.sql(sql))
    rows = cur.fetchall()
    cur.close()
    return [r[at] for r in sorted(rows, key=lambda r: str(r[0]))]


def test_positional_lists_over_stars_keep_the_operator(backend: Backend, shop: Shop) -> None:
    conn = guardeddb.connect(backend.url, policy=POLICY, identity=AGENT)
    try:
        # c3 is email, c6 card_number: by position, not by the name the driver reports
        got = _column(conn, shop, f"WITH x({ALL9}) AS (SELECT * FROM {{c}}) SELECT c3 FROM x")
        assert sorted(got) == sorted(EMAILS)
        got = _column(conn, shop, f"WITH x({ALL9}) AS (SELECT * FROM {{c}}) SELECT c6 FROM x")
        assert sorted(got) == sorted(CARDS)
        got = _column(conn, shop, f"WITH x({ALL9}) AS (SELECT * FROM {{c}}) SELECT c2 FROM x")
        assert sorted(got) == sorted(NAMES)  # an unmasked column stays as it is
        got = _column(conn, shop, "WITH x AS (SELECT * FROM {c}) SELECT * FROM x", 2)
        assert sorted(got) == sorted(EMAILS)
        got = _column(
            conn, shop, f"WITH x({ALL9}) AS (SELECT * FROM {{c}}) SELECT upper(c3) FROM x"
        )
        assert got == ["[REDACTED]"] * 3  # an expression is still redacted whole
        if backend.name == "postgresql":
            got = _column(conn, shop, "SELECT t.* FROM (SELECT * FROM {c}) AS t(i, n, e, s)", 2)
            assert sorted(got) == sorted(EMAILS)
            got = _column(conn, shop, "SELECT e FROM {c} AS t(i, n, e)")
            assert sorted(got) == sorted(EMAILS)
            got = _column(conn, shop, "SELECT n FROM {c} AS t(i, n, e)")
            assert sorted(got) == sorted(NAMES)
    finally:
        conn.close()


def test_catalog_is_read_once_and_forgotten_after_ddl(backend: Backend, shop: Shop) -> None:
    """A column added after the catalog was read moves the positions: DDL
    on the connection forgets what was read, and the new layout is masked."""
    conn = guardeddb.connect(backend.url, policy={**POLICY, "on_unparsed": "allow"}, identity=AGENT)
    try:
        columns = conn._self_guard.engine.columns
        assert columns is not None
        sql = f"WITH x({ALL9}) AS (SELECT * FROM {{c}}) SELECT c3 FROM x"
        assert sorted(_column(conn, shop, sql)) == sorted(EMAILS)
        table = shop.customers
        known = columns(table)
        assert known is not None and known[2] == "email"
        assert columns(table) is known  # cached
        conn.cursor().execute(shop.sql("ALTER TABLE {c} ADD COLUMN extra VARCHAR(10)"))
        conn.commit()
        assert columns._known == {}
        ten = f"WITH x({ALL9}, c10) AS (SELECT * FROM {{c}}) SELECT c3 FROM x"
        assert sorted(_column(conn, shop, ten)) == sorted(EMAILS)
        assert columns(table) is not None and len(columns(table) or ()) == 10
    finally:
        conn.rollback()
        conn.close()


def test_unreadable_catalog_keeps_the_conservative_answer(backend: Backend, shop: Shop) -> None:
    """No catalog (a read that fails): the output is redacted whole, as before."""
    conn = guardeddb.connect(backend.url, policy=POLICY, identity=AGENT)
    try:
        columns = conn._self_guard.engine.columns
        assert columns is not None

        def broken(sql: str, params: tuple[Any, ...]) -> list[Any]:
            raise RuntimeError("catalog unavailable")

        columns.run = broken
        got = _column(conn, shop, f"WITH x({ALL9}) AS (SELECT * FROM {{c}}) SELECT c3 FROM x")
        assert got == ["[REDACTED]"] * 3
        got = _column(conn, shop, "SELECT * FROM {c}", 2)
        assert sorted(got) == sorted(EMAILS)  # a plain star still follows the description
    finally:
        conn.close()


def test_merged_and_hidden_columns_do_not_shift_positions(backend: Backend, shop: Shop) -> None:
    """A USING join merges a column, a generated column (SQLite) is in the
    star but not in table_info, an INVISIBLE column (MariaDB) is in the
    catalog but not in the star: none moves a masked column to a position
    the catalog calls unmasked."""
    names = ", ".join(f"a{i}" for i in range(1, 15))
    conn = guardeddb.connect(backend.url, policy=POLICY, identity=AGENT)
    try:
        # a11 is payments.card_number (the join keeps one id): not customer_id
        got = _column(
            conn,
            shop,
            f"WITH x({names}) AS (SELECT * FROM {{c}} JOIN {{p}} USING (id)) SELECT a11 FROM x",
        )
        assert all(v is None or "*" in str(v) or v == "[REDACTED]" for v in got), got
        extra = {
            "sqlite": "ALTER TABLE {c} ADD COLUMN lc_g VARCHAR(30) AS (name) VIRTUAL",
            "mysql": "ALTER TABLE {c} ADD COLUMN lc_i INT INVISIBLE FIRST",
            "postgresql": "ALTER TABLE {c} DROP COLUMN name",  # email moves to 2nd
        }[backend.name]
        conn.cursor().execute(shop.sql(extra))  # on this connection: the catalog is re-read
        conn.commit()
        width = 9 if backend.name == "mysql" else 10 if backend.name == "sqlite" else 8
        cols = ", ".join(f"c{i}" for i in range(1, width + 1))
        email, name = ("c2", None) if backend.name == "postgresql" else ("c3", "c2")
        sql = f"WITH x({cols}) AS (SELECT * FROM {{c}}) SELECT "
        assert sorted(_column(conn, shop, sql + f"{email} FROM x")) == sorted(EMAILS)
        if name is not None:
            assert sorted(_column(conn, shop, sql + f"{name} FROM x")) == sorted(NAMES)
    finally:
        conn.rollback()
        conn.close()
