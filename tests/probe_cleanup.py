"""A test that fails on purpose, run only by tests/test_environment.py (its
name does not match test_*.py, so the suite never collects it)."""

from __future__ import annotations

import guardeddb

from .fix_db import PERMISSIVE, Backend


def test_probe_fails_inside_a_transaction(backend: Backend, table: str) -> None:
    """Fails on purpose while its guarded connection holds a write lock on the
    fixture's table, the way an assertion between execute and close does."""
    conn = guardeddb.connect(backend.url, policy=PERMISSIVE)
    conn.cursor().execute(backend.sql(f"UPDATE {table} SET name = ? WHERE id = ?"), ("x", 1))
    assert conn is None, "failing on purpose, with the transaction open"
