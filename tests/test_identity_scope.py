"""``identity()`` inside a generator does not leak into its caller (#12, finding 14).

A generator runs in its caller's context, so a ``with guardeddb.identity()``
paused at a ``yield`` used to stay bound for the caller: the caller's queries
ran as the generator's identity, unmasked. Judged by what the caller's query
returns (masked or raw) and by the audit record's identity, on every database.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
from collections.abc import AsyncGenerator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_shop import CUSTOMERS, Shop

AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))
AUDITOR = Identity(user="carol@example.com", roles=frozenset({"compliance"}))
RAW_SSN = CUSTOMERS[0][4]


def _policy(tmp_path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "extends": [],
        "masking": {
            "rules": [{"columns": ["*.ssn"], "operator": "redact"}],
            "unmask": {"roles": ["compliance"]},
        },
        "audit": {"jsonl": str(tmp_path / "audit.jsonl")},
    }


def _ssn(conn: Any, shop: Shop) -> Any:
    cur = conn.cursor()
    cur.execute(shop.sql("SELECT ssn FROM {c} WHERE id = 1"))
    value = cur.fetchall()[0][0]
    cur.close()
    return value


def _audited_users(tmp_path: Path) -> list[Any]:
    """Who each SELECT's decision record names, and whether it saw raw values."""
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    return [
        ((r.get("identity") or {}).get("user"), r["unmasked"])
        for r in records
        if r.get("event") == "decision" and "SELECT" in r.get("statement", "")
    ]


def test_a_paused_generator_lends_its_identity_to_nobody(
    backend: Backend, shop: Shop, tmp_path: Path
) -> None:
    """The generator reads raw values as the auditor; between its yields the
    caller (the agent) gets masked values, and the audit trail says who
    ran each query."""
    conn = guardeddb.connect(backend.url, policy=_policy(tmp_path))

    def as_auditor() -> Generator[Any, None, None]:
        with guardeddb.identity(AUDITOR):
            yield _ssn(conn, shop)
            yield _ssn(conn, shop)

    try:
        with guardeddb.identity(AGENT):
            gen = as_auditor()
            assert next(gen) == RAW_SSN  # the generator's own query: raw
            assert _ssn(conn, shop) == "[REDACTED]"  # the caller's, while it is paused
            assert guardeddb.current_identity() == AGENT
            assert next(gen) == RAW_SSN
            assert _ssn(conn, shop) == "[REDACTED]"
            with pytest.raises(StopIteration):
                next(gen)
            assert _ssn(conn, shop) == "[REDACTED]"
        # no identity at all around the paused generator: still not the auditor's
        gen = as_auditor()
        assert next(gen) == RAW_SSN
        assert guardeddb.current_identity() is None
        assert _ssn(conn, shop) == "[REDACTED]"
        gen.close()
    finally:
        conn.close()
    users = _audited_users(tmp_path)
    auditor, agent = (AUDITOR.user, True), (AGENT.user, False)
    assert users == [auditor, agent, auditor, agent, agent, auditor, (None, False)]


def test_a_paused_async_generator_lends_its_identity_to_nobody(
    backend: Backend, shop: Shop, tmp_path: Path
) -> None:
    """The same with an async generator on one task."""
    conn = guardeddb.connect(backend.url, policy=_policy(tmp_path))

    async def as_auditor() -> AsyncGenerator[Any, None]:
        with guardeddb.identity(AUDITOR):
            yield _ssn(conn, shop)

    async def in_task() -> Any:
        await asyncio.sleep(0)
        return _ssn(conn, shop)

    async def main() -> list[Any]:
        seen = []
        with guardeddb.identity(AGENT):
            agen = as_auditor()
            seen.append(await agen.__anext__())
            seen.append(_ssn(conn, shop))
            await agen.aclose()
            # a child task copies the context and keeps the identity bound there
            seen.append(await asyncio.create_task(in_task()))
        return seen

    try:
        assert asyncio.run(main()) == [RAW_SSN, "[REDACTED]", "[REDACTED]"]
    finally:
        conn.close()
    agent = (AGENT.user, False)
    assert _audited_users(tmp_path) == [(AUDITOR.user, True), agent, agent]


def test_exiting_in_another_context_says_so() -> None:
    """A generator entered in one context and finished in another: RuntimeError
    in guardeddb's words, and neither context keeps the generator's identity."""

    def gen() -> Iterator[None]:
        with guardeddb.identity(AUDITOR):
            yield
            yield

    g = gen()
    next(g)
    with pytest.raises(RuntimeError, match=r"guardeddb\.identity\(\) exited in another context"):
        contextvars.copy_context().run(lambda: list(g))
    assert guardeddb.current_identity() is None


def test_exiting_out_of_order_says_so_and_keeps_the_callers_identity() -> None:
    """Resumed to its end inside the caller's own identity block: RuntimeError,
    and the caller's identity is still the caller's (not reset under it)."""

    def gen() -> Iterator[None]:
        with guardeddb.identity(AUDITOR):
            yield

    g = gen()
    next(g)
    with guardeddb.identity(AGENT):
        with pytest.raises(RuntimeError, match="out of order"):
            next(g)
        assert guardeddb.current_identity() == AGENT
    assert guardeddb.current_identity() is None


def test_identity_still_reaches_threads_tasks_and_decorated_functions() -> None:
    """What held before: copies of the context (to_thread, child tasks) keep
    the identity; a decorated function runs as it; nesting restores."""

    @guardeddb.identity(AGENT)
    def decorated() -> Identity | None:
        return guardeddb.current_identity()

    async def main() -> list[Identity | None]:
        with guardeddb.identity(AUDITOR):
            child = await asyncio.create_task(_current())
            thread = await asyncio.to_thread(guardeddb.current_identity)
            with guardeddb.identity(AGENT):
                inner = guardeddb.current_identity()
            return [child, thread, inner, guardeddb.current_identity()]

    async def _current() -> Identity | None:
        await asyncio.sleep(0)
        return guardeddb.current_identity()

    assert decorated() == AGENT and decorated() == AGENT
    assert asyncio.run(main()) == [AUDITOR, AUDITOR, AGENT, AUDITOR]
    assert guardeddb.current_identity() is None


@pytest.fixture
def as_auditor() -> Iterator[Identity]:
    """A yield fixture: its pause is meant to hand the identity to the test."""
    with guardeddb.identity(AUDITOR) as ident:
        yield ident


def test_context_managers_and_yield_fixtures_lend_their_identity(as_auditor: Identity) -> None:
    """A generator driven by contextlib (or a pytest yield fixture) lends its
    identity to the block it wraps, as a context manager should."""
    assert guardeddb.current_identity() == as_auditor == AUDITOR

    @contextlib.contextmanager
    def as_agent() -> Iterator[None]:
        with guardeddb.identity(AGENT):
            yield

    @contextlib.asynccontextmanager
    async def as_agent_async() -> AsyncGenerator[None, None]:
        with guardeddb.identity(AGENT):
            yield

    async def main() -> Identity | None:
        async with as_agent_async():
            return guardeddb.current_identity()

    with as_agent():
        assert guardeddb.current_identity() == AGENT
    assert guardeddb.current_identity() == AUDITOR
    assert asyncio.run(main()) == AGENT
