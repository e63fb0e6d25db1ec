"""Attacks on the analysis shared by statement shape (#15), as failing tests.

Each test sends statements through a guarded connection and judges by what
the server holds or what the caller saw, and shows with ``fresh`` (a cold
analysis) that the text on its own would have been refused. The tests are
marked ``xfail(strict=True)``: they pass once the product is fixed.

Tests whose reason starts with "pre-existing" are not caused by #15: a cold
analysis is fooled the same way. They are here because the attack on the
shape found them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity
from guardeddb.sql.analysis import analyze, fresh

from .fix_db import PERMISSIVE, Backend

_DIALECT = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}


def test_a_string_naming_guardeddbs_own_state_is_refused_in_every_text_of_a_shape(
    backend: Backend, table: str
) -> None:
    """Attack: two UPDATEs that set ``email`` to a plain string teach guardeddb
    the shape ``UPDATE t SET email = <str> WHERE id = <n>``; the third sets it to
    ``'DELETE FROM guardeddb_audit'`` (letters, spaces and ``_``: a plain string).

    Impact: a kernel refusal, which holds "under every policy" (a string
    naming guardeddb's own state is SQL some function or job could run later),
    is skipped: the row is written. A cold analysis of the same text refuses it.

    Root cause: ``classify.kernel_refusal`` reads the values of STRING tokens
    (``"guardeddb_" in tok.text``), but ``shape.py`` takes plain strings out of
    the shape as values "no fact can read", and ``analysis._shared`` copies the
    first text's statements (``refused=None``) to every later text of the shape.
    The one-time check compares the first text with placeholders, never the
    later text's own strings.
    """
    payload = f"UPDATE {table} SET email = 'DELETE FROM guardeddb_audit' WHERE id = 3"
    cold = fresh(payload, _DIALECT[backend.name])
    assert cold.statements[0].refused  # the text on its own: refused under every policy
    conn = guardeddb.wrap(backend.connect_raw(), policy=PERMISSIVE)
    blocked = False
    try:
        cur = conn.cursor()
        cur.execute(f"UPDATE {table} SET email = 'ada2' WHERE id = 1")
        cur.execute(f"UPDATE {table} SET email = 'grace2' WHERE id = 2")
        try:
            cur.execute(payload)
        except guardeddb.QueryBlocked:
            blocked = True
        conn.commit()
    finally:
        conn.close()
    rows = dict(backend.rows(f"SELECT id, email FROM {table} ORDER BY id"))
    assert rows[3] == "linus@example.com", rows
    assert blocked


def test_a_select_comparing_with_guardeddbs_own_table_name_is_refused_after_a_shape(
    backend: Backend, table: str
) -> None:
    """Attack: the same as above with a read, so no policy rule about writes is
    involved: ``SELECT ... WHERE email IN ('a', 'b')`` twice, then with
    ``'guardeddb_approvals'`` in the list.

    Impact: the caller gets rows where a cold analysis raises QueryBlocked.

    Root cause: as above (``kernel_refusal`` reads strings; IN lists after a
    column are taken out of the shape by ``shape._group``).
    """
    dialect = _DIALECT[backend.name]
    base = f"SELECT id FROM {table} WHERE email IN ({{}}, 'x') ORDER BY id"
    payload = base.format("'guardeddb_approvals'")
    assert fresh(payload, dialect).statements[0].refused
    conn = guardeddb.wrap(backend.connect_raw(), policy=PERMISSIVE)
    try:
        cur = conn.cursor()
        for value in ("'ada@example.com'", "'grace@example.com'"):
            cur.execute(base.format(value))
            cur.fetchall()
        with pytest.raises(guardeddb.QueryBlocked):
            cur.execute(payload)
    finally:
        conn.close()


@pytest.mark.parametrize("dialect", ["sqlite", "postgres", "mysql"])
def test_the_shared_analysis_keeps_a_kernel_refusal_of_a_later_text(dialect: str) -> None:
    """The analysis level of the findings above, per dialect: after two texts
    of one shape, ``analyze`` of a third returns the first text's facts
    (``refused=None``) where ``fresh`` says ``refused``.

    Root cause: ``analysis._shared`` (copies ``t.statements``), with
    ``classify.kernel_refusal`` reading STRING token values.
    """
    table = f"attackshape_{uuid.uuid4().hex[:10]}"
    base = f"INSERT INTO {table} (id, note) VALUES ({{}}, {{}})"
    analyze(base.format(1, "'a'"), dialect)
    analyze(base.format(2, "'b'"), dialect)
    payload = base.format(3, "'x guardeddb_audit_head y'")
    got, cold = analyze(payload, dialect), fresh(payload, dialect)
    assert cold.statements[0].refused
    assert got.statements[0].refused == cold.statements[0].refused


# --- pre-existing (not caused by #15) ----------------------------------------


def test_sqlite_double_quoted_string_tautology_is_no_where() -> None:
    """Attack: ``DELETE FROM t WHERE "nocol" = 'nocol'`` under ``agent-safe``.
    SQLite (double-quoted string literals on, the default build) reads
    ``"nocol"`` as the string 'nocol' when no column has that name: the
    condition holds for every row. The shape makes it cheap to probe (texts
    ``"nocol" = 'x'`` and ``= 'nocol'`` share one analysis), but a cold
    analysis is fooled the same way.

    Impact: every row deleted although ``write-needs-where`` refuses
    ``DELETE ... WHERE 1=1``.

    Root cause: ``classify.is_tautology``/``_restricts`` take a quoted
    identifier for a column (sqlglot's reading); nothing turns SQLite's DQS
    off (``SQLITE_DBCONFIG_DQS_DML``) or refuses a name that is no column.
    """
    raw = sqlite3.connect(":memory:")
    raw.execute("CREATE TABLE attackshape_dqs (id INTEGER PRIMARY KEY, v TEXT)")
    raw.executemany("INSERT INTO attackshape_dqs VALUES (?, ?)", [(i, f"v{i}") for i in range(5)])
    raw.commit()
    conn = guardeddb.wrap(raw, policy="agent-safe")
    try:
        cur = conn.cursor()
        with pytest.raises(guardeddb.QueryBlocked):
            cur.execute("DELETE FROM attackshape_dqs WHERE 1=1")
        with contextlib.suppress(guardeddb.QueryBlocked):
            cur.execute("DELETE FROM attackshape_dqs WHERE \"nocol\" = 'nocol'")
        conn.commit()
        left = raw.execute("SELECT count(*) FROM attackshape_dqs").fetchone()[0]
    finally:
        conn.close()
    assert left == 5


def test_sqlite_parenthesized_order_by_position_is_judged_like_a_position() -> None:
    """Attack: ``SELECT id, ssn FROM p ORDER BY (2)`` for an identity whose
    ``ssn`` is masked with ``filter: deny``. ``ORDER BY 2`` and ``ORDER BY +2``
    are refused; SQLite reads ``(2)`` as the same position (sqlglot: a Paren).
    ``ORDER BY id IN (7), (2)`` even takes the ``(2)`` out of the shape.

    Impact: rows come back in the order of the masked values (an oracle the
    filter exists to close).

    Root cause: ``masking/filters.py`` ``_Judge.ordinals`` accepts only an
    ``exp.Literal`` term, not one in parentheses.
    """
    raw = sqlite3.connect(":memory:")
    raw.execute("CREATE TABLE attackshape_p (id INTEGER PRIMARY KEY, ssn TEXT)")
    raw.executemany("INSERT INTO attackshape_p VALUES (?, ?)", [(1, "900"), (2, "100"), (3, "500")])
    raw.commit()
    policy: dict[str, Any] = {
        "version": 1,
        "extends": [],
        "masking": {
            "rules": [{"columns": ["attackshape_p.ssn"], "operator": "redact", "filter": "deny"}]
        },
    }
    conn = guardeddb.wrap(raw, policy=policy, identity=Identity(user="a", agent="bot"))
    try:
        cur = conn.cursor()
        with pytest.raises(guardeddb.QueryBlocked):
            cur.execute("SELECT id, ssn FROM attackshape_p ORDER BY 2")
        order: list[int] = []
        try:
            cur.execute("SELECT id, ssn FROM attackshape_p ORDER BY (2)")
            order = [r[0] for r in cur.fetchall()]
        except guardeddb.QueryBlocked:
            pass
    finally:
        conn.close()
    assert order != [2, 3, 1]  # ids sorted by the masked ssn


@pytest.mark.pg
def test_guardeddbs_own_table_cannot_be_read_through_a_values_string(pg_backend: Backend) -> None:
    """Attack (PostgreSQL, a policy that does not list query_to_xml, as the
    kernel refusal is meant to hold under every policy):
    ``SELECT query_to_xml(v.q, true, false, '') FROM (VALUES ('TABLE s.t1')) AS v(q)``
    twice with harmless tables, then with ``'TABLE s.guardeddb_audit'``: a
    plain string (letters, ``.``, ``_``, space) in a VALUES row, so it is taken
    out of the shape.

    Impact: the caller reads the rows of a table named like guardeddb's audit
    sink; a cold analysis refuses the text (``guardeddb_audit is guardeddb's
    own state``), the shared one does not.

    Root cause: ``classify.kernel_refusal`` refuses own-table names inside
    strings, but ``shape.py`` treats VALUES strings as values no fact reads and
    ``analysis._shared`` hands the first text's facts (no refusal) to the third.
    """
    import psycopg

    schema = f"attackshape_{uuid.uuid4().hex[:10]}"
    setup = psycopg.connect(pg_backend.url)
    try:
        setup.execute(f"CREATE SCHEMA {schema}")
        setup.execute(f"CREATE TABLE {schema}.guardeddb_audit (id int, secret text)")
        setup.execute(f"INSERT INTO {schema}.guardeddb_audit VALUES (1, 'audit-secret')")
        setup.execute(f"CREATE TABLE {schema}.t1 (id int)")
        setup.execute(f"CREATE TABLE {schema}.t2 (id int)")
        setup.commit()
        base = "SELECT query_to_xml(v.q, true, false, '') FROM (VALUES ({})) AS v(q)"
        payload = base.format(f"'TABLE {schema}.guardeddb_audit'")
        assert fresh(payload, "postgres").statements[0].refused
        conn = guardeddb.wrap(pg_backend.connect_raw(), policy=PERMISSIVE)
        seen = ""
        try:
            cur = conn.cursor()
            for name in ("t1", "t2"):
                cur.execute(base.format(f"'TABLE {schema}.{name}'"))
                cur.fetchall()
            try:
                cur.execute(payload)
                seen = str(cur.fetchall())
            except guardeddb.QueryBlocked:
                pass
        finally:
            conn.close()
        assert "audit-secret" not in seen
    finally:
        setup.rollback()
        setup.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        setup.commit()
        setup.close()
