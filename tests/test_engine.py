"""The engines' own ground truth (guardeddb/_enforce.py): what the database
enforces whatever the analyzer thought. Judged by what happened on the server."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import PolicyError, QueryBlocked, load_policy
from guardeddb.sql.analysis import analyze, cache_for
from tests.fix_db import MYSQL_DSN, PG_DSN

AGENT_USER = "alice@example.com"
ATTACK = "SELECT 1 WHERE $a(')=1;PRAGMA query_only=0;ATTACH '{path}' AS x;DROP TABLE t;--') IS NULL"


def _fool(conn: Any, text: str, as_sql: str = "SELECT 1") -> None:
    """Make the analyzer say ``as_sql`` for ``text``: a tokenizer differential."""
    conn._self_guard.cache[text] = analyze(as_sql, "sqlite")


@pytest.fixture(autouse=True)
def _unfool() -> Iterator[None]:
    """``_fool`` writes into the process-wide analysis cache: put it back
    after each test, or a later test's ``DELETE FROM t`` is a ``SELECT 1``."""
    cache = cache_for("sqlite")
    before = dict(cache)
    yield
    cache.clear()
    cache.update(before)


def _sqlite_file(tmp_path: Path) -> str:
    path = str(tmp_path / "engine.db")
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE t (id INTEGER)")
    raw.execute("INSERT INTO t VALUES (1)")
    raw.commit()
    raw.close()
    return path


def _sqlite_state(path: str) -> tuple[list[Any], list[Any]]:
    check = sqlite3.connect(path)
    try:
        tables = check.execute("SELECT name FROM sqlite_master").fetchall()
        rows = check.execute("SELECT id FROM t").fetchall() if tables else []
        return tables, rows
    finally:
        check.close()


@pytest.mark.parametrize("policy", ["agent-safe", "readonly"])
@pytest.mark.parametrize(
    "attack",
    [
        ATTACK,
        "SELECT 1 WHERE $a(')=1;DROP TABLE t;--') IS NULL",
        "SELECT 1 WHERE $a(')=1;DELETE FROM t;--') IS NULL",
        "SELECT 1 WHERE $a(')=1;ATTACH '{path}' AS x;--') IS NULL",
        "SELECT 1 WHERE $a(')=1;PRAGMA query_only=0;INSERT INTO t VALUES (2);--') IS NULL",
        "SELECT 1 WHERE $a(')=1;CREATE TABLE u (x);--') IS NULL",
    ],
)
def test_sqlite_authorizer_holds_a_fooled_analyzer(
    tmp_path: Path, policy: str, attack: str
) -> None:
    """executescript of a text the analyzer reads as one SELECT: SQLite compiles
    the PRAGMA, ATTACH, DROP, DELETE, CREATE it hides, and the authorizer denies
    each; the table and its row are still there, nothing is attached."""
    path = _sqlite_file(tmp_path)
    text = attack.format(path=tmp_path / "other.db")
    conn = guardeddb.connect(f"sqlite:///{path}", policy={"version": 1, "extends": [policy]})
    _fool(conn, text)
    with guardeddb.identity(user=AGENT_USER, agent="bot"):
        with pytest.raises(QueryBlocked) as info:
            conn.executescript(text)
        assert info.value.decision.rule_id == "engine"
        assert isinstance(info.value, sqlite3.ProgrammingError)
        # guardeddb's own statements still work, and so does an honest query
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (1,)
    conn.close()
    assert _sqlite_state(path) == ([("t",)], [(1,)])
    assert not (tmp_path / "other.db").exists()


def test_sqlite_authorizer_keeps_a_statement_to_its_analysis(tmp_path: Path) -> None:
    """Under a policy that allows everything, a text analyzed as a SELECT still
    cannot write: the engine holds it to the classes the policy judged."""
    path = _sqlite_file(tmp_path)
    conn = guardeddb.connect(f"sqlite:///{path}", policy={"version": 1, "extends": []})
    _fool(conn, "DELETE FROM t")
    with pytest.raises(QueryBlocked, match="write to t"):
        conn.execute("DELETE FROM t")
    conn.execute("INSERT INTO t VALUES (2)")  # judged a write: may write
    conn.commit()
    conn.close()
    assert _sqlite_state(path)[1] == [(1,), (2,)]


def test_sqlite_read_only_identity_functions(tmp_path: Path) -> None:
    """A read-only identity calls only reviewed built-ins: a function the
    application registered is refused by the policy step and by the authorizer."""
    path = _sqlite_file(tmp_path)
    raw = sqlite3.connect(path)
    calls: list[int] = []

    def side_effect() -> int:
        calls.append(1)
        return 1

    raw.create_function("side_effect", 0, side_effect)
    conn = guardeddb.wrap(raw, policy={"version": 1, "extends": ["readonly"]})
    cur = conn.cursor()
    cur.execute("SELECT upper('a'), abs(-1), json_extract('{\"a\": 1}', '$.a'), count(*) FROM t")
    assert cur.fetchall() == [("A", 1, 1, 1)]
    with pytest.raises(QueryBlocked, match=r"read-only-functions|side_effect"):
        cur.execute("SELECT side_effect()")
    _fool(conn, "SELECT side_effect() AS fooled", "SELECT 1 AS fooled")
    with pytest.raises(QueryBlocked, match="side_effect"):
        cur.execute("SELECT side_effect() AS fooled")
    assert calls == []
    conn.close()


def test_sqlite_statement_timeout(tmp_path: Path) -> None:
    """limits.statement_timeout: a progress handler interrupts a runaway query."""
    conn = guardeddb.connect(
        "sqlite://", policy={"version": 1, "limits": {"statement_timeout": "300ms"}}
    )
    start = time.monotonic()
    with pytest.raises(QueryBlocked, match="statement_timeout") as info:
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        ).fetchall()
    assert info.value.decision.rule_id == "limits"
    assert time.monotonic() - start < 5
    assert conn.execute("SELECT 1").fetchall() == [(1,)]
    conn.close()


# -- the limits: section ----------------------------------------------------


def test_limits_are_loaded_and_inherited() -> None:
    """Durations in seconds; presets give defaults; a policy's own key wins."""
    assert load_policy(None).limits == {"statement_timeout": 30.0, "max_rows": 10000}
    assert load_policy({"version": 1, "extends": ["readonly"]}).limits["statement_timeout"] == 30
    # Without extends a policy builds on agent-safe, limits included (#13).
    p = load_policy({"version": 1, "limits": {"statement_timeout": "500ms"}})
    assert p.limits == {"statement_timeout": 0.5, "max_rows": 10000}
    assert load_policy({"version": 1, "extends": []}).limits == {}
    assert load_policy(
        {"version": 1, "extends": [], "limits": {"statement_timeout": 2}}
    ).limits == {"statement_timeout": 2.0}


@pytest.mark.parametrize(
    "limits",
    [{"statement_timeout": "soon"}, {"statement_timeout": -1}, {"max_time": "1s"}, "5s"],
)
def test_bad_limits_are_policy_errors(limits: Any) -> None:
    with pytest.raises(PolicyError, match="limits"):
        load_policy({"version": 1, "limits": limits})


def test_bad_limits_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\nlimits:\n  statement_timeout: 5 parsecs\n")
    with pytest.raises(PolicyError, match=r"p.yaml:3: limits.statement_timeout"):
        load_policy(str(f))


def _attempt(conn: Any, cur: Any, attempt: str) -> None:
    """What a read-only identity might send to undo its read-only session:
    refused by the analyzer, or re-asserted before its next statement (which
    is refused inside a transaction the attempt made read-write)."""
    with contextlib.suppress(QueryBlocked):
        cur.execute(attempt)
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
    except QueryBlocked as exc:
        assert exc.decision.rule_id == "read-only-session"


# -- PostgreSQL ---------------------------------------------------------------


def _pg() -> Any:
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(PG_DSN, autocommit=True)
    except Exception as exc:  # pragma: no cover - server missing
        pytest.skip(f"PostgreSQL not reachable: {exc}")


@pytest.mark.pg
def test_pg_every_volatile_function_is_refused_under_readonly() -> None:
    """Data-driven: every function whose name has a volatile overload in
    pg_proc, outside the reviewed list, is refused for a read-only identity
    before it reaches the server; stable and immutable ones run."""
    from guardeddb._enforce import PG_VOLATILE_ALLOWED

    admin = _pg()
    volatile = [
        r[0]
        for r in admin.execute(
            "SELECT proname FROM pg_proc GROUP BY proname HAVING bool_or(provolatile = 'v')"
        ).fetchall()
        if r[0] not in PG_VOLATILE_ALLOWED and r[0].isidentifier()
    ]
    assert len(volatile) > 200
    conn = guardeddb.connect(PG_DSN, policy={"version": 1, "extends": ["readonly"]})
    cur = conn.cursor()
    allowed = []
    with guardeddb.identity(user=AGENT_USER, agent="bot"):
        for name in volatile:
            try:
                cur.execute(f'SELECT "{name}"()')
            except QueryBlocked:
                continue
            except Exception:
                conn.rollback()
            allowed.append(name)
        assert allowed == []
        cur.execute(
            "SELECT lower('A'), abs(-1), length('xy'), md5('x'), now() IS NOT NULL, random() < 2"
        )
        assert cur.fetchone() == ("a", 1, 2, "9dd4e461268c8034f5c8564e155c67a6", True, True)
    conn.close()
    admin.close()


@pytest.mark.pg
def test_pg_read_only_session_is_reasserted() -> None:
    """A read-only identity's statement that is not a plain read makes
    guardeddb re-assert the session before the next one: even if that
    statement had switched the session to read-write (simulated through the
    raw connection), a writing plpgsql function then fails on the server."""
    import psycopg

    admin = _pg()
    table = f"gdb_eng_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE TABLE {table} (id int)")
    admin.execute(
        f"CREATE FUNCTION {table}_w() RETURNS int LANGUAGE plpgsql AS "
        f"$$ BEGIN INSERT INTO {table} VALUES (1); RETURN 1; END $$"
    )
    conn = guardeddb.connect(PG_DSN, policy={"version": 1, "extends": ["readonly"]})
    try:
        cur = conn.cursor()
        with guardeddb.identity(user=AGENT_USER, agent="bot"):
            cur.execute("SELECT 1")
            for attempt in (
                "SET default_transaction_read_only = off",
                'SET "default_transaction_read_only" = off',
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                "BEGIN READ WRITE",
            ):
                _attempt(conn, cur, attempt)
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.__wrapped__.execute(f"SELECT {table}_w()")
                conn.rollback()
            cur.execute("SET application_name = 'x'")  # allowed, not a plain read
            conn.__wrapped__.execute("SET default_transaction_read_only = off")  # fooled
            conn.commit()  # re-asserted inside the transaction this commit keeps
            cur.execute("SELECT 1")
            conn.commit()
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.__wrapped__.execute(f"SELECT {table}_w()")
            conn.rollback()
            # inside a transaction: the switch is committed with it, unless
            # guardeddb's re-assertion comes after it
            cur.execute("SET application_name = 'y'")
            conn.__wrapped__.execute("SET default_transaction_read_only = off")  # fooled
            cur.execute("COMMIT")
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.__wrapped__.execute(f"SELECT {table}_w()")
            conn.rollback()
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    finally:
        conn.close()
        admin.execute(f"DROP FUNCTION {table}_w()")
        admin.execute(f"DROP TABLE {table}")
        admin.close()


@pytest.mark.pg
def test_pg_statement_timeout() -> None:
    """limits.statement_timeout is the session's statement_timeout."""
    import psycopg

    conn = guardeddb.connect(PG_DSN, policy={"version": 1, "limits": {"statement_timeout": "1s"}})
    start = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT count(*) FROM generate_series(1, 1000000000)")
    assert time.monotonic() - start < 10
    conn.rollback()
    assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)
    conn.close()


@pytest.mark.pg
def test_pg_search_path_is_read_from_the_server() -> None:
    """Unqualified names resolve in the schemas the server says."""
    conn = guardeddb.connect(PG_DSN, options="-c search_path=gdb_nowhere,public")
    assert conn._self_guard.facts.schemas == frozenset({"public", "pg_catalog"})
    conn.close()


# -- MariaDB -------------------------------------------------------------------


def _my() -> Any:
    pymysql = pytest.importorskip("pymysql")
    from guardeddb.drivers import _mysql_connect

    try:
        return _mysql_connect(MYSQL_DSN, {"autocommit": True})
    except Exception as exc:  # pragma: no cover - server missing
        pytest.skip(f"MariaDB not reachable: {exc}")
    del pymysql


@pytest.mark.mysql
def test_mysql_use_is_tracked() -> None:
    """With tables: [billing.*] blocked, USE billing then an unqualified
    SELECT returns no billing rows; unqualified tables of the current database
    are allowed (not over-blocked); select_db() is tracked the same way."""
    admin = _my()
    db = f"gdb_billing_{uuid.uuid4().hex[:8]}"
    table = f"gdb_cust_{uuid.uuid4().hex[:8]}"
    cur = admin.cursor()
    cur.execute(f"CREATE DATABASE {db}")
    cur.execute(f"CREATE TABLE {db}.invoices (id int)")
    cur.execute(f"INSERT INTO {db}.invoices VALUES (42)")
    cur.execute(f"CREATE TABLE {table} (name varchar(10))")
    cur.execute(f"INSERT INTO {table} VALUES ('ada')")
    policy = {
        "version": 1,
        "rules": [{"id": "billing", "match": {"tables": [f"{db}.invoices"]}, "action": "block"}],
    }
    whole = {
        "version": 1,
        "rules": [{"id": "billing", "match": {"tables": [f"{db}.*"]}, "action": "block"}],
    }
    conn = guardeddb.connect(MYSQL_DSN, policy=policy)
    try:
        c = conn.cursor()
        c.execute(f"SELECT name FROM {table}")
        assert c.fetchall() == (("ada",),)
        walled = guardeddb.connect(MYSQL_DSN, policy=whole)
        with pytest.raises(QueryBlocked, match="billing"):  # USE of a blocked database
            walled.cursor().execute(f"USE {db}")
        walled.close()
        c.execute(f"USE {db}")
        with pytest.raises(QueryBlocked, match="billing"):
            c.execute("SELECT * FROM invoices")
        other = guardeddb.connect(MYSQL_DSN, policy=policy)
        other.select_db(db)
        with pytest.raises(QueryBlocked, match="billing"):
            other.cursor().execute("SELECT id FROM invoices")
        other.close()
    finally:
        conn.close()
        cur.execute(f"DROP DATABASE {db}")
        cur.execute(f"DROP TABLE {table}")
        admin.close()


@pytest.mark.mysql
def test_mysql_read_only_session_is_reasserted() -> None:
    """After a statement that is not a plain read, or a reconnect, the
    read-only session is put back: a writing stored function then fails."""
    import pymysql

    admin = _my()
    table = f"gdb_eng_{uuid.uuid4().hex[:10]}"
    cur = admin.cursor()
    cur.execute(f"CREATE TABLE {table} (id int)")
    cur.execute(
        f"CREATE FUNCTION {table}_w() RETURNS INT MODIFIES SQL DATA "
        f"BEGIN INSERT INTO {table} VALUES (1); RETURN 1; END"
    )
    conn = guardeddb.connect(MYSQL_DSN, policy={"version": 1, "extends": ["readonly"]})
    try:
        c = conn.cursor()
        raw = conn.__wrapped__
        with guardeddb.identity(user=AGENT_USER, agent="bot"):
            c.execute("SELECT 1")
            for attempt in (
                "SET SESSION tx_read_only = 0",
                "SET @@session.tx_read_only = 0",
                "SET SESSION TRANSACTION READ WRITE",
                "START TRANSACTION READ WRITE",
            ):
                _attempt(conn, c, attempt)
                with pytest.raises(pymysql.err.MySQLError):
                    raw.cursor().execute(f"SELECT {table}_w()")
                raw.rollback()
            with pytest.raises(QueryBlocked, match=f"{table}_w"):
                c.execute(f"SELECT {table}_w()")
            c.execute("SET time_zone = '+00:00'")  # allowed, not a plain read
            raw.cursor().execute("SET SESSION TRANSACTION READ WRITE")  # fooled
            c.execute("SELECT 1")
            with pytest.raises(pymysql.err.MySQLError):
                raw.cursor().execute(f"SELECT {table}_w()")
            raw.rollback()
            # inside a transaction: refused, and the session put back
            c.execute("START TRANSACTION")
            raw.cursor().execute("SET SESSION TRANSACTION READ WRITE")  # fooled
            with pytest.raises(QueryBlocked, match="no longer read-only"):
                c.execute("COMMIT")
            raw.rollback()
            with pytest.raises(pymysql.err.MySQLError):
                raw.cursor().execute(f"SELECT {table}_w()")
            raw.rollback()
            # a reconnect is a new session: re-asserted before the next statement
            raw.close()
            raw.connect()
            c = conn.cursor()
            c.execute("SELECT 1")
            with pytest.raises(pymysql.err.MySQLError):
                raw.cursor().execute(f"SELECT {table}_w()")
            raw.rollback()
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (0,)
    finally:
        conn.close()
        cur.execute(f"DROP FUNCTION {table}_w")
        cur.execute(f"DROP TABLE {table}")
        admin.close()


@pytest.mark.mysql
def test_mysql_statement_timeout() -> None:
    """limits.statement_timeout is MariaDB's max_statement_time."""
    import pymysql

    conn = guardeddb.connect(
        MYSQL_DSN, policy={"version": 1, "limits": {"statement_timeout": "1s"}}
    )
    c = conn.cursor()
    start = time.monotonic()
    with pytest.raises(pymysql.err.MySQLError):
        c.execute(
            "SELECT count(*) FROM information_schema.COLUMNS a, information_schema.COLUMNS b, "
            "information_schema.COLUMNS c"
        )
    assert time.monotonic() - start < 15
    conn.close()


@pytest.mark.pg
def test_pg_async_read_only_functions() -> None:
    """The catalog is read on an asyncio connection too (awaited by the runner)."""
    import asyncio

    import psycopg

    async def main() -> None:
        try:
            raw = await psycopg.AsyncConnection.connect(PG_DSN)
        except Exception as exc:  # pragma: no cover - server missing
            pytest.skip(f"PostgreSQL not reachable: {exc}")
        conn = guardeddb.wrap_async(raw, policy={"version": 1, "extends": ["readonly"]})
        try:
            cur = conn.cursor()
            with guardeddb.identity(user=AGENT_USER, agent="bot"):
                await cur.execute("SELECT lower('A'), abs(-2)")
                assert await cur.fetchone() == ("a", 2)
                # volatile, and on no preset's list: the catalog is what refuses it
                with pytest.raises(QueryBlocked, match="setseed"):
                    await cur.execute("SELECT setseed(0.5)")
        finally:
            await conn.close()

    asyncio.run(main())
