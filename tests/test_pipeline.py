"""The ordered guard pipeline under faults (issue #12, findings 4, 5, 7-10 and
the COMMIT intent records): judged by what happened on the server and by
what the audit trail holds, never by guardeddb's own decision."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import guardeddb
import guardeddb.audit
from guardeddb import AuditUnavailable, Identity, QueryBlocked
from guardeddb.approvals import ApprovalStore
from guardeddb.errors import ApprovalRequired

from .fix_db import MYSQL_DSN, PG_DSN, Backend

WRITER = Identity(user="writer@example.com", roles=frozenset({"app"}))
READER = Identity(user="reader@example.com", roles=frozenset({"reader"}))

#: Readers (role reader) may only read: the database session is read-only for them.
_READER_ONLY: dict[str, Any] = {
    "version": 1,
    "extends": [],
    "on_unparsed": "allow",
    "rules": [
        {
            "id": "readers-read",
            "match": {
                "identity": {"roles": ["reader"]},
                "statements": ["write", "ddl", "dcl", "admin"],
            },
            "action": "block",
        }
    ],
}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def pg_table(pg_backend: Backend) -> Iterator[str]:
    name = f"pipe_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE TABLE {name} (id int, txn int, note text)")
    try:
        yield name
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            raw.execute("SET lock_timeout = '10s'")
            raw.execute(f"DROP TABLE IF EXISTS {name}")


def _pg_rows(table: str, where: str = "TRUE") -> list[tuple[Any, ...]]:
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        return raw.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY id").fetchall()


# --- finding 4: nothing reaches the database before the record ---------------


@pytest.mark.pg
def test_the_dry_run_waits_for_the_write_ahead_record(pg_table: str, tmp_path: Path) -> None:
    """An affected_rows rule, the audit down: the UPDATE never runs, not even
    inside the dry run's SAVEPOINT (a trigger that draws from a sequence, which
    no rollback undoes, never fires)."""
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"INSERT INTO {pg_table} VALUES (1, 0, 'a'), (2, 0, 'b')")
        raw.execute(f"CREATE SEQUENCE {pg_table}_seq")
        raw.execute(
            f"CREATE FUNCTION {pg_table}_f() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN PERFORM nextval('{pg_table}_seq'); RETURN NEW; END $$"
        )
        raw.execute(
            f"CREATE TRIGGER {pg_table}_t BEFORE UPDATE ON {pg_table} "
            f"FOR EACH ROW EXECUTE FUNCTION {pg_table}_f()"
        )
    policy = {
        "version": 1,
        "extends": [],
        "rules": [
            {
                "id": "big-updates",
                "match": {"statements": ["update"], "affected_rows": {"gt": 1}},
                "action": "block",
            }
        ],
        "audit": {"jsonl": str(tmp_path / "missing-dir" / "audit.jsonl")},
    }
    conn = guardeddb.connect(PG_DSN, policy=policy, identity=WRITER)
    try:
        with pytest.raises(AuditUnavailable):
            conn.cursor().execute(f"UPDATE {pg_table} SET note = 'x' WHERE id > %s", (0,))
        conn.rollback()
    finally:
        conn.close()
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        fired = raw.execute(f"SELECT is_called FROM {pg_table}_seq").fetchone()
        raw.execute(f"DROP FUNCTION IF EXISTS {pg_table}_f() CASCADE")
        raw.execute(f"DROP SEQUENCE IF EXISTS {pg_table}_seq")
    assert fired == (False,)  # the trigger never fired: no dry run ran
    assert [r[2] for r in _pg_rows(pg_table)] == ["a", "b"]


# --- finding 5: an approval outlives an audit that is down --------------------


def test_an_approval_is_not_used_up_by_a_statement_the_audit_refused(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """Approved, then the audit goes down: the DELETE is refused and the
    approval is still there; once the disk is back it runs, exactly once."""
    trail = tmp_path / "trail"
    trail.mkdir()
    store = f"sqlite:///{tmp_path}/approvals.db"
    policy = {
        "version": 1,
        "extends": [],
        "rules": [{"id": "deletes", "match": {"statements": ["delete"]}, "action": "review"}],
        "approvals": {"store": store},
        "audit": {"jsonl": str(trail / "audit.jsonl")},
    }
    conn = guardeddb.connect(backend.url, policy=policy, identity=WRITER)
    delete = backend.sql(f"DELETE FROM {table} WHERE id = ?")
    try:
        with pytest.raises(ApprovalRequired) as held:
            conn.cursor().execute(delete, (1,))
        conn.rollback()
        rid = held.value.request_id
        assert ApprovalStore(store).decide(rid, True, "dba@example.com", None)
        shutil.rmtree(trail)  # the audit's disk is gone
        with pytest.raises(AuditUnavailable):
            conn.cursor().execute(delete, (1,))
        conn.rollback()
        request = ApprovalStore(store).get(rid)
        assert request is not None and request.status == "approved"  # not lost
        trail.mkdir()
        conn.cursor().execute(delete, (1,))
        conn.commit()
        request = ApprovalStore(store).get(rid)
        assert request is not None and request.status == "used"
        with pytest.raises(ApprovalRequired):
            conn.cursor().execute(delete, (1,))  # once
        conn.rollback()
    finally:
        conn.close()
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"SELECT id FROM {table} ORDER BY id")
    assert [r[0] for r in cur.fetchall()] == [2, 3]
    raw.close()
    records = _records(trail / "audit.jsonl")
    ran = [r for r in records if r["event"] == "decision" and r["kinds"] == ["delete"]]
    assert len(ran) == 2 and f"request {rid}" in ran[0]["decision"]["message"]
    assert ran[0]["decision"]["action"] == "allow"  # written before the approval was used


# --- finding 10 and commit(): the COMMIT is judged and written ahead ------------


def test_commit_is_refused_when_its_record_cannot_be_written(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """No COMMIT record, no commit: the row stays uncommitted and rollback works."""
    trail = tmp_path / "trail"
    trail.mkdir()
    policy = {"version": 1, "extends": [], "audit": {"jsonl": str(trail / "audit.jsonl")}}
    conn = guardeddb.connect(backend.url, policy=policy, identity=WRITER)
    try:
        if backend.name == "mysql":
            conn.autocommit(False)
        conn.cursor().execute(backend.sql(f"INSERT INTO {table} VALUES (?, ?, ?)"), (9, "n", "e"))
        shutil.rmtree(trail)
        with pytest.raises(AuditUnavailable):
            conn.commit()
        conn.rollback()  # an undo always runs, recorded or not
    finally:
        conn.close()
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"SELECT count(*) FROM {table} WHERE id = 9")
    assert cur.fetchone()[0] == 0
    raw.close()


@pytest.mark.pg
def test_a_reader_cannot_commit_a_writers_transaction(pg_table: str, tmp_path: Path) -> None:
    """conn.commit() is judged with the identity current at the call: a
    read-only identity cannot commit what a writer left open, by method,
    SQL or ``with conn:``."""
    conn = guardeddb.connect(PG_DSN, policy=_READER_ONLY)
    try:
        with guardeddb.identity(WRITER):
            conn.cursor().execute(f"INSERT INTO {pg_table} VALUES (1, 0, 'w')")
        with guardeddb.identity(READER):
            with pytest.raises(QueryBlocked, match="read-only"):
                conn.commit()
            with pytest.raises(QueryBlocked, match="read-only"):
                conn.cursor().execute("COMMIT")
            with pytest.raises(QueryBlocked), conn:
                pass
    finally:
        if not conn.closed:
            conn.close()
    assert _pg_rows(pg_table) == []  # never committed


@pytest.mark.pg
def test_commit_records_name_the_identity_at_the_call(pg_table: str, tmp_path: Path) -> None:
    """The write-ahead COMMIT record and its outcome carry the identity that
    called commit(), and come in that order around the driver's commit."""
    path = tmp_path / "audit.jsonl"
    policy = {"version": 1, "extends": [], "audit": {"jsonl": str(path)}}
    conn = guardeddb.connect(PG_DSN, policy=policy)
    with guardeddb.identity(WRITER):
        conn.cursor().execute(f"INSERT INTO {pg_table} VALUES (1, 0, 'w')")
        conn.commit()
    conn.close()
    records = _records(path)
    assert [r["event"] for r in records] == ["decision", "result", "decision", "commit"]
    assert records[2]["kinds"] == ["commit"] and records[2]["decision"]["action"] == "allow"
    assert {r["identity"]["user"] for r in records} == {WRITER.user}
    assert guardeddb.audit.check(path).problems == []


# --- finding 7: threads sharing one connection --------------------------------


@pytest.mark.pg
def test_threads_sharing_a_connection_keep_their_session_modes(pg_table: str) -> None:
    """A reader and a writer on two threads over one psycopg connection:
    every reader statement runs read-only, no writer statement is refused."""
    conn = guardeddb.connect(PG_DSN, policy=_READER_ONLY, autocommit=True)
    n = 300
    modes: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def reader() -> None:
        start.wait()
        with guardeddb.identity(READER):
            cur = conn.cursor()
            for _ in range(n):
                cur.execute("SELECT current_setting('transaction_read_only')")
                modes.append(cur.fetchone()[0])

    def writer() -> None:
        start.wait()
        with guardeddb.identity(WRITER):
            cur = conn.cursor()
            for i in range(n):
                try:
                    cur.execute(f"INSERT INTO {pg_table} VALUES (%s, 0, 'w')", (i,))
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn.close()
    assert errors == []
    assert modes == ["on"] * n
    assert len(_pg_rows(pg_table)) == n


# --- finding 8: a reconnect starts a new session --------------------------------


@pytest.mark.mysql
def test_a_pymysql_reconnect_gets_the_session_set_up_again(mysql_backend: Backend) -> None:
    """KILL the session, ping(reconnect=True): the read-only mode and the
    statement time limit are set on the new session before the next statement."""
    policy = {**_READER_ONLY, "limits": {"statement_timeout": "7s"}}
    conn = guardeddb.connect(MYSQL_DSN, policy=policy, identity=READER)
    cur = conn.cursor()
    cur.execute("SELECT @@session.tx_read_only, @@session.max_statement_time")
    assert cur.fetchone() == (1, 7.0)
    killer = mysql_backend.connect_raw()
    killer.cursor().execute(f"KILL {conn.thread_id()}")
    killer.close()
    with warnings.catch_warnings():  # deprecated by PyMySQL, still what its users call
        warnings.simplefilter("ignore", DeprecationWarning)
        conn.ping(reconnect=True)
    try:
        cur = conn.cursor()
        cur.execute("SELECT @@session.tx_read_only, @@session.max_statement_time")
        assert cur.fetchone() == (1, 7.0)
    finally:
        conn.close()


# --- finding 9: INSERT ... SELECT is measured ----------------------------------


def test_insert_select_is_measured(backend: Backend, table: str) -> None:
    """An affected_rows rule sees how many rows an INSERT ... SELECT adds."""
    policy = {
        "version": 1,
        "extends": [],
        "rules": [
            {
                "id": "bulk-inserts",
                "match": {"statements": ["insert"], "affected_rows": {"gt": 2}},
                "action": "block",
            }
        ],
    }
    conn = guardeddb.connect(backend.url, policy=policy, identity=WRITER)
    try:
        cur = conn.cursor()
        small = f"INSERT INTO {table} (id, name, email) SELECT id + 10, name, email FROM {table}"
        cur.execute(small + " WHERE id <= 2")
        conn.commit()
        with pytest.raises(QueryBlocked, match="bulk-inserts"):
            cur.execute(small.replace("+ 10", "+ 20"))
        conn.rollback()
    finally:
        conn.close()
    raw = backend.connect_raw()
    rc = raw.cursor()
    rc.execute(f"SELECT id FROM {table} ORDER BY id")
    assert [r[0] for r in rc.fetchall()] == [1, 2, 3, 11, 12]
    raw.close()


# --- bounded statements -------------------------------------------------------


def test_statements_over_the_byte_limit_are_refused_unread(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """limits.max_statement_bytes: refused before sanitizing, even in report
    mode, recorded without the text; below it, statements run."""
    path = tmp_path / "audit.jsonl"
    policy = {
        "version": 1,
        "extends": [],
        "mode": "report",
        "limits": {"max_statement_bytes": 1000},
        "audit": {"jsonl": str(path)},
    }
    conn = guardeddb.connect(backend.url, policy=policy, identity=WRITER)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT count(*) FROM {table} WHERE name <> '{'x' * 500}'")
        assert cur.fetchone()[0] == 3
        with pytest.raises(QueryBlocked, match=r"1200 bytes, over limits\.max_statement_bytes"):
            cur.execute(f"DELETE FROM {table} WHERE name <> '{'y' * 1200}'"[:1200])
    finally:
        conn.close()
    raw = backend.connect_raw()
    rc = raw.cursor()
    rc.execute(f"SELECT count(*) FROM {table}")
    assert rc.fetchone()[0] == 3
    raw.close()
    text = path.read_text()
    assert "yyyy" not in text and "<statement of 1200 bytes>" in text


def test_the_byte_limit_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nlimits:\n  max_statement_bytes: -3\n")
    with pytest.raises(guardeddb.PolicyError, match="max_statement_bytes"):
        guardeddb.load_policy(bad)


# --- asyncio: no blocking call on the event loop ------------------------------


@pytest.mark.pg
def test_async_audit_writes_never_block_the_event_loop(
    pg_table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink that takes 50 ms a record (a slow disk): a ticker task on the
    same loop is never held up by more than a fraction of that."""
    path = tmp_path / "audit.jsonl"
    slow = guardeddb.audit.JsonlSink.write

    def write(self: Any, fields: Any) -> Any:
        time.sleep(0.05)
        return slow(self, fields)

    monkeypatch.setattr(guardeddb.audit.JsonlSink, "write", write)
    policy = {"version": 1, "extends": [], "audit": {"jsonl": str(path)}}

    async def main() -> float:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        conn = await guardeddb.connect_async(PG_DSN, policy=policy, identity=WRITER)
        for i in range(5):
            cur = conn.cursor()
            await cur.execute(f"INSERT INTO {pg_table} VALUES (%s, 0, 'a')", (i,))
            await cur.execute(f"SELECT count(*) FROM {pg_table}")
            await cur.fetchall()
            await conn.commit()
        await conn.close()
        stop.set()
        await tick
        return max(gaps)

    worst = asyncio.run(main())
    assert worst < 0.04, worst
    records = _records(path)
    assert len(records) == 5 * 6  # every record written, none lost behind
    assert guardeddb.audit.check(path).problems == []


# --- kill -9 under load: every committed transaction has its records --------------

_CHILD = """
import sys, guardeddb
from guardeddb import Identity
table, path, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
policy = {"version": 1, "extends": [], "audit": {"jsonl": path, "fsync": "never"}}
conn = guardeddb.connect(sys.argv[4], policy=policy)
txn = first
while True:
    with guardeddb.identity(Identity(user=f"t{txn}")):
        cur = conn.cursor()
        for i in range(3):
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s, 'k')", (txn * 10 + i, txn))
        conn.commit()
    print(txn, flush=True)
    txn += 1
"""


@pytest.mark.pg
@pytest.mark.slow
def test_kill_9_under_load_leaves_every_commit_with_its_records(
    pg_table: str, tmp_path: Path
) -> None:
    """20 writers killed with SIGKILL at random points: every transaction the
    database committed has its three INSERT decision records and a COMMIT
    decision record written before the commit, by its own identity; the
    trail verifies, apart from a torn tail it reports."""
    path = tmp_path / "audit.jsonl"
    rng = random.Random(20261130)
    first = 0
    kills = 0
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, pg_table, str(path), str(first), PG_DSN],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # one transaction done: under load now
        time.sleep(rng.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        first += 100_000  # each writer its own transaction numbers
    committed = {r[1] for r in _pg_rows(pg_table)}
    assert kills == 20 and len(committed) > 40
    by_user: dict[str, list[dict[str, Any]]] = {}
    report = guardeddb.audit.check(path)
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn tail: reported by check
        if rec.get("identity"):
            by_user.setdefault(rec["identity"]["user"], []).append(rec)
    missing = []
    for txn in committed:
        recs = by_user.get(f"t{txn}", [])
        inserts = [r for r in recs if r["event"] == "decision" and r["kinds"] == ["insert"]]
        commits = [r for r in recs if r["event"] == "decision" and r["kinds"] == ["commit"]]
        if len(inserts) != 3 or len(commits) != 1:
            missing.append(txn)
    assert missing == []
    assert all("torn" in p.reason for p in report.problems), report.problems


@pytest.mark.mysql
def test_mariadb_implicit_commits_are_judged_and_recorded_first(
    mysql_backend: Backend, tmp_path: Path
) -> None:
    """MariaDB commits the open transaction before DDL, GRANT, BEGIN or LOCK
    TABLES: guardeddb commits it first itself, so the trail has the COMMIT's
    decision record and its outcome before the statement runs."""
    path = tmp_path / "audit.jsonl"
    name = f"pipe_{uuid.uuid4().hex[:10]}"
    policy = {"version": 1, "extends": [], "audit": {"jsonl": str(path)}}
    conn = guardeddb.connect(MYSQL_DSN, policy=policy, identity=WRITER)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {name} (id INT)")
        cur.execute(f"INSERT INTO {name} VALUES (1)")  # a transaction is open
        cur.execute(f"CREATE TABLE {name}_b (id INT)")  # commits it first
        cur.execute(f"INSERT INTO {name} VALUES (2)")
        cur.execute("BEGIN")  # commits the second insert first
        conn.rollback()
    finally:
        conn.close()
        raw = mysql_backend.connect_raw()
        rc = raw.cursor()
        rc.execute(f"SELECT id FROM {name} ORDER BY id")
        kept = [r[0] for r in rc.fetchall()]
        rc.execute(f"DROP TABLE IF EXISTS {name}, {name}_b")
        raw.close()
    assert kept == [1, 2]
    events = [(r["event"], r.get("kinds")) for r in _records(path)]
    commits = [i for i, e in enumerate(events) if e[0] == "commit"]
    assert len(commits) == 2
    # each commit record follows the COMMIT's decision and comes before the
    # result of the statement that made the server commit
    for i in commits:
        assert events[i - 1] == ("decision", ["commit"])
        assert events[i + 1][0] == "result"


@pytest.mark.mysql
def test_mariadb_set_autocommit_on_is_committed_and_recorded_first(
    mysql_backend: Backend, tmp_path: Path
) -> None:
    """``SET autocommit = 1`` commits the open transaction on MariaDB: the
    trail has that COMMIT's decision and outcome before the SET, and the row
    is on the server; ``SET autocommit = 0`` commits nothing."""
    path = tmp_path / "audit.jsonl"
    name = f"pipe_{uuid.uuid4().hex[:10]}"
    policy = {"version": 1, "extends": [], "audit": {"jsonl": str(path)}}
    raw = mysql_backend.connect_raw()
    raw.cursor().execute(f"CREATE TABLE {name} (id INT) ENGINE=InnoDB")
    raw.close()
    conn = guardeddb.connect(MYSQL_DSN, policy=policy, identity=WRITER)
    try:
        cur = conn.cursor()
        cur.execute(f"INSERT INTO {name} VALUES (1)")  # a transaction is open
        cur.execute("SET autocommit = 0")  # commits nothing
        cur.execute(f"INSERT INTO {name} VALUES (2)")
        cur.execute("SET SESSION autocommit = ON")  # commits 1 and 2 first
        cur.execute("SET autocommit = 0")
        cur.execute(f"INSERT INTO {name} VALUES (3)")
        conn.rollback()
    finally:
        conn.close()
        raw = mysql_backend.connect_raw()
        rc = raw.cursor()
        rc.execute(f"SELECT id FROM {name} ORDER BY id")
        kept = [r[0] for r in rc.fetchall()]
        rc.execute(f"DROP TABLE IF EXISTS {name}")
        raw.close()
    assert kept == [1, 2]
    events = [(r["event"], r.get("kinds"), r.get("statement")) for r in _records(path)]
    commits = [i for i, e in enumerate(events) if e[0] == "commit"]
    assert len(commits) == 1
    i = commits[0]
    assert events[i - 1][:2] == ("decision", ["commit"])
    # between the SET's decision and its result, like an implicit DDL commit
    assert events[i - 2][:2] == ("decision", ["autocommit", "set"])
    assert events[i + 1][0] == "result" and "autocommit" in str(events[i + 1][2])
