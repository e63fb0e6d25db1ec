"""Masking cost: fetchall of 10,000 rows x 6 columns, raw against guardeddb.

Cases, interleaved in rotating rounds, medians reported:
  raw sqlite3 fetchall;
  guardeddb with 3 masked columns (column rules only);
  guardeddb with 3 masked columns and every detector over the other text cells;
and the detectors alone, in masked cells per second. Each case's cost over
raw is also given per row and per cell (6 cells a row), and per cell the
detectors scan (the 2 text columns no rule masks).

    python benchmarks/bench_masking.py [--rounds N] [--rows N]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time
from collections.abc import Callable
from typing import Any

import guardeddb
from guardeddb.masking import DETECTORS, Scanner

RULES = [
    {"columns": ["*.email"], "operator": "email"},
    {"columns": ["*.ssn"], "operator": "redact"},
    {"columns": ["*.card_number"], "operator": "last4"},
]
CITIES = ["London", "New York", "Manchester", "Paris", "Berlin", "Lisbon"]


def _database(rows: int) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, ssn TEXT, "
        "card_number TEXT, city TEXT)"
    )
    db.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                i,
                f"Customer {i}",
                f"customer{i}@example.com",
                f"{100 + i % 500:03d}-{10 + i % 80:02d}-{1000 + i:04d}",
                "4111111111111111",
                CITIES[i % len(CITIES)]
                + (f" (call +44 20 7946 {i % 10000:04d})" if i % 10 == 0 else ""),
            )
            for i in range(rows)
        ],
    )
    db.commit()
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    query = "SELECT id, name, email, ssn, card_number, city FROM customers"
    raw = _database(args.rows)
    rules_only = guardeddb.wrap(
        _database(args.rows), policy={"version": 1, "extends": [], "masking": {"rules": RULES}}
    )
    with_detectors = guardeddb.wrap(
        _database(args.rows),
        policy={"version": 1, "extends": [], "masking": {"rules": RULES, "detectors": "all"}},
    )
    cases: dict[str, Callable[[], Any]] = {
        "raw sqlite3": lambda: raw.execute(query).fetchall(),
        "guardeddb, 3 masked columns": lambda: rules_only.cursor().execute(query).fetchall(),
        "guardeddb, 3 masked + detectors": lambda: (
            with_detectors.cursor().execute(query).fetchall()
        ),
    }
    masked = cases["guardeddb, 3 masked + detectors"]()
    assert masked[10][4] == "************1111" and "customer10@" not in masked[10][2]
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            cases[name]()
            samples[name].append((time.perf_counter() - start) * 1e3)
    base = statistics.median(samples["raw sqlite3"])
    print(f"fetchall of {args.rows:,} rows x 6 columns, {args.rounds} rounds, median ms")
    print(f"  {'case':34} {'ms':>9}  {'x raw':>6}  {'+us/row':>8}  {'+ns/cell':>9}")
    for name in names:
        ms = statistics.median(samples[name])
        added_ns = (ms - base) * 1e6
        print(
            f"  {name:34} {ms:9.2f}  {ms / base:5.2f}x  {added_ns / args.rows / 1e3:8.3f}"
            f"  {added_ns / (args.rows * 6):9.1f}"
        )
    extra = statistics.median(samples["guardeddb, 3 masked + detectors"]) - statistics.median(
        samples["guardeddb, 3 masked columns"]
    )
    print(
        f"  detectors over the 2 unmasked text columns: +{extra * 1e6 / (args.rows * 2):.1f} ns"
        " per scanned cell (3 masked + detectors against 3 masked)"
    )
    cells = [row[1] for row in raw.execute(query).fetchall()] + [
        row[5] for row in raw.execute(query).fetchall()
    ]
    scanner = Scanner(DETECTORS)
    start = time.perf_counter()
    hits = sum(scanner.scan(c)[1] for c in cells)
    elapsed = time.perf_counter() - start
    print(
        f"detectors alone, cell by cell: {len(cells) / elapsed:,.0f} cells/s scanned "
        f"({elapsed * 1e9 / len(cells):,.0f} ns/cell), "
        f"{hits} values masked in {elapsed * 1e3:.1f} ms"
    )
    half = len(cells) // 2
    start = time.perf_counter()
    hits = scanner.scan_many(cells[:half])[1] + scanner.scan_many(cells[half:])[1]
    elapsed = time.perf_counter() - start
    print(
        f"detectors alone, column by column: {len(cells) / elapsed:,.0f} cells/s scanned "
        f"({elapsed * 1e9 / len(cells):,.0f} ns/cell), "
        f"{hits} values masked in {elapsed * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
