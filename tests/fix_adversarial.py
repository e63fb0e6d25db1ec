"""Fixtures for the adversarial suite (tests/test_adversarial.py).

Every attack is judged by what the server did, so these fixtures give each
test its own objects on the real servers: a uniquely named schema (or
database) with a victim table and a "billing" schema holding a secret, raw
connections to observe with, server-visible files under /tmp and unique
roles/users, all removed at teardown.

``GUARDEDDB_ADV_CONTROL=1`` is a developer switch that proves the payloads
work: the "guarded" connections come back raw and every ``holds()`` is
inverted, so each test then asserts that its attack DID have its effect on
the server. It is never set in CI.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import guardeddb
from guardeddb import Identity
from guardeddb.policy.loader import preset

from .fix_db import MYSQL_DSN, PG_DSN, Backend

CONTROL = os.environ.get("GUARDEDDB_ADV_CONTROL") == "1"

#: The identity every attack runs as: an agent acting for a user.
MALLORY = Identity(user="mallory@example.com", agent="adversary")

PRESET_NAMES = ["agent-safe", "readonly"]


def holds(safe: bool, what: str) -> None:
    """Assert that the server shows no effect of the attack (inverted in control mode)."""
    if CONTROL:
        assert not safe, f"control: the payload had no effect without guardeddb: {what}"
    else:
        assert safe, what


def policy_for(name: str, blocked: str | None = None, **extra: Any) -> Any:
    """A preset by name, optionally with a rule blocking the table glob
    ``blocked`` (``billing_x.*``) and other top-level keys (``rules`` are
    appended after the table rule)."""
    if not blocked and not extra:
        return None if name == "agent-safe" else preset(name)
    policy: dict[str, Any] = {"version": 1, "extends": [name], **extra}
    if blocked:
        policy["rules"] = [
            {"id": "billing-is-finance-only", "match": {"tables": [blocked]}, "action": "block"},
            *policy.get("rules", []),
        ]
    return policy


def guard(raw: Any, policy: Any) -> Any:
    """The connection the attacker gets: guarded (raw in control mode)."""
    if CONTROL:
        return raw
    return guardeddb.wrap(raw, policy=policy, identity=MALLORY)


def under(conn: Any) -> Any:
    """The raw driver connection underneath a guarded one, to observe session state."""
    return getattr(conn, "__wrapped__", conn)


def attempt(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """Run one attack step: its result, or the exception it raised (refusals expected)."""
    try:
        return fn(), None
    except Exception as exc:
        return None, exc


def leaked(rows: Any, *tokens: str | bytes) -> bool:
    """Whether any token appears in what the attack got back. A long token
    (a password hash) counts as leaked when any 12 characters of it come back:
    a detector that masks part of it still lets the rest out."""
    if rows is None:
        return False
    text = repr(rows)
    for tok in tokens:
        if isinstance(tok, bytes):
            if tok in text.encode() or any(tok in bytes(c) for r in rows for c in _cells(r)):
                return True
        elif len(tok) >= 24:
            if any(tok[i : i + 12] in text for i in range(len(tok) - 11)):
                return True
        elif tok in text:
            return True
    return False


def _cells(row: Any) -> list[Any]:
    cells = row.values() if isinstance(row, dict) else row
    return [c for c in cells if isinstance(c, bytes | bytearray | memoryview)]


def fetch_all(cur: Any) -> list[Any]:
    """Every row of every result set a cursor holds."""
    rows: list[Any] = []
    while True:
        if cur.description is not None:
            rows.extend(cur.fetchall())
        nextset = getattr(cur, "nextset", None)
        if nextset is None or not nextset():
            return rows


def run(conn: Any, sql: str, params: Any = None, *, commit: bool = True) -> Any:
    """Execute through ``conn``; rows (committed) or the exception (rolled back)."""

    def go() -> list[Any]:
        cur = conn.cursor()
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        rows = fetch_all(cur)
        if commit:
            conn.commit()
        return rows

    rows, exc = attempt(go)
    if exc is not None:
        with contextlib.suppress(Exception):
            conn.rollback()
        return exc
    return rows


def token() -> str:
    """A unique word no detector masks (letters only: a run of digits would look
    like a phone or card number to the default detectors) and no other test writes."""
    letters = uuid.uuid4().hex[:12].translate(str.maketrans("0123456789", "ghijklmnop"))
    return f"zq{letters}secret"


@dataclass
class Files:
    """Unique paths under /tmp, visible to both servers (same machine), removed after."""

    made: list[Path] = field(default_factory=list)

    def path(self, suffix: str = "") -> Path:
        p = Path(f"/tmp/gdb_adv_{uuid.uuid4().hex[:12]}{suffix}")
        self.made.append(p)
        return p

    def secret(self, content: str) -> Path:
        """A file every server user can read, holding ``content``."""
        p = self.path(".secret")
        p.write_text(content + "\n")
        p.chmod(0o644)
        return p

    def cleanup(self) -> None:
        for p in self.made:
            with contextlib.suppress(OSError):
                p.unlink()


@pytest.fixture
def files() -> Iterator[Files]:
    f = Files()
    try:
        yield f
    finally:
        f.cleanup()


# --- PostgreSQL ---------------------------------------------------------------


@dataclass
class PgWorld:
    """One test's objects on PostgreSQL: schema ``s`` with ``t`` (3 rows) and
    ``loot`` (empty), made on first use; the session's schema ``billing``
    with ``invoices`` holding ``secret`` (only ever read)."""

    billing: str
    secret: str
    _opened: list[Any]
    _observer: Any = None
    _s: str | None = None

    @property
    def s(self) -> str:
        """This test's own schema, created when a test first names it."""
        if self._s is None:
            name = f"gdb_adv_{uuid.uuid4().hex[:10]}"
            admin = self.observer()
            with admin.transaction():
                admin.execute(
                    f"CREATE SCHEMA {name}; "
                    f"CREATE TABLE {name}.t (id INTEGER PRIMARY KEY, name TEXT NOT NULL); "
                    f"INSERT INTO {name}.t VALUES (1, 'Ada'), (2, 'Grace'), (3, 'Linus'); "
                    f"CREATE TABLE {name}.loot (line TEXT)"
                )
            self._s = name
        return self._s

    def raw(self, autocommit: bool = True, dsn: str = PG_DSN) -> Any:
        import psycopg

        conn = psycopg.connect(dsn, autocommit=autocommit)
        self._opened.append(conn)
        return conn

    def guarded(self, policy: Any, dsn: str = PG_DSN, autocommit: bool = False) -> Any:
        """A connection as the attacker gets it (not autocommit unless asked)."""
        conn = guard(self.raw(autocommit=autocommit, dsn=dsn), policy)
        self._opened.append(conn)  # closing the proxy closes its audit sink too
        return conn

    def observer(self) -> Any:
        """The session's raw autocommit connection to look at the server with."""
        if self._observer is None or self._observer.closed or self._observer.broken:
            self._observer = self.raw()
        return self._observer

    def one(self, sql: str, params: Any = None) -> Any:
        """One value, read on the raw observer connection."""
        row = self.observer().execute(sql, params).fetchone()
        return None if row is None else row[0]

    def rows(self) -> list[tuple[Any, ...]]:
        cur = self.observer().execute(f"SELECT id, name FROM {self.s}.t ORDER BY id")
        return [tuple(r) for r in cur]

    def exists(self, relation: str) -> bool:
        return self.one("SELECT to_regclass(%s) IS NOT NULL", (relation,)) is True


def _pg_admin() -> Any:
    import psycopg

    conn = psycopg.connect(PG_DSN, autocommit=True)
    conn.execute("SET lock_timeout = '10s'")
    return conn


@pytest.fixture(scope="session")
def pg_billing(pg_backend: Backend) -> Iterator[tuple[str, str]]:
    """(schema, secret): ``billing_*.invoices`` for the whole session."""
    name, secret = f"billing_{uuid.uuid4().hex[:10]}", token()
    with _pg_admin() as admin, admin.transaction():
        admin.execute(f"CREATE SCHEMA {name}")
        admin.execute(f"CREATE TABLE {name}.invoices (id INTEGER PRIMARY KEY, secret TEXT)")
        admin.execute(f"INSERT INTO {name}.invoices VALUES (1, %s)", (secret,))
    try:
        yield name, secret
    finally:
        with _pg_admin() as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture(scope="session")
def pg_observer(pg_backend: Backend) -> Iterator[Any]:
    """One raw autocommit connection for every test's setup and observations."""
    conn = _pg_admin()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def pgw(pg_billing: tuple[str, str], pg_observer: Any) -> Iterator[PgWorld]:
    w = PgWorld(*pg_billing, [], pg_observer)
    try:
        yield w
    finally:
        for conn in reversed(w._opened):
            with contextlib.suppress(Exception):
                conn.close()
        if w._s is not None:
            w.observer().execute(f"DROP SCHEMA IF EXISTS {w._s} CASCADE")


@pytest.fixture
def pg_role(pgw: PgWorld) -> Iterator[str]:
    """A NOLOGIN role with no privileges to switch to, dropped after."""
    name = f"gdb_adv_role_{uuid.uuid4().hex[:10]}"
    pgw.observer().execute(f"CREATE ROLE {name} NOLOGIN")
    try:
        yield name
    finally:
        for conn in pgw._opened:
            with contextlib.suppress(Exception):
                conn.close()
        pgw.observer().execute(f"DROP ROLE IF EXISTS {name}")


# --- MariaDB ------------------------------------------------------------------


def _my_admin() -> Any:
    from guardeddb.drivers import connect_url

    return connect_url(MYSQL_DSN, {"autocommit": True})


@dataclass
class MyWorld:
    """One test's objects on MariaDB: table ``t`` (3 rows, made on first use) in
    the DSN's database; the session's ``customers`` table there and database
    ``billing`` with ``invoices`` holding ``secret``."""

    customers: str
    billing: str
    secret: str
    _opened: list[Any]
    _t: str | None = None
    _observer: Any = None

    @property
    def t(self) -> str:
        """This test's own table, created when a test first names it."""
        if self._t is None:
            name = f"gdb_adv_t_{uuid.uuid4().hex[:10]}"
            cur = self.observer().cursor()
            cur.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL)")
            self._t = name
            cur.execute(f"INSERT INTO {name} VALUES (1, 'Ada'), (2, 'Grace'), (3, 'Linus')")
        return self._t

    def raw(self, autocommit: bool = True, **kwargs: Any) -> Any:
        from guardeddb.drivers import connect_url

        url = kwargs.pop("url", MYSQL_DSN)
        conn = connect_url(url, {"autocommit": autocommit, **kwargs})
        self._opened.append(conn)
        return conn

    def guarded(self, policy: Any, **kwargs: Any) -> Any:
        conn = guard(self.raw(autocommit=False, **kwargs), policy)
        self._opened.append(conn)
        return conn

    def observer(self) -> Any:
        """The session's raw autocommit connection to look at the server with."""
        if self._observer is None or not self._observer.open:
            self._observer = self.raw()
        return self._observer

    def one(self, sql: str, params: Any = None) -> Any:
        cur = self.observer().cursor()
        cur.execute(sql, params)
        row = cur.fetchone()
        return None if row is None else row[0]

    def rows(self) -> list[tuple[Any, ...]]:
        cur = self.observer().cursor()
        cur.execute(f"SELECT id, name FROM {self.t} ORDER BY id")
        return [tuple(r) for r in cur.fetchall()]


@pytest.fixture(scope="session")
def my_billing(mysql_backend: Backend) -> Iterator[tuple[str, str, str]]:
    """(customers table, billing database, secret) for the whole session."""
    tag = uuid.uuid4().hex[:10]
    customers, billing, secret = f"customers_{tag}", f"billing_{tag}", token()
    admin = _my_admin()
    cur = admin.cursor()
    cur.execute(f"CREATE TABLE {customers} (id INTEGER PRIMARY KEY, name VARCHAR(100))")
    cur.execute(f"INSERT INTO {customers} VALUES (1, 'Ada Lovelace'), (2, 'Grace Hopper')")
    cur.execute(f"CREATE DATABASE {billing}")
    cur.execute(f"CREATE TABLE {billing}.invoices (id INTEGER PRIMARY KEY, secret TEXT)")
    cur.execute(f"INSERT INTO {billing}.invoices VALUES (1, %s)", (secret,))
    admin.close()
    try:
        yield customers, billing, secret
    finally:
        admin = _my_admin()
        try:
            cur = admin.cursor()
            cur.execute("SET SESSION lock_wait_timeout = 10")
            cur.execute(f"DROP TABLE IF EXISTS {customers}")
            cur.execute(f"DROP DATABASE IF EXISTS {billing}")
        finally:
            admin.close()


@pytest.fixture(scope="session")
def my_observer(mysql_backend: Backend) -> Iterator[Any]:
    """One raw autocommit connection for every test's setup and observations
    (MariaDB connections cost ~0.1 s each here)."""
    conn = _my_admin()
    conn.cursor().execute("SET SESSION lock_wait_timeout = 10")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def myw(my_billing: tuple[str, str, str], my_observer: Any) -> Iterator[MyWorld]:
    w = MyWorld(*my_billing, [], None, my_observer)
    try:
        yield w
    finally:
        for conn in reversed(w._opened):
            with contextlib.suppress(Exception):
                conn.close()
        if w._t is not None:
            w.observer().cursor().execute(f"DROP TABLE IF EXISTS {w._t}")


@pytest.fixture
def my_user(myw: MyWorld) -> Iterator[tuple[str, str]]:
    """A MariaDB login with a password and rights on the DSN's database: (name, password)."""
    name, password = f"gdb_adv_{uuid.uuid4().hex[:10]}", f"pw{uuid.uuid4().hex[:12]}"
    cur = myw.observer().cursor()
    cur.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")
    database = urlsplit(MYSQL_DSN).path.lstrip("/")
    cur.execute(f"GRANT ALL ON `{database}`.* TO '{name}'@'%'")
    try:
        yield name, password
    finally:
        myw.observer().cursor().execute(f"DROP USER IF EXISTS '{name}'@'%'")


# --- SQLite -------------------------------------------------------------------


@dataclass
class SqliteWorld:
    """A database file with ``t`` (3 rows) and ``secrets`` (one token)."""

    path: Path
    secret: str
    _opened: list[Any]

    def raw(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        self._opened.append(conn)
        return conn

    def guarded(self, policy: Any) -> Any:
        conn = guard(self.raw(), policy)
        self._opened.append(conn)
        return conn

    def tables(self) -> set[str]:
        conn = sqlite3.connect(self.path)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()

    def rows(self) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return list(conn.execute("SELECT id, name FROM t ORDER BY id"))
        finally:
            conn.close()


def make_sqlite(target: Path | sqlite3.Connection, secret: str) -> None:
    """The SQLite schema every SQLite attack starts from, in a file or a connection."""
    conn = target if isinstance(target, sqlite3.Connection) else sqlite3.connect(target)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "Ada"), (2, "Grace"), (3, "Linus")])
    conn.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, secret TEXT)")
    conn.execute("INSERT INTO secrets VALUES (1, ?)", (secret,))
    conn.commit()
    if conn is not target:
        conn.close()


@pytest.fixture
def sqw(tmp_path: Path) -> Iterator[SqliteWorld]:
    w = SqliteWorld(tmp_path / "adv.db", token(), [])
    make_sqlite(w.path, w.secret)
    try:
        yield w
    finally:
        for conn in w._opened:
            with contextlib.suppress(Exception):
                conn.close()
