"""Audit cost: a point query on sqlite3 with and without a JSONL audit trail.

Cases, interleaved in rotating rounds, medians: raw sqlite3; guardeddb
without audit; with a JSONL trail (fsync never); with fsync always. Each
audited query writes two chained records (its decision and its result).

    python benchmarks/bench_audit.py [--rounds N] [--queries N]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import guardeddb

QUERY = "SELECT id, name FROM users WHERE id = ?"


def _db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"user {i}") for i in range(1000)])
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())

    def guarded(audit: dict[str, Any] | None) -> Any:
        policy: dict[str, Any] = {
            "version": 1,
            "extends": ["agent-safe"],
            "masking": {"detectors": []},
        }
        if audit is not None:
            policy["audit"] = audit
        return guardeddb.wrap(_db(), policy=policy)

    raw = _db()
    conns: dict[str, Any] = {
        "raw sqlite3": raw,
        "guardeddb, no audit": guarded(None),
        "guardeddb + JSONL, fsync never": guarded(
            {"jsonl": str(tmp / "a.jsonl"), "fsync": "never"}
        ),
        "guardeddb + JSONL, fsync always": guarded(
            {"jsonl": str(tmp / "b.jsonl"), "fsync": "always"}
        ),
    }

    def run(conn: Any) -> Callable[[], None]:
        cur = conn.cursor()

        def batch() -> None:
            for i in range(args.queries):
                cur.execute(QUERY, (i % 1000,))
                cur.fetchone()
                cur.fetchone()  # exhausts the result: the result record is written now

        return batch

    batches = {name: run(conn) for name, conn in conns.items()}
    samples: dict[str, list[float]] = {name: [] for name in batches}
    names = list(batches)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            batches[name]()
            samples[name].append((time.perf_counter() - start) / args.queries * 1e6)
    base = statistics.median(samples["raw sqlite3"])
    print(f"point query, {args.rounds} rounds x {args.queries} queries, median us/query")
    for name in names:
        us = statistics.median(samples[name])
        print(f"  {name:34} {us:9.1f} us  {us / base:7.1f}x raw")


if __name__ == "__main__":
    main()
