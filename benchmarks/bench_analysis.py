"""Analysis of unique statements: guardeddb's analyze() against sqlglot's own parse.

Every statement is new (a literal differs), so no cache helps: this is what
an application pays the first time it sends a statement. Interleaved rounds,
medians, one process.

    python benchmarks/bench_analysis.py [--rounds N] [--statements N] [--without-pglast]

With pglast installed (the ``pgparse`` extra) PostgreSQL analyses include its
second opinion; ``--without-pglast`` measures them without it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import sqlglot

from guardeddb.sql import analysis, pgparse

SHAPES = {
    "point select": "SELECT id, name, email FROM users WHERE id = {i}",
    "two-table join": (
        "SELECT c.id, c.name, o.total FROM customers c JOIN orders o "
        "ON o.customer_id = c.id WHERE c.id = {i} AND o.status = 'x{i}'"
    ),
    "update": "UPDATE orders SET status = 'shipped', total = {i} WHERE id = {i}",
    "insert": "INSERT INTO events (kind, payload, n) VALUES ('click', 'p{i}', {i})",
}


def _time(fn: Callable[[str], object], statements: list[str]) -> float:
    start = time.perf_counter()
    for sql in statements:
        fn(sql)
    return (time.perf_counter() - start) / len(statements) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--statements", type=int, default=500)
    parser.add_argument("--dialect", default="postgres")
    parser.add_argument(
        "--without-pglast", action="store_true", help="no PostgreSQL second opinion"
    )
    args = parser.parse_args()
    if args.without_pglast:
        pgparse._parser = None  # as if the pgparse extra were not installed
    second = "with" if pgparse.available() and args.dialect == "postgres" else "without"
    print(
        f"unique statements, {args.rounds} rounds x {args.statements} per shape"
        f" ({args.dialect}, {second} pglast's second opinion)"
    )
    print(f"  {'shape':16} {'sqlglot.parse us':>17} {'guardeddb us':>13} {'ratio':>7}")
    for name, shape in SHAPES.items():
        parse_us: list[float] = []
        analyze_us: list[float] = []
        for r in range(args.rounds):
            batch = [shape.format(i=r * args.statements + i) for i in range(args.statements)]
            analysis._CACHES.clear()
            parse_us.append(_time(lambda s: sqlglot.parse(s, read=args.dialect), batch))
            analyze_us.append(_time(lambda s: analysis.analyze(s, args.dialect), batch))
        p, a = statistics.median(parse_us), statistics.median(analyze_us)
        print(f"  {name:16} {p:17.1f} {a:13.1f} {a / p:6.2f}x")


if __name__ == "__main__":
    main()
