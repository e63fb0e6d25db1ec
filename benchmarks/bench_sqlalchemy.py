"""Per-operation cost of guardeddb under SQLAlchemy's ORM: a plain Engine against
``guard_engine``, with and without an OpenTelemetry SDK.

Same method as bench_query.py, whose helpers it reuses: one process,
interleaved rounds whose case order rotates, medians of the rounds with
their interquartile range, ratios to the plain engine. On each database the
three engines share one raw DB-API connection (a ``StaticPool`` whose creator
returns it), so one page cache, one statement cache and the same rows.

Cases:

1. plain SQLAlchemy engine
2. ``guard_engine(engine, policy=GUARDRAILS)``, no SDK (global providers unset)
3. the same with an SDK ``TracerProvider`` + ``BatchSpanProcessor`` to a
   do-nothing exporter and an SDK ``MeterProvider``, ``force_flush()`` at
   the end of each batch, inside the timing

Workloads, on sqlite3 (in memory) and on psycopg against PostgreSQL, over
bench_query's 1,000-row ``users(id, name, email)`` table:

- point: ``session.get(User, id, populate_existing=True)`` (always a query,
  never an identity-map hit), one Session per batch, ids cycling;
- select: ``session.scalars(select(User).where(User.id >= a, User.id < a + N)).all()``
  of N ORM objects (default 50), one Session per batch;
- request: a new Session per operation, ``get``, close (pool checkout, the
  query, and the pool's rollback on checkin).

Usage::

    python benchmarks/bench_sqlalchemy.py            # full run, about a minute on 2 cores
    python benchmarks/bench_sqlalchemy.py --quick    # smoke run, a few seconds
    python benchmarks/bench_sqlalchemy.py --json results.json
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench_query is imported as benchmarks.*
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

import guardeddb
from benchmarks.bench_query import (
    DEFAULT_PG_DSN,
    GUARDEDDB_SCOPE,
    GUARDRAILS,
    PG_DSN_ENV,
    USERS_ROWS,
    Result,
    Sdk,
    Workload,
    assert_no_global_sdk,
    fmt_us,
    guardeddb_records,
    odd,
    open_postgres,
    setup_sqlite,
    versions,
    write_json,
)
from guardeddb.integrations.sqlalchemy import guard_engine

PLAIN = "sqlalchemy"
GDB_OFF = "guardeddb-nosdk"
GDB_SDK = "guardeddb-sdk"
CASE_KEYS = (PLAIN, GDB_OFF, GDB_SDK)
IDENTITY = guardeddb.Identity(user="bench@example.com", agent="bench-agent")


class Base(DeclarativeBase):
    pass


class User(Base):
    """bench_query's users table, mapped."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    email: Mapped[str]


@dataclass
class Case:
    key: str
    label: str
    engine: sa.Engine
    flush: Callable[[], None] | None = None  # run inside the timed region
    executed: int = 0  # ORM operations run (warm-up and checks included)


#: The ORM operations of one timed batch, one per parameter.
Op = Callable[[sa.Engine, Sequence[tuple[int]]], None]


def op_point(engine: sa.Engine, params: Sequence[tuple[int]]) -> None:
    with Session(engine) as session:
        for (i,) in params:
            session.get(User, i, populate_existing=True)


def op_select(n: int) -> Op:
    def select(engine: sa.Engine, params: Sequence[tuple[int]]) -> None:
        with Session(engine) as session:
            for (start,) in params:
                stmt = sa.select(User).where(User.id >= start, User.id < start + n)
                rows = session.scalars(stmt.execution_options(populate_existing=True)).all()
                assert len(rows) == n

    return select


def op_request(engine: sa.Engine, params: Sequence[tuple[int]]) -> None:
    for (i,) in params:
        with Session(engine) as session:
            session.get(User, i)


def build_cases(raw: Any, label: str, sdk: Sdk, checks: list[str]) -> list[Case]:
    """Three engines over one raw connection; the guarded ones through guard_engine."""

    def engine() -> sa.Engine:
        return sa.create_engine(f"{label}://", creator=lambda: raw, poolclass=StaticPool)

    plain = engine()
    off = guard_engine(engine(), policy=GUARDRAILS)
    on = guard_engine(
        engine(),
        policy=GUARDRAILS,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    records = []
    for eng in (off, on):
        pooled = eng.raw_connection()
        records.append(guardeddb_records(pooled.driver_connection))
        pooled.close()
    if records[0] is True or records[1] is False:
        raise SystemExit(f"guardeddb telemetry is {records} for (no SDK, SDK): expected off, on")
    checks.append(f"{label}: guard_engine telemetry is off without SDK, on with the SDK providers")
    return [
        Case(PLAIN, f"plain engine ({label})", plain),
        Case(GDB_OFF, "guard_engine, no SDK", off),
        Case(GDB_SDK, "guard_engine, SDK", on, sdk.flush),
    ]


def run_batch(case: Case, work: Workload, op: Op) -> float:
    """One timed batch; µs per ORM operation."""
    start = time.perf_counter_ns()
    op(case.engine, work.params)
    if case.flush is not None:
        case.flush()
    elapsed = time.perf_counter_ns() - start
    case.executed += work.batch
    return elapsed / 1_000 / work.batch


def check_results(cases: Sequence[Case]) -> None:
    """Every engine returns the same user (untimed)."""
    seen = set()
    for case in cases:
        with guardeddb.identity(IDENTITY), Session(case.engine) as session:
            user = session.get(User, USERS_ROWS // 2, populate_existing=True)
            assert user is not None
            seen.add((user.id, user.name, user.email))
        case.executed += 1
    if len(seen) != 1:
        raise SystemExit(f"engines disagree: {seen}")


def run_workload(cases: Sequence[Case], work: Workload, op: Op, warmup: int) -> Result:
    samples: dict[str, list[float]] = {c.key: [] for c in cases}
    started = time.perf_counter()
    with guardeddb.identity(IDENTITY):
        for _ in range(warmup):
            for case in cases:
                run_batch(case, work, op)
        n = len(cases)
        for r in range(work.rounds):
            shift = r % n
            for case in [*cases[shift:], *cases[:shift]]:
                samples[case.key].append(run_batch(case, work, op))
    return Result(work, {c.key: c.label for c in cases}, samples, time.perf_counter() - started)


def print_result(res: Result) -> None:
    w = res.workload
    print()
    print(w.title)
    print(
        f"  {w.rounds} rounds x {w.batch:,} operations per case, rotating order; "
        f"median of rounds ({res.seconds:.1f}s)"
    )
    head = f"  {'case':<32}{'us/op':>11}{'IQR':>9}{'x plain':>9}{'+us vs plain':>14}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    plain = res.median(PLAIN)
    for key in CASE_KEYS:
        med = res.median(key)
        print(
            f"  {res.labels[key]:<32}{fmt_us(med):>11}{fmt_us(res.iqr(key)):>9}"
            f"{med / plain:>8.2f}x{med - plain:>+14.2f}"
        )


def result_json(res: Result) -> dict[str, Any]:
    plain = res.median(PLAIN)
    w = res.workload
    return {
        "title": w.title,
        "rounds": w.rounds,
        "batch": w.batch,
        "seconds": res.seconds,
        "cases": {
            key: {
                "label": res.labels[key],
                "median_us": res.median(key),
                "iqr_us": res.iqr(key),
                "ratio_to_plain": res.median(key) / plain,
                "paired_ratio_to_plain": res.paired_ratio(key, PLAIN),
                "overhead_us": res.median(key) - plain,
                "rounds_us": res.samples[key],
            }
            for key in CASE_KEYS
        },
    }


@dataclass
class Plan:
    rounds: int
    point: int  # operations per batch
    select: int
    request: int
    pg_factor: float  # PostgreSQL batches are this much smaller (each query is a round trip)
    warmup: int = 1


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(3, 100, 10, 50, 0.5)
    return Plan(odd(max(1, args.rounds)), 2_000, 200, 1_000, 0.25)


def bench_database(
    label: str, raw: Any, plan: Plan, rows: int, sdk: Sdk, checks: list[str], pg: bool = False
) -> tuple[list[Case], list[Result]]:
    cases = build_cases(raw, label, sdk, checks)
    sdk.flush()
    sdk.exporter.samples.clear()  # sample a span of the workloads, not of the dialect's setup
    check_results(cases)
    scale = plan.pg_factor if pg else 1.0
    rounds = odd(max(3, plan.rounds // 2)) if pg else plan.rounds
    point, select, request = (
        max(1, int(n * scale)) for n in (plan.point, plan.select, plan.request)
    )
    name = "psycopg" if pg else "sqlite3"
    point_sql = "SELECT users.id, users.name, users.email FROM users WHERE users.id = ?"
    works: list[tuple[Workload, Op]] = [
        (
            Workload(
                f"{name}-point",
                f"[{name}] session.get(User, id, populate_existing=True), ids cycling",
                point_sql,
                "orm",
                rounds,
                point,
                [(i % USERS_ROWS + 1,) for i in range(point)],
            ),
            op_point,
        ),
        (
            Workload(
                f"{name}-select",
                f"[{name}] session.scalars(select(User) ...).all() of {rows} objects",
                "SELECT users.id, users.name, users.email FROM users "
                "WHERE users.id >= ? AND users.id < ?",
                "orm",
                rounds,
                select,
                [((i * rows) % (USERS_ROWS - rows) + 1,) for i in range(select)],
            ),
            op_select(rows),
        ),
        (
            Workload(
                f"{name}-request",
                f"[{name}] new Session per request: get(User, id), close (checkout + rollback)",
                point_sql,
                "orm",
                rounds,
                request,
                [(i % USERS_ROWS + 1,) for i in range(request)],
            ),
            op_request,
        ),
    ]
    out = []
    for work, op in works:
        res = run_workload(cases, work, op, plan.warmup)
        print_result(res)
        out.append(res)
    return cases, out


def verify_spans(sdk: Sdk, cases: Sequence[Case], checks: list[str]) -> None:
    """After shutdown: the SDK case exported (at least) one span per ORM operation."""
    want = sum(c.executed for c in cases if c.key == GDB_SDK)
    got = sdk.exporter.by_scope[GUARDEDDB_SCOPE]
    hist = sdk.histogram_count(GUARDEDDB_SCOPE)
    checks.append(f"spans exported by guardeddb: {got:,} for {want:,} ORM operations")
    checks.append(f"guardeddb db.client.operation.duration data points: {hist:,}")
    span = sdk.exporter.samples.get(GUARDEDDB_SCOPE)
    if span is not None:
        attrs = dict(span.attributes or {})
        checks.append(
            f"sample span: name={span.name!r} enduser.id={attrs.get('enduser.id')!r} "
            f"query text={attrs.get('db.query.text')!r}"
        )
    for line in checks:
        print(f"  - {line}")
    if got < want or hist == 0:
        raise SystemExit(f"telemetry check failed: {got} spans, {hist} data points for {want}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=21, help="rounds on sqlite (default 21)")
    parser.add_argument("--rows", type=int, default=50, help="ORM objects per select (50)")
    parser.add_argument("--quick", action="store_true", help="smoke run of a few seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get(PG_DSN_ENV, DEFAULT_PG_DSN),
        help=f"PostgreSQL DSN (default ${PG_DSN_ENV} or {DEFAULT_PG_DSN})",
    )
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    started = time.perf_counter()
    info = versions()
    info["sqlalchemy"] = sa.__version__
    assert_no_global_sdk()
    sdk = Sdk.create()
    checks: list[str] = []

    print("guardeddb SQLAlchemy ORM benchmark" + (" (--quick smoke run)" if args.quick else ""))
    print(
        f"  Python {info['python']} on {info['platform']}, {info['cpus']} CPUs; "
        f"SQLAlchemy {info['sqlalchemy']}, guardeddb {info['guardeddb-revision']}"
    )
    gc.collect()

    results: list[Result] = []
    all_cases: list[Case] = []
    sqlite_conn = setup_sqlite()
    gc.freeze()
    cases, done = bench_database("sqlite", sqlite_conn, plan, args.rows, sdk, checks)
    results.extend(done)
    all_cases.extend(cases)

    pg_conn, pg_note = open_postgres(args.pg_dsn, args.no_pg, info)
    if pg_conn is not None:
        gc.collect()
        gc.freeze()
        cases, done = bench_database(
            "postgresql+psycopg", pg_conn, plan, args.rows, sdk, checks, pg=True
        )
        results.extend(done)
        all_cases.extend(cases)
        for case in cases:
            case.engine.dispose()
        pg_conn.close()
    if pg_note:
        print()
        print(pg_note)

    sdk.shutdown()
    assert_no_global_sdk()
    print()
    print("Checks:")
    verify_spans(sdk, all_cases, checks)
    print(f"Total time {time.perf_counter() - started:.1f}s")
    if args.json:
        payload = {
            "versions": info,
            "quick": args.quick,
            "postgresql": pg_note or "ran",
            "checks": checks,
            "workloads": {r.workload.key: result_json(r) for r in results},
        }
        write_json(args.json, payload)
    sqlite_conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
