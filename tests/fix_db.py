"""Database fixtures: sqlite3 in memory, and the real PostgreSQL and MariaDB.

Server DSNs come from ``GUARDEDDB_TEST_PG_DSN`` and ``GUARDEDDB_TEST_MYSQL_DSN``
(defaults: the local servers CI runs). When a server cannot be reached its
tests skip with the reason, unless ``GUARDEDDB_REQUIRE_SERVERS=1`` (set by
``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

PG_DSN = os.environ.get("GUARDEDDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("GUARDEDDB_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
REQUIRE_SERVERS = os.environ.get("GUARDEDDB_REQUIRE_SERVERS") == "1"

BACKENDS = ["sqlite", "postgresql", "mysql"]

#: For tests of transparency rather than guardrails: every statement allowed.
PERMISSIVE: dict[str, Any] = {"version": 1, "extends": [], "on_unparsed": "allow"}


@dataclass
class Backend:
    """One database to test against: how to open a raw connection, and its quirks."""

    name: str  # sqlite | postgresql | mysql
    url: str
    connect_raw: Callable[[], Any]
    placeholder: str  # paramstyle marker: ? or %s
    system: str  # expected db.system.name

    @property
    def error(self) -> type[Exception]:
        """The driver's DB-API Error base class."""
        module = {"sqlite": "sqlite3", "postgresql": "psycopg", "mysql": "pymysql"}[self.name]
        err: type[Exception] = __import__(module).Error
        return err

    def sql(self, text: str) -> str:
        """Write tests with ``?`` markers; this rewrites them for the driver."""
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


def _unavailable(what: str, exc: BaseException) -> None:
    reason = f"{what} not reachable ({type(exc).__name__}: {exc})"
    if REQUIRE_SERVERS:
        pytest.fail(f"{reason}; GUARDEDDB_REQUIRE_SERVERS=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def _pg_backend() -> Backend:
    try:
        import psycopg

        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except Exception as exc:
        _unavailable(f"PostgreSQL at {PG_DSN}", exc)
    return Backend("postgresql", PG_DSN, lambda: psycopg.connect(PG_DSN), "%s", "postgresql")


def _mysql_backend() -> Backend:
    from guardeddb.drivers import connect_url

    try:
        raw = connect_url(MYSQL_DSN, {"connect_timeout": 3})
        system = "mariadb" if "mariadb" in str(raw.server_version).lower() else "mysql"
        raw.close()
    except Exception as exc:
        _unavailable(f"MySQL/MariaDB at {MYSQL_DSN}", exc)
    return Backend("mysql", MYSQL_DSN, lambda: connect_url(MYSQL_DSN, {}), "%s", system)


@pytest.fixture(scope="session")
def pg_backend() -> Backend:
    return _pg_backend()


@pytest.fixture(scope="session")
def mysql_backend() -> Backend:
    return _mysql_backend()


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.pg),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each behavioural test runs once per database."""
    if request.param == "postgresql":
        b: Backend = request.getfixturevalue("pg_backend")
        return b
    if request.param == "mysql":
        b = request.getfixturevalue("mysql_backend")
        return b
    # A file, not :memory:, so that fixtures and the test see the same data.
    path = request.getfixturevalue("tmp_path") / "test.db"
    return Backend("sqlite", f"sqlite:///{path}", lambda: sqlite3.connect(path), "?", "sqlite")


def _no_endless_lock_wait(backend: Backend, cur: Any) -> None:
    """A failed test may leave a transaction holding locks: give up after 10 s
    instead of hanging the suite on the DROP of the fixture's table."""
    if backend.name == "mysql":
        cur.execute("SET SESSION lock_wait_timeout = 10")
    elif backend.name == "postgresql":
        cur.execute("SET lock_timeout = '10s'")


@pytest.fixture
def table(backend: Backend) -> Iterator[str]:
    """A fresh ``users(id, name, email)`` table with three rows, dropped after."""
    name = f"gdb_users_{uuid.uuid4().hex[:10]}"
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(
        f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name VARCHAR(100), email VARCHAR(200))"
    )
    cur.executemany(
        backend.sql(f"INSERT INTO {name} (id, name, email) VALUES (?, ?, ?)"),
        [
            (1, "Ada", "ada@example.com"),
            (2, "Grace", "grace@example.com"),
            (3, "Linus", "linus@example.com"),
        ],
    )
    raw.commit()
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            raw.rollback()
        cur = raw.cursor()
        _no_endless_lock_wait(backend, cur)
        cur.execute(f"DROP TABLE IF EXISTS {name}")
        raw.commit()
        raw.close()
