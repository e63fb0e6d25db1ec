"""Approvals: a held query runs once, for the same identity, SQL and parameters."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import ApprovalRequired, Identity, QueryBlocked
from guardeddb.approvals import ApprovalStore
from guardeddb.cli import main

from .fix_db import PG_DSN, Backend

AGENT = Identity(user="alice@example.com", agent="support-bot")
OTHER = Identity(user="bob@example.com", agent="support-bot")


def _policy(store: str, audit: Path | None = None, ttl: str = "1h") -> dict[str, Any]:
    policy: dict[str, Any] = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": "deletes-need-a-human",
                "match": {"statements": ["delete"]},
                "action": "review",
                "message": "deletes are reviewed",
            }
        ],
        "approvals": {"store": store, "ttl": ttl},
    }
    if audit is not None:
        policy["audit"] = {"jsonl": str(audit)}
    return policy


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An approval store in a SQLite file, and one in PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/approvals.db"
    request.getfixturevalue("pg_backend")
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS guardeddb_approvals")
    return PG_DSN


def _sqlite_table(tmp_path: Path, rows: int) -> Path:
    """A SQLite file with a table t of ids 1..rows, made by the application."""
    db = tmp_path / "shop.db"
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE t (id INTEGER)")
    setup.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1, rows + 1)])
    setup.commit()
    setup.close()
    return db


def _count(backend: Backend, table: str) -> int:
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"SELECT count(*) FROM {table}")
    n = int(cur.fetchone()[0])
    raw.close()
    return n


def test_held_query_runs_once_after_approval(
    backend: Backend,
    table: str,
    store_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Held, approved through the CLI, run exactly once; then held again."""
    audit = tmp_path / "audit.jsonl"
    conn = guardeddb.connect(backend.url, policy=_policy(store_url, audit))
    cur = conn.cursor()
    delete = backend.sql(f"DELETE FROM {table} WHERE id = ?")
    with guardeddb.identity(AGENT):
        with pytest.raises(ApprovalRequired) as first:
            cur.execute(delete, (1,))
        assert isinstance(first.value, backend.error)
        rid = first.value.request_id
        with pytest.raises(ApprovalRequired) as again:
            cur.execute(delete, (1,))
        assert again.value.request_id == rid  # one pending request per query
    assert main(["approvals", "--store", store_url, "list", "--status", "pending"]) == 0
    assert rid in capsys.readouterr().out
    assert main(["approvals", "--store", store_url, "approve", rid, "--by", "dba@example.com"]) == 0
    with guardeddb.identity(OTHER), pytest.raises(ApprovalRequired):
        cur.execute(delete, (1,))  # another identity is still held
    with guardeddb.identity(AGENT):
        with pytest.raises(ApprovalRequired):
            cur.execute(delete, (2,))  # other parameters are still held
        cur.execute(delete, (1,))  # the approved query runs
        conn.commit()
        with pytest.raises(ApprovalRequired) as third:
            cur.execute(delete, (1,))  # and only once
        assert third.value.request_id != rid
    assert _count(backend, table) == 2
    approved = [json.loads(line) for line in audit.read_text().splitlines()]
    ran = [
        r
        for r in approved
        if r["event"] == "decision"
        and r["decision"]["action"] == "allow"
        and r["kinds"] != ["commit"]
    ]
    assert ran and "approved by dba@example.com" in ran[-1]["decision"]["message"]
    conn.close()


def test_denied_and_expired_requests_never_run(
    backend: Backend, table: str, store_url: str
) -> None:
    """A denied request stays held; an expired one cannot be approved."""
    conn = guardeddb.connect(backend.url, policy=_policy(store_url, ttl="1s"))
    cur = conn.cursor()
    delete = backend.sql(f"DELETE FROM {table} WHERE id = ?")
    with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired) as held:
        cur.execute(delete, (3,))
    store = ApprovalStore(store_url, 1)
    assert store.decide(held.value.request_id, False, "dba", "no") is True
    with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired) as held2:
        cur.execute(delete, (3,))
    time.sleep(1.2)
    assert store.decide(held2.value.request_id, True, "dba", None) is False  # expired
    assert _count(backend, table) == 3
    conn.close()


def test_an_approval_is_used_exactly_once_under_contention(tmp_path: Path) -> None:
    """Eight threads race for one approval: exactly one runs."""
    url = f"sqlite:///{tmp_path}/approvals.db"
    db = _sqlite_table(tmp_path, 1)
    first = guardeddb.connect(f"sqlite:///{db}", policy=_policy(url))
    with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired) as held:
        first.cursor().execute("DELETE FROM t WHERE id = ?", (1,))
    first.close()
    ApprovalStore(url).decide(held.value.request_id, True, "dba", None)
    outcomes: list[str] = []

    def worker() -> None:
        conn = guardeddb.connect(f"sqlite:///{db}", policy=_policy(url), check_same_thread=False)
        with guardeddb.identity(AGENT):
            try:
                conn.cursor().execute("DELETE FROM t WHERE id = ?", (1,))
                outcomes.append("ran")
            except QueryBlocked:
                outcomes.append("held")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held"] * 7 + ["ran"]


def test_approvals_policy_errors() -> None:
    """Bad stores and TTLs are refused when the policy loads."""
    with pytest.raises(guardeddb.PolicyError, match=r"approvals\.store"):
        guardeddb.load_policy({"version": 1, "approvals": {"store": "redis://x"}})
    with pytest.raises(guardeddb.PolicyError, match=r"approvals\.ttl"):
        guardeddb.load_policy(
            {"version": 1, "approvals": {"store": "sqlite:///a.db", "ttl": "soon"}}
        )


def test_in_process_approver_decides_synchronously(backend: Backend, table: str) -> None:
    """An approver callback says yes or no; an exception or a timeout is a no."""
    asked: list[str] = []

    def approve_by_id(request: Any) -> bool:
        asked.append(request.statement)
        return "WHERE id =" in request.statement

    pol = _policy("sqlite:///unused.db")
    del pol["approvals"]
    conn = guardeddb.connect(backend.url, policy=pol, approver=approve_by_id)
    cur = conn.cursor()
    with guardeddb.identity(AGENT):
        cur.execute(backend.sql(f"DELETE FROM {table} WHERE id = ?"), (2,))
        conn.commit()
        with pytest.raises(QueryBlocked, match="not approved by approver"):
            cur.execute(f"DELETE FROM {table} WHERE name = 'Ada'")
    assert asked and "name = 'Ada'" in asked[-1]  # the approver sees the values decided on
    assert _count(backend, table) == 2
    conn.close()

    def slow(request: Any) -> bool:
        time.sleep(2)
        return True

    conn = guardeddb.connect(backend.url, policy=pol, approver=slow, approver_timeout=0.2)
    with guardeddb.identity(AGENT), pytest.raises(QueryBlocked, match=r"no answer within 0\.2s"):
        conn.cursor().execute(backend.sql(f"DELETE FROM {table} WHERE id = ?"), (3,))
    conn.close()
    assert _count(backend, table) == 2


IMPACT_POLICY: dict[str, Any] = {
    "version": 1,
    "extends": ["agent-safe"],
    "rules": [
        {
            "id": "mass-change",
            "match": {"statements": ["update", "delete"], "affected_rows": {"gt": 1}},
            "action": "block",
            "message": "touches more than one row",
        },
    ],
}


@pytest.mark.parametrize("autocommit", [False, True])
def test_affected_rows_measured_by_a_dry_run_that_leaves_nothing(
    backend: Backend, table: str, autocommit: bool
) -> None:
    """A dry run in a SAVEPOINT measures the rows; the rule blocks by it; nothing survives."""
    conn = guardeddb.connect(backend.url, policy=IMPACT_POLICY)
    if autocommit:
        if backend.name == "sqlite":
            conn.isolation_level = None
        elif backend.name == "mysql":
            conn.autocommit(True)
        else:
            conn.autocommit = True
    cur = conn.cursor()
    with guardeddb.identity(AGENT):
        with pytest.raises(QueryBlocked, match="more than one row"):
            cur.execute(f"DELETE FROM {table} WHERE id > 0")
        with pytest.raises(QueryBlocked, match="more than one row"):
            cur.execute(backend.sql(f"UPDATE {table} SET name = ? WHERE id < ?"), ("x", 3))
        cur.execute(backend.sql(f"DELETE FROM {table} WHERE id = ?"), (1,))
        conn.commit()
    assert _count(backend, table) == 2
    conn.close()


def test_held_request_carries_its_impact(backend: Backend, table: str, tmp_path: Path) -> None:
    """The approval request, the span and the audit record say how many rows it touches."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    audit = tmp_path / "audit.jsonl"
    conn = guardeddb.connect(backend.url, policy=_policy(store, audit))
    with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired) as held:
        conn.cursor().execute(f"DELETE FROM {table} WHERE id >= 2")
    conn.rollback()
    request = ApprovalStore(store).get(held.value.request_id)
    assert request is not None and request.impact == 2
    records = [json.loads(x) for x in audit.read_text().splitlines()]
    # written ahead of the dry run, then the decision with what it measured
    assert records[0]["event"] == "intent" and records[0]["step"] == "approval"
    decisions = [r for r in records if r["event"] == "decision"]
    assert decisions[0]["impact_rows"] == 2
    assert _count(backend, table) == 3
    conn.close()


def test_dry_run_count_equals_the_real_run_and_keeps_the_callers_transaction(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """Inside the caller's open transaction, the dry run measures what the real run
    then does, and the caller's own uncommitted change survives it."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    conn = guardeddb.connect(backend.url, policy=_policy(store))
    cur = conn.cursor()
    with guardeddb.identity(AGENT):
        cur.execute(backend.sql(f"UPDATE {table} SET name = ? WHERE id = ?"), ("mine", 1))
        with pytest.raises(ApprovalRequired) as held:
            cur.execute(f"DELETE FROM {table} WHERE id >= 2")
        request = ApprovalStore(store).get(held.value.request_id)
        assert request is not None and request.impact == 2
        ApprovalStore(store).decide(held.value.request_id, True, "dba", None)
        cur.execute(f"DELETE FROM {table} WHERE id >= 2")
        assert cur.rowcount == request.impact  # what was measured is what happened
        cur.execute(f"SELECT id, name FROM {table}")
        assert [tuple(r) for r in cur.fetchall()] == [(1, "mine")]
        conn.commit()
    assert _count(backend, table) == 1
    conn.close()


def test_cli_approves_end_to_end_in_a_subprocess(tmp_path: Path) -> None:
    """The installed command, in its own process, approves a held query."""
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path}/approvals.db"
    db = _sqlite_table(tmp_path, 2)
    conn = guardeddb.connect(f"sqlite:///{db}", policy=_policy(store))
    with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired) as held:
        conn.cursor().execute("DELETE FROM t WHERE id = 1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardeddb.cli",
            "approvals",
            "--store",
            store,
            "approve",
            held.value.request_id,
            "--by",
            "dba@example.com",
            "--note",
            "ticket 42",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"{held.value.request_id} approved by dba@example.com" in out
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardeddb.cli",
            "approvals",
            "--store",
            store,
            "show",
            held.value.request_id,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(shown)["note"] == "ticket 42"
    with guardeddb.identity(AGENT):
        conn.cursor().execute("DELETE FROM t WHERE id = 1")
        conn.commit()
    conn.close()
    check = sqlite3.connect(db)
    assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    check.close()
