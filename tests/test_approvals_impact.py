"""An approval is for the statement as the person saw it, impact included (#12).

A request filed with a measured impact (the rows a dry run counted) is
measured again when the approved statement runs, before the approval is
used: at most the rows shown, it runs (once); more, and the approval is
superseded unused and the statement held again showing the new count.
Judged by the rows left on the server, the store's requests and the audit
trail, never by guardeddb's own decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import guardeddb
from guardeddb import ApprovalRequired, AuditUnavailable, Identity
from guardeddb.approvals import ApprovalStore
from guardeddb.cli import main

from .fix_db import PG_DSN, Backend, _no_endless_lock_wait
from .test_mcp import _cli, _payload, _served, _text
from .test_mcp import _policy as _mcp_policy
from .test_mcp import anyio_backend as anyio_backend  # the fixture, for the MCP test

AGENT = Identity(user="agent@example.com", agent="approvimpact-bot")
#: id, amount: ids 1, 3 and 4 have amount > 1000
ROWS = [(1, 1200), (2, 990), (3, 45000), (4, 3000)]


def _policy(store: str, audit: Path, rule: bool) -> dict[str, Any]:
    """Deletes held for review: by an ``affected_rows`` rule (the count is
    part of the decision) or every delete (counted for the request only)."""
    match: dict[str, Any] = {"statements": ["delete"]}
    if rule:
        match["affected_rows"] = {"gt": 1}
    return {
        "version": 1,
        "extends": [],
        "rules": [{"id": "deletes", "match": match, "action": "review", "message": "reviewed"}],
        "approvals": {"store": store},
        "audit": {"jsonl": str(audit)},
    }


@pytest.fixture
def payments(backend: Backend) -> Iterator[str]:
    """A fresh ``approvimpact_*(id, amount)`` table with ``ROWS``, dropped after."""
    name = f"approvimpact_{uuid.uuid4().hex[:10]}"
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, amount INTEGER)")
    cur.executemany(backend.sql(f"INSERT INTO {name} VALUES (?, ?)"), ROWS)
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


def _ids(backend: Backend, table: str) -> list[int]:
    """The ids on the server, read past guardeddb."""
    return [int(r[0]) for r in backend.rows(f"SELECT id FROM {table} ORDER BY id")]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _status(store: str, rid: str) -> tuple[str, int | None]:
    request = ApprovalStore(store).get(rid)
    assert request is not None
    return request.status, request.impact


def _held(conn: Any, sql: str) -> str:
    """Run ``sql`` expecting it held; the request id, the transaction rolled back."""
    with pytest.raises(ApprovalRequired) as held:
        conn.cursor().execute(sql)
    conn.rollback()
    return held.value.request_id


@pytest.mark.parametrize("rule", [True, False], ids=["affected-rows-rule", "review-all"])
def test_a_larger_impact_supersedes_the_approval_and_is_held_again(
    backend: Backend, payments: str, tmp_path: Path, rule: bool
) -> None:
    """Approved as touching 3 rows; an allowed UPDATE moves a fourth into the
    WHERE: the approved text deletes nothing, the approval is superseded and a
    new request shows 4. Moving the row back does not revive the old approval;
    the new one, approved, runs once with the 3 rows it now touches."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    audit = tmp_path / "audit.jsonl"
    delete = f"DELETE FROM {payments} WHERE amount > 1000"
    conn = guardeddb.connect(backend.url, policy=_policy(store, audit, rule), identity=AGENT)
    try:
        first = _held(conn, delete)
        assert _status(store, first) == ("pending", 3)
        assert ApprovalStore(store).decide(first, True, "dba@example.com", "3 rows, fine")
        conn.cursor().execute(f"UPDATE {payments} SET amount = 5000 WHERE id = 2")
        conn.commit()

        second = _held(conn, delete)
        assert second != first
        assert _ids(backend, payments) == [1, 2, 3, 4]  # nothing deleted
        assert _status(store, first) == ("superseded", 3)
        assert _status(store, second) == ("pending", 4)
        request = ApprovalStore(store).get(second)
        assert request is not None and request.reason is not None
        assert f"approval {first}" in request.reason and "4" in request.reason

        conn.cursor().execute(f"UPDATE {payments} SET amount = 990 WHERE id = 2")
        conn.commit()
        assert _held(conn, delete) == second  # the superseded approval stays retired
        assert _status(store, first) == ("superseded", 3)
        assert _ids(backend, payments) == [1, 2, 3, 4]

        assert ApprovalStore(store).decide(second, True, "dba@example.com", None)
        cur = conn.cursor()
        cur.execute(delete)
        assert cur.rowcount == 3
        conn.commit()
        assert _ids(backend, payments) == [2]
        assert _status(store, second) == ("used", 4)
    finally:
        conn.close()
    assert _ids(backend, payments) == [2]

    records = _records(audit)
    deletes = [r for r in records if r["event"] == "decision" and r["kinds"] == ["delete"]]
    retired = [r for r in deletes if "superseded" in (r["decision"]["message"] or "")]
    assert len(retired) == 1
    assert retired[0]["decision"]["action"] == "review"
    assert retired[0]["impact_rows"] == 4
    message = retired[0]["decision"]["message"]
    assert f"approval {first}" in message and f"request {second}" in message
    ran = [r for r in deletes if r["decision"]["action"] == "allow"]
    assert len(ran) == 1 and f"request {second}" in ran[0]["decision"]["message"]
    assert ran[0]["impact_rows"] == 3
    # every dry run and approval look-up was written ahead
    at = records.index(retired[0])
    assert records[at - 1]["event"] == "intent"


@pytest.mark.parametrize("rule", [True, False], ids=["affected-rows-rule", "review-all"])
def test_a_smaller_impact_uses_the_approval_once(
    backend: Backend, payments: str, tmp_path: Path, rule: bool
) -> None:
    """Approved as touching 3 rows; one row leaves the WHERE: fewer rows are
    within what the person accepted, so the approval is used, once."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    audit = tmp_path / "audit.jsonl"
    delete = f"DELETE FROM {payments} WHERE amount > 1000"
    conn = guardeddb.connect(backend.url, policy=_policy(store, audit, rule), identity=AGENT)
    try:
        rid = _held(conn, delete)
        assert ApprovalStore(store).decide(rid, True, "dba@example.com", None)
        conn.cursor().execute(f"UPDATE {payments} SET amount = 500 WHERE id = 1")
        conn.commit()
        cur = conn.cursor()
        cur.execute(delete)
        assert cur.rowcount == 2
        conn.commit()
        assert _ids(backend, payments) == [1, 2]
        assert _status(store, rid) == ("used", 3)
        conn.cursor().execute(f"UPDATE {payments} SET amount = 8000 WHERE id IN (1, 2)")
        conn.commit()
        assert _held(conn, delete) != rid  # once
    finally:
        conn.close()
    assert _ids(backend, payments) == [1, 2]
    deletes = [r for r in _records(audit) if r["event"] == "decision" and r["kinds"] == ["delete"]]
    ran = [r for r in deletes if r["decision"]["action"] == "allow"]
    assert len(ran) == 1 and ran[0]["impact_rows"] == 2
    assert f"request {rid}" in ran[0]["decision"]["message"]
    assert "3 rows" in ran[0]["decision"]["message"]


@pytest.mark.pg
def test_the_second_dry_run_waits_for_the_write_ahead_record(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """Approved, then the audit goes down: the DELETE is measured again only
    after its intent record, so nothing runs (a trigger drawing from a
    sequence, which no rollback undoes, never fires) and the approval is
    neither used nor superseded; with the disk back it runs once."""
    name = f"approvimpact_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, amount int)")
        raw.execute(f"INSERT INTO {name} VALUES (1, 1200), (2, 990), (3, 45000)")
        raw.execute(f"CREATE SEQUENCE {name}_seq")
        raw.execute(
            f"CREATE FUNCTION {name}_f() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN PERFORM nextval('{name}_seq'); RETURN OLD; END $$"
        )
        raw.execute(
            f"CREATE TRIGGER {name}_t BEFORE DELETE ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}_f()"
        )

    def drawn() -> int:
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            row = raw.execute(f"SELECT last_value, is_called FROM {name}_seq").fetchone()
        assert row is not None
        return int(row[0]) if row[1] else 0

    trail = tmp_path / "trail"
    trail.mkdir()
    store = f"sqlite:///{tmp_path}/approvals.db"
    delete = f"DELETE FROM {name} WHERE amount > 1000"
    policy = _policy(store, trail / "audit.jsonl", rule=False)
    conn = guardeddb.connect(PG_DSN, policy=policy, identity=AGENT)
    try:
        rid = _held(conn, delete)
        assert drawn() == 2  # the first dry run touched 2 rows
        assert ApprovalStore(store).decide(rid, True, "dba@example.com", None)
        shutil.rmtree(trail)
        with pytest.raises(AuditUnavailable):
            conn.cursor().execute(delete)
        conn.rollback()
        assert drawn() == 2  # no second dry run
        assert _status(store, rid) == ("approved", 2)
        trail.mkdir()
        conn.cursor().execute(delete)
        conn.commit()
        assert drawn() == 6  # the dry run (2), then the run (2)
        assert _status(store, rid) == ("used", 2)
    finally:
        conn.close()
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            left = raw.execute(f"SELECT id FROM {name} ORDER BY id").fetchall()
            raw.execute("SET lock_timeout = '10s'")
            raw.execute(f"DROP TABLE IF EXISTS {name}")
            raw.execute(f"DROP FUNCTION IF EXISTS {name}_f() CASCADE")
            raw.execute(f"DROP SEQUENCE IF EXISTS {name}_seq")
    assert left == [(2,)]


@pytest.mark.pg
def test_asyncio_holds_a_larger_impact_and_runs_a_smaller_one(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """The asyncio pipeline: the same steps, the same outcome on the server."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    policy = _policy(store, tmp_path / "audit.jsonl", rule=True)
    name = f"approvimpact_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, amount int)")
        raw.execute(f"INSERT INTO {name} VALUES (1, 1200), (2, 990), (3, 45000), (4, 3000)")
    delete = f"DELETE FROM {name} WHERE amount > 1000"

    async def held(conn: Any) -> str:
        with pytest.raises(ApprovalRequired) as exc:
            await conn.cursor().execute(delete)
        await conn.rollback()
        return exc.value.request_id

    async def main() -> tuple[str, str, int]:
        conn = await guardeddb.connect_async(PG_DSN, policy=policy, identity=AGENT)
        try:
            first = await held(conn)
            assert ApprovalStore(store).decide(first, True, "dba@example.com", None)
            await conn.cursor().execute(f"UPDATE {name} SET amount = 5000 WHERE id = 2")
            await conn.commit()
            second = await held(conn)  # 4 rows now: superseded, held again
            assert ApprovalStore(store).decide(second, True, "dba@example.com", None)
            await conn.cursor().execute(f"UPDATE {name} SET amount = 10 WHERE id IN (1, 2)")
            await conn.commit()
            cur = conn.cursor()
            await cur.execute(delete)  # 2 rows, approved as 4
            await conn.commit()
            return first, second, cur.rowcount
        finally:
            await conn.close()

    try:
        first, second, count = asyncio.run(main())
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            left = raw.execute(f"SELECT id FROM {name} ORDER BY id").fetchall()
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            raw.execute("SET lock_timeout = '10s'")
            raw.execute(f"DROP TABLE IF EXISTS {name}")
    assert count == 2 and left == [(1,), (2,)]
    assert _status(store, first) == ("superseded", 3)
    assert _status(store, second) == ("used", 4)


@pytest.mark.anyio
async def test_mcp_wait_for_approval_holds_a_grown_statement_again(
    backend: Backend, payments: str, tmp_path: Path
) -> None:
    """Through ``guardeddb mcp``: approved as 3 rows, a fourth enters the WHERE
    (another writer): wait_for_approval changes nothing and answers with a new
    pending request showing 4. An approval another process superseded is
    answered as such, and nothing runs."""
    policy = str(_mcp_policy(tmp_path))
    bulk = {
        "sql": backend.sql(f"UPDATE {payments} SET amount = 1 WHERE amount > ?"),
        "params": [1000],
    }
    amounts = f"SELECT id, amount FROM {payments} ORDER BY id"
    async with _served(backend, tmp_path, "--policy", policy, "--user", "alice@example.com") as s:
        held = _payload(await s.call_tool("query", bulk))
        assert held["status"] == "pending_approval" and held["impact_rows"] == 3
        rid = held["request_id"]
        await _cli("approvals", "--policy", policy, "approve", rid, "--by", "dba@example.com")
        raw = backend.connect_raw()
        raw.cursor().execute(f"UPDATE {payments} SET amount = 5000 WHERE id = 2")
        raw.commit()
        raw.close()
        before = backend.rows(amounts)

        grown = await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_seconds": 10})
        assert not grown.is_error, _text(grown)
        again = _payload(grown)
        assert again["status"] == "pending_approval"
        assert again["request_id"] != rid and again["impact_rows"] == 4
        assert backend.rows(amounts) == before  # nothing ran

        second = again["request_id"]
        await _cli("approvals", "--policy", policy, "approve", second, "--by", "dba@example.com")
        # another process ran it with more rows first, and retired the approval
        assert ApprovalStore(f"sqlite:///{tmp_path / 'approvals.db'}").supersede(second)
        late = await s.call_tool("wait_for_approval", {"request_id": second, "timeout_seconds": 5})
        assert late.is_error and _payload(late)["status"] == "superseded"
    assert backend.rows(amounts) == before


def test_a_superseded_approval_is_never_used_and_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Used or superseded, once, never both; ``approvals list --status superseded``."""
    store_url = f"sqlite:///{tmp_path}/approvals.db"
    store = ApprovalStore(store_url)
    rid = store.hold(AGENT, "digest", "DELETE FROM t WHERE x > 1", "r", "why", impact=2)
    assert rid is not None
    assert not store.supersede(rid)  # pending: nothing to retire
    assert store.decide(rid, True, "dba", None)
    assert store.supersede(rid)
    assert not store.use(rid) and not store.supersede(rid)
    assert store.find("digest") is None
    assert not store.decide(rid, True, "dba", None)  # cannot be approved again
    assert main(["approvals", "--store", store_url, "list", "--status", "superseded"]) == 0
    assert rid in capsys.readouterr().out
    used = store.hold(AGENT, "other", "DELETE FROM t WHERE x > 2", "r", "why", impact=1)
    assert used is not None and store.decide(used, True, "dba", None)
    assert store.use(used) and not store.supersede(used)
    assert _status(store_url, used) == ("used", 1)
