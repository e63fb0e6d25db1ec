"""Predicates on masked columns: a rule's ``filter: allow | equality | deny`` (#11).

Masking rewrites the cells a caller gets back; the server still evaluates
the query on raw values. These tests run on every database as an agent that
sees ``ssn`` masked and judge by what it can learn about the first digit of
a seeded SSN: the rows, the order, the row count, an error. With ``deny``
or ``equality`` every way of asking is refused before it reaches the server
(rule ``masking-filter``, the exception is the driver's Error, the audit
record says so), while the compliance identity that may unmask runs the
same statements.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_shop import CUSTOMERS, Shop

AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))
AUDITOR = Identity(user="carol@example.com", roles=frozenset({"compliance"}))
CODE = {"sqlite": "s", "postgresql": "p", "mysql": "m"}
SSNS = [c[4] for c in CUSTOMERS]  # 123-45-6789, 234-56-7891, 345-67-8912


def _policy(mode: str, tmp_path: Path | None = None) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "version": 1,
        "extends": [],
        "on_unparsed": "allow",
        "masking": {
            "rules": [
                {"columns": ["*.ssn"], "operator": "redact", "filter": mode},
                {"columns": ["*.email"], "operator": "email"},
            ],
            "unmask": {"roles": ["compliance"]},
        },
    }
    if tmp_path is not None:
        policy["audit"] = {"jsonl": str(tmp_path / "audit.jsonl")}
    return policy


# Ways to learn the first digit of customer 1's SSN ('1'), or to order the
# SSNs: each is refused under deny and equality. (query, dialects)
ORACLES: list[tuple[str, str]] = [
    ("SELECT id FROM {c} WHERE substr(ssn, 1, 1) = '1'", "pms"),
    ("SELECT id FROM {c} WHERE ssn LIKE '1%'", "pms"),
    ("SELECT id FROM {c} WHERE ssn > '2'", "pms"),
    ("SELECT id FROM {c} WHERE ssn BETWEEN '1' AND '2'", "pms"),
    ("SELECT c.id FROM {c} c WHERE c.ssn LIKE '1%'", "pms"),
    ("SELECT id FROM (SELECT id, ssn AS s FROM {c}) t WHERE t.s LIKE '1%'", "pms"),
    ("WITH x AS (SELECT id, ssn FROM {c}) SELECT id FROM x WHERE ssn LIKE '1%'", "pms"),
    ("WITH x(i, s) AS (SELECT id, ssn FROM {c}) SELECT i FROM x WHERE s < '2'", "pms"),
    ("SELECT id FROM {c} WHERE CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END = 1", "pms"),
    ("SELECT id FROM {c} WHERE CASE WHEN ssn = '1' THEN 1 ELSE 0 END = 0", "pms"),
    ("SELECT id FROM {c} WHERE lower(ssn) = '123-45-6789'", "pms"),
    ("SELECT id, ssn FROM {c} ORDER BY ssn", "pms"),
    ("SELECT id FROM {c} ORDER BY ssn DESC", "pms"),
    ("SELECT id, ssn FROM {c} ORDER BY 2", "pms"),
    ("SELECT id, ssn AS s FROM {c} ORDER BY s", "pms"),
    ("SELECT min(id) FROM {c} GROUP BY substr(ssn, 1, 1)", "pms"),
    ("SELECT count(*) FROM {c} GROUP BY ssn", "pms"),
    ("SELECT DISTINCT ssn FROM {c}", "pms"),
    ("SELECT ssn FROM {c} UNION SELECT '123-45-6789'", "pms"),
    (
        "SELECT a.id FROM {c} a JOIN {p} b ON b.customer_id = a.id AND substr(a.ssn, 1, 1) = '1'",
        "pms",
    ),
    ("SELECT a.id FROM {c} a JOIN {c} b ON a.ssn < b.ssn", "pms"),
    ("SELECT count(*) FROM {c} GROUP BY id HAVING max(ssn) < '2'", "pms"),
    (
        "SELECT id FROM {p} p WHERE EXISTS (SELECT 1 FROM {c} c WHERE c.id = p.customer_id "
        "AND c.ssn LIKE '1%')",
        "pms",
    ),
    ("SELECT id FROM {c} WHERE '1' IN (SELECT substr(ssn, 1, 1) FROM {c})", "pms"),
    ("SELECT (SELECT count(*) FROM {c} WHERE ssn LIKE '1%')", "pms"),
    ("SELECT id, rank() OVER (ORDER BY ssn) FROM {c}", "pms"),
    ("SELECT id, count(*) OVER (PARTITION BY substr(ssn, 1, 1)) FROM {c}", "pms"),
    ("SELECT id, row_number() OVER (PARTITION BY id ORDER BY ssn) FROM {c}", "pms"),
    ("SELECT string_agg(name, ',' ORDER BY ssn) FROM {c}", "p"),
    ("SELECT group_concat(name ORDER BY ssn) FROM {c}", "m"),
    ("SELECT id FROM {c} ORDER BY ssn LIMIT 1", "pms"),
    # an error is an answer too: division by zero only where the digit is '1'
    ("SELECT 1 / (ascii(ssn) - 49) FROM {c}", "pms"),
    ("SELECT id, CASE WHEN ssn LIKE '1%' THEN 1 / 0 END FROM {c}", "pms"),
    ("SELECT c.id FROM {c} c, json_each(json_array(c.ssn))", "s"),
    ("SELECT c.id FROM {c} c, unnest(string_to_array(c.ssn, '-')) u WHERE u = '123'", "p"),
    ("UPDATE {c} SET name = name WHERE ssn LIKE '1%'", "pms"),
    ("DELETE FROM {c} WHERE ssn > '9'", "pms"),
    # MySQL compares '123-45-6789' = 123 as numbers: the leading digits
    ("SELECT id FROM {c} WHERE ssn = 123", "m"),
    ("SELECT id FROM {c} WHERE ssn IN (123, 234)", "m"),
    ("SELECT id FROM {c} WHERE ssn = %s", "m"),
    ("SELECT id FROM {c} WHERE ssn IN ('x', id)", "m"),
    # lineage lost (a recursive CTE's self-reference): refused to be safe
    (
        "WITH RECURSIVE r(s) AS (SELECT ssn FROM {c} UNION ALL SELECT s FROM r WHERE s > '5') "
        "SELECT count(*) FROM r",
        "pms",
    ),
]


def _oracles(code: str) -> list[str]:
    return [q for q, d in ORACLES if code in d]


def _connect(backend: Backend, mode: str, tmp_path: Path | None = None) -> Any:
    return guardeddb.connect(backend.url, policy=_policy(mode, tmp_path))


@pytest.mark.parametrize("mode", ["deny", "equality"])
def test_no_predicate_reveals_a_masked_value(
    backend: Backend, shop: Shop, tmp_path: Path, mode: str
) -> None:
    """Every oracle is refused for the agent: no row, no count, no error from
    the server; a driver Error with rule masking-filter naming the column; an
    audit record of the refusal with the agent's identity."""
    conn = _connect(backend, mode, tmp_path)
    queries = _oracles(CODE[backend.name])
    assert len(queries) >= 30
    try:
        with guardeddb.identity(AGENT):
            for sql in queries:
                cur = conn.cursor()
                with pytest.raises(backend.error) as caught:
                    if "%s" in sql:
                        cur.execute(shop.sql(sql), (123,))
                    else:
                        cur.execute(shop.sql(sql))
                exc = caught.value
                assert isinstance(exc, guardeddb.QueryBlocked), sql
                assert exc.decision.rule_id == "masking-filter", (sql, exc.decision)
                assert ".ssn" in str(exc) and f"filter: {mode}" in str(exc), str(exc)
                assert not any(s in str(exc) for s in SSNS)
    finally:
        conn.close()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    refused = [r for r in records if "masking-filter" in json.dumps(r.get("decision"))]
    assert len(refused) == len(queries)
    assert all("alice@example.com" in json.dumps(r) for r in refused)
    assert not any(s in json.dumps(records) for s in SSNS)
    # the server saw none of it: every customer is still there, unrenamed
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(f"SELECT id, name FROM {shop.customers} ORDER BY id")
        assert [tuple(r) for r in cur.fetchall()] == [(c[0], c[1]) for c in CUSTOMERS]
    finally:
        raw.close()


@pytest.mark.parametrize("mode", ["deny", "equality"])
def test_identities_that_unmask_are_not_affected(backend: Backend, shop: Shop, mode: str) -> None:
    """The compliance identity runs every oracle: the statements are fine,
    only the masked identity is refused them."""
    conn = _connect(backend, mode)
    code = CODE[backend.name]
    try:
        with guardeddb.identity(AUDITOR):
            cur = conn.cursor()
            cur.execute(shop.sql("SELECT id FROM {c} WHERE ssn LIKE '1%'"))
            assert [tuple(r) for r in cur.fetchall()] == [(1,)]
            cur.execute(shop.sql("SELECT ssn FROM {c} ORDER BY ssn"))
            assert [r[0] for r in cur.fetchall()] == sorted(SSNS)
            for sql in _oracles(code):
                if "1 / " in sql or "%s" in sql or sql.startswith(("UPDATE", "DELETE")):
                    continue  # errors on PostgreSQL by design; writes change the fixture
                conn.cursor().execute(shop.sql(sql))
    finally:
        conn.close()


def test_equality_finds_the_row_and_shows_it_masked(backend: Backend, shop: Shop) -> None:
    """With ``equality`` an agent can look a customer up by SSN: the row comes
    back with the SSN masked; IN, IS NULL, a join on it, an IN subquery work."""
    conn = _connect(backend, "equality")
    # MySQL reads a number compared with a string as a number: a parameter
    # there is cast to text (the refusal says so)
    p = "CAST(%s AS CHAR)" if backend.name == "mysql" else backend.placeholder
    allowed = [
        (f"SELECT id, ssn FROM {{c}} WHERE ssn = {p}", (SSNS[0],), [(1, "[REDACTED]")]),
        (f"SELECT id FROM {{c}} c WHERE c.ssn IN ({p}, {p})", (SSNS[0], SSNS[2]), [(1,), (3,)]),
        ("SELECT id FROM {c} WHERE ssn IS NULL", None, []),
        (f"SELECT id, name AS n FROM {{c}} WHERE ssn = {p} ORDER BY n", (SSNS[0],), None),
        ("SELECT id FROM {c} WHERE NOT (ssn = '123-45-6789') AND id < 3", None, [(2,)]),
        ("SELECT a.id FROM {c} a JOIN {c} b ON a.ssn = b.ssn AND a.id = b.id", None, None),
        (
            f"WITH x(i, s) AS (SELECT id, ssn FROM {{c}}) SELECT i FROM x WHERE s = {p}",
            (SSNS[1],),
            [(2,)],
        ),
        (
            f"SELECT id FROM {{c}} WHERE ssn IN (SELECT ssn FROM {{c}} WHERE id = {p})",
            (3,),
            [(3,)],
        ),
        ("SELECT ssn FROM {c} UNION ALL SELECT ssn FROM {c} WHERE id = 1", None, None),
    ]
    try:
        with guardeddb.identity(AGENT):
            for sql, params, expected in allowed:
                cur = conn.cursor()
                cur.execute(shop.sql(sql), params) if params else cur.execute(shop.sql(sql))
                rows = sorted(tuple(r) for r in cur.fetchall())
                if expected is not None:
                    assert rows == expected, sql
                assert not any(s in repr(rows) for s in SSNS)
            with pytest.raises(backend.error) as caught:
                conn.cursor().execute(shop.sql("SELECT id FROM {c} WHERE ssn > '5'"))
            assert caught.value.decision.rule_id == "masking-filter"  # type: ignore[attr-defined]
    finally:
        conn.close()


def test_deny_still_shows_the_column_masked(backend: Backend, shop: Shop) -> None:
    """``deny`` keeps selecting it (masked), through aliases, derived tables,
    CTEs and UNION ALL, and filtering on other columns."""
    conn = _connect(backend, "deny")
    try:
        with guardeddb.identity(AGENT):
            for sql in (
                "SELECT id, ssn FROM {c} WHERE id = 1",
                "SELECT * FROM {c} WHERE id = 1",
                "SELECT t.s FROM (SELECT id, ssn AS s FROM {c}) t WHERE t.id = 1",
                "WITH x AS (SELECT ssn FROM {c} WHERE name LIKE 'Ada%') SELECT ssn FROM x",
                "SELECT ssn FROM {c} WHERE id = 1 UNION ALL SELECT ssn FROM {c} WHERE 1 = 0",
            ):
                cur = conn.cursor()
                cur.execute(shop.sql(sql))
                rows = cur.fetchall()
                assert len(rows) == 1, sql
                assert "[REDACTED]" in repr(rows) and not any(s in repr(rows) for s in SSNS)
            with pytest.raises(backend.error):
                conn.cursor().execute(shop.sql("SELECT id FROM {c} WHERE ssn = '123-45-6789'"))
    finally:
        conn.close()


def test_allow_is_the_default_and_keeps_todays_behaviour(backend: Backend, shop: Shop) -> None:
    """Without ``filter`` (or ``filter: allow``) the predicate oracle is open,
    as the README's threat model says: the row count answers the question."""
    policy = _policy("allow")
    del policy["masking"]["rules"][0]["filter"]
    conn = guardeddb.connect(backend.url, policy=policy)
    try:
        with guardeddb.identity(AGENT):
            cur = conn.cursor()
            cur.execute(shop.sql("SELECT id FROM {c} WHERE ssn LIKE '1%'"))
            assert [tuple(r) for r in cur.fetchall()] == [(1,)]
    finally:
        conn.close()


_COLUMN = st.sampled_from(["ssn", "c.ssn", "t.s", "x.s"])
_WRAP = st.sampled_from(
    [
        "{e}",
        "lower({e})",
        "substr({e}, 1, 1)",
        "coalesce({e}, 'x')",
        "CASE WHEN {e} = '1' THEN 'a' ELSE 'b' END",
        "trim({e})",
        "({e})",
    ]
)
_TEST = st.sampled_from(
    ["{e} = '1'", "{e} LIKE '1%'", "{e} > '1'", "{e} IN ('1', '2')", "{e} IS NULL", "{e} <> '1'"]
)
_SHAPE = st.sampled_from(
    [
        "SELECT c.id FROM {c} c WHERE {pred}",
        "SELECT t.id FROM (SELECT id, ssn AS s FROM {c}) t WHERE {pred}",
        "WITH x(id, s) AS (SELECT id, ssn FROM {c}) SELECT x.id FROM x WHERE {pred}",
        "SELECT c.id FROM {c} c JOIN {p} p ON p.customer_id = c.id AND {pred}",
        "SELECT id FROM {p} WHERE EXISTS (SELECT 1 FROM {c} c WHERE {pred})",
        "SELECT c.id FROM {c} c GROUP BY c.id, c.ssn HAVING {pred}",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=_SHAPE, wrap=_WRAP, test=_TEST, column=_COLUMN, mode=st.sampled_from(["deny", "equality"])
)
def test_random_predicates_are_judged_by_their_shape(
    shape: str, wrap: str, test: str, column: str, mode: str
) -> None:
    """Random predicates over the masked column, through aliases, derived
    tables and CTEs: ``deny`` refuses all of them; ``equality`` lets through
    exactly the bare column compared with ``=`` / ``IN`` / ``IS NULL``."""
    from guardeddb.masking.filters import filters_masked
    from guardeddb.sql.analysis import analyze

    if (column == "t.s") != ("t.id" in shape) or (column == "x.s") != ("x.id" in shape):
        column = "t.s" if "t.id" in shape else "x.s" if "x.id" in shape else "c.ssn"
    if "GROUP BY" in shape:
        column = "c.ssn"
    expr = wrap.format(e=column)
    sql = shape.format(c="customers", p="payments", pred=test.format(e=expr))
    masker = guardeddb.load_policy(_policy(mode)).masker
    assert masker is not None
    why = filters_masked(analyze(sql, "sqlite"), masker)
    bare = wrap in ("{e}", "({e})")
    plain = not test.startswith(("{e} LIKE", "{e} >", "{e} <>"))
    if mode == "equality" and bare and plain and "GROUP BY" not in shape:
        assert why is None, sql
    else:
        assert why is not None and "masking rule for" in why, sql


# Neighbours of the attack4 findings (#11): each probe is a few statements
# around a guess ``{g}``; the first guess is right about customer 1's SSN
# (123-45-6789), the second wrong. The identity that may unmask sees the
# two differ (the probe is an oracle on that server); the agent must see
# the same either way: no row, row count, value or error tells them apart.
# (filter, dialects, (right, wrong), statements)
PROBES: list[tuple[str, str, tuple[str, str], list[str]]] = [
    # 1. INSERT clauses: ON CONFLICT / ON DUPLICATE KEY UPDATE, RETURNING, WITH
    (
        "deny",
        "ps",
        ("1", "9"),
        [
            "INSERT INTO {c} (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE "
            "SET name = CASE WHEN {c}.ssn LIKE '{g}%' THEN 'a' ELSE 'b' END RETURNING name"
        ],
    ),
    (
        "deny",
        "ps",
        ("1", "9"),
        [
            "INSERT INTO {c} (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = "
            "(SELECT 'hit' FROM {c} c2 WHERE c2.id = 1 AND c2.ssn LIKE '{g}%') RETURNING name"
        ],
    ),
    (
        "equality",
        "ps",
        ("1", "9"),
        [
            "INSERT INTO {c} (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET "
            "name = excluded.name WHERE EXISTS (SELECT 1 FROM {c} c2 WHERE c2.id = 1 "
            "AND substr(c2.ssn, 1, 1) = '{g}')"
        ],
    ),
    (
        "deny",
        "ps",
        ("1", "9"),
        [
            "INSERT INTO {p} (id, customer_id) VALUES (100, 1) RETURNING "
            "(SELECT id FROM {c} WHERE id = 1 AND ssn LIKE '{g}%')"
        ],
    ),
    (
        "deny",
        "p",
        ("1", "9"),
        [
            "INSERT INTO {p} (id, customer_id) VALUES (100, 1) RETURNING "
            "(SELECT 10 / (ascii(ssn) - ascii('{g}')) FROM {c} WHERE id = 1)"
        ],
    ),
    (
        "deny",
        "s",
        ("1", "9"),
        [
            "INSERT INTO {p} (id, customer_id) VALUES (100, 1) RETURNING "
            "(SELECT 10 / (unicode(ssn) - unicode('{g}')) FROM {c} WHERE id = 1)"
        ],
    ),
    (  # (Python's sqlite3 commits a WITH ... INSERT at once: PostgreSQL only)
        "equality",
        "p",
        ("1", "9"),
        [
            "WITH x AS (SELECT id FROM {c} WHERE id = 1 AND ssn LIKE '{g}%') "
            "INSERT INTO {p} (id, customer_id) SELECT 200 + id, id FROM x",
            "SELECT count(*) FROM {p}",
        ],
    ),
    (
        "deny",
        "m",
        ("1", "9"),
        [
            "INSERT INTO {c} (id, name) VALUES (1, 'x') ON DUPLICATE KEY UPDATE "
            "name = IF(ssn LIKE '{g}%', 'a', name)"
        ],
    ),
    (
        "equality",
        "m",
        ("1", "9"),
        [
            "INSERT INTO {c} (id, name) VALUES (1, 'x') ON DUPLICATE KEY UPDATE name = "
            "COALESCE((SELECT 'hit' FROM {p} p WHERE p.id = 1 AND ssn LIKE '{g}%'), name)"
        ],
    ),
    (
        "deny",
        "m",
        ("1", "9"),
        [
            "INSERT INTO {c} (id, name) SELECT 1, 'x' FROM {p} s WHERE s.id = 1 "
            "ON DUPLICATE KEY UPDATE name = IF(VALUES(name) = 'x' AND ssn LIKE '{g}%', 'a', name)"
        ],
    ),
    (
        "deny",
        "m",
        ("1", "9"),
        [
            "INSERT INTO {p} (id, customer_id) VALUES (100, 1) RETURNING "
            "(SELECT id FROM {c} WHERE id = 1 AND ssn LIKE '{g}%')"
        ],
    ),
    # 2. MySQL's UPDATE / DELETE ... ORDER BY masked LIMIT: picks by the order
    (
        "deny",
        "m",
        ("2", "0"),
        [
            "INSERT INTO {c} (id, name, ssn) VALUES (99, 'probe', '{g}')",
            "DELETE FROM {c} WHERE id IN (1, 99) ORDER BY ssn LIMIT 1",
            "SELECT id FROM {c} WHERE id IN (1, 99) ORDER BY id",
        ],
    ),
    (
        "equality",
        "m",
        ("2", "0"),
        [
            "INSERT INTO {c} (id, name, ssn) VALUES (99, 'probe', '{g}')",
            "UPDATE {c} SET name = 'lo' WHERE id IN (1, 99) ORDER BY ssn DESC, id LIMIT 1",
            "SELECT id, name FROM {c} WHERE id IN (1, 99) ORDER BY id",
        ],
    ),
    (
        "equality",
        "m",
        ("2", "0"),
        [
            "INSERT INTO {c} (id, name, ssn) VALUES (99, 'probe', '{g}')",
            "UPDATE {c} SET name = 'lo' WHERE id IN (1, 99) ORDER BY concat(ssn, '') LIMIT 1",
            "SELECT id, name FROM {c} WHERE id IN (1, 99) ORDER BY id",
        ],
    ),
    # 3. MySQL compares a string with a number column as numbers (the leading digits)
    ("equality", "m", ("123", "124"), ["SELECT id FROM {c} WHERE ssn IN (SELECT {g})"]),
    (
        "equality",
        "m",
        ("123", "124"),
        ["SELECT id FROM {c} WHERE ssn = (SELECT x FROM (SELECT {g} AS x) t)"],
    ),
    (
        "equality",
        "m",
        ("123", "124"),
        ["SELECT id FROM {c} WHERE ssn IN (SELECT 0 UNION ALL SELECT {g})"],
    ),
    (
        "equality",
        "m",
        ("123", "124"),
        ["WITH w AS (SELECT {g} AS x) SELECT id FROM {c} WHERE ssn IN (SELECT x FROM w)"],
    ),
    (
        "equality",
        "m",
        ("123", "124"),
        ["SELECT c.id FROM {c} c NATURAL JOIN (SELECT {g} AS ssn) t"],
    ),
    (
        "equality",
        "m",
        ("123", "124"),
        ["SELECT c.id FROM {c} c JOIN (SELECT 1 AS id, {g} AS ssn) t USING (id, ssn)"],
    ),
    (
        "equality",
        "m",
        ("123", "124"),
        ["SELECT c.id FROM {c} c JOIN (SELECT {g} AS x) t ON c.ssn = t.x"],
    ),
    (
        "equality",
        "m",
        ("123", "124"),
        [
            "SELECT c.id FROM {c} c, JSON_TABLE('[{g}]', '$[*]' COLUMNS (x INT PATH '$')) j "
            "WHERE c.ssn = j.x"
        ],
    ),
    (
        "equality",
        "m",
        ("123", "124"),
        ["SELECT id FROM {c} WHERE ssn = ANY (SELECT {g})"],
    ),
]


def _observe(conn: Any, shop: Shop, statements: list[str], guess: str) -> list[Any]:
    """What a caller sees of ``statements`` with ``guess``: each one's rows
    and row count, or its error class; rolled back after."""
    seen: list[Any] = []
    for sql in statements:
        cur = conn.cursor()
        try:
            cur.execute(shop.sql(sql.replace("{g}", guess)))
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            seen.append((cur.rowcount, rows))
        except Exception as exc:
            seen.append(type(exc).__name__)
    conn.rollback()
    return seen


@pytest.mark.parametrize("mode", ["deny", "equality"])
def test_write_clauses_and_mysql_numbers_answer_no_guess(
    backend: Backend, shop: Shop, mode: str
) -> None:
    """INSERT's ON CONFLICT / ON DUPLICATE KEY UPDATE / RETURNING / WITH,
    MySQL's UPDATE / DELETE ... ORDER BY ... LIMIT and MySQL's numeric
    comparisons through columns: whatever the agent writes, a right and a
    wrong guess look the same to it; they differ for the compliance identity."""
    probes = [
        (g, s) for m, d, g, s in PROBES if CODE[backend.name] in d and (m == mode or mode == "deny")
    ]
    assert probes
    conn = _connect(backend, mode)
    dull: list[Any] = []  # probes that are no oracle on this server: the test is void
    leaks: list[Any] = []
    try:
        for (right, wrong), statements in probes:
            with guardeddb.identity(AUDITOR):
                oracle = [_observe(conn, shop, statements, g) for g in (right, wrong)]
            if oracle[0] == oracle[1]:
                dull.append((statements, oracle))
            with guardeddb.identity(AGENT):
                seen = [_observe(conn, shop, statements, g) for g in (right, wrong)]
            if seen[0] != seen[1] or any(s in repr(seen) for s in SSNS):
                leaks.append((statements, seen))
    finally:
        conn.close()
    assert not dull, dull
    assert not leaks, f"{len(leaks)} of {len(probes)} probes answer the guess: {leaks}"


def test_plain_upserts_returning_and_text_comparisons_still_run(
    backend: Backend, shop: Shop
) -> None:
    """What the fixes above leave open: an upsert taking the proposed row,
    RETURNING the masked column as itself (masked), MySQL's UPDATE ...
    ORDER BY another column LIMIT, and on MySQL equality with provable text
    (a string subquery, a column under the same rule, JOIN USING on it)."""
    code = CODE[backend.name]
    cases: list[tuple[str, str, str, Any]] = [
        (
            "deny",
            "ps",
            "INSERT INTO {c} (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE "
            "SET name = excluded.name RETURNING id, name, ssn",
            [(1, "x", "[REDACTED]")],
        ),
        (
            "equality",
            "ps",
            "INSERT INTO {c} (id, name) VALUES (2, 'y') ON CONFLICT (id) DO UPDATE "
            "SET name = excluded.name WHERE {c}.ssn = '234-56-7891' RETURNING id",
            [(2,)],
        ),
        (
            "deny",
            "p",
            "WITH x AS (SELECT id FROM {c} WHERE name LIKE 'Ada%') "
            "INSERT INTO {p} (id, customer_id) SELECT 200 + id, id FROM x RETURNING id",
            [(201,)],
        ),
        ("deny", "pm", "INSERT INTO {p} (id, customer_id) VALUES (7, 1) RETURNING id", [(7,)]),
        (
            "deny",
            "m",
            "INSERT INTO {c} (id, name) VALUES (1, 'x') ON DUPLICATE KEY UPDATE "
            "name = VALUES(name)",
            2,
        ),
        (
            "deny",
            "m",
            "UPDATE {c} SET name = 'lo' WHERE id IN (1, 2) ORDER BY id DESC LIMIT 1",
            1,
        ),
        ("deny", "m", "DELETE FROM {p} WHERE id > 0 ORDER BY amount LIMIT 1", 1),
        (
            "equality",
            "m",
            "SELECT a.id FROM {c} a JOIN {c} b USING (ssn) ORDER BY a.id",
            [(1,), (2,), (3,)],
        ),
        ("equality", "m", "SELECT id FROM {c} WHERE ssn IN (SELECT '123-45-6789')", [(1,)]),
        (
            "equality",
            "m",
            "SELECT id FROM {c} WHERE ssn = (SELECT ssn FROM {c} WHERE id = 2)",
            [(2,)],
        ),
    ]
    ran = 0
    for mode, dialects, sql, expected in cases:
        if code not in dialects:
            continue
        conn = _connect(backend, mode)
        try:
            with guardeddb.identity(AGENT):
                cur = conn.cursor()
                cur.execute(shop.sql(sql))
                got = [tuple(r) for r in cur.fetchall()] if cur.description else cur.rowcount
                conn.rollback()
        finally:
            conn.close()
        assert got == expected, (sql, got)
        ran += 1
    assert ran >= 2
