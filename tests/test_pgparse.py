"""PostgreSQL's own parser (pglast) as a second opinion: no parser differential.

Where sqlglot and PostgreSQL read a text differently, the text is refused.
Judged three ways: the analysis of hand-written differentials, what happened
on the real server when a guarded connection was sent them, and Hypothesis
mutations whose every allowed text PostgreSQL reads as no more than
guardeddb decided on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardeddb
from guardeddb import QueryBlocked, load_policy
from guardeddb.policy import preset
from guardeddb.sql import analysis, pgparse
from guardeddb.sql.analysis import analyze

from .corpus import CORPUS
from .fix_db import Backend

needs_pglast = pytest.mark.skipif(
    not pgparse.available(),
    reason="pglast is not installed (pip install 'guardeddb[pgparse]'; the test extra has it)",
)
pytestmark = needs_pglast

READONLY: dict[str, Any] = {"version": 1, "extends": ["readonly"]}
#: agent-safe, but reads only: what guardeddb allows must not change the server
#: (and the server's session is not read-only: the analysis is the guard).
READS: dict[str, Any] = {
    "version": 1,
    "extends": ["agent-safe"],
    "rules": [{"id": "reads-only", "match": {"statements": ["write", "ddl"]}, "action": "block"}],
}


def _fresh(text: str) -> analysis.Analysis:
    """An analysis computed now, not one an earlier test cached."""
    analysis.cache_for("postgres").pop(text, None)
    return analyze(text, "postgres")


def _pg_statements(text: str) -> list[dict[str, Any]] | None:
    """PostgreSQL's statements for ``text`` as pglast's JSON, None when it does not parse."""
    from pglast import parser

    try:
        tree = json.loads(parser.parse_sql_json(pgparse._server_text(text)))
    except parser.ParseError:
        return None
    return [raw["stmt"] for raw in tree.get("stmts", [])]


def _node_types(value: Any) -> Iterator[str]:
    """Every node type named anywhere in a pglast JSON tree."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key[:1].isupper():
                yield key
            yield from _node_types(child)
    elif isinstance(value, list):
        for item in value:
            yield from _node_types(item)


def _calls(value: Any) -> Iterator[tuple[tuple[str, ...], int, bool]]:
    """Every function PostgreSQL calls by name: (name parts, argument count, f(*))."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "FuncCall" and child.get("funcformat") != "COERCE_SQL_SYNTAX":
                names = tuple(n["String"]["sval"] for n in child["funcname"])
                yield names, len(child.get("args", ())), bool(child.get("agg_star"))
            yield from _calls(child)
    elif isinstance(value, list):
        for item in value:
            yield from _calls(item)


# What an allowed text may be, statement by statement, in PostgreSQL's words.
_ROOT_KINDS = {
    "SelectStmt": {"select"},
    "InsertStmt": {"insert", "upsert"},
    "UpdateStmt": {"update"},
    "DeleteStmt": {"delete"},
    "MergeStmt": {"merge"},
    "VariableShowStmt": {"show"},
    "CopyStmt": {"copy"},
    "ConstraintsSetStmt": {"set"},
    "CallStmt": {"call"},
    "TransactionStmt": {"begin", "commit", "rollback", "savepoint", "release"},
    "VariableSetStmt": {"set", "set_role", "set_session_authorization"},
}
_NESTED_KINDS = {
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
}


def _hidden_from_guardeddb(text: str) -> str | None:
    """What PostgreSQL would run that guardeddb's allowing analysis did not name."""
    result = analyze(text, "postgres")
    pg = _pg_statements(text)
    if pg is None:
        return "PostgreSQL cannot parse it, guardeddb allowed it"
    if len(pg) != len(result.statements):
        return f"PostgreSQL sees {len(pg)} statements, guardeddb {len(result.statements)}"
    for wrapped, stmt in zip(pg, result.statements, strict=True):
        ((root, _),) = wrapped.items()
        if stmt.kind not in _ROOT_KINDS.get(root, set()):
            return f"PostgreSQL runs a {root}, guardeddb allowed a {stmt.kind}"
        types = list(_node_types(wrapped))
        nested = {_NESTED_KINDS[t] for t in types[1:] if t in _NESTED_KINDS}
        if not nested <= stmt.kinds:
            return f"PostgreSQL runs a nested {nested - stmt.kinds}"
        for names, nargs, star in _calls(wrapped):
            if not pgparse._function_seen(names, nargs, star, stmt.functions):
                return f"PostgreSQL calls {names}, guardeddb saw {sorted(stmt.functions)}"
    return None


def _allowed(text: str, policy: str | dict[str, Any] = "agent-safe") -> bool:
    judge = preset(policy) if isinstance(policy, str) else load_policy(policy)
    return judge.check(text, None, "postgres").action == "allow"


# --- the analysis of known differentials ------------------------------------

# Texts whose statement boundaries, strings or names depend on tokenizer
# details: PostgreSQL nests block comments, has dollar quotes with tags,
# E'' escapes, U& escapes in identifiers and strings, and $ inside names.
DIFFERENTIALS = [
    "SELECT E'\\'' ; DROP TABLE {t}; --'",
    "SELECT e'\\\\' ; DROP TABLE {t}; --'",
    "SELECT '\\'; DROP TABLE {t}; --'",
    "SELECT $$;DROP TABLE {t};$$",
    "SELECT $a$ $$ ; DROP TABLE {t}; $a$",
    "SELECT $_$;DROP TABLE {t};$_$",
    "SELECT $a$b$a$; DROP TABLE {t}",
    "SELECT x$$ FROM {t}; DROP TABLE {t}; --$$",
    "SELECT 1 AS a$$; DROP TABLE {t}; --$$",
    "SELECT 1 /* /* */ ; DROP TABLE {t}; */",
    "SELECT 1 /* /* */ */ ; DROP TABLE {t}",
    "SELECT 1 /* /* */ DROP */",
    "SELECT 1 /* $$ */ ; DROP TABLE {t}; /* $$ */",
    "SELECT $$ /* $$ ; DROP TABLE {t}; /* */",
    "SELECT '' /* ' */ ; DROP TABLE {t}; -- '",
    "SELECT U&'!0027' UESCAPE '!' ; DROP TABLE {t}; --'",
    "SELECT U&'\\0027' ; INSERT INTO {t} (id) VALUES (99); --'",
    "SELECT 1 -- ; DROP TABLE {t}\n; INSERT INTO {t} (id) VALUES (99)",
    "SELECT 1\u2028; DROP TABLE {t}",
    "DROP\u00a0TABLE {t}",
    "WITH d AS (DELETE FROM {t} RETURNING *) SELECT * FROM d",
    "WITH d AS (INSERT INTO {t} (id) VALUES (99) RETURNING *) SELECT * FROM d",
    "SELECT * FROM {t} WHERE name = %s; DROP TABLE {t}",
    "SELECT * FROM {t} WHERE name = '%s; DROP TABLE {t}; --'",
]


@pytest.mark.parametrize("text", DIFFERENTIALS)
def test_a_differential_is_never_allowed_when_postgresql_sees_more(text: str) -> None:
    """Whatever sqlglot made of it, the text is allowed only when PostgreSQL's
    reading of it holds nothing guardeddb did not name."""
    sql = text.format(t="gdb_victim")
    _fresh(sql)
    if _allowed(sql):
        assert _hidden_from_guardeddb(sql) is None, sql
    pg = _pg_statements(sql)
    if pg is not None and any(
        t in ("DropStmt", "InsertStmt", "DeleteStmt") for w in pg for t in _node_types(w)
    ):
        assert not _allowed(sql, READS), sql


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("SELECT U&\"pg\\005fread\\005ffile\"('/etc/hostname')", "pg_read_file"),
        ("SELECT U&\"set\\005fconfig\"('role', 'x', false)", "set_config"),
        ('SELECT * FROM U&"pg\\005fauthid"', "parse error"),  # sqlglot: not understood
        ('SET "role" = x', "sets role"),
        ('SET "session_authorization" = x', "session_authorization"),
        ("SET/**/default_transaction_read_only = off", "default_transaction_read_only"),
        ('SET "default_transaction_read_only" = off', "default_transaction_read_only"),
        ("COPY loot /*STDIN*/ FROM/**/PROGRAM/**/'id'", "program"),
        ("COPY customers TO '/tmp/stdout.csv'", "server file"),
        ("SELECT 1\u2028; DROP TABLE t", "does not parse"),
    ],
)
def test_what_postgresql_reads_differently_is_refused(text: str, reason: str) -> None:
    """Names behind U& escapes or quotes, COPY's real target: refused under
    both presets. The kernel now normalizes most of these itself, so the two
    parsers agree; where they do not, the disagreement is why (unparsed)."""
    result = _fresh(text)
    if result.unparsed is not None and "disagrees" in result.unparsed:
        assert reason.lower() in result.unparsed.lower(), result.unparsed
    else:
        assert pgparse.second_opinion(text, result.statements) is None
    assert not _allowed(text)
    assert not _allowed(text, "readonly")


@pytest.mark.parametrize(
    "text",
    [
        "SELECT * FROM customers WHERE id = %s AND name = %(name)s",
        "SELECT 'x%s' FROM customers WHERE id = %s",
        "SELECT now(), substr('a', 1), length('x'), count(*), coalesce(1, 2)",
        "SELECT extract(year from now()), date_trunc('day', now()), 'x' || 'y'",
        "SELECT mod(5, 2), abs(-1) FROM customers WHERE name SIMILAR TO 'a%%' OR name LIKE %s",
        "INSERT INTO t (id) VALUES (%s) ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id",
        "SELECT count(*) FILTER (WHERE x > 1), row_number() OVER (ORDER BY x) FROM t",
        "SELECT lower(name) FROM customers; SELECT upper(email) FROM orders; SELECT 1",
        "SELECT pg_catalog.lower(name) FROM pg_catalog.pg_class c, s.t",
        "WITH c AS (SELECT 1 AS id) SELECT * FROM c JOIN customers USING (id)",
        "SELECT $$;DROP TABLE t;$$, $a$b$a$",
        "SELECT 1 /* /* nested */ ; DROP TABLE t */",
        "SET application_name = 'x'",
        "BEGIN; SAVEPOINT s; RELEASE SAVEPOINT s; ROLLBACK TO SAVEPOINT s; COMMIT",
        "COPY customers FROM STDIN",
        "COPY (SELECT 1) TO STDOUT",
        "SHOW search_path",
        "SELECT * INTO t2 FROM customers",
    ],
)
def test_where_both_parsers_agree_nothing_changes(text: str) -> None:
    """Placeholders, sqlglot's canonical function names and CTE names do not
    count as disagreements: legitimate traffic is not refused."""
    assert pgparse.second_opinion(text, _fresh(text).statements) is None
    assert _fresh(text).unparsed is None


def test_each_statement_is_compared_with_its_own_facts() -> None:
    """Facts are attributed statement by statement: a function or relation of
    the second statement does not excuse the first."""
    statements = _fresh("SELECT lower(name) FROM customers; SELECT 1").statements
    swapped = (statements[1], statements[0])
    reason = pgparse.second_opinion("SELECT 1; SELECT lower(name) FROM customers", statements)
    # Statement 1 (SELECT 1) needs nothing; statement 2 reads what guardeddb
    # put on its statement 1, not its statement 2.
    assert reason is not None and reason.startswith("statement 2:"), reason
    assert pgparse.second_opinion("SELECT 1; SELECT lower(name) FROM customers", swapped) is None


def test_the_whole_guardrail_corpus_agrees() -> None:
    """Every PostgreSQL case of the guardrail corpus that guardeddb understands
    is read the same way by PostgreSQL, except the one that PostgreSQL cannot
    parse (a no-break space inside a keyword), which is blocked anyway."""
    disagreements = []
    for case in CORPUS:
        if "p" not in case.dialects:
            continue
        sql = case.sql.format(t="gdb_t").replace("?", "%s")
        result = _fresh(sql)
        if result.unparsed and "PostgreSQL parser" in result.unparsed:
            disagreements.append(sql)
            assert case.agent_safe == "block", sql
    assert disagreements == ["DROP\u00a0TABLE gdb_t"]


def test_without_pglast_the_analysis_is_sqlglots_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second opinion is optional: uninstalled, analyses are what they were."""
    text = "SELECT 1\u2028; SELECT 2 -- pglast-off"  # PostgreSQL cannot parse it; sqlglot can
    monkeypatch.setattr(pgparse, "_parser", None)
    assert not pgparse.available()
    assert _fresh(text).unparsed is None
    monkeypatch.undo()
    assert _fresh(text).unparsed is not None


def test_import_guardeddb_does_not_import_pglast() -> None:
    """pglast costs ~30 ms to import: only the first PostgreSQL analysis pays it."""
    import subprocess
    import sys

    code = (
        "import sys, guardeddb, guardeddb.sql.analysis; "
        "assert 'pglast' not in sys.modules, 'imported'; "
        "guardeddb.sql.analysis.analyze('SELECT 1', 'sqlite'); "
        "assert 'pglast' not in sys.modules, 'sqlite'; "
        "guardeddb.sql.analysis.analyze('SELECT 1', 'postgres'); "
        "assert 'pglast' in sys.modules, 'postgres'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Hypothesis: mutations and token soup -----------------------------------

_BASES = [
    case.sql.format(t="gdb_t").replace("?", "%s")
    for case in CORPUS
    if "p" in case.dialects and case.agent_safe == "allow"
] + [
    "SELECT name FROM gdb_t WHERE id = %s",
    "SELECT lower(name) FROM gdb_t",
    "UPDATE gdb_t SET name = 'x' WHERE id = 1",
]
_INSERTS = [
    " ",
    "\n",
    "/* x */",
    "/* /* */",
    "*/",
    "/*",
    " /* /* */ ; DROP TABLE gdb_t; */ ",
    "$$",
    "$a$",
    " $$;DROP TABLE gdb_t;$$ ",
    " $a$ $$ ; DELETE FROM gdb_t; $a$ ",
    "E'\\'",
    " E'\\'';DROP TABLE gdb_t;--' ",
    "'",
    '"',
    'U&"pg\\005fsleep"(1)',
    " U&'\\0027' ",
    "-- ;DROP TABLE gdb_t\n",
    "--",
    ";",
    "; DROP TABLE gdb_t",
    "; INSERT INTO gdb_t (id) VALUES (9)",
    " pg_sleep(1) ",
    " set_config('role', 'x', false) ",
    "x$$",
    "\\",
    "%s",
    "%(n)s",
    "\u00a0",
    "\u2028",
]


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_BASES))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(_INSERTS)) + text[at:]
    return text


_SOUP = [
    *_INSERTS,
    "SELECT",
    "FROM",
    "gdb_t",
    "WHERE",
    "1",
    "=",
    "(",
    ")",
    ",",
    "*",
    "AS",
    "x",
    "DROP",
    "TABLE",
    "INSERT",
    "INTO",
    "VALUES",
    "WITH",
    "DELETE",
    "RETURNING",
    "COPY",
    "TO",
    "STDOUT",
    "PROGRAM",
    "SET",
    "role",
    "pg_read_file",
    "'a'",
    "$1",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(_mutated(), st.lists(st.sampled_from(_SOUP), max_size=14).map(" ".join)))
def test_an_allowed_text_holds_nothing_postgresql_would_run_unseen(text: str) -> None:
    """Whenever agent-safe allows a text, PostgreSQL's own reading of it has
    only the statements, kinds and functions guardeddb decided on."""
    if _allowed(text):
        assert _hidden_from_guardeddb(text) is None, text


# --- on the real server -------------------------------------------------------


@pytest.fixture
def pg_table(pg_backend: Backend) -> Iterator[str]:
    """A fresh ``gdb_pg_*(id, name)`` table with three rows, dropped after."""
    name = f"gdb_pg_{uuid.uuid4().hex[:10]}"
    raw = pg_backend.connect_raw()
    raw.autocommit = True
    raw.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT)")
    raw.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    try:
        yield name
    finally:
        raw.execute(f"DROP TABLE IF EXISTS {name}")
        raw.close()


def _rows(pg_backend: Backend, table: str) -> list[tuple[Any, ...]]:
    with pg_backend.connect_raw() as raw:
        return list(raw.execute(f"SELECT id, name FROM {table} ORDER BY id"))


@pytest.mark.pg
@pytest.mark.parametrize("text", DIFFERENTIALS)
def test_differentials_do_not_change_the_server(
    pg_backend: Backend, pg_table: str, text: str
) -> None:
    """Sent through a guarded connection, no differential drops or changes the
    table: the server's rows are the judge, not guardeddb's decision."""
    before = _rows(pg_backend, pg_table)
    conn = guardeddb.connect(pg_backend.url, policy=READS)
    try:
        cur = conn.cursor()
        sql = text.format(t=pg_table)
        try:
            if "%s" in sql.replace("'%s", ""):
                cur.execute(sql, ("x",))
            else:
                cur.execute(sql)
        except QueryBlocked:
            pass
        except pg_backend.error:
            pass  # the server refused it: nothing ran either
        conn.rollback()
    finally:
        conn.close()
    assert _rows(pg_backend, pg_table) == before


@pytest.mark.pg
def test_escaped_function_names_do_not_run_on_the_server(pg_backend: Backend) -> None:
    """``U&"set\\005fconfig"`` is set_config to PostgreSQL: refused, and the
    session's setting is unchanged; ``pg_terminate_backend`` spelled so kills
    nobody."""
    victim = pg_backend.connect_raw()
    conn = guardeddb.connect(pg_backend.url)
    try:
        pid = victim.info.backend_pid
        cur = conn.cursor()
        for sql in (
            "SELECT U&\"set\\005fconfig\"('application_name', 'gdb_pwned', false)",
            "SELECT U&\"SET\\005FCONFIG\"('application_name', 'gdb_pwned', false)",
            f'SELECT U&"pg\\005fterminate\\005fbackend"({pid})',
            f"SELECT U&\"pg!005fcancel!005fbackend\" UESCAPE '!'({pid})",
        ):
            with pytest.raises(QueryBlocked):
                cur.execute(sql)
            conn.rollback()
        cur.execute("SHOW application_name")
        row = cur.fetchone()
        assert row is not None and row[0] != "gdb_pwned"
        assert victim.execute("SELECT 1").fetchone() == (1,)  # still alive
    finally:
        conn.close()
        victim.close()


@pytest.mark.pg
def test_quoted_settings_do_not_undo_the_read_only_session(pg_backend: Backend) -> None:
    """Under readonly, ``SET "default_transaction_read_only" = off`` and its
    disguises are refused and the server's session stays read-only."""
    conn = guardeddb.connect(pg_backend.url, policy=READONLY)
    try:
        cur = conn.cursor()
        for sql in (
            'SET "default_transaction_read_only" = off',
            "SET/**/default_transaction_read_only = off",
            'SET "transaction_read_only" = off',
            'SET SESSION "default_transaction_read_only" TO off',
        ):
            with pytest.raises(QueryBlocked):
                cur.execute(sql)
            conn.rollback()
        cur.execute("SHOW default_transaction_read_only")
        assert cur.fetchone() == ("on",)
    finally:
        conn.close()


@pytest.mark.pg
def test_copy_to_a_server_file_or_program_does_not_run(pg_backend: Backend, pg_table: str) -> None:
    """COPY's real target, as PostgreSQL reads it: no file is written and no
    program's output is loaded."""
    path = f"/tmp/gdb_{uuid.uuid4().hex}_stdout.csv"
    before = _rows(pg_backend, pg_table)
    conn = guardeddb.connect(pg_backend.url)
    try:
        cur = conn.cursor()
        for sql in (
            f"COPY {pg_table} TO '{path}'",
            f"COPY {pg_table} /*STDOUT*/ TO/**/'{path}'",
            f"COPY {pg_table} (id) FROM/**/PROGRAM/**/'echo 99'",
            f"COPY {pg_table} (id) /*STDIN*/ FROM PROGRAM 'echo 98'",
        ):
            with pytest.raises(QueryBlocked):
                cur.execute(sql)
            conn.rollback()
    finally:
        conn.close()
    with pg_backend.connect_raw() as raw:
        assert raw.execute("SELECT pg_stat_file(%s, true)", (path,)).fetchone() == (None,)
    assert _rows(pg_backend, pg_table) == before
