"""Identity travels through contextvars: per thread, per asyncio task, nested."""

from __future__ import annotations

import asyncio
import threading

import pytest

import guardeddb
from guardeddb import Identity, current_identity
from guardeddb.identity import bind_identity, reset_identity


def test_identity_block_binds_and_restores() -> None:
    """Inside the block the identity is current; after it, the outer one is back."""
    assert current_identity() is None
    with guardeddb.identity(user="alice", agent="bot", roles=["support"]) as outer:
        assert current_identity() == outer == Identity("alice", "bot", frozenset({"support"}))
        with guardeddb.identity(user="bob"):
            assert current_identity() == Identity(user="bob")
        assert current_identity() is outer
    assert current_identity() is None


def test_identity_restored_when_block_raises() -> None:
    """An exception leaving the block still restores the previous identity."""
    with pytest.raises(RuntimeError), guardeddb.identity(user="alice"):
        raise RuntimeError
    assert current_identity() is None


def test_identity_object_or_fields_not_both() -> None:
    """Passing an Identity and fields at once is a mistake, said clearly."""
    with pytest.raises(TypeError), guardeddb.identity(Identity(user="a"), user="b"):
        pass


def test_roles_normalized_and_hashable() -> None:
    """Roles become a frozenset (a lone string is one role); identities hash."""
    ident = Identity(user="a", roles="admin")  # type: ignore[arg-type]
    assert ident.roles == frozenset({"admin"})
    assert {ident: 1}[Identity(user="a", roles=frozenset({"admin"}))] == 1
    assert ident.span_attributes["user.roles"] == ("admin",)


def test_bind_and_reset_tokens_for_frameworks() -> None:
    """bind_identity/reset_identity serve middleware that cannot use a with block."""
    token = bind_identity(Identity(user="req"))
    assert current_identity() == Identity(user="req")
    reset_identity(token)
    assert current_identity() is None


def test_threads_see_their_own_identity() -> None:
    """Each thread starts with no identity and keeps its own."""
    seen: dict[str, object] = {}
    barrier = threading.Barrier(3)

    def worker(name: str) -> None:
        seen[f"{name}-before"] = current_identity()
        with guardeddb.identity(user=name):
            barrier.wait()  # all three threads hold their identity at once
            seen[name] = current_identity()

    with guardeddb.identity(user="main"):
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2")]
        for t in threads:
            t.start()
        barrier.wait()
        for t in threads:
            t.join()
        assert current_identity() == Identity(user="main")
    assert seen["t1"] == Identity(user="t1") and seen["t2"] == Identity(user="t2")
    assert seen["t1-before"] is None and seen["t2-before"] is None


def test_asyncio_tasks_are_isolated() -> None:
    """Concurrent tasks interleave at awaits but never see each other's identity."""

    async def task(name: str) -> list[str | None]:
        out = []
        with guardeddb.identity(user=name):
            for _ in range(5):
                await asyncio.sleep(0)
                ident = current_identity()
                out.append(ident.user if ident else None)
        return out

    async def main() -> list[list[str | None]]:
        return await asyncio.gather(*(task(f"u{i}") for i in range(4)))

    results = asyncio.run(main())
    assert results == [[f"u{i}"] * 5 for i in range(4)]


def test_identity_reaches_queries_from_threads() -> None:
    """Queries run in threads are attributed to that thread's identity."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))

    def worker(name: str) -> None:
        conn = guardeddb.connect("sqlite:///:memory:", tracer_provider=tp)
        with guardeddb.identity(user=name):
            for _ in range(20):
                conn.execute("SELECT 1").fetchall()
        conn.close()

    threads = [threading.Thread(target=worker, args=(f"user{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    users = sorted(str((s.attributes or {})["enduser.id"]) for s in exporter.get_finished_spans())
    assert users == sorted(f"user{i}" for i in range(4) for _ in range(20))
