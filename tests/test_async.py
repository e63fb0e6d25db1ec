"""psycopg's asyncio API, guarded like the blocking one, against the real PostgreSQL.

Each test runs its coroutine with ``asyncio.run``: no event-loop plugin.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from opentelemetry.trace import StatusCode
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row, dict_row, namedtuple_row

import guardeddb
from guardeddb import (
    ApprovalRequired,
    GuardedAsyncConnection,
    GuardedAsyncCursor,
    Identity,
    QueryBlocked,
)
from guardeddb.approvals import ApprovalRequest, ApprovalStore
from guardeddb.audit import verify

from .fix_db import PERMISSIVE, Backend
from .fix_otel import Otel
from .fix_shop import SECRETS, SHOP_POLICY, Shop
from .test_approvals import IMPACT_POLICY

pytestmark = pytest.mark.pg

T = TypeVar("T")
AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))
DBA = Identity(user="dba@example.com")
COMPLIANCE = Identity(user="carol@example.com", roles=frozenset({"compliance"}))

READONLY_AGENTS: dict[str, Any] = {
    "version": 1,
    "rules": [
        {
            "id": "agents-read-only",
            "match": {"identity": {"agent": "*"}, "statements": ["write", "ddl", "dcl", "admin"]},
            "action": "block",
            "message": "AI agents may only read",
        }
    ],
}


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    """Every test here runs on PostgreSQL: psycopg is the asyncio driver guardeddb guards."""
    return pg_backend


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _connect(backend: Backend, policy: Any = PERMISSIVE, **kw: Any) -> GuardedAsyncConnection:
    return await guardeddb.connect_async(backend.url, policy=policy, **kw)


def _count(backend: Backend, table: str) -> int:
    raw = backend.connect_raw()
    n = int(raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    raw.close()
    return n


def _review_policy(store: str, audit: Path | None = None) -> dict[str, Any]:
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
        "approvals": {"store": store},
    }
    if audit is not None:
        policy["audit"] = {"jsonl": str(audit)}
    return policy


# --- opening and wrapping


def test_connect_async_url_callable_and_wrap_async(backend: Backend) -> None:
    """A URL, psycopg's async connect callable and an open AsyncConnection all
    give a guarded proxy that is still an AsyncConnection; wrap_async is idempotent."""

    async def main() -> None:
        by_url = await _connect(backend)
        by_callable = await guardeddb.connect_async(
            psycopg.AsyncConnection.connect, backend.url, policy=PERMISSIVE
        )
        raw = await psycopg.AsyncConnection.connect(backend.url)
        wrapped: Any = guardeddb.wrap_async(raw, policy=PERMISSIVE)  # the proxy: __wrapped__
        for conn in (by_url, by_callable, wrapped):
            assert isinstance(conn, GuardedAsyncConnection)
            assert isinstance(conn, psycopg.AsyncConnection)
            cur = await conn.execute("SELECT 1")
            assert isinstance(cur, GuardedAsyncCursor)
            assert await cur.fetchone() == (1,)
        assert wrapped.__wrapped__ is raw
        assert guardeddb.wrap_async(wrapped) is wrapped
        for conn in (by_url, by_callable, wrapped):
            await conn.close()

    run(main())


def test_async_and_blocking_entry_points_refuse_each_others_connections(
    backend: Backend, tmp_path: Path
) -> None:
    """wrap() refuses an AsyncConnection (its coroutines would pass unguarded),
    wrap_async() a blocking one; connect_async() wants an async driver and fails
    on a bad policy before any connection opens."""

    async def main() -> None:
        raw = await psycopg.AsyncConnection.connect(backend.url)
        with pytest.raises(TypeError, match="wrap_async"):
            guardeddb.wrap(raw)
        await raw.close()
        blocking = psycopg.connect(backend.url)
        with pytest.raises(TypeError, match=r"guardeddb\.wrap\(\)"):
            guardeddb.wrap_async(blocking)
        blocking.close()
        with pytest.raises(TypeError, match="not an async connect callable"):
            await guardeddb.connect_async(psycopg.connect, backend.url)
        with pytest.raises(ValueError, match="postgresql://"):
            await guardeddb.connect_async(f"sqlite:///{tmp_path}/x.db")
        with pytest.raises(guardeddb.PolicyError):
            await guardeddb.connect_async("postgresql://nobody@192.0.2.1/x", policy={"version": 9})

    run(main())


# --- guardrails


def test_drop_is_blocked_without_reaching_the_database(
    backend: Backend, table: str, otel: Otel
) -> None:
    """With no policy given (agent-safe), a DROP, also one composed with
    psycopg.sql, raises QueryBlocked, also a psycopg.ProgrammingError, and never
    reaches the server: no transaction opens, the table stays."""

    async def main() -> None:
        conn = await guardeddb.connect_async(backend.url, tracer_provider=otel.tracer_provider)
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            with pytest.raises(QueryBlocked) as blocked:
                await cur.execute(f"DROP TABLE {table}")
            assert isinstance(blocked.value, psycopg.ProgrammingError)
            assert blocked.value.decision.rule_id == "no-ddl"
            composed = sql.SQL("DROP TABLE {}").format(sql.Identifier(table))
            with pytest.raises(QueryBlocked):
                await conn.execute(composed)
            assert conn.info.transaction_status == TransactionStatus.IDLE  # nothing was sent
            with pytest.raises(QueryBlocked) as mass:
                await cur.execute(f"DELETE FROM {table}")
            assert mass.value.decision.rule_id == "write-needs-where"
        await conn.close()

    run(main())
    assert _count(backend, table) == 3
    span = otel.spans()[0]
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "guardeddb.QueryBlocked"


def test_read_only_identity_gets_a_read_only_session(backend: Backend, table: str) -> None:
    """For an identity that may only read, the server refuses a write that bypasses
    the guard; a read-write identity writes on the same connection afterwards, and
    an identity change inside an open transaction is refused."""

    async def main() -> None:
        conn = await _connect(backend, READONLY_AGENTS)
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            await cur.execute(f"SELECT count(*) FROM {table}")
            assert await cur.fetchone() == (3,)
            raw_cur = conn.__wrapped__.cursor()  # what a side-effecting function would do
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await raw_cur.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
            await raw_cur.close()
            await conn.rollback()
            with pytest.raises(QueryBlocked, match="AI agents may only read"):
                await cur.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
            await conn.commit()
        with guardeddb.identity(DBA):
            await cur.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
        with guardeddb.identity(AGENT), pytest.raises(QueryBlocked, match="commit or roll back"):
            await cur.execute(f"SELECT count(*) FROM {table}")
        await conn.commit()
        await conn.close()

    run(main())
    assert _count(backend, table) == 2


@pytest.mark.parametrize("autocommit", [False, True])
def test_affected_rows_measured_by_an_awaited_dry_run(
    backend: Backend, table: str, autocommit: bool
) -> None:
    """The dry run in a SAVEPOINT is awaited like any statement: it measures the
    rows, the rule blocks by them, and nothing it did survives."""

    async def main() -> None:
        conn = await _connect(backend, IMPACT_POLICY, autocommit=autocommit)
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            with pytest.raises(QueryBlocked, match="more than one row"):
                await cur.execute(f"DELETE FROM {table} WHERE id > 0")
            await cur.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
            assert cur.rowcount == 1
            await conn.commit()
        await conn.close()

    run(main())
    assert _count(backend, table) == 2


def test_cancelled_dry_run_still_rolls_back_its_savepoint(backend: Backend, table: str) -> None:
    """A task cancelled while its dry run runs leaves no savepoint and no failed
    transaction behind: the cleanup steps run before the cancellation propagates."""

    async def main() -> None:
        conn = await _connect(backend, IMPACT_POLICY)
        cur = conn.cursor()
        slow = f"DELETE FROM {table} WHERE id > 0 AND pg_sleep(0.3) IS NOT NULL"
        with guardeddb.identity(AGENT), pytest.raises(TimeoutError):
            await asyncio.wait_for(cur.execute(slow), 0.2)
        # Still usable, inside the caller's transaction, not in a failed one.
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        await cur.execute(f"SELECT count(*) FROM {table}")
        assert await cur.fetchone() == (3,)
        with pytest.raises(psycopg.errors.InvalidSavepointSpecification):
            await conn.__wrapped__.execute("RELEASE SAVEPOINT guardeddb_dry_run")
        await conn.rollback()
        await conn.close()

    run(main())
    assert _count(backend, table) == 3


# --- approvals


def test_review_holds_then_runs_exactly_once_after_approval(
    backend: Backend, table: str, tmp_path: Path, otel: Otel
) -> None:
    """A review rule raises ApprovalRequired with a request id; once approved in
    the store, that identity's exact query runs once, then is held again."""
    store = f"sqlite:///{tmp_path}/approvals.db"

    async def main() -> str:
        conn = await _connect(backend, _review_policy(store), tracer_provider=otel.tracer_provider)
        cur = conn.cursor()
        delete = f"DELETE FROM {table} WHERE id = %s RETURNING id"
        with guardeddb.identity(AGENT):
            with pytest.raises(ApprovalRequired) as held:
                await cur.execute(delete, (1,))
            assert isinstance(held.value, psycopg.ProgrammingError)
            rid = held.value.request_id
            request = ApprovalStore(store).get(rid)
            assert request is not None and request.impact == 1  # measured by the dry run
            assert ApprovalStore(store).decide(rid, True, "dba@example.com", None)
            with pytest.raises(ApprovalRequired):
                await cur.execute(delete, (2,))  # other parameters are still held
            await cur.execute(delete, (1,))
            assert await cur.fetchall() == [(1,)]
            await conn.commit()
            with pytest.raises(ApprovalRequired) as again:
                await cur.execute(delete, (1,))
            assert again.value.request_id != rid
        await conn.close()
        return rid

    rid = run(main())
    assert _count(backend, table) == 2
    ran = [s for s in otel.spans() if s.status.status_code is not StatusCode.ERROR]
    assert len(ran) == 1
    attrs = dict(ran[0].attributes or {})
    assert attrs["guardeddb.decision.action"] == "allow"
    assert attrs["enduser.id"] == AGENT.user
    assert attrs["gen_ai.agent.name"] == AGENT.agent
    assert attrs["db.response.returned_rows"] == 1
    held_spans = [s for s in otel.spans() if s.status.status_code is StatusCode.ERROR]
    assert {(s.attributes or {})["error.type"] for s in held_spans} == {
        "guardeddb.ApprovalRequired"
    }
    assert rid


def test_in_process_approver_is_asked_off_the_event_loop(backend: Backend, table: str) -> None:
    """The approver callback stays synchronous: it runs in a thread, so other
    tasks go on while it decides; its yes runs the query, its no blocks it."""
    asked: list[ApprovalRequest] = []
    threads: set[int] = set()

    def approver(request: ApprovalRequest) -> bool:
        asked.append(request)
        threads.add(threading.get_ident())
        time.sleep(0.3)  # a person thinking
        return "WHERE id =" in request.statement

    async def main() -> int:
        policy = _review_policy("unused")
        del policy["approvals"]
        conn = await _connect(backend, policy, approver=approver)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        cur = conn.cursor()
        with guardeddb.identity(AGENT):
            await cur.execute(f"DELETE FROM {table} WHERE id = %s", (2,))
            await conn.commit()
            with pytest.raises(QueryBlocked, match="not approved by approver"):
                await cur.execute(f"DELETE FROM {table} WHERE name = 'Ada'")
        ticking.cancel()
        await conn.close()
        return ticks

    ticks = run(main())
    assert ticks >= 20  # the loop ran during the 0.6 s of thinking
    assert threading.get_ident() not in threads
    assert len(asked) == 2 and "name = 'Ada'" in asked[1].statement
    assert _count(backend, table) == 2


# --- rows: masking, fetch paths, row factories


def test_every_fetch_path_masks(shop: Shop) -> None:
    """fetchone, fetchmany, fetchall, async iteration, stream(), results() and a
    server-side cursor all return masked rows; an unmask role sees raw values."""
    query = shop.sql("SELECT name, email, ssn, card_number, notes FROM {c} ORDER BY id")

    async def main() -> tuple[list[Any], list[Any]]:
        conn = await _connect(shop.backend, SHOP_POLICY)
        got: list[Any] = []
        cur = conn.cursor()
        await cur.execute(query)
        got += [await cur.fetchone(), *(await cur.fetchmany(1)), *(await cur.fetchall())]
        await cur.execute(query)
        got += [row async for row in cur]
        got += [row async for row in cur.stream(query)]
        await cur.execute(query + "; " + query)
        got += [row async for res in cur.results() for row in await res.fetchall()]
        await cur.execute(query + "; " + query)
        got += await (await cur.set_result(1)).fetchall()
        async with conn.transaction():
            server = conn.cursor(name="masked_export")
            await server.execute(query)
            got += [*(await server.fetchmany(2)), *(await server.fetchall())]
            await server.close()
        with guardeddb.identity(COMPLIANCE):
            raw_rows = await (await conn.execute(query)).fetchall()
        await conn.close()
        return got, raw_rows

    got, raw_rows = run(main())
    assert len(got) == 21 and [r[0] for r in got[:3]] == [
        "Ada Lovelace",
        "Grace Hopper",
        "Alan Turing",
    ]
    flat = repr(got)
    leaked = [s for s in SECRETS if s in flat]
    assert not leaked
    assert raw_rows[0][1] == "ada.lovelace@example.com"


@dataclass
class Customer:
    name: str
    email: str


def test_row_factories_build_rows_from_masked_values(shop: Shop) -> None:
    """dict_row, namedtuple_row and class_row (on the cursor or the connection)
    keep their row types, with masked values."""
    query = shop.sql("SELECT name, email FROM {c} WHERE id = 1")

    async def main() -> list[Any]:
        conn = await _connect(shop.backend, SHOP_POLICY, row_factory=dict_row)
        rows = [await (await conn.execute(query)).fetchone()]
        for factory in (namedtuple_row, class_row(Customer)):
            cur = conn.cursor(row_factory=factory)
            await cur.execute(query)
            rows.append(await cur.fetchone())
        await conn.close()
        return rows

    as_dict, as_namedtuple, as_object = run(main())
    assert as_dict == {"name": "Ada Lovelace", "email": "a***@example.com"}
    assert (as_namedtuple.name, as_namedtuple.email) == ("Ada Lovelace", "a***@example.com")
    assert as_object == Customer("Ada Lovelace", "a***@example.com")


def test_copy_to_stdout_is_refused_to_masked_identities(shop: Shop) -> None:
    """COPY ... TO STDOUT cannot be masked: refused when the block is entered,
    allowed to an unmask role."""
    copy = shop.sql("COPY (SELECT email FROM {c} ORDER BY id) TO STDOUT")

    async def main() -> bytes:
        conn = await _connect(shop.backend, SHOP_POLICY)
        cur = conn.cursor()
        with pytest.raises(QueryBlocked, match="cannot be masked"):
            async with cur.copy(copy):
                pass
        data = b""
        with guardeddb.identity(COMPLIANCE):
            async with cur.copy(copy) as out:
                async for chunk in out:
                    data += bytes(chunk)
        await conn.close()
        return data

    assert b"ada.lovelace@example.com" in run(main())


# --- statements: executemany, transactions, errors


def test_executemany_transactions_and_context_managers(
    backend: Backend, table: str, otel: Otel
) -> None:
    """executemany is one BATCH span; transaction() blocks commit or roll back
    through the guarded connection; ``async with`` works on both proxies."""

    async def main() -> None:
        async with (
            await _connect(backend, tracer_provider=otel.tracer_provider) as conn,
            conn.cursor() as cur,
        ):
            assert isinstance(conn, GuardedAsyncConnection)
            assert isinstance(cur, GuardedAsyncCursor)
            await cur.executemany(
                f"INSERT INTO {table} (id, name, email) VALUES (%s, %s, %s)",
                [(10, "a", "a@x.org"), (11, "b", "b@x.org"), (12, "c", "c@x.org")],
            )
            async with conn.transaction():
                await cur.execute(f"DELETE FROM {table} WHERE id = %s", (10,))
            with pytest.raises(psycopg.errors.UniqueViolation):
                async with conn.transaction():
                    await cur.execute(f"DELETE FROM {table} WHERE id = %s", (11,))
                    await cur.execute(f"INSERT INTO {table} (id) VALUES (%s)", (12,))
        assert conn.closed

    run(main())
    assert _count(backend, table) == 5  # 3 + 3 inserted, 10 deleted, 11's delete rolled back
    batch = otel.spans()[0]
    assert batch.name == f"BATCH INSERT {table}"
    assert (batch.attributes or {})["db.operation.batch.size"] == 3


def test_database_error_is_reraised_unchanged(backend: Backend, otel: Otel) -> None:
    """The driver's own exception reaches the caller; the span says what it was."""

    async def main() -> None:
        conn = await _connect(backend, tracer_provider=otel.tracer_provider)
        with pytest.raises(psycopg.errors.DivisionByZero) as err:
            await conn.execute("SELECT 1 / 0")
        assert type(err.value) is psycopg.errors.DivisionByZero
        await conn.rollback()
        await conn.close()

    run(main())
    span = otel.spans()[0]
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["error.type"] == "psycopg.errors.DivisionByZero"
    assert attrs["db.response.status_code"] == "22012"


# --- telemetry and audit


def test_spans_and_audit_records_carry_identity_rows_and_chain(
    shop: Shop, otel: Otel, tmp_path: Path
) -> None:
    """Spans name the identity and count returned and masked values; the audit
    trail records decisions, results and the commit, and verifies."""
    path = tmp_path / "audit.jsonl"
    policy = {**SHOP_POLICY, "extends": ["agent-safe"], "audit": {"jsonl": str(path)}}
    query = shop.sql("SELECT name, email FROM {c} WHERE id < %s")

    async def main() -> None:
        conn = await _connect(
            shop.backend,
            policy,
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        with guardeddb.identity(AGENT):
            cur = await conn.execute(query, (3,))
            assert len(await cur.fetchall()) == 2
            with pytest.raises(QueryBlocked):
                await conn.execute(shop.sql("DROP TABLE {c}"))
            await conn.commit()
        await conn.close()

    run(main())
    span = otel.spans()[0]
    attrs = dict(span.attributes or {})
    assert attrs["enduser.id"] == AGENT.user
    assert attrs["gen_ai.agent.name"] == AGENT.agent
    assert attrs["db.response.returned_rows"] == 2
    assert attrs["guardeddb.masked.values"] == 2
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # the commit: judged and written ahead (a decision record), then its outcome
    assert [r["event"] for r in records] == [
        "decision",
        "result",
        "decision",
        "result",
        "decision",
        "commit",
    ]
    assert records[4]["kinds"] == ["commit"]
    assert {r["identity"]["user"] for r in records} == {AGENT.user}
    assert records[1]["rows"] == 2
    assert verify(path) == (6, None)


def test_concurrent_tasks_each_keep_their_own_identity(backend: Backend, otel: Otel) -> None:
    """Twenty tasks over four shared connections, each bound to its own identity
    and yielding between statements: every span and audit record names the task
    that ran it."""
    users = [f"user{i:02d}@example.com" for i in range(20)]

    async def task(conn: GuardedAsyncConnection, user: str) -> list[Any]:
        with guardeddb.identity(user=user, agent="batch-agent"):
            got = []
            for _ in range(2):
                await asyncio.sleep(0)
                cur = conn.cursor()
                await cur.execute("SELECT %s::text", (user,))
                await asyncio.sleep(0)
                got.append((await cur.fetchone())[0])
                assert guardeddb.current_identity() is not None
                assert guardeddb.current_identity().user == user  # type: ignore[union-attr]
            return got

    async def main() -> list[list[Any]]:
        conns = [
            await _connect(backend, autocommit=True, tracer_provider=otel.tracer_provider)
            for _ in range(4)
        ]
        results = await asyncio.gather(*(task(conns[i % 4], u) for i, u in enumerate(users)))
        for conn in conns:
            await conn.close()
        return results

    results = run(main())
    assert results == [[u, u] for u in users]
    per_user: dict[Any, int] = {}
    for span in otel.spans():
        attrs = dict(span.attributes or {})
        assert attrs["db.response.returned_rows"] == 1
        per_user[attrs["enduser.id"]] = per_user.get(attrs["enduser.id"], 0) + 1
    assert per_user == dict.fromkeys(users, 2)


# --- transparency


def test_proxies_answer_like_the_driver(backend: Backend, table: str) -> None:
    """The same script on a raw and on a guarded AsyncConnection (permissive
    policy) gives the same results and cursor attributes, in PEP 249's terms."""

    async def script(conn: Any) -> list[Any]:
        out: list[Any] = []
        cur = conn.cursor()
        out.append(cur.description)  # None before any execute
        await cur.execute(f"SELECT id, name FROM {table} WHERE id >= %s ORDER BY id", (2,))
        out += [
            [d.name for d in cur.description],
            cur.rowcount,
            cur.rownumber,
            cur.statusmessage,
            await cur.fetchone(),
            cur.rownumber,
            await cur.fetchall(),
            await cur.fetchall(),  # exhausted: []
        ]
        await cur.scroll(0, "absolute")
        out.append(await cur.fetchone())
        await cur.execute(f"UPDATE {table} SET name = name WHERE id < %s", (3,))
        out += [cur.description, cur.rowcount, cur.statusmessage]
        out += [
            hasattr(cur, name)
            for name in ("callproc", "nextset", "stream", "copy", "scroll", "results")
        ]
        out += [cur.closed, conn.closed, conn.info.dbname, conn.autocommit]
        await cur.close()
        out += [cur.closed, cur.connection is conn]
        await conn.rollback()
        await conn.close()
        out.append(conn.closed)
        return out

    async def main() -> tuple[list[Any], list[Any]]:
        raw = await script(await psycopg.AsyncConnection.connect(backend.url))
        guarded = await script(await _connect(backend))
        return raw, guarded

    raw, guarded = run(main())
    assert guarded == raw
