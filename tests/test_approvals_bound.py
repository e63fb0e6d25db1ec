"""Approvals bound to exactly what was approved (issue 12, finding 13).

An approval covers one identity (every field, attributes included), one
database (system, namespace, server) and one canonical encoding of the
parameter values; anything else stays held. Judged by the rows on the server.
"""

from __future__ import annotations

import datetime
import decimal
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import guardeddb
from guardeddb import ApprovalRequired, Identity, QueryBlocked
from guardeddb.approvals import (
    MAX_PENDING,
    ApprovalStore,
    UnboundParameters,
    render_params,
    render_statement,
    request_hash,
)
from guardeddb.cli import main

from .fix_db import PG_DSN

pytestmark = pytest.mark.pg


def _policy(store: str) -> dict[str, Any]:
    return {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": "writes-need-a-human",
                "match": {"statements": ["delete", "update"]},
                "action": "review",
                "message": "writes are reviewed",
            }
        ],
        "approvals": {"store": store, "ttl": "1h"},
    }


def _agent(**attributes: Any) -> Identity:
    """A fresh identity per test, so the shared store's other rows never count."""
    return Identity(
        user=f"u{uuid.uuid4().hex[:10]}@example.com", agent="bot", attributes=attributes
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The approval store in a SQLite file, and in PostgreSQL (not dropped:
    other tests share it, and each test here uses its own identities)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/approvals.db"
    request.getfixturevalue("pg_backend")
    return PG_DSN


@pytest.fixture
def pg_table(pg_backend: Any) -> Iterator[str]:
    """A table t(id, doc jsonb) with ids 1..100 in the PostgreSQL test database."""
    import psycopg

    name = f"gdb_bound_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, doc JSONB)")
        raw.execute(f"INSERT INTO {name} SELECT g, NULL FROM generate_series(1, 100) g")
    try:
        yield name
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            raw.execute(f"DROP TABLE IF EXISTS {name}")


def _pg(sql: str, dsn: str = PG_DSN) -> Any:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as raw:
        return raw.execute(sql).fetchone()


def _approve(store_url: str, held: pytest.ExceptionInfo[ApprovalRequired]) -> None:
    assert ApprovalStore(store_url).decide(held.value.request_id, True, "dba", None) is True


def test_an_approval_for_one_json_payload_does_not_run_another(
    pg_table: str, store_url: str
) -> None:
    """psycopg's Json repr is cut at 300 characters: two payloads alike there
    are different approvals."""
    from psycopg.types.json import Json

    approved = Json({"a": "x" * 400, "b": 1})
    other = Json({"a": "x" * 400, "b": 2})
    assert repr(approved) == repr(other)  # what the old key compared
    who = _agent()
    conn = guardeddb.connect(PG_DSN, policy=_policy(store_url))
    cur = conn.cursor()
    update = f"UPDATE {pg_table} SET doc = %s WHERE id = 1"
    try:
        with guardeddb.identity(who):
            with pytest.raises(ApprovalRequired) as held:
                cur.execute(update, (approved,))
            _approve(store_url, held)
            with pytest.raises(ApprovalRequired):
                cur.execute(update, (other,))
            conn.commit()
            assert _pg(f"SELECT doc FROM {pg_table} WHERE id = 1") == (None,)
            cur.execute(update, (approved,))
            conn.commit()
        assert _pg(f"SELECT doc->>'b' FROM {pg_table} WHERE id = 1") == ("1",)
    finally:
        conn.close()


def test_an_approval_for_a_one_row_executemany_does_not_run_a_hundred(
    pg_table: str, store_url: str
) -> None:
    """The whole parameter list is the approval's; a generator is refused,
    never consumed, and the server is untouched."""
    who = _agent()
    conn = guardeddb.connect(PG_DSN, policy=_policy(store_url))
    cur = conn.cursor()
    delete = f"DELETE FROM {pg_table} WHERE id = %s"
    try:
        with guardeddb.identity(who):
            with pytest.raises(ApprovalRequired) as held:
                cur.executemany(delete, [(1,)])
            _approve(store_url, held)
            with pytest.raises(ApprovalRequired):
                cur.executemany(delete, [(i,) for i in range(1, 101)])
            conn.commit()
            assert _pg(f"SELECT count(*) FROM {pg_table}") == (100,)
            rows = ((i,) for i in range(1, 101))
            with pytest.raises(QueryBlocked) as refused:
                cur.executemany(delete, rows)
            assert not isinstance(refused.value, ApprovalRequired)
            assert "canonical encoding" in str(refused.value)
            assert next(rows) == (1,)  # not consumed
            conn.commit()
            assert _pg(f"SELECT count(*) FROM {pg_table}") == (100,)
            cur.executemany(delete, [(1,)])  # the approved one runs, once
            conn.commit()
        assert _pg(f"SELECT count(*) FROM {pg_table}") == (99,)
    finally:
        conn.close()


def test_an_approval_on_one_sqlite_file_does_not_run_on_another(
    tmp_path: Path, store_url: str
) -> None:
    """Two SQLite databases sharing one store: the approval is the first's."""
    files = []
    for name in ("a.db", "b.db"):
        path = tmp_path / name
        raw = sqlite3.connect(path)
        raw.execute("CREATE TABLE t (id INTEGER)")
        raw.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        raw.commit()
        raw.close()
        files.append(path)
    who = _agent()
    a = guardeddb.connect(f"sqlite:///{files[0]}", policy=_policy(store_url))
    b = guardeddb.connect(f"sqlite:///{files[1]}", policy=_policy(store_url))
    try:
        with guardeddb.identity(who):
            with pytest.raises(ApprovalRequired) as held:
                a.execute("DELETE FROM t WHERE id = ?", (1,))
            _approve(store_url, held)
            with pytest.raises(ApprovalRequired):
                b.execute("DELETE FROM t WHERE id = ?", (1,))
            a.execute("DELETE FROM t WHERE id = ?", (1,))
            a.commit()
    finally:
        a.close()
        b.close()
    counts = [sqlite3.connect(f).execute("SELECT count(*) FROM t").fetchone()[0] for f in files]
    assert counts == [1, 2]


def test_an_approval_on_database_a_does_not_run_on_database_b(
    pg_table: str, store_url: str
) -> None:
    """A second PostgreSQL database with the same table, sharing the store."""
    import psycopg

    other_db = f"gdb_bound_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(PG_DSN)
    other_dsn = urlunsplit(parts._replace(path="/" + other_db))
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE DATABASE {other_db}")
    a = b = None
    try:
        with psycopg.connect(other_dsn, autocommit=True) as raw:
            raw.execute(f"CREATE TABLE {pg_table} (id INTEGER PRIMARY KEY, doc JSONB)")
            raw.execute(f"INSERT INTO {pg_table} SELECT g, NULL FROM generate_series(1, 5) g")
        who = _agent()
        a = guardeddb.connect(PG_DSN, policy=_policy(store_url))
        b = guardeddb.connect(other_dsn, policy=_policy(store_url))
        delete = f"DELETE FROM {pg_table} WHERE id > %s"
        with guardeddb.identity(who):
            with pytest.raises(ApprovalRequired) as held:
                a.cursor().execute(delete, (3,))
            _approve(store_url, held)
            with pytest.raises(ApprovalRequired):
                b.cursor().execute(delete, (3,))
            b.commit()
            assert _pg(f"SELECT count(*) FROM {pg_table}", other_dsn) == (5,)
            a.cursor().execute(delete, (3,))
            a.commit()
        assert _pg(f"SELECT count(*) FROM {pg_table}") == (3,)
        assert _pg(f"SELECT count(*) FROM {pg_table}", other_dsn) == (5,)
    finally:
        for conn in (a, b):
            if conn is not None:
                conn.close()
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            raw.execute(f"DROP DATABASE IF EXISTS {other_db} WITH (FORCE)")


def test_identity_attributes_are_part_of_the_approval(pg_table: str, store_url: str) -> None:
    """Same user and agent, another token issuer: held."""
    user = f"u{uuid.uuid4().hex[:10]}@example.com"
    trusted = Identity(user=user, agent="bot", attributes={"iss": "https://idp.example.com"})
    forged = Identity(user=user, agent="bot", attributes={"iss": "https://evil.example.com"})
    conn = guardeddb.connect(PG_DSN, policy=_policy(store_url))
    cur = conn.cursor()
    delete = f"DELETE FROM {pg_table} WHERE id = %s"
    try:
        with guardeddb.identity(trusted), pytest.raises(ApprovalRequired) as held:
            cur.execute(delete, (7,))
        _approve(store_url, held)
        with guardeddb.identity(forged), pytest.raises(ApprovalRequired):
            cur.execute(delete, (7,))
        conn.commit()
        assert _pg(f"SELECT count(*) FROM {pg_table} WHERE id = 7") == (1,)
        with guardeddb.identity(trusted):
            cur.execute(delete, (7,))
            conn.commit()
        assert _pg(f"SELECT count(*) FROM {pg_table} WHERE id = 7") == (0,)
    finally:
        conn.close()


def test_identical_held_statements_make_one_request_and_each_identity_is_capped(
    pg_table: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 identical held statements: one request. Past the cap, a new
    statement is blocked with a clear message and nothing is filed."""
    who = _agent()
    conn = guardeddb.connect(PG_DSN, policy=_policy(store_url))
    cur = conn.cursor()
    delete = f"DELETE FROM {pg_table} WHERE id = %s"
    ids = set()
    try:
        with guardeddb.identity(who):
            for _ in range(200):
                with pytest.raises(ApprovalRequired) as held:
                    cur.execute(delete, (1,))
                ids.add(held.value.request_id)
            assert len(ids) == 1
            for n in range(2, MAX_PENDING + 1):
                with pytest.raises(ApprovalRequired) as held:
                    cur.execute(delete, (n,))
                ids.add(held.value.request_id)
            assert len(ids) == MAX_PENDING
            with pytest.raises(QueryBlocked) as capped:
                cur.execute(delete, (50,))
            assert not isinstance(capped.value, ApprovalRequired)
            assert "pending approval requests" in str(capped.value)
            with pytest.raises(ApprovalRequired) as again:  # a known one still answers
                cur.execute(delete, (1,))
            assert again.value.request_id in ids
        conn.commit()
    finally:
        conn.close()
    assert _pg(f"SELECT count(*) FROM {pg_table}") == (100,)
    mine = [r for r in ApprovalStore(store_url).list("pending") if pg_table in r.statement]
    assert len(mine) == MAX_PENDING
    assert mine[0].database is not None and "postgresql" in mine[0].database


def test_the_pending_cap_holds_under_concurrency(store_url: str) -> None:
    """40 threads file 40 different statements for one identity at once:
    counting the pending requests and adding one is a single step, so no
    more than the cap are filed."""
    store = ApprovalStore(store_url)
    who = _agent()
    start = threading.Barrier(40)

    def hold(n: int) -> str | None:
        start.wait()
        return store.hold(who, f"{uuid.uuid4().hex}{n:032d}", f"DELETE FROM t{n}", "r", None)

    with ThreadPoolExecutor(max_workers=40) as pool:
        ids = list(pool.map(hold, range(40)))
    filed = [rid for rid in ids if rid is not None]
    assert len(filed) == MAX_PENDING, len(filed)
    mine = [r for r in store.list("pending") if r.id in filed]
    assert len(mine) == MAX_PENDING
    assert len({r.identity for r in mine}) == 1


def test_the_approver_sees_the_parameters_masked_and_escaped(
    pg_table: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``approvals list`` and ``show`` print the values, secrets masked by the
    detectors and control characters escaped."""
    who = _agent()
    conn = guardeddb.connect(PG_DSN, policy=_policy(store_url))
    update = f"UPDATE {pg_table} SET doc = %s WHERE id > %s"
    payload = '{"note": "mail carol@example.com \x1b[2J", "flag": 42}'
    try:
        with guardeddb.identity(who), pytest.raises(ApprovalRequired) as held:
            conn.cursor().execute(update, (payload, 90))
    finally:
        conn.close()
    rid = held.value.request_id
    capsys.readouterr()
    assert main(["approvals", "--store", store_url, "list", "--status", "pending"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(rid))
    assert "params=" in line and "90" in line and "42" in line
    assert "carol@example.com" not in line and "\x1b" not in line
    assert main(["approvals", "--store", store_url, "show", rid]) == 0
    shown = capsys.readouterr().out
    assert "carol@example.com" not in shown and "\x1b" not in shown and '"params"' in shown
    assert _pg(f"SELECT count(*) FROM {pg_table} WHERE doc IS NOT NULL") == (0,)


def test_the_approver_sees_the_values_the_statement_writes(
    pg_table: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request shows the exact SQL (``SET doc = ... 99999999``, not ``?``),
    its secrets masked by the detectors and control characters escaped."""
    who = _agent()
    conn = guardeddb.connect(PG_DSN, policy=_policy(store_url))
    update = (
        f'UPDATE {pg_table} SET doc = \'{{"note": "mail carol@example.com \x1b[2J", '
        f'"amount": 99999999}}\' WHERE id = 1'
    )
    try:
        with guardeddb.identity(who), pytest.raises(ApprovalRequired) as held:
            conn.cursor().execute(update)
    finally:
        conn.close()
    rid = held.value.request_id
    capsys.readouterr()
    assert main(["approvals", "--store", store_url, "list", "--status", "pending"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(rid))
    assert "99999999" in line and "WHERE id = 1" in line, line
    assert "carol@example.com" not in line and "\x1b" not in line
    assert main(["approvals", "--store", store_url, "show", rid]) == 0
    shown = capsys.readouterr().out
    assert "99999999" in shown
    assert "carol@example.com" not in shown and "\x1b" not in shown
    assert _pg(f"SELECT count(*) FROM {pg_table} WHERE doc IS NOT NULL") == (0,)


def test_a_held_statement_is_stored_bounded(tmp_path: Path) -> None:
    """A megabyte statement is stored cut, saying how long it was."""
    store = ApprovalStore(f"sqlite:///{tmp_path}/approvals.db")
    huge = "UPDATE t SET note = '" + "x" * 1_000_000 + "' WHERE id = 1"
    rid = store.hold(None, "e" * 64, huge, "r", None)
    got = store.get(rid) if rid is not None else None
    assert got is not None and len(got.statement) < 8100
    assert got.statement.startswith("UPDATE t SET note = 'xxx")
    assert f"({len(huge)} characters)" in got.statement
    assert render_statement("SELECT 'bob@example.com', 42") == render_statement(
        "SELECT 'bob@example.com', 42"
    )
    assert "bob@example.com" not in render_statement("SELECT 'bob@example.com', 42")


def test_an_older_store_gains_the_new_columns(tmp_path: Path) -> None:
    """A SQLite store made before params/target existed keeps working."""
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.execute(
        "CREATE TABLE guardeddb_approvals (id VARCHAR(32) PRIMARY KEY, request_hash "
        "VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, identity TEXT, statement TEXT, "
        "rule TEXT, reason TEXT, created VARCHAR(40), expires VARCHAR(40), approver TEXT, "
        "note TEXT, decided VARCHAR(40), used VARCHAR(40), impact INTEGER)"
    )
    raw.commit()
    raw.close()
    store = ApprovalStore(f"sqlite:///{path}")
    rid = store.hold(None, "d" * 64, "DELETE FROM t", "r", None, None, "[1]", '["sqlite"]')
    assert rid is not None
    got = store.get(rid)
    assert got is not None and got.params == "[1]" and got.database == '["sqlite"]'


def test_request_hash_encodes_values_exactly_and_refuses_the_rest() -> None:
    """Values that differ hash apart; values with no encoding are refused."""
    keys = {
        request_hash(None, "q", (value,))
        for value in (
            1,
            1.0,
            "1",
            True,
            b"1",
            decimal.Decimal("1"),
            decimal.Decimal("1.0"),
            None,
            [1],
            {"a": 1},
            datetime.date(2026, 1, 1),
            datetime.datetime(2026, 1, 1),
            uuid.UUID(int=1),
            0.1 + 0.2,
            0.3,
        )
    }
    assert len(keys) == 15
    assert request_hash(None, "q", {"b": 1, "a": 2}) == request_hash(None, "q", {"a": 2, "b": 1})
    assert request_hash(None, "q", (1,), "a") != request_hash(None, "q", (1,), "b")
    for bad in (iter([1]), (x for x in [1]), object(), {1, 2}, {1: "int key"}):
        with pytest.raises(UnboundParameters):
            request_hash(None, "q", bad)
    assert render_params(("alice@example.com", 3)) is not None
    assert "alice@example.com" not in str(render_params(("alice@example.com", 3)))


def test_an_in_process_approver_sees_the_parameters(tmp_path: Path) -> None:
    """The callable approver gets the values too (masked), and its no holds."""
    path = tmp_path / "shop.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE t (id INTEGER, email TEXT)")
    raw.execute("INSERT INTO t VALUES (1, 'dave@example.com')")
    raw.commit()
    raw.close()
    seen: list[str | None] = []

    statements: list[str] = []

    def decide(request: Any) -> bool:
        seen.append(request.params)
        statements.append(request.statement)
        return False

    policy = _policy(f"sqlite:///{tmp_path}/approvals.db")
    del policy["approvals"]
    conn = guardeddb.connect(f"sqlite:///{path}", policy=policy, approver=decide)
    try:
        with guardeddb.identity(_agent()), pytest.raises(QueryBlocked):
            conn.execute("DELETE FROM t WHERE email = ? OR id > ?", ("dave@example.com", 7))
    finally:
        conn.close()
    assert seen and seen[0] is not None and "7" in seen[0]
    assert "dave@example.com" not in seen[0]
    assert statements == ["DELETE FROM t WHERE email = ? OR id > ?"]
    with (
        guardeddb.connect(f"sqlite:///{path}", policy=policy, approver=decide) as conn,
        guardeddb.identity(_agent()),
        pytest.raises(QueryBlocked),
    ):
        conn.execute("DELETE FROM t WHERE email = 'dave@example.com' OR id > 7")
    assert "id > 7" in statements[-1] and "dave@example.com" not in statements[-1]
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (1,)
