"""Guarded connections and cursors behave like the driver's, on every database."""

from __future__ import annotations

import dataclasses
import inspect
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import GuardedConnection, GuardedCursor, Identity, QueryBlocked

from .fix_db import PERMISSIVE, Backend
from .fix_otel import Otel


def _connect(backend: Backend, **kwargs: Any) -> GuardedConnection:
    return guardeddb.connect(backend.url, policy=PERMISSIVE, **kwargs)


def test_connect_url_is_guarded_and_isinstance_holds(backend: Backend) -> None:
    """connect(URL) returns a proxy that still is an instance of the driver's class."""
    conn = _connect(backend)
    raw = backend.connect_raw()
    raw_type = type(raw)
    raw.close()
    assert isinstance(conn, GuardedConnection)
    assert isinstance(conn, raw_type)
    conn.close()


def test_wrap_existing_connection_and_wrap_is_idempotent(backend: Backend) -> None:
    """wrap() guards an open connection once; wrapping again returns the same proxy."""
    raw = backend.connect_raw()
    conn = guardeddb.wrap(raw)
    assert conn.__wrapped__ is raw
    assert guardeddb.wrap(conn) is conn
    conn.close()


def test_connect_callable_and_module(backend: Backend) -> None:
    """connect() takes a DB-API connect callable or module plus its arguments."""
    if backend.name == "sqlite":
        conn = guardeddb.connect(sqlite3, ":memory:", policy=PERMISSIVE)
        conn2 = guardeddb.connect(sqlite3.connect, ":memory:", policy=PERMISSIVE)
    elif backend.name == "postgresql":
        import psycopg

        conn = guardeddb.connect(psycopg, backend.url, policy=PERMISSIVE)
        conn2 = guardeddb.connect(psycopg.connect, backend.url, policy=PERMISSIVE)
    else:
        import pymysql

        from guardeddb.drivers import connect_url

        probe = connect_url(backend.url, {})
        kwargs = {"host": probe.host, "port": probe.port, "user": probe.user, "password": ""}
        probe.close()
        conn = guardeddb.connect(pymysql, policy=PERMISSIVE, **kwargs)
        conn2 = guardeddb.connect(pymysql.connect, policy=PERMISSIVE, **kwargs)
    for c in (conn, conn2):
        assert isinstance(c, GuardedConnection)
        cur = c.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
        c.close()


def test_every_cursor_path_is_guarded(backend: Backend) -> None:
    """No way of getting a cursor hands back an unguarded one."""
    conn = _connect(backend)
    cur = conn.cursor()
    assert isinstance(cur, GuardedCursor)
    assert cur.connection is conn
    with conn.cursor() if backend.name != "sqlite" else _nullctx(conn.cursor()) as cur2:
        assert isinstance(cur2, GuardedCursor)
    if hasattr(conn.__wrapped__, "execute"):  # sqlite3 and psycopg shortcuts
        result = conn.execute("SELECT 1")
        assert isinstance(result, GuardedCursor)
        assert result.fetchone()[0] == 1
    assert isinstance(cur.execute("SELECT 1") if backend.name != "mysql" else cur, GuardedCursor)
    conn.close()


class _nullctx:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: Any) -> None:
        return None


def test_hasattr_matches_the_driver(backend: Backend) -> None:
    """Proxies only grow the methods the driver type really has."""
    conn = _connect(backend)
    raw_conn = conn.__wrapped__
    cur = conn.cursor()
    for name in ("execute", "executemany", "executescript", "query"):
        assert hasattr(conn, name) == hasattr(raw_conn, name), name
    for name in ("callproc", "nextset", "executescript", "stream", "copy", "scroll"):
        assert hasattr(cur, name) == hasattr(cur.__wrapped__, name), name
    conn.close()


def test_fetch_paths_return_the_driver_rows(backend: Backend, table: str) -> None:
    """fetchone, fetchmany, fetchall and iteration return what the driver returns."""
    conn = _connect(backend)
    cur = conn.cursor()
    q = f"SELECT id, name FROM {table} ORDER BY id"
    cur.execute(q)
    assert tuple(cur.fetchone()) == (1, "Ada")
    assert [tuple(r) for r in cur.fetchmany(1)] == [(2, "Grace")]
    assert [tuple(r) for r in cur.fetchall()] == [(3, "Linus")]
    cur.execute(q)
    assert [r[0] for r in cur] == [1, 2, 3]
    cur.execute(q)
    assert next(iter(cur))[0] == 1
    assert cur.rowcount in (-1, 3)
    assert [d[0] for d in cur.description] == ["id", "name"]
    conn.close()


def test_executemany_and_rowcount(backend: Backend, table: str) -> None:
    """executemany runs every parameter set through the guarded cursor."""
    conn = _connect(backend)
    cur = conn.cursor()
    cur.executemany(
        backend.sql(f"INSERT INTO {table} (id, name, email) VALUES (?, ?, ?)"),
        [(10, "a", "a@x.io"), (11, "b", "b@x.io")],
    )
    conn.commit()
    cur.execute(f"SELECT count(*) FROM {table}")
    assert cur.fetchone()[0] == 5
    conn.close()


def test_context_managers_return_the_proxy(backend: Backend, table: str) -> None:
    """``with conn`` and ``with cursor`` hand back the guarded objects."""
    conn = _connect(backend)
    if backend.name == "mysql":
        # PyMySQL's ``with conn`` closes the connection on exit.
        with conn as c:
            assert c is conn
        return
    with conn as c:
        assert c is conn
        c.cursor().execute(backend.sql(f"UPDATE {table} SET name = ? WHERE id = ?"), ("Ada L", 1))
    check = backend.connect_raw()
    ccur = check.cursor()
    ccur.execute(f"SELECT name FROM {table} WHERE id = 1")
    assert ccur.fetchone()[0] == "Ada L"  # the block committed
    check.close()
    conn.close()


def test_sqlite_row_factory_and_executescript() -> None:
    """sqlite3.Row, conn.executescript and cursor.executescript work through the proxy."""
    conn = guardeddb.connect("sqlite:///:memory:", policy=PERMISSIVE)
    conn.row_factory = sqlite3.Row
    assert conn.__wrapped__.row_factory is sqlite3.Row
    cur = conn.executescript("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 'x');")
    assert isinstance(cur, GuardedCursor)
    row = conn.execute("SELECT a, b FROM t").fetchone()
    assert isinstance(row, sqlite3.Row)
    assert row["b"] == "x"
    # sqlite3 cursors are not context managers either
    with pytest.raises(TypeError, match="context manager"), conn.cursor():
        pass


def test_sqlite_url_forms(tmp_path: Any) -> None:
    """sqlite:///relative, sqlite:////absolute and query parameters (URI mode)."""
    path = tmp_path / "shop.db"
    conn = guardeddb.connect(f"sqlite:///{path}", policy=PERMISSIVE)
    conn.execute("CREATE TABLE t (a)")
    conn.commit()
    conn.close()
    ro = guardeddb.connect(f"sqlite:///{path}?mode=ro", policy=PERMISSIVE)
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("INSERT INTO t VALUES (1)")
    ro.close()


def test_unknown_url_scheme_is_a_clear_error() -> None:
    """A URL guardeddb cannot open says which schemes it can."""
    with pytest.raises(ValueError, match="postgresql://"):
        guardeddb.connect("oracle://scott@db/orcl")


@pytest.mark.pg
def test_psycopg_row_factories_server_cursor_and_stream(pg_backend: Backend) -> None:
    """dict_row, namedtuple_row, named (server-side) cursors and stream()."""
    from psycopg.rows import dict_row, namedtuple_row

    conn = guardeddb.connect(pg_backend.url, policy=PERMISSIVE)
    cur = conn.cursor(row_factory=dict_row)
    cur.execute("SELECT 1 AS a, 'x' AS b")
    assert cur.fetchone() == {"a": 1, "b": "x"}
    ncur = conn.cursor(row_factory=namedtuple_row)
    ncur.execute("SELECT 2 AS a")
    assert ncur.fetchone().a == 2
    scur = conn.cursor("gdb_named")
    assert isinstance(scur, GuardedCursor)
    scur.execute("SELECT generate_series(1, 5)")
    assert [r[0] for r in scur.fetchmany(2)] == [1, 2]
    assert [r[0] for r in scur] == [3, 4, 5]
    scur.close()
    streamed = [r[0] for r in conn.cursor().stream("SELECT generate_series(1, 3)")]
    assert streamed == [1, 2, 3]
    assert isinstance(conn.execute("SELECT 1"), GuardedCursor)
    conn.close()


@pytest.mark.pg
def test_psycopg_nextset_over_several_results(pg_backend: Backend) -> None:
    """A psycopg execute of two statements exposes both results through nextset."""
    conn = guardeddb.connect(pg_backend.url, policy=PERMISSIVE)
    cur = conn.cursor()
    cur.execute("SELECT 1; SELECT 2")
    assert cur.fetchone()[0] == 1
    assert cur.nextset()
    assert cur.fetchone()[0] == 2
    conn.close()


@pytest.mark.mysql
def test_pymysql_dictcursor_sscursor_callproc_query(mysql_backend: Backend) -> None:
    """DictCursor, SSCursor, callproc and the low-level conn.query()."""
    import pymysql.cursors

    from guardeddb.drivers import connect_url

    conn = guardeddb.wrap(connect_url(mysql_backend.url, {}), policy=PERMISSIVE)
    dcur = conn.cursor(pymysql.cursors.DictCursor)
    dcur.execute("SELECT 1 AS a")
    assert dcur.fetchone() == {"a": 1}
    sscur = conn.cursor(pymysql.cursors.SSCursor)
    assert isinstance(sscur, GuardedCursor)
    sscur.execute("SELECT 1 UNION ALL SELECT 2")
    assert [r[0] for r in sscur] == [1, 2]
    sscur.close()
    cur = conn.cursor()
    cur.execute("DROP PROCEDURE IF EXISTS gdb_add")
    cur.execute("CREATE PROCEDURE gdb_add(IN a INT, IN b INT) SELECT a + b")
    cur.callproc("gdb_add", (2, 3))
    assert cur.fetchone()[0] == 5
    cur.nextset()
    cur.execute("DROP PROCEDURE gdb_add")
    assert conn.query("SELECT 1") == 1
    conn.close()


def test_cursor_connection_attribute_is_guarded(backend: Backend) -> None:
    """cursor.connection gives back the guarded connection, not the raw one."""
    conn = _connect(backend)
    cur = conn.cursor()
    assert cur.connection is conn
    assert isinstance(cur.connection.cursor(), GuardedCursor)
    conn.close()


def test_non_utf8_bytes_and_huge_sql_do_not_crash(backend: Backend) -> None:
    """Odd SQL reaches the driver unchanged; guardeddb itself never crashes on it;
    a statement over limits.max_statement_bytes (1 MB) is refused unread."""
    conn = _connect(backend)
    cur = conn.cursor()
    big = "SELECT 1" + " " * 900_000 + "-- tail"
    cur.execute(big)
    assert cur.fetchone()[0] == 1
    with pytest.raises(QueryBlocked, match="max_statement_bytes"):
        cur.execute("SELECT 2" + " " * 2_000_000)
    with pytest.raises(QueryBlocked, match="max_statement_bytes"):
        cur.execute("SELECT 'é'" + "é" * 600_000)  # 1.2 MB in UTF-8, 0.6 M characters
    if backend.name == "sqlite":
        with pytest.raises(TypeError):  # sqlite3 refuses bytes itself, as it would raw
            cur.execute(b"SELECT '\xff\xfe'")
    else:
        cur.execute(b"SELECT 'caf\xc3\xa9'")
        assert cur.fetchone()[0] == "caf\u00e9"
    conn.close()


def test_executemany_keyword_arguments_pass_through(backend: Backend, table: str) -> None:
    """Each driver's own keyword for the parameter sequence still works."""
    conn = _connect(backend)
    cur = conn.cursor()
    keyword = {"sqlite": None, "postgresql": "params_seq", "mysql": "args"}[backend.name]
    q = backend.sql(f"INSERT INTO {table} (id, name, email) VALUES (?, ?, ?)")
    rows = [(30, "k", "k@x.io"), (31, "l", "l@x.io")]
    if keyword is None:  # sqlite3's parameter is positional-only
        cur.executemany(q, rows)
    else:
        cur.executemany(q, **{keyword: rows})
    cur.execute(f"SELECT count(*) FROM {table} WHERE id >= 30")
    assert cur.fetchone()[0] == 2
    conn.rollback()
    conn.close()


def test_fetchmany_arguments_are_the_drivers(backend: Backend, table: str) -> None:
    """fetchmany accepts exactly what the driver accepts (sqlite3 refuses None)."""
    conn = _connect(backend)
    raw = backend.connect_raw()
    for c in (conn.cursor(), raw.cursor()):
        c.execute(f"SELECT id FROM {table} ORDER BY id")
        if backend.name == "sqlite":
            with pytest.raises(TypeError):
                c.fetchmany(None)
        assert len(c.fetchmany(size=2)) == 2
    raw.close()
    conn.close()


# --- #13 finding 8: one options object; connect/wrap in their own module -----


def test_wrap_of_a_guarded_connection_returns_it_or_refuses_new_options(
    backend: Backend,
) -> None:
    """wrap(guarded) is the same object; wrap(guarded, policy=...) is a
    TypeError, as guard_engine's is: which of two guards would win is a guess."""
    conn = _connect(backend)
    try:
        assert guardeddb.wrap(conn) is conn
        with pytest.raises(TypeError, match="already guarded"):
            guardeddb.wrap(conn, policy="readonly")
        with pytest.raises(TypeError, match="already guarded"):
            guardeddb.wrap(conn, guard_options=guardeddb.GuardOptions(identity=Identity(user="x")))
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1  # still the one guard, still working
    finally:
        conn.close()


def test_guard_options_is_one_frozen_object_every_entry_point_takes(
    backend: Backend, table: str, otel: Otel
) -> None:
    """The same GuardOptions guards a connection opened by URL and a wrapped one;
    giving it and keyword options together is refused."""
    opts = guardeddb.GuardOptions(
        policy="readonly",
        identity=Identity(user="etl@example.com"),
        tracer_provider=otel.tracer_provider,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.policy = None  # type: ignore[misc]
    with pytest.raises(TypeError, match="not both"):
        guardeddb.connect(backend.url, policy="readonly", guard_options=opts)
    for conn in (
        guardeddb.connect(backend.url, guard_options=opts),
        guardeddb.wrap(backend.connect_raw(), guard_options=opts),
    ):
        try:
            cur = conn.cursor()
            with pytest.raises(guardeddb.QueryBlocked, match="only reads"):
                cur.execute(f"DELETE FROM {table} WHERE id = 1")
            conn.rollback()
        finally:
            conn.close()
    spans = [s for s in otel.spans() if (s.attributes or {}).get("guardeddb.decision.rule")]
    assert len(spans) == 2
    assert all((s.attributes or {}).get("enduser.id") == "etl@example.com" for s in spans)
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"SELECT count(*) FROM {table}")
    assert cur.fetchone()[0] == 3
    raw.close()


def test_guard_options_keywords_match_every_entry_point() -> None:
    """The six options are spelled the same by every entry point, each also
    taking guard_options: nothing drifts when an option is added."""
    from guardeddb.integrations import sqlalchemy as gsa

    fields = {f.name for f in dataclasses.fields(guardeddb.GuardOptions)}
    assert fields == {
        "policy",
        "identity",
        "tracer_provider",
        "meter_provider",
        "approver",
        "approver_timeout",
    }
    for fn in (
        guardeddb.connect,
        guardeddb.connect_async,
        guardeddb.wrap,
        guardeddb.wrap_async,
        guardeddb.instrument,
        gsa.guard_engine,
        gsa.create_engine,
    ):
        params = inspect.signature(fn).parameters
        assert fields | {"guard_options"} <= set(params), fn.__name__


@pytest.mark.parametrize(
    "first",
    [
        "guardeddb.integrations.instrument",
        "guardeddb.integrations.sqlalchemy",
        "guardeddb._connect",
    ],
)
def test_no_import_cycle_whichever_module_comes_first(first: str) -> None:
    """connect/wrap live in guardeddb._connect, and __init__ only re-exports:
    any module imported first in a fresh interpreter loads."""
    code = (
        f"import {first}; import guardeddb; "
        "assert guardeddb.wrap.__module__ == 'guardeddb._connect'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    init = Path(guardeddb.__file__).read_text()
    assert "\ndef " not in init and "\nclass " not in init
