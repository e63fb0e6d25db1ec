"""The suite does not depend on its environment (#13): no database name,
server version or port is assumed, and a failing test cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_a_failing_test_leaves_no_transaction_behind() -> None:
    """The probe above fails on every database; the fixture's DROP must then
    run at once (not wait on the probe's locks for lock_timeout and error),
    and no ResourceWarning may surface later."""
    env = dict(os.environ)
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            str(TESTS / "probe_cleanup.py"),  # not a test_*.py file: collected only here
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
