"""The allowlisted proxy surface (``_surface.py``) and client-side parameter placement.

Guardrail tests judge by what happened on the server: the rows returned, the
rows changed, the session's settings, whether a backend is still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pymysql.cursors
import pytest

import guardeddb
from guardeddb._surface import surface_for
from guardeddb.drivers import connect_url

from .fix_db import MYSQL_DSN, PG_DSN, Backend

MASKED_POLICY: dict[str, Any] = {
    "version": 1,
    "extends": [],
    "on_unparsed": "allow",
    "masking": {
        "rules": [{"columns": ["*.ssn"], "operator": "redact"}],
        "unmask": {"roles": ["compliance"]},
    },
}

PSYCOPG_CLASSES = [
    psycopg.Connection,
    psycopg.AsyncConnection,
    psycopg.Cursor,
    psycopg.ClientCursor,
    psycopg.ServerCursor,
    psycopg.RawCursor,
    psycopg.RawServerCursor,
    psycopg.AsyncCursor,
    psycopg.AsyncClientCursor,
    psycopg.AsyncServerCursor,
    psycopg.AsyncRawCursor,
    psycopg.AsyncRawServerCursor,
]
PYMYSQL_CURSORS = [
    pymysql.cursors.Cursor,
    pymysql.cursors.DictCursor,
    pymysql.cursors.SSCursor,
    pymysql.cursors.SSDictCursor,
]


def _unclassified(obj: Any) -> list[str]:
    table = surface_for(obj if isinstance(obj, type) else type(obj))
    return sorted(n for n in dir(obj) if not n.startswith("_") and n not in table)


# --- every public attribute is classified -----------------------------------


@pytest.mark.parametrize(
    "cls",
    [sqlite3.Connection, sqlite3.Cursor, *PSYCOPG_CLASSES, *PYMYSQL_CURSORS],
    ids=lambda c: f"{c.__module__}.{c.__qualname__}",
)
def test_every_public_attribute_of_the_installed_driver_classes_is_classified(cls: type) -> None:
    """A driver release that adds a public attribute fails here until it is reviewed."""
    assert _unclassified(cls) == []


def test_every_public_attribute_of_live_sqlite_objects_is_classified() -> None:
    raw = sqlite3.connect(":memory:")
    assert _unclassified(raw) == []
    assert _unclassified(raw.cursor()) == []
    raw.close()


@pytest.mark.pg
def test_every_public_attribute_of_live_psycopg_objects_is_classified(pg_backend: Backend) -> None:
    """Instances too: attributes set in ``__init__`` are not on the class."""
    with psycopg.connect(PG_DSN) as raw:
        assert _unclassified(raw) == []
        assert _unclassified(raw.info) == []
        for factory in (psycopg.Cursor, psycopg.ClientCursor, psycopg.RawCursor):
            assert _unclassified(factory(raw)) == []
        with raw.cursor(name="c") as server_cursor:
            assert _unclassified(server_cursor) == []


@pytest.mark.mysql
def test_every_public_attribute_of_live_pymysql_objects_is_classified(
    mysql_backend: Backend,
) -> None:
    raw = connect_url(MYSQL_DSN, {})
    try:
        assert _unclassified(raw) == []
        for cls in PYMYSQL_CURSORS:
            assert _unclassified(raw.cursor(cls)) == []
    finally:
        raw.close()


# --- refused attributes -----------------------------------------------------


def test_an_unclassified_attribute_is_refused_by_name() -> None:
    """Reading a public name outside the table names it in the error; the error
    is an AttributeError too, so hasattr() answers False. Assigning a name the
    table forwards read-only, or refuses, is refused as well."""
    # Typed as the proxy (Any): wrap() is typed as the driver's class, whose
    # stubs know neither the refusals nor __wrapped__.
    conn: Any = guardeddb.wrap(sqlite3.connect(":memory:"), policy=MASKED_POLICY)
    with pytest.raises(guardeddb.AttributeRefused, match="no_such_attribute"):
        conn.no_such_attribute  # noqa: B018
    assert not hasattr(conn, "no_such_attribute")
    with pytest.raises(guardeddb.AttributeRefused, match="in_transaction"):
        conn.in_transaction = True
    with pytest.raises(guardeddb.AttributeRefused, match="set_authorizer"):
        conn.set_authorizer = print
    assert not hasattr(conn.__wrapped__, "no_such_attribute")
    for name in ("set_authorizer", "set_progress_handler", "setlimit"):
        assert not hasattr(conn, name), name
    # what the table forwards still works, assignments included
    conn.isolation_level = None
    assert conn.__wrapped__.isolation_level is None
    assert conn.in_transaction is False
    conn.close()


def test_sqlite_callbacks_never_see_masked_cells() -> None:
    """create_function/aggregate/collation callbacks refuse to run while masking
    applies (SQLAlchemy registers regexp at connect: registration is allowed);
    text_factory and set_trace_callback are refused on a masking connection."""
    raw = sqlite3.connect(":memory:")
    raw.execute("CREATE TABLE people (id INTEGER, ssn TEXT)")
    raw.execute("INSERT INTO people VALUES (1, '123-45-6789')")
    raw.commit()
    conn = guardeddb.wrap(raw, policy=MASKED_POLICY)
    seen: list[Any] = []

    def spy(value: Any) -> int:
        seen.append(value)
        return 1

    class Spy:
        def step(self, value: Any) -> None:
            seen.append(value)

        def finalize(self) -> int:
            return 1

    conn.create_function("spy", 1, spy)
    conn.create_aggregate("spyagg", 1, Spy)
    with guardeddb.identity(user="agent"):
        for sql in ("SELECT spy(ssn) FROM people", "SELECT spyagg(ssn) FROM people"):
            with pytest.raises(sqlite3.Error):  # refused by guardeddb or by the callback
                conn.execute(sql).fetchall()
    assert seen == []
    with guardeddb.identity(user="auditor", roles={"compliance"}):
        assert conn.execute("SELECT spy(ssn) FROM people").fetchall() == [(1,)]
    assert seen == ["123-45-6789"]
    with pytest.raises(guardeddb.AttributeRefused, match="text_factory"):
        conn.text_factory = bytes
    conn.text_factory = str
    with pytest.raises(guardeddb.AttributeRefused, match="set_trace_callback"):
        conn.set_trace_callback(seen.append)
    conn.close()


@pytest.mark.pg
def test_psycopg_raw_apis_cannot_read_a_masked_column(pg_backend: Backend) -> None:
    """pgresult, pgconn (also through conn.info), adapters (a loader would see
    raw cells) and the read_only setter do not reach the driver; the masked
    column comes back masked and only masked."""
    table = f"gdb_people_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (id int, ssn text)")
        setup.execute(f"INSERT INTO {table} VALUES (1, '123-45-6789')")
    conn: Any = guardeddb.wrap(psycopg.connect(PG_DSN, autocommit=True), policy=MASKED_POLICY)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT ssn FROM {table}")
        with pytest.raises(guardeddb.AttributeRefused, match="pgresult"):
            cur.pgresult  # noqa: B018
        assert "123-45-6789" not in str(cur.fetchall())
        for obj, name in ((conn, "pgconn"), (conn.info, "pgconn"), (conn, "adapters")):
            with pytest.raises(guardeddb.AttributeRefused, match=name):
                getattr(obj, name)
        assert not hasattr(cur, "adapters")
        for name in ("notifies", "add_notify_handler", "tpc_begin", "wait"):
            assert not hasattr(conn, name), name
        assert conn.info.transaction_status is not None
        assert conn.connection is conn
        assert cur.connection is conn
        with pytest.raises(guardeddb.AttributeRefused, match="read_only"):
            conn.read_only = False
        with pytest.raises(guardeddb.AttributeRefused, match="read_only"):
            conn.set_read_only(False)
        conn.read_only = True
        assert conn.__wrapped__.read_only is True
        with guardeddb.identity(user="auditor", roles={"compliance"}):
            assert conn.adapters is conn.__wrapped__.adapters  # no masking, no refusal
    finally:
        conn.close()
        with psycopg.connect(PG_DSN, autocommit=True) as setup:
            setup.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.pg
@pytest.mark.parametrize("factory", [psycopg.Cursor, psycopg.ClientCursor, psycopg.RawCursor])
def test_a_driver_cursor_built_around_the_guarded_connection_fails_closed(
    pg_backend: Backend, factory: Any
) -> None:
    """``psycopg.Cursor(guarded_conn)`` would run SQL unguarded: it cannot be built."""
    name = f"gdb_surface_{uuid.uuid4().hex[:10]}"
    conn = guardeddb.wrap(psycopg.connect(PG_DSN, autocommit=True))
    with pytest.raises(guardeddb.AttributeRefused, match="pgconn"):
        factory(conn).execute(f"CREATE TABLE {name} (id int)")
    conn.close()
    with psycopg.connect(PG_DSN) as raw:
        assert raw.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)


@pytest.mark.mysql
def test_pymysql_session_apis_are_refused(mysql_backend: Backend) -> None:
    """kill, show_warnings, the raw command path, escaping state and non-UTF-8
    charsets are refused; the server session they aim at is untouched."""
    victim = connect_url(MYSQL_DSN, {})
    conn = guardeddb.wrap(connect_url(MYSQL_DSN, {}))
    try:
        for name in ("kill", "show_warnings", "_execute_command", "next_result", "password"):
            assert not hasattr(conn, name), name
        for name, value in (("encoders", {}), ("server_status", 0), ("charset", "latin1")):
            with pytest.raises(guardeddb.AttributeRefused, match=name):
                setattr(conn, name, value)
        with pytest.raises(guardeddb.QueryBlocked, match="latin1"):
            conn.set_character_set("latin1")
        cur = conn.cursor()
        cur.execute("SELECT @@character_set_client")
        assert cur.fetchone()[0].startswith("utf8")
        victim.ping(reconnect=False)  # still alive
        conn.set_character_set("utf8mb4")
        db = conn.db.decode() if isinstance(conn.db, bytes) else conn.db
        conn.select_db(db)
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone()[0] == db
    finally:
        conn.close()
        victim.close()


# --- the statement the server receives --------------------------------------

SECRET = "s3cr3t-launch-code"


@pytest.fixture
def mysql_items(mysql_backend: Backend) -> Iterator[tuple[str, str]]:
    """An items table of 20 rows and a secrets table a rule blocks."""
    yield from _items(connect_url(MYSQL_DSN, {}), "mysql")


@pytest.fixture
def pg_items(pg_backend: Backend) -> Iterator[tuple[str, str]]:
    yield from _items(psycopg.connect(PG_DSN), "pg")


def _items(raw: Any, kind: str) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:10]
    items, secrets = f"gdb_items_{tag}", f"gdb_secret_{tag}"
    cur = raw.cursor()
    cur.execute(
        f"CREATE TABLE {items} (id INTEGER PRIMARY KEY, name VARCHAR(50), status VARCHAR(10))"
    )
    cur.execute(f"CREATE TABLE {secrets} (secret_value VARCHAR(50))")
    cur.executemany(
        f"INSERT INTO {items} VALUES (%s, %s, %s)", [(i, f"item {i}", "new") for i in range(1, 21)]
    )
    cur.execute(f"INSERT INTO {secrets} VALUES (%s)", (SECRET,))
    raw.commit()
    try:
        yield items, secrets
    finally:
        with contextlib.suppress(Exception):
            raw.rollback()
        cur = raw.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {items}")
        cur.execute(f"DROP TABLE IF EXISTS {secrets}")
        raw.commit()
        raw.close()


def _policy(*extends: str) -> dict[str, Any]:
    return {
        "version": 1,
        "extends": list(extends),
        "rules": [
            {"id": "no-secrets", "match": {"tables": ["gdb_secret_*"]}, "action": "block"},
        ],
    }


def _changed(raw: Any, items: str) -> int:
    cur = raw.cursor()
    cur.execute(f"SELECT count(*) FROM {items} WHERE status = 'x'")
    n: int = cur.fetchone()[0]
    return n


def _attempt(cur: Any, sql: str, params: Any) -> list[Any]:
    """Run an attack; what the server returned (nothing when refused)."""
    try:
        cur.execute(sql, params)
        return list(cur.fetchall())
    except guardeddb.QueryBlocked as exc:
        assert exc.decision.rule_id == "parameter-placement", exc
        return []


UNION = " UNION SELECT secret_value FROM {s} "
# (template, parameter) pairs: the parameter lands where the analysis saw
# a comment or a string, and would turn into SQL on the server
MYSQL_UNION_ATTACKS = [
    ("SELECT name FROM {i} WHERE id = 1 /* %s */", "*/" + UNION + "/*"),
    ("SELECT name FROM {i} WHERE id = 1 -- %s", "\n" + UNION + "-- "),
    ("SELECT name FROM {i} WHERE id = 1 # %s", "\n" + UNION + "# "),
    ("SELECT name FROM {i} WHERE name = '%s'", "x" + UNION + "-- "),
    ('SELECT name FROM {i} WHERE name = "%s"', "x" + UNION + "-- "),
    ("SELECT name FROM {i} WHERE id = 1 /* %(p)s */", {"p": "*/" + UNION + "/*"}),
    ("SELECT name FROM {i} WHERE id = 1 /* %s */ AND id = %s", ("*/" + UNION + "/*", 1)),
]


@pytest.mark.mysql
@pytest.mark.parametrize(("template", "param"), MYSQL_UNION_ATTACKS)
def test_pymysql_placeholder_in_comment_or_string_cannot_read_a_blocked_table(
    mysql_items: tuple[str, str], template: str, param: Any
) -> None:
    items, secrets = mysql_items
    conn = guardeddb.wrap(connect_url(MYSQL_DSN, {}), policy=_policy("agent-safe"))
    try:
        cur = conn.cursor()
        params = param if isinstance(param, dict | tuple) else (param,)
        rows = _attempt(cur, template.format(i=items), _fmt(params, secrets))
        assert all(SECRET not in str(r) for r in rows)
    finally:
        conn.close()


def _fmt(params: Any, secrets: str) -> Any:
    if isinstance(params, dict):
        return {k: v.format(s=secrets) if isinstance(v, str) else v for k, v in params.items()}
    return tuple(v.format(s=secrets) if isinstance(v, str) else v for v in params)


@pytest.mark.mysql
def test_the_attacks_work_on_the_raw_driver(mysql_items: tuple[str, str]) -> None:
    """The control: without guardeddb, PyMySQL fills the comment in and the
    server returns the secret and changes every row."""
    items, secrets = mysql_items
    raw = connect_url(MYSQL_DSN, {})
    try:
        template, param = MYSQL_UNION_ATTACKS[0]
        assert isinstance(param, str)
        cur = raw.cursor()
        cur.execute(template.format(i=items), (param.format(s=secrets),))
        assert (SECRET,) in cur.fetchall()
        template, param = MYSQL_UPDATE_ATTACKS[0]
        cur.execute(template.format(i=items), (param,))
        assert _changed(raw, items) == 20
        raw.rollback()
    finally:
        raw.close()


MYSQL_UPDATE_ATTACKS = [
    ("UPDATE {i} SET status = 'x' WHERE id = 1 /* %s */", "*/ OR 1=1 /*"),
    ("UPDATE {i} SET status = 'x' WHERE id = 1 -- %s", "\n OR 1=1 -- "),
    ("UPDATE {i} SET status = 'x' WHERE id = 1 # %s", "\n OR 1=1 # "),
    ("UPDATE {i} SET status = 'x' WHERE name = '%s'", "x' OR 1=1 -- "),
]


@pytest.mark.mysql
@pytest.mark.parametrize(("template", "param"), MYSQL_UPDATE_ATTACKS)
def test_pymysql_placeholder_in_a_comment_cannot_widen_an_update(
    mysql_items: tuple[str, str], template: str, param: str
) -> None:
    items, _ = mysql_items
    raw = connect_url(MYSQL_DSN, {})
    conn = guardeddb.wrap(raw, policy=_policy("agent-safe"))
    try:
        _attempt(conn.cursor(), template.format(i=items), (param,))
        conn.commit()
        assert _changed(raw, items) <= 1
    finally:
        conn.close()


LOAD_FILE = "load_file(0x2f6574632f706173737764)"  # /etc/passwd


@pytest.mark.mysql
@pytest.mark.parametrize(
    ("template", "param"),
    [
        ("SELECT name FROM {i} WHERE id = 1 /* %s */", f"*/ , {LOAD_FILE} /*"),
        ("SELECT name /* %s */ FROM {i} WHERE id = 1", f"*/ , {LOAD_FILE} /*"),
        ("SELECT name FROM {i} WHERE id = 1 -- %s", f"\n UNION SELECT {LOAD_FILE} -- "),
        ("SELECT name FROM {i} WHERE id = '%s'", f"1' UNION SELECT {LOAD_FILE} -- "),
    ],
)
def test_pymysql_readonly_cannot_read_server_files_through_a_comment(
    mysql_items: tuple[str, str], template: str, param: str
) -> None:
    items, _ = mysql_items
    conn = guardeddb.wrap(connect_url(MYSQL_DSN, {}), policy=_policy("readonly"))
    try:
        rows = _attempt(conn.cursor(), template.format(i=items), (param,))
        assert all("root:" not in str(r) for r in rows)
    finally:
        conn.close()


@pytest.mark.mysql
def test_pymysql_placeholders_where_values_belong_still_work(mysql_items: tuple[str, str]) -> None:
    """Positional, named and bulk executemany parameters; a quote or backslash
    in a value stays a value."""
    items, _ = mysql_items
    raw = connect_url(MYSQL_DSN, {})
    conn = guardeddb.wrap(raw, policy=_policy("agent-safe"))
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT name FROM {items} WHERE id = %s", (3,))
        assert cur.fetchall() == (("item 3",),)
        cur.execute(f"SELECT name FROM {items} WHERE id = %(id)s AND name LIKE 'item%%'", {"id": 4})
        assert cur.fetchall() == (("item 4",),)
        cur.execute(f"SELECT name FROM {items} WHERE name = %s", ("x' OR 1=1 -- \\",))
        assert cur.fetchall() == ()
        cur.executemany(
            f"INSERT INTO {items} (id, name, status) VALUES (%s, %s, %s)",
            ((i, f"bulk {i}", "new") for i in range(100, 105)),
        )
        conn.commit()
        cur.execute(f"SELECT count(*) FROM {items} WHERE name LIKE 'bulk%%'")
        assert cur.fetchone() == (5,)
    finally:
        conn.close()


@pytest.mark.mysql
def test_pymysql_misplaced_placeholders_are_refused_before_anything_is_sent(
    mysql_items: tuple[str, str],
) -> None:
    """executemany's bulk rewrite, a dict given to %s, and %s with no parameters."""
    items, _ = mysql_items
    raw = connect_url(MYSQL_DSN, {})
    conn = guardeddb.wrap(raw, policy=_policy("agent-safe"))
    try:
        cur = conn.cursor()
        with pytest.raises(guardeddb.QueryBlocked, match="parameter"):
            cur.executemany(
                f"INSERT INTO {items} (id, name) SELECT 500, 'VALUES (%s)' "
                "ON DUPLICATE KEY UPDATE status = 'x'",
                [("') , (501, 'y",)],
            )
        with pytest.raises(guardeddb.QueryBlocked, match="mapping"):
            cur.execute(f"SELECT name FROM {items} WHERE id = %s", {"a": 1})
        with pytest.raises(guardeddb.QueryBlocked, match="no parameters"):
            cur.execute(f"SELECT name FROM {items} WHERE id = 1 %s")
        with pytest.raises(guardeddb.QueryBlocked, match="no parameters"):
            conn.query(f"SELECT name FROM {items} WHERE id = 1 %s")
        conn.commit()
        check = raw.cursor()
        check.execute(f"SELECT count(*) FROM {items} WHERE id >= 500 OR status = 'x'")
        assert check.fetchone() == (0,)
    finally:
        conn.close()


@pytest.mark.mysql
def test_pymysql_placement_holds_with_no_backslash_escapes(mysql_items: tuple[str, str]) -> None:
    """A session whose sql_mode has NO_BACKSLASH_ESCAPES: PyMySQL doubles quotes
    instead, and the value is still one literal to the server."""
    items, secrets = mysql_items
    raw = connect_url(MYSQL_DSN, {"init_command": "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"})
    assert raw.server_status & 512  # SERVER_STATUS_NO_BACKSLASH_ESCAPES
    conn = guardeddb.wrap(raw, policy=_policy("agent-safe"))
    try:
        cur = conn.cursor()
        for value in ("x\\' UNION SELECT secret_value FROM " + secrets + " -- ", "x' OR 1=1 -- "):
            cur.execute(f"SELECT name FROM {items} WHERE name = %s", (value,))
            assert cur.fetchall() == ()
        cur.execute(f"SELECT name FROM {items} WHERE id = %s", (5,))
        assert cur.fetchall() == (("item 5",),)
        rows = _attempt(
            cur,
            f"SELECT name FROM {items} WHERE id = 1 /* %s */",
            (f"*/ UNION SELECT secret_value FROM {secrets} /*",),
        )
        assert all(SECRET not in str(r) for r in rows)
    finally:
        conn.close()


PG_UNION_ATTACKS = [
    ("SELECT name FROM {i} WHERE id = 1 /* %s */", "*/" + UNION + "/*"),
    ("SELECT name FROM {i} WHERE id = 1 -- %s", "\n" + UNION + "-- "),
    ("SELECT name FROM {i} WHERE name = '%s'", "x" + UNION + "-- "),
    ("SELECT name FROM {i} WHERE id = 1 /* %(p)s */", {"p": "*/" + UNION + "/*"}),
]


@pytest.mark.pg
@pytest.mark.parametrize(("template", "param"), PG_UNION_ATTACKS)
def test_psycopg_client_cursor_placeholder_in_comment_cannot_read_a_blocked_table(
    pg_items: tuple[str, str], template: str, param: Any
) -> None:
    items, secrets = pg_items
    raw = psycopg.connect(PG_DSN, cursor_factory=psycopg.ClientCursor)
    conn = guardeddb.wrap(raw, policy=_policy("agent-safe"))
    try:
        cur = conn.cursor()
        params = param if isinstance(param, dict) else (param,)
        rows = _attempt(cur, template.format(i=items), _fmt(params, secrets))
        assert all(SECRET not in str(r) for r in rows)
    finally:
        conn.close()


@pytest.mark.pg
@pytest.mark.parametrize(("template", "param"), MYSQL_UPDATE_ATTACKS[:2])
def test_psycopg_client_cursor_cannot_widen_an_update(
    pg_items: tuple[str, str], template: str, param: str
) -> None:
    items, _ = pg_items
    raw = psycopg.connect(PG_DSN, cursor_factory=psycopg.ClientCursor)
    conn = guardeddb.wrap(raw, policy=_policy("agent-safe"))
    try:
        _attempt(conn.cursor(), template.format(i=items), (param,))
        conn.commit()
        assert _changed(raw, items) <= 1
        cur = conn.cursor()
        cur.execute(f"SELECT name FROM {items} WHERE id = %(id)s", {"id": 2})
        assert cur.fetchall() == [("item 2",)]
    finally:
        conn.close()


@pytest.mark.pg
def test_psycopg_async_client_cursor_is_checked_too(pg_items: tuple[str, str]) -> None:
    asyncio.run(_async_client_cursor(*pg_items))


async def _async_client_cursor(items: str, secrets: str) -> None:
    raw = await psycopg.AsyncConnection.connect(PG_DSN, cursor_factory=psycopg.AsyncClientCursor)
    conn = guardeddb.wrap_async(raw, policy=_policy("agent-safe"))
    try:
        cur = conn.cursor()
        with pytest.raises(guardeddb.QueryBlocked, match="parameter"):
            await cur.execute(
                f"SELECT name FROM {items} WHERE id = 1 /* %s */",
                (f"*/ UNION SELECT secret_value FROM {secrets} /*",),
            )
        await cur.execute(f"SELECT name FROM {items} WHERE id = %s", (7,))
        assert await cur.fetchall() == [("item 7",)]
    finally:
        await conn.close()
