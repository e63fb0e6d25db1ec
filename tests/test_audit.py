"""The audit trail: hash-chained, multi-process safe, fail-closed when required."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import AuditUnavailable, Identity, QueryBlocked
from guardeddb.audit import JsonlSink, verify
from guardeddb.cli import main

from .fix_db import Backend

AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _chain(path: Path, n: int = 5) -> None:
    sink = JsonlSink(path, fsync="never")
    for i in range(n):
        sink.write({"event": "test", "i": i})
    sink.close()


def test_chain_verifies_and_numbers_records(tmp_path: Path) -> None:
    """Records are numbered from 1 and each holds the previous one's hash."""
    path = tmp_path / "audit.jsonl"
    _chain(path)
    recs = _records(path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(recs))
    assert verify(path) == (5, None)


@pytest.mark.parametrize(
    ("tamper", "reason", "line"),
    [
        (lambda ls: [ls[0], ls[1].replace('"i": 1', '"i": 9'), *ls[2:]], "edited", 2),
        (lambda ls: [ls[0], *ls[2:]], "deleted or reordered", 2),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "deleted or reordered", 2),
        (lambda ls: [*ls[:-1], ls[-1][: len(ls[-1]) // 2]], "torn last line", 5),
    ],
    ids=["edited", "deleted", "reordered", "torn"],
)
def test_verify_finds_the_first_bad_record(
    tmp_path: Path, tamper: Any, reason: str, line: int
) -> None:
    """Editing, deleting, reordering or tearing a record is reported with its line."""
    path = tmp_path / "audit.jsonl"
    _chain(path)
    lines = path.read_text().splitlines()
    changed = tamper(lines)
    torn = reason.startswith("torn")
    path.write_text("\n".join(changed) + ("" if torn else "\n"))
    good, problem = verify(path)
    assert problem is not None and reason in problem.reason and problem.line == line
    assert good == line - 1
    assert main(["audit", "verify", str(path)]) == 1


def _append_many(path: str, n: int) -> None:
    sink = JsonlSink(path, fsync="never")
    for i in range(n):
        sink.write({"event": "test", "pid": os.getpid(), "i": i})
    sink.close()


def test_many_processes_append_one_intact_chain(tmp_path: Path) -> None:
    """Four processes appending at once leave one unbroken chain."""
    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert verify(path) == (200, None)


def _audited(backend: Backend, path: Path, **audit: Any) -> guardeddb.GuardedConnection:
    return guardeddb.connect(
        backend.url,
        policy={"version": 1, "extends": ["agent-safe"], "audit": {"jsonl": str(path), **audit}},
    )


def test_decisions_results_and_commits_are_recorded(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """A read, a blocked DROP and a commit leave identity-tied records, no literals."""
    path = tmp_path / "audit.jsonl"
    conn = _audited(backend, path)
    with guardeddb.identity(AGENT):
        cur = conn.cursor()
        cur.execute(f"SELECT name, email FROM {table} WHERE name = 'Ada'")
        assert len(cur.fetchall()) == 1
        with pytest.raises(QueryBlocked):
            cur.execute(f"DROP TABLE {table}")
        conn.commit()
        cur.execute("SELECT 1")
        cur.fetchall()
    conn.close()
    recs = _records(path)
    events = [(r["event"], (r.get("decision") or {}).get("action")) for r in recs]
    assert events == [
        ("decision", "allow"),
        ("result", None),
        ("decision", "block"),
        ("result", None),
        ("decision", "allow"),  # commit(): judged and recorded before the driver commits
        ("commit", None),
        ("decision", "allow"),
        ("result", None),
    ]
    txn = recs[0]["transaction"]
    assert all(r["transaction"] == txn for r in recs[:6])
    assert recs[6]["transaction"] == txn.split(":")[0] + ":1"  # a new transaction
    assert recs[0]["identity"]["agent"] == "support-bot"
    assert recs[0]["statement"] == f"SELECT name, email FROM {table} WHERE name = ?"
    assert recs[1]["rows"] == 1 and recs[1]["masked_values"] == 1  # the email, by a detector
    assert recs[2]["decision"]["rule"] == "no-ddl"
    assert recs[3]["error"] == "guardeddb.QueryBlocked"
    assert "'Ada'" not in path.read_text() and "ada@example.com" not in path.read_text()
    assert verify(path) == (8, None)


def test_required_audit_refuses_queries_it_cannot_record(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """No audit record, no query: the row is unchanged and AuditUnavailable says why."""
    path = tmp_path / "missing-dir" / "audit.jsonl"
    conn = _audited(backend, path)
    with guardeddb.identity(AGENT), pytest.raises(AuditUnavailable, match="could not be written"):
        conn.cursor().execute(backend.sql(f"DELETE FROM {table} WHERE id = ?"), (1,))
    conn.rollback()
    check = backend.connect_raw()
    ccur = check.cursor()
    ccur.execute(f"SELECT count(*) FROM {table}")
    assert ccur.fetchone()[0] == 3
    check.close()
    conn.close()


def test_optional_audit_runs_and_counts_failures(backend: Backend, tmp_path: Path) -> None:
    """With required: false the query runs and the lost record is counted."""
    conn = _audited(backend, tmp_path / "missing-dir" / "audit.jsonl", required=False)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone()[0] == 1
    trail = conn._self_guard.audit
    assert trail is not None and trail.failures >= 1
    conn.close()


def test_audit_show_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """audit show prints the records, filtered by user, agent or action."""
    path = tmp_path / "audit.jsonl"
    conn = guardeddb.connect(
        "sqlite:///:memory:",
        policy={"version": 1, "extends": ["agent-safe"], "audit": {"jsonl": str(path)}},
    )
    with guardeddb.identity(AGENT), pytest.raises(QueryBlocked):
        conn.cursor().execute("DROP TABLE t")
    conn.cursor().execute("SELECT 1").fetchall()
    conn.close()
    assert main(["audit", "show", str(path), "--action", "block"]) == 0
    out = capsys.readouterr().out
    assert "alice@example.com via support-bot" in out and "block (no-ddl)" in out
    assert "SELECT" not in out
    assert main(["audit", "verify", str(path)]) == 0
    assert "chain intact" in capsys.readouterr().out


def test_audit_policy_errors(tmp_path: Path) -> None:
    """Bad audit settings are refused when the policy loads."""
    with pytest.raises(guardeddb.PolicyError, match="file path or a postgresql"):
        guardeddb.load_policy({"version": 1, "audit": {"jsonl": "redis://x/y"}})
    with pytest.raises(guardeddb.PolicyError, match=r"audit\.fsync"):
        guardeddb.load_policy({"version": 1, "audit": {"jsonl": "a.jsonl", "fsync": "maybe"}})


def test_policy_replay_shows_what_a_new_policy_would_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """policy replay re-judges recorded traffic and counts the changes by rule."""
    path = tmp_path / "audit.jsonl"
    conn = guardeddb.connect(
        "sqlite:///:memory:",
        policy={"version": 1, "extends": [], "on_unparsed": "allow", "audit": {"jsonl": str(path)}},
    )
    conn.__wrapped__.execute("CREATE TABLE t (a)")
    with guardeddb.identity(AGENT):
        for sql in ("SELECT a FROM t", "DELETE FROM t", "INSERT INTO t VALUES (1)"):
            conn.cursor().execute(sql).fetchall()
    conn.close()
    new = tmp_path / "new.yaml"
    new.write_text("version: 1\nextends: [readonly]\n")
    assert main(["policy", "replay", "--policy", str(new), str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 recorded decisions re-judged" in out
    assert "2  allow -> block  by read-only" in out


@pytest.mark.pg
def test_postgres_sink_shares_one_chain(pg_backend: Backend, tmp_path: Path) -> None:
    """Connections in many threads append to one PostgreSQL stream; edits are found."""
    import threading
    import uuid

    import psycopg

    from guardeddb.audit import verify_postgres

    stream = f"test-{uuid.uuid4().hex[:8]}"
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "audit": {"postgresql": pg_backend.url, "stream": stream},
    }

    def worker() -> None:
        conn = guardeddb.connect("sqlite:///:memory:", policy=policy)
        with guardeddb.identity(AGENT):
            for _ in range(10):
                conn.cursor().execute("SELECT 1").fetchall()
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify_postgres(pg_backend.url, stream) == (80, None)  # 40 decisions, 40 results
    assert main(["audit", "verify", pg_backend.url, "--stream", stream]) == 0
    with psycopg.connect(pg_backend.url, autocommit=True) as admin:
        admin.execute(
            "UPDATE guardeddb_audit SET record = replace(record, 'support-bot', 'other-bot') "
            "WHERE stream = %s AND seq = 7",
            (stream,),
        )
        _, problem = verify_postgres(pg_backend.url, stream)
        assert problem is not None and problem.line == 7 and "edited" in problem.reason
        admin.execute("DELETE FROM guardeddb_audit WHERE stream = %s", (stream,))


def test_cli_approvals_and_denials_are_audited(tmp_path: Path) -> None:
    """approve/deny with --policy writes who decided into the policy's audit trail."""
    audit = tmp_path / "audit.jsonl"
    store = f"sqlite:///{tmp_path}/approvals.db"
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "version: 1\nextends: [agent-safe]\n"
        "rules:\n  - {id: r, match: {statements: [delete]}, action: review}\n"
        f"audit: {{jsonl: {audit}}}\napprovals: {{store: '{store}'}}\n"
    )
    conn = guardeddb.connect("sqlite:///:memory:", policy=str(policy_file))
    conn.__wrapped__.execute("CREATE TABLE t (a)")
    with guardeddb.identity(AGENT), pytest.raises(guardeddb.ApprovalRequired) as held:
        conn.cursor().execute("DELETE FROM t WHERE a = 1")
    conn.close()
    rid = held.value.request_id
    assert main(["approvals", "--policy", str(policy_file), "deny", rid, "--by", "dba"]) == 0
    recs = _records(audit)
    assert recs[-1]["event"] == "denial" and recs[-1]["approver"] == "dba"
    assert recs[-1]["request_id"] == rid
    assert verify(audit)[1] is None


def test_threads_on_a_shared_pool_never_cross_identities(backend: Backend, tmp_path: Path) -> None:
    """16 threads x 500 queries on a pool of 4 connections: every record has its own
    identity, none is lost or duplicated, and the chain verifies."""
    import queue
    import threading

    path = tmp_path / "audit.jsonl"
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "masking": {"detectors": []},
        "audit": {"jsonl": str(path), "fsync": "never"},
    }
    pool: queue.Queue[Any] = queue.Queue()
    conns = [
        guardeddb.connect(backend.url, policy=policy, check_same_thread=False)
        if backend.name == "sqlite"
        else guardeddb.connect(backend.url, policy=policy)
        for _ in range(4)
    ]
    for c in conns:
        pool.put(c)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with guardeddb.identity(user=f"user{n:02d}", agent=f"agent{n:02d}"):
                for _ in range(500):
                    conn = pool.get()
                    try:
                        cur = conn.cursor()
                        cur.execute(f"SELECT 1 AS t{n:02d}")
                        cur.fetchall()
                        cur.close()
                    finally:
                        pool.put(conn)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    assert errors == []
    recs = _records(path)
    assert verify(path) == (len(recs), None)
    decisions = [r for r in recs if r["event"] == "decision"]
    results = [r for r in recs if r["event"] == "result"]
    assert len(decisions) == len(results) == 16 * 500
    for r in decisions + results:
        n = r["statement"].rsplit(" t", 1)[1]
        assert r["identity"]["user"] == f"user{n}" and r["identity"]["agent"] == f"agent{n}"
    assert len({r["seq"] for r in recs}) == len(recs)
