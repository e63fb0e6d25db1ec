"""Statements that differ only in literal values share one analysis (#15).

The property that matters: whatever the cache holds, the analysis of a text
says what a cold analysis of that text says. Hypothesis varies the literals
of statement templates (values chosen to collide with each other, with
column names and with falsy constants), analyzes them in any order through
the caches and compares with ``fresh``. On the databases, decisions that
read the text itself (``sql_regex``) and masking hold across a shape.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardeddb
from guardeddb import Identity
from guardeddb.sql import analysis as analysis_mod
from guardeddb.sql.analysis import _same_facts, analyze, cache_counts, fresh
from guardeddb.sql.shape import shape_of

from .fix_db import Backend

DIALECTS = ["sqlite", "postgres", "mysql"]

# {} are literal slots. Some never share a shape (constants compared with
# constants, patterns, function arguments, positions): the property holds
# for them all the same.
TEMPLATES = [
    "SELECT id, name FROM users WHERE id = {} AND name <> {}",
    "SELECT id FROM users u WHERE u.id = {} OR u.name = {}",
    "DELETE FROM users WHERE id = {}",
    "DELETE FROM users WHERE {} = {}",
    "DELETE FROM users WHERE id = {} OR {} = {}",
    "UPDATE users SET name = {} WHERE id IN ({}, {})",
    "UPDATE users SET name = {} WHERE id NOT IN ({}, {}) RETURNING id",
    "INSERT INTO users (id, name) VALUES ({}, {}), ({}, {})",
    "SELECT * FROM users WHERE id >= {} ORDER BY id LIMIT {} OFFSET {}",
    "SELECT * FROM users WHERE name LIKE {}",
    "SELECT * FROM users WHERE id = {} AND {} = {}",
    "SELECT id FROM users ORDER BY {}",
    "SELECT upper({}) FROM users WHERE id = {}",
    "SELECT id FROM users WHERE (id = {}) AND name = {};",
    "UPDATE users SET name = {} WHERE {} IN ({}, {})",
    "SELECT id FROM users WHERE id = {} -- and name = {}",
    "SELECT id FROM users WHERE id = {} AND name = {} UNION SELECT id FROM users WHERE id < {}",
]

_WORDS = st.sampled_from(["", "0", "1", "id", "name", "users", "a b", "x@y.z", "2020-01-01 10:00"])
LITERALS = st.one_of(
    st.integers(min_value=0, max_value=3).map(str),
    st.integers(min_value=0, max_value=10**12).map(str),
    _WORDS.map(lambda w: f"'{w}'"),
    st.text(alphabet="abcXYZ019 _.,:@+-/", max_size=12).map(lambda w: f"'{w}'"),
    st.sampled_from(["1.5", "0.0", "TRUE", "NULL", "'it''s'", "'%'", "'a\\'"]),
)


def _fill(template: str, values: list[str]) -> str:
    return template.format(*values[: template.count("{}")])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(TEMPLATES),
    dialect=st.sampled_from(DIALECTS),
    runs=st.lists(st.lists(LITERALS, min_size=5, max_size=5), min_size=2, max_size=5),
)
def test_every_text_is_analyzed_as_a_cold_analysis_would(
    template: str, dialect: str, runs: list[list[str]]
) -> None:
    """Through the text and shape caches, in any order, each text's facts,
    sanitized text, summary, fingerprint and placeholders are its own."""
    for values in runs:
        text = _fill(template, values)
        got, cold = analyze(text, dialect), fresh(text, dialect)
        assert got.text == text
        assert _same_facts(got.statements, cold.statements), text
        assert (got.sanitized, got.summary, got.fingerprint) == (
            cold.sanitized,
            cold.summary,
            cold.fingerprint,
        ), text
        assert got.placeholders == cold.placeholders
        assert got.procedure == cold.procedure


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_statement_with_new_literals_costs_no_parse(dialect: str) -> None:
    """The third text of a shape is a copy of the first: no full analysis."""
    base = "SELECT id, email FROM shape_users WHERE id = {} AND email <> 'x{}'"
    analyze(base.format(1, 1), dialect)
    analyze(base.format(2, 2), dialect)  # the shape is checked here
    before = cache_counts()
    third = analyze(base.format(3, 3), dialect)
    after = cache_counts()
    assert after["full"] == before["full"]
    assert after["shape"] == before["shape"] + 1
    assert third.shape is not None and third.key is third.shape


@pytest.mark.parametrize(
    "text",
    [
        "DELETE FROM t WHERE 1 = 1",  # constants: a tautology depends on them
        "SELECT * FROM t WHERE x LIKE '%'",  # patterns
        "SELECT set_config('a', 'b', false)",  # arguments
        "SELECT * FROM t ORDER BY 2",  # positions
        "SET search_path = 'x'",  # settings
        "SELECT 1; DELETE FROM t WHERE id = 1",  # more than one statement
        "SELECT * FROM t WHERE x = E'a'",  # escapes
        "SELECT * FROM t WHERE x = 'a\\' OR 1=1 -- '",  # backslashes
        "SELECT * FROM t WHERE x = '%s'",  # client-side binding markers
        "SELECT * FROM t WHERE x::int4 = 1",  # a cast's type name is no column
        "SELECT * FROM t WHERE INTERVAL '1' DAY = 1",
        "DELETE FROM t WHERE x COLLATE \"C\" = 'a'",
        "SELECT * FROM t WHERE x = 'Müller'",  # non-ASCII
        "SELECT * FROM t WHERE x = 5 + 1",  # an expression, not a value
        "SELECT * FROM t WHERE x = -5",
        "SELECT * FROM t WHERE x = 'a' 'b'",  # adjacent strings
        "SELECT * FROM t WHERE x = 1\x00",
    ],
)
def test_literals_a_fact_may_read_stay_in_the_shape(text: str) -> None:
    """Nothing is taken out where a value can change a fact, or where its
    spelling could be read otherwise: these texts have no shared shape."""
    for dialect in DIALECTS:
        try:
            tokens = analysis_mod._tokenize(dialect, text)
        except Exception:  # not tokenizable in this dialect: analyzed whole
            continue
        assert shape_of(text, tokens) is None, dialect


def test_a_refused_shape_stays_unshared() -> None:
    """A shape found unshareable is remembered so: its texts are analyzed
    each on its own."""
    key = "SELECT id FROM refused_users WHERE id = \x000"
    analysis_mod._SHAPES.setdefault("sqlite", {})[key] = None
    a = analyze("SELECT id FROM refused_users WHERE id = 91", "sqlite")
    b = analyze("SELECT id FROM refused_users WHERE id = 92", "sqlite")
    c = analyze("SELECT id FROM refused_users WHERE id = 93", "sqlite")
    assert a.shape is None and b.shape is None and c.shape is None


# --- on the databases ------------------------------------------------------


def _connect(backend: Backend, policy: dict[str, Any], ident: Identity | None = None) -> Any:
    return guardeddb.wrap(backend.connect_raw(), policy=policy, identity=ident)


def test_a_text_rule_is_applied_to_every_text_of_a_shape(backend: Backend, table: str) -> None:
    """A ``sql_regex`` rule reads the text: after two allowed UPDATEs of one
    shape, a third with a forbidden value is blocked and the row is as it was."""
    policy = {
        "version": 1,
        "extends": [],
        "on_unparsed": "allow",
        "rules": [{"id": "no-forbidden", "match": {"sql_regex": "forbidden"}, "action": "block"}],
    }
    conn = _connect(backend, policy)
    try:
        cur = conn.cursor()
        cur.execute(f"UPDATE {table} SET name = 'Ada2' WHERE id = 1")
        cur.execute(f"UPDATE {table} SET name = 'Grace2' WHERE id = 2")
        with pytest.raises(guardeddb.QueryBlocked) as info:
            cur.execute(f"UPDATE {table} SET name = 'forbidden' WHERE id = 3")
        assert info.value.decision.rule_id == "no-forbidden"
        conn.commit()
    finally:
        conn.close()
    rows = dict(backend.rows(f"SELECT id, name FROM {table} ORDER BY id"))
    assert rows == {1: "Ada2", 2: "Grace2", 3: "Linus"}


def test_every_text_of_a_shape_is_masked(backend: Backend, table: str) -> None:
    """A masked identity reading one row at a time, a new literal each time,
    sees every email masked; an identity that may unmask sees them whole."""
    policy = {
        "version": 1,
        "extends": [],
        "on_unparsed": "allow",
        "masking": {
            "rules": [{"columns": ["*.email"], "operator": "redact"}],
            "unmask": {"roles": ["compliance"]},
        },
    }
    agent = Identity(user="a@example.com", agent="bot")
    auditor = Identity(user="c@example.com", roles=frozenset({"compliance"}))
    emails = {e for (e,) in backend.rows(f"SELECT email FROM {table}")}
    for ident, masked in ((agent, True), (auditor, False), (agent, True)):
        conn = _connect(backend, policy, ident)
        try:
            cur = conn.cursor()
            seen: list[str] = []
            for i in (1, 2, 3):
                cur.execute(f"SELECT id, email FROM {table} WHERE id = {i}")
                seen.extend(email for _id, email in cur.fetchall())
        finally:
            conn.close()
        assert len(seen) == 3
        assert (not emails & set(seen)) if masked else set(seen) == emails


def test_the_cache_metric_reports_shape_hits() -> None:
    """``guardeddb.analysis.cache`` counts new texts by how they were analyzed."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    raw = sqlite3.connect(":memory:")
    raw.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, v TEXT)")
    conn = guardeddb.wrap(raw, meter_provider=provider)
    try:
        cur = conn.cursor()
        for i in range(5):
            cur.execute(f"SELECT v FROM m WHERE id = {i + 100}")
            cur.fetchall()
    finally:
        conn.close()
    data: Any = reader.get_metrics_data()
    points = {
        p.attributes["guardeddb.analysis.outcome"]: p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "guardeddb.analysis.cache"
        for p in m.data.data_points
        if p.attributes is not None
    }
    assert points["shape"] >= 3
    assert points["full"] >= 1
    provider.shutdown()
