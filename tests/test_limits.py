"""``limits.max_rows``: a guarded result returns at most that many rows, on
every fetch path, and says when it cut one (log and span)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import guardeddb
from guardeddb import PolicyError

from .fix_db import Backend

CAP = {"version": 1, "extends": ["agent-safe"], "limits": {"max_rows": 2}}


def _guarded(backend: Backend, policy: Any = CAP) -> Any:
    return guardeddb.wrap(backend.connect_raw(), policy=policy)


def test_fetchall_stops_at_the_cap(
    backend: Backend, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three rows in the table, a cap of two: fetchall returns two and the log says why."""
    conn = _guarded(backend)
    try:
        cur = conn.cursor()
        with caplog.at_level(logging.WARNING, logger="guardeddb"):
            cur.execute(f"SELECT id FROM {table} ORDER BY id")
            rows = cur.fetchall()
        assert [r[0] for r in rows] == [1, 2]
        assert "max_rows = 2" in caplog.text
        assert cur.fetchall() in ([], ())  # nothing past the cap, ever
    finally:
        conn.close()


def test_fetchone_fetchmany_and_iteration_share_the_cap(backend: Backend, table: str) -> None:
    conn = _guarded(backend)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert cur.fetchone()[0] == 1
        assert [r[0] for r in cur.fetchmany(5)] == [2]
        assert cur.fetchone() is None
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert [r[0] for r in cur] == [1, 2]
        cur.execute(f"SELECT id FROM {table} ORDER BY id")  # a new result: a new budget
        assert len(cur.fetchmany(1)) == 1 and len(cur.fetchall()) == 1
    finally:
        conn.close()


def test_results_under_the_cap_are_untouched(
    backend: Backend, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = _guarded(backend, {"version": 1, "limits": {"max_rows": 3}})
    try:
        cur = conn.cursor()
        with caplog.at_level(logging.WARNING, logger="guardeddb"):
            cur.execute(f"SELECT id FROM {table} ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == [1, 2, 3]
        assert "truncated" not in caplog.text
    finally:
        conn.close()


def test_presets_cap_at_ten_thousand_rows() -> None:
    conn = guardeddb.connect("sqlite:///:memory:")
    try:
        cur = conn.cursor()
        cur.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10005) "
            "SELECT i FROM n"
        )
        assert len(cur.fetchall()) == 10000
    finally:
        conn.close()


@pytest.mark.parametrize("value", [0, -1, "10", True, 1.5, 10**10])
def test_a_bad_max_rows_names_the_key(value: Any) -> None:
    with pytest.raises(PolicyError, match=r"limits\.max_rows"):
        guardeddb.load_policy({"version": 1, "limits": {"max_rows": value}})


@pytest.mark.pg
def test_asyncio_cursors_are_capped_too(pg_backend: Backend) -> None:
    """psycopg's AsyncCursor: what the driver returned is cut to the cap."""
    import asyncio

    import psycopg

    async def main() -> None:
        raw = await psycopg.AsyncConnection.connect(pg_backend.url)
        conn = guardeddb.wrap_async(raw, policy=CAP)
        try:
            cur = conn.cursor()
            await cur.execute("SELECT generate_series(1, 5)")
            assert [r[0] for r in await cur.fetchall()] == [1, 2]
            await cur.execute("SELECT generate_series(1, 5)")
            assert [r[0] for r in await cur.fetchmany(10)] == [1, 2]
        finally:
            await conn.close()

    asyncio.run(main())
