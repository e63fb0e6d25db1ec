"""Masking no query can undo: operators only on bare columns, lineage that admits
what it cannot follow, keyed pseudonyms (issue #11).

Each query runs as a masked identity on every database it is written for,
and is judged by every cell the caller can see: no seeded secret, and no
5-character window of one that the bare column's operator does not show by
design (what ``SELECT *`` shows an agent is that baseline).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_shop import CUSTOMERS, SECRETS, SHOP_POLICY, Shop

AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))
CODE = {"sqlite": "s", "postgresql": "p", "mysql": "m"}
WINDOW = 5

# (query, dialects). {c} is customers, {p} payments. Every class of the
# issue's examples, with at least three variants each.
ATTACKS: list[tuple[str, str]] = [
    # Partial operators over expressions: email keeps the "domain".
    ("SELECT 'x@' || replace(email, '@', '#') FROM {c}", "ps"),
    ("SELECT concat('x@', replace(email, '@', '#')) FROM {c}", "pm"),
    ("SELECT replace(email, '@', '.') || '@x.org' FROM {c}", "ps"),
    ("SELECT concat(substr(email, 2), '@x') FROM {c}", "pm"),
    ("SELECT reverse(email) FROM {c}", "pm"),
    ("SELECT lower(email) AS email FROM {c}", "pms"),
    # last4 shows any four digits a query picks.
    ("SELECT substr(card_number, 1, 12) FROM {c}", "pms"),
    ("SELECT substr(card_number, 1, 8) FROM {c}", "pms"),
    ("SELECT substr(card_number, 5, 8) AS card_number FROM {c}", "pms"),
    ("SELECT card_number::numeric / 10 FROM {c}", "p"),
    ("SELECT CAST(card_number AS DECIMAL(30, 0)) / 10 FROM {c}", "m"),
    ("SELECT CAST(card_number AS INTEGER) / 10 FROM {c}", "s"),
    ("SELECT card_number || 'x' FROM {c}", "ps"),
    ("SELECT coalesce(card_number, '') FROM {p}", "pms"),
    # partial keeps the first 2 of any window.
    *[(f"SELECT substr(iban, {k}) FROM {{c}}", "pms") for k in range(1, 24)],
    *[(f"SELECT substr(iban, {k}, 2) AS iban FROM {{p}}", "pms") for k in (3, 7, 11)],
    ("SELECT trim(iban) FROM {c}", "pms"),
    # hash as a lookup table: hashing a literal, or one character at a time.
    ("SELECT CASE WHEN 1 = 0 THEN phone ELSE '5' END FROM {c}", "pms"),
    ("SELECT CASE WHEN 1 = 0 THEN phone ELSE '+44 20 7946 0958' END AS phone FROM {c}", "pms"),
    ("SELECT coalesce(NULL, phone) FROM {c}", "pms"),
    *[(f"SELECT substr(phone, {k}, 1) FROM {{c}}", "pms") for k in range(1, 17)],
    ("SELECT phone FROM {c} UNION SELECT name FROM {c}", "pms"),
    ("SELECT phone FROM {c} UNION SELECT '+44 20 7946 0958'", "pms"),
    # CTE column lists.
    ("WITH x(a) AS (SELECT replace(ssn, '-', '_') FROM {c}) SELECT a FROM x", "pms"),
    ("WITH x(a) AS (SELECT email FROM {c}) SELECT substr(a, 1, 30) FROM x", "pms"),
    ("WITH x(a, b) AS (SELECT name, substr(card_number, 1, 12) FROM {c}) SELECT b FROM x", "pms"),
    ("WITH x(a) AS (SELECT substr(iban, 3) FROM {c}) SELECT a AS iban FROM x", "pms"),
    ("WITH x(n, e) AS (SELECT name, email FROM {c}) SELECT * FROM x", "pms"),
    # PostgreSQL table alias column lists.
    ("SELECT e FROM {c} AS t(i, n, e, s)", "p"),
    ("SELECT s FROM {c} AS t(i, n, e, s)", "p"),
    ("SELECT t.ssn, t.n FROM {c} AS t(i, n, e, s)", "p"),
    ("SELECT * FROM {c} AS t(i, n, e, s)", "p"),
    ("SELECT x.e FROM (SELECT * FROM {c}) AS x(i, n, e, s)", "p"),
    # Table functions, LATERAL, VALUES.
    ("SELECT j.value FROM {c} c, json_each_text(json_build_object('e', c.email)) j", "p"),
    ("SELECT j.value FROM {c} c, json_each(json_build_object('s', c.ssn)) j", "p"),
    ("SELECT j.* FROM {c} c, jsonb_each_text(jsonb_build_object('s', c.card_number)) j", "p"),
    ("SELECT u FROM unnest(ARRAY(SELECT ssn FROM {c})) AS u", "p"),
    ("SELECT * FROM unnest(ARRAY(SELECT replace(card_number, '1', 'x') FROM {c}))", "p"),
    ("SELECT l.v FROM {c} c CROSS JOIN LATERAL (SELECT replace(c.email, '@', '#') AS v) l", "p"),
    ("SELECT l.* FROM {c} c CROSS JOIN LATERAL (SELECT c.ssn AS v) l", "p"),
    ("SELECT x FROM {c} c, LATERAL (VALUES (c.ssn)) AS v(x)", "p"),
    ("SELECT * FROM (VALUES ((SELECT max(email) FROM {c}))) AS v(x)", "p"),
    ("SELECT value FROM {c} c, json_each(json_array(c.ssn))", "s"),
    ("SELECT j.value FROM {c} c, json_each(json_object('e', c.email)) j", "s"),
    ("SELECT * FROM json_each((SELECT json_group_array(iban) FROM {c}))", "s"),
    ("SELECT j.atom FROM {c} c, json_tree(json_array(c.card_number)) j", "s"),
    ("SELECT * FROM (VALUES ((SELECT max(ssn) FROM {c})))", "s"),
    (
        "SELECT jt.v FROM {c} c, JSON_TABLE(JSON_ARRAY(c.ssn), '$[*]' "
        "COLUMNS (v VARCHAR(50) PATH '$')) AS jt",
        "m",
    ),
    (
        "SELECT jt.* FROM {c} c, JSON_TABLE(JSON_ARRAY(replace(c.email, '@', '#')), '$[*]' "
        "COLUMNS (v VARCHAR(200) PATH '$')) AS jt",
        "m",
    ),
    (
        "SELECT v FROM JSON_TABLE((SELECT JSON_ARRAYAGG(card_number) FROM {c}), '$[*]' "
        "COLUMNS (v VARCHAR(50) PATH '$')) AS jt",
        "m",
    ),
    ("SELECT x FROM (SELECT ssn AS x FROM {c}) s, (SELECT 1 AS one) o", "pms"),
    # Aggregates over masked columns.
    ("SELECT string_agg(substr(card_number, 1, 12), ',') FROM {c}", "p"),
    ("SELECT group_concat(substr(card_number, 1, 12)) FROM {c}", "ms"),
    ("SELECT max(substr(email, 1, 5)) FROM {c}", "pms"),
]


def _windows(text: str) -> set[str]:
    return {text[i : i + WINDOW].lower() for i in range(len(text) - WINDOW + 1)}


def _cells(rows: Any) -> list[str]:
    out = []
    for row in rows:
        for v in row.values() if isinstance(row, dict) else row:
            out.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    return out


def _run(conn: Any, shop: Shop, sql: str) -> list[Any]:
    """Every row through every fetch path: fetchone, fetchmany, iteration."""
    cur = conn.cursor()
    cur.execute(shop.sql(sql))
    rows: list[Any] = []
    first = cur.fetchone()
    if first is not None:
        rows.append(first)
        rows.extend(cur.fetchmany(1))
        rows.extend(iter(cur))
    cur.close()
    return rows


def _baseline(conn: Any, shop: Shop) -> set[str]:
    """The windows a masked identity sees by design: what SELECT * shows it."""
    seen: set[str] = set()
    for sql in ("SELECT * FROM {c}", "SELECT * FROM {p}"):
        for cell in _cells(_run(conn, shop, sql)):
            seen |= _windows(cell)
    return seen


def _exposed(rows: Any, baseline: set[str]) -> list[str]:
    """Seeded secrets, or windows of them beyond the baseline, found in ``rows``."""
    text = "\n".join(_cells(rows)).lower()
    found = [s for s in SECRETS if s.lower() in text]
    found += sorted(w for s in SECRETS for w in _windows(s) if w in text and w not in baseline)
    return found


def test_attack_corpus_covers_every_dialect() -> None:
    """The issue's examples and variants: plenty on each database."""
    for code in "pms":
        assert sum(code in d for _, d in ATTACKS) >= 50


def test_no_query_undoes_the_masking(backend: Backend, shop: Shop) -> None:
    """Every attack query, as an agent: nothing beyond what SELECT * shows."""
    conn = guardeddb.connect(backend.url, policy=SHOP_POLICY)
    code = CODE[backend.name]
    with guardeddb.identity(AGENT):
        baseline = _baseline(conn, shop)
        learned: list[Any] = []
        for sql, dialects in ATTACKS:
            if code not in dialects:
                continue
            rows = _run(conn, shop, sql)
            assert rows, sql
            assert _exposed(rows, baseline) == [], (sql, rows)
            learned.extend(rows)
        # Together, too: the union of everything learned covers no secret.
        assert _exposed(learned, baseline) == []
    conn.close()


def test_bare_columns_keep_their_operator(backend: Backend, shop: Shop) -> None:
    """A bare column, aliased, through a derived table, a CTE, a CTE column
    list or a UNION of bare columns, still gets its rule's operator."""
    conn = guardeddb.connect(backend.url, policy=SHOP_POLICY)
    queries = [
        "SELECT email AS e, card_number, iban FROM {c} ORDER BY id",
        "SELECT x.e, x.card_number, x.iban FROM (SELECT email AS e, card_number, iban "
        "FROM {c}) x ORDER BY x.e",
        "WITH x(e, k, i) AS (SELECT email, card_number, iban FROM {c}) SELECT e, k, i FROM x",
        "SELECT email, card_number, iban FROM {c} UNION ALL SELECT email, card_number, iban "
        "FROM {c} WHERE 1 = 0",
    ]
    with guardeddb.identity(AGENT):
        for sql in queries:
            rows = sorted(_run(conn, shop, sql))
            assert [tuple(r) for r in rows] == [
                ("a***@example.com", "************1111", "GB" + "*" * 20),
                ("a***@example.org", "***********0005", "FR" + "*" * 25),
                ("g***@example.net", "************4444", "DE" + "*" * 20),
            ], sql
    conn.close()


def test_expressions_over_masked_columns_are_redacted_whole(backend: Backend, shop: Shop) -> None:
    """Text becomes [REDACTED], numbers NULL, whatever the expression."""
    conn = guardeddb.connect(backend.url, policy=SHOP_POLICY)
    with guardeddb.identity(AGENT):
        (row,) = _run(
            conn,
            shop,
            "SELECT upper(email), substr(card_number, 1, 12), length(ssn), name FROM {c} "
            "WHERE id = 1",
        )
    assert tuple(row) == ("[REDACTED]", "[REDACTED]", None, "Ada Lovelace")
    conn.close()


def test_hash_pseudonyms_are_keyed_per_column(backend: Backend, shop: Shop) -> None:
    """No literal or other column hashes to a phone's pseudonym: the lookup
    table of the issue (CASE ... ELSE '<guess>', substr per position) is gone."""
    conn = guardeddb.connect(backend.url, policy=SHOP_POLICY)
    with guardeddb.identity(AGENT):
        pseudonyms = {r[0] for r in _run(conn, shop, "SELECT phone FROM {c}")}
        assert all(str(p).startswith("h_") for p in pseudonyms) and len(pseudonyms) == 3
        seen: set[Any] = set()
        for _, _, phone, *_ in CUSTOMERS:
            for sql in (
                f"SELECT CASE WHEN 1 = 0 THEN phone ELSE '{phone}' END FROM {{c}}",
                f"SELECT phone FROM {{c}} UNION ALL SELECT '{phone}'",
                "SELECT phone FROM {c} UNION ALL SELECT name FROM {c}",
            ):
                seen |= {r[0] for r in _run(conn, shop, sql)}
    assert not seen & pseudonyms
    from guardeddb.masking.operators import hash_with

    assert hash_with(b"k", "phone")("5") != hash_with(b"k", "ssn")("5") != hash_with(b"k")("5")
    conn.close()


# --- random expression trees over masked columns

_MASKED = ["email", "ssn", "card_number", "iban", "phone"]


def _tree(dialect: str) -> st.SearchStrategy[str]:
    leaf = st.one_of(
        st.sampled_from(_MASKED),
        st.sampled_from(["'x'", "'@'", "'-'", "'5'", "name"]),
    )
    concat = "concat({}, {})" if dialect == "mysql" else "({} || {})"

    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        one = [
            "upper({})",
            "lower({})",
            "trim({})",
            "replace({}, '-', '_')",
            "replace({}, '@', '#')",
            "substr({}, 2)",
            "substr({}, 1, 6)",
            "substr({}, 5, 5)",
            "coalesce({}, 'n')",
            "CASE WHEN {} IS NULL THEN 'a' ELSE {} END",
            "CASE WHEN 1 = 0 THEN 'z' ELSE {} END",
            "lpad({}, 30, '*')" if dialect != "sqlite" else "printf('%30s', {})",
            "reverse({})" if dialect != "sqlite" else "ltrim({}, ' ')",
            "CAST({} AS CHAR(40))" if dialect == "mysql" else "CAST({} AS TEXT)",
            "json_array({})" if dialect != "postgresql" else "json_build_array({})::text",
        ]
        return st.one_of(
            st.builds(lambda f, a: f.replace("{}", a), st.sampled_from(one), inner),
            st.builds(lambda a, b: concat.format(a, b), inner, inner),
        )

    return st.recursive(leaf, grow, max_leaves=4)


def _aggregate(dialect: str, expr: str) -> st.SearchStrategy[str]:
    agg = {
        "sqlite": "group_concat({}, ',')",
        "postgresql": "string_agg({}, ',')",
        "mysql": "group_concat({})",
    }[dialect]
    return st.sampled_from([expr, agg.format(expr), f"max({expr})", f"min({expr})"])


def _check_trees(backend: Backend, shop: Shop, data: st.DataObject) -> None:
    concat = "concat({}, {})" if backend.name == "mysql" else "({} || {})"
    conn = guardeddb.connect(backend.url, policy=SHOP_POLICY)
    try:
        with guardeddb.identity(AGENT):
            baseline = _baseline(conn, shop)
            for _ in range(5):
                expr = data.draw(_tree(backend.name))
                if not any(m in expr for m in _MASKED):
                    expr = concat.format(expr, data.draw(st.sampled_from(_MASKED)))
                sql = f"SELECT {data.draw(_aggregate(backend.name, expr))} FROM {{c}}"
                try:
                    rows = _run(conn, shop, sql)
                except backend.error:
                    conn.rollback()
                    continue  # a function this server spells otherwise
                assert _exposed(rows, baseline) == [], (sql, rows)
    finally:
        conn.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
def test_random_expression_trees_never_leak(
    backend: Backend, shop: Shop, data: st.DataObject
) -> None:
    """Composed string, cast, CASE, COALESCE, JSON and aggregate functions over
    masked columns: no output holds a masked value or a window of one."""
    _check_trees(backend, shop, data)
