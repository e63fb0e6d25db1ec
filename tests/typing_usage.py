"""What a type checker sees of guardeddb's entry points (checked by ``mypy``, never run).

``wrap`` hands back the type it was given, so the driver's own methods stay
typed; ``connect`` with a URL cannot know the driver and returns
``GuardedConnection``. Each ``assert_type`` fails the mypy run if that changes.
"""

from __future__ import annotations

import sqlite3
from typing import assert_type

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy.engine import Engine

import guardeddb
from guardeddb import GuardedConnection, GuardOptions
from guardeddb.integrations.sqlalchemy import guard_engine


def psycopg_keeps_its_types(dsn: str) -> None:
    conn = guardeddb.wrap(psycopg.connect(dsn), policy="readonly")
    assert_type(conn, psycopg.Connection[TupleRow])
    cur = conn.cursor()
    assert_type(cur, psycopg.Cursor[TupleRow])
    assert_type(cur.execute("SELECT 1").fetchone(), TupleRow | None)
    assert_type(conn.info.dbname, str)
    assert_type(conn.autocommit, bool)


def sqlite3_keeps_its_types() -> None:
    conn = guardeddb.wrap(
        sqlite3.connect(":memory:"), guard_options=GuardOptions(policy="agent-safe")
    )
    assert_type(conn, sqlite3.Connection)
    assert_type(conn.execute("SELECT 1"), sqlite3.Cursor)
    assert_type(conn.total_changes, int)


async def async_keeps_its_types(dsn: str) -> None:
    conn = guardeddb.wrap_async(await psycopg.AsyncConnection.connect(dsn))
    assert_type(conn, psycopg.AsyncConnection[TupleRow])
    assert_type(conn.cursor(), psycopg.AsyncCursor[TupleRow])


def url_connections_are_guarded_connections() -> None:
    conn = guardeddb.connect("sqlite:///:memory:", policy="readonly")
    assert_type(conn, GuardedConnection)
    assert_type(guardeddb.wrap(conn), GuardedConnection)


def options_are_one_frozen_object(engine: Engine) -> None:
    opts = GuardOptions(policy="readonly", identity=guardeddb.Identity(user="etl"))
    assert_type(opts.approver_timeout, float)
    assert_type(guard_engine(engine, guard_options=opts), Engine)
