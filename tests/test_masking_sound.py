"""Masking no query can undo: operators only on bare columns, lineage that admits
what it cannot follow, keyed pseudonyms (issue #11).

Each query runs as a masked identity on every database it is written for,
and is judged by every cell the caller can see: no seeded secret, and no
5-character window of one that the bare column's operator does not show by
design (what ``SELECT *`` shows an agent is that baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_leak import MARKS, LeakDb, fetch_every_way
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
    rows = fetch_every_way(cur)
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


def _spell(dialect: str) -> dict[str, list[str]]:
    """Per dialect, typed building blocks: text -> text (``t``), text -> number
    (``n``), number -> text (``s``), text x text -> text (``tt``), and
    aggregates (``agg``); ``{}`` is the argument."""
    p, m = dialect == "postgresql", dialect == "mysql"
    text = "CHAR(60)" if m else "TEXT"
    t = [
        "upper({})",
        "lower({})",
        "trim({})",
        "replace({}, '-', '_')",
        "replace({}, '@', '#')",
        "substr({}, 2)",
        "substr({}, 1, 6)",
        "substr({}, 5, 5)",
        "coalesce({}, 'n')",
        "nullif({}, 'zz')",
        "CASE WHEN {} IS NULL THEN 'a' ELSE {} END",
        "CASE WHEN 1 = 0 THEN 'z' ELSE {} END",
        f"CAST({{}} AS {text})",
        # JSON: build, then read back out
        "json_build_object('k', {}) ->> 'k'"
        if p
        else "json_unquote(json_extract(json_object('k', {}), '$.k'))"
        if m
        else "json_object('k', {}) ->> '$.k'",
        "json_build_array({})::text" if p else "json_array({})",
        # arrays
        "array_to_string(ARRAY[{}, 'x'], ',')"
        if p
        else "json_unquote(json_extract(json_array('x', {}), '$[1]'))"
        if m
        else "json_array('x', {}) ->> '$[1]'",
        "(string_to_array({}, '-'))[1]"
        if p
        else "substring_index({}, '-', 1)"
        if m
        else "rtrim({}, '0123456789')",
    ]
    if dialect == "sqlite":
        t += ["printf('%30s', {})", "ltrim({}, ' ')", "hex({})", "quote({})", "iif(1, {}, 'n')"]
    else:
        t += ["lpad({}, 30, '*')", "reverse({})", "left({}, 7)", "right({}, 7)", "md5({})"]
    if p:
        t += [
            "translate({}, '0123456789', 'abcdefghij')",
            "encode(convert_to({}, 'UTF8'), 'base64')",
        ]
    if m:
        t += ["to_base64({})", "hex({})", "insert({}, 2, 1, 'z')", "IF(1, {}, 'n')"]
    n = ["length({})", "instr({}, '5')" if not p else "strpos({}, '5')"]
    n += [
        "CAST(replace(replace({}, '-', ''), ' ', '') AS NUMERIC) / 10"
        if p
        else "CAST(replace(replace({}, '-', ''), ' ', '') AS DECIMAL(40, 0)) / 10"
        if m
        else "CAST(replace(replace({}, '-', ''), ' ', '') AS INTEGER) / 10",
        "ascii({})" if dialect != "sqlite" else "unicode({})",
    ]
    s = [f"CAST({{}} AS {text})", "concat('', {})" if dialect != "sqlite" else "({} || '')"]
    tt = ["concat({}, {})" if m else "({} || {})", "coalesce({}, {})"]
    agg = {
        "sqlite": ["group_concat({}, ',')", "max({})", "min({})", "json_group_array({})"],
        "postgresql": [
            "string_agg({}, ',')",
            "max({})",
            "min({})",
            "json_agg({})::text",
            "array_agg({})::text",
            "mode() WITHIN GROUP (ORDER BY {})",
        ],
        "mysql": ["group_concat({})", "max({})", "min({})", "JSON_ARRAYAGG({})"],
    }[dialect]
    return {"t": t, "n": n, "s": s, "tt": tt, "agg": agg}


def _tree(dialect: str) -> st.SearchStrategy[str]:
    """A random text expression over masked columns, literals and ``name``."""
    spell = _spell(dialect)
    leaf = st.one_of(
        st.sampled_from(_MASKED),
        st.sampled_from(["'x'", "'@'", "'-'", "'5'", "name"]),
    )

    def fill(f: str, *args: str) -> str:
        for a in args:
            f = f.replace("{}", a, 1)
        return f.replace("{}", args[-1])

    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(fill, st.sampled_from(spell["t"]), inner),
            st.builds(
                lambda s, n, a: fill(s, fill(n, a)),
                st.sampled_from(spell["s"]),
                st.sampled_from(spell["n"]),
                inner,
            ),
            st.builds(fill, st.sampled_from(spell["tt"]), inner, inner),
        )

    return st.recursive(leaf, grow, max_leaves=4)


def _query(dialect: str, expr: str) -> st.SearchStrategy[str]:
    """``expr`` as a projection, an aggregate, or through a table function,
    a derived table or a CTE with a column list."""
    aggs = st.sampled_from(_spell(dialect)["agg"]).map(lambda a: a.replace("{}", expr))
    table_fn = {
        "postgresql": [
            f"SELECT u.v FROM {{c}}, unnest(ARRAY[{expr}]) AS u(v)",
            f"SELECT j.value FROM {{c}}, jsonb_array_elements_text(jsonb_build_array({expr})) j",
            f"SELECT r.v FROM {{c}}, LATERAL (SELECT {expr} AS v) r",
        ],
        "sqlite": [f"SELECT j.value FROM {{c}}, json_each(json_array({expr})) j"],
        "mysql": [
            f"SELECT jt.v FROM {{c}}, JSON_TABLE(JSON_ARRAY({expr}), '$[*]' "
            "COLUMNS (v VARCHAR(400) PATH '$')) AS jt"
        ],
    }[dialect]
    wrapped = [
        f"SELECT d.v FROM (SELECT {expr} AS v FROM {{c}}) d",
        f"WITH x(v) AS (SELECT {expr} FROM {{c}}) SELECT v FROM x",
        f"SELECT v FROM {{c}} JOIN (SELECT id AS k, {expr} AS v FROM {{c}}) d ON d.k = id",
    ]
    return st.one_of(
        st.just(f"SELECT {expr} FROM {{c}}"),
        aggs.map(lambda a: f"SELECT {a} FROM {{c}}"),
        st.sampled_from(table_fn + wrapped),
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("dialect", [pytest.param(d, marks=MARKS[d]) for d in MARKS])
def test_random_expression_trees_never_leak(
    leakdbs: Callable[[str], LeakDb], dialect: str, data: st.DataObject
) -> None:
    """Composed string, numeric, JSON, array, aggregate and table functions
    over masked columns, on every database: no output (cells, error text,
    span, audit record) holds a masked value, an encoding of one, or a
    window of one beyond what the bare columns show."""
    db = leakdbs(dialect)
    concat = "concat({}, {})" if dialect == "mysql" else "({} || {})"
    expr = data.draw(_tree(dialect))
    if not any(m in expr for m in _MASKED):
        expr = concat.format(expr, data.draw(st.sampled_from(_MASKED)))
    sql = data.draw(_query(dialect, expr))
    cells, other, _ = db.run(sql)
    assert db.exposed(cells + other) == [], (sql, cells)
