"""The suite does not depend on its environment (#13): no database name,
server version or port is assumed, and a failing test cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import guardeddb

from .fix_db import PERMISSIVE, Backend

TESTS = Path(__file__).resolve().parent
PROBE = "GUARDEDDB_CLEANUP_PROBE"


@pytest.mark.skipif(os.environ.get(PROBE) != "1", reason="run by the test below only")
def test_probe_fails_inside_a_transaction(backend: Backend, table: str) -> None:
    """Fails on purpose while its guarded connection holds a write lock on the
    fixture's table, the way an assertion between execute and close does."""
    conn = guardeddb.connect(backend.url, policy=PERMISSIVE)
    conn.cursor().execute(backend.sql(f"UPDATE {table} SET name = ? WHERE id = ?"), ("x", 1))
    assert conn is None, "failing on purpose, with the transaction open"


def test_a_failing_test_leaves_no_transaction_behind() -> None:
    """The probe above fails on every database; the fixture's DROP must then
    run at once (not wait on the probe's locks for lock_timeout and error),
    and no ResourceWarning may surface later."""
    env = {**os.environ, PROBE: "1"}
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            f"{TESTS / Path(__file__).name}::test_probe_fails_inside_a_transaction",
        ],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\b3 failed\b", summary), done.stdout[-3000:]
    assert "error" not in summary, done.stdout[-3000:]
    assert "ResourceWarning" not in done.stdout + done.stderr
    assert elapsed < 60, f"the fixture waited on a lock: {elapsed:.0f} s"
