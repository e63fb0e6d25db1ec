"""Per-query cost of guardeddb against raw drivers, a bare wrapt proxy and
opentelemetry-instrumentation-dbapi, with and without an OpenTelemetry SDK.

Everything runs in one process, in interleaved rounds: each round times one
batch of queries per case, in an order that rotates from round to round, and
the median of the rounds is reported. All cases of a database share one raw
connection (so one page cache and one statement cache) and each has its own
reused cursor.

Cases:

1. raw driver
2. wrapt floor: a bare ``wrapt.BaseObjectProxy`` around connection and cursor
   with explicit ``execute``/``fetchone``/``fetchall`` methods
3. guardeddb, no SDK (``guardeddb.wrap(raw, policy=GUARDRAILS)``: the agent-safe
   guardrails without masking; the global providers are never set)
4. otel-dbapi, no SDK (``instrument_connection`` with the API's proxy provider)
5. guardeddb with an SDK ``TracerProvider`` + ``BatchSpanProcessor`` exporting
   to a do-nothing exporter, and an SDK ``MeterProvider`` + ``InMemoryMetricReader``
6. otel-dbapi with the same SDK providers

The SDK providers are passed explicitly and never installed globally, so the
no-SDK cases really see no SDK while sharing rounds with the SDK cases. Every
SDK batch ends with ``force_flush()`` inside its timed region: the export work
of a batch's spans is charged to that batch and never spills into another
case's timing. At the end the providers are flushed and shut down, and the
script checks that spans (and guardeddb's duration histogram) were produced.

Usage::

    python benchmarks/bench_query.py            # full run, 13 minutes on a loaded 2-core machine
    python benchmarks/bench_query.py --quick    # smoke run, a few seconds
    python benchmarks/bench_query.py --json results.json
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import wrapt
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.dbapi import instrument_connection
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import guardeddb

PG_DSN_ENV = "GUARDEDDB_BENCH_PG_DSN"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
USERS_ROWS = 1_000
WIDE_ROWS = 10_000
GUARDEDDB_SCOPE = "guardeddb"
OTEL_DBAPI_SCOPE = "benchmarks.otel_dbapi"
DURATION_METRIC = "db.client.operation.duration"
SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"

RAW = "raw"
FLOOR = "wrapt-floor"
GDB_OFF = "guardeddb-nosdk"
OTEL_OFF = "otel-dbapi-nosdk"
GDB_SDK = "guardeddb-sdk"
OTEL_SDK = "otel-dbapi-sdk"
CASE_KEYS = (RAW, FLOOR, GDB_OFF, OTEL_OFF, GDB_SDK, OTEL_SDK)
#: guardeddb case -> the otel-dbapi case it is compared with
PAIRS = {GDB_OFF: OTEL_OFF, GDB_SDK: OTEL_SDK}


# --------------------------------------------------------------------------
# Typing of the DB-API objects the timed loops touch


class Cursor(Protocol):
    """What the timed loops call on a cursor (raw or proxied)."""

    def execute(self, query: Any, params: Any = ..., /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    def close(self) -> object: ...


# --------------------------------------------------------------------------
# Case 2: the wrapt floor


class FloorCursor(wrapt.BaseObjectProxy[Any]):
    """The least a wrapt cursor proxy can do: forward, and return itself."""

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> FloorCursor:
        self.__wrapped__.execute(query, *args, **kwargs)
        return self

    def fetchone(self) -> Any:
        return self.__wrapped__.fetchone()

    def fetchall(self) -> Any:
        return self.__wrapped__.fetchall()

    def close(self) -> None:
        self.__wrapped__.close()


class FloorConnection(wrapt.BaseObjectProxy[Any]):
    """A bare connection proxy whose cursors are FloorCursors."""

    def cursor(self, *args: Any, **kwargs: Any) -> FloorCursor:
        return FloorCursor(self.__wrapped__.cursor(*args, **kwargs))


# --------------------------------------------------------------------------
# The SDK side: a do-nothing exporter, providers, checks


class NullSpanExporter(SpanExporter):
    """Accepts every batch and drops it; counts spans per instrumentation scope."""

    def __init__(self) -> None:
        self.by_scope: Counter[str] = Counter()
        self.samples: dict[str, ReadableSpan] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            scope = span.instrumentation_scope
            name = scope.name if scope is not None else ""
            self.by_scope[name] += 1
            if name not in self.samples:
                self.samples[name] = span
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Sdk:
    """The SDK providers the SDK cases get explicitly (never set globally)."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: NullSpanExporter
    reader: InMemoryMetricReader
    closed: bool = False

    @classmethod
    def create(cls) -> Sdk:
        exporter = NullSpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        return cls(tracer_provider, meter_provider, exporter, reader)

    def flush(self) -> None:
        self.tracer_provider.force_flush()

    def histogram_count(self, scope: str, name: str = DURATION_METRIC) -> int:
        """Data points recorded so far by ``scope`` into histogram ``name``."""
        data = self.reader.get_metrics_data()
        total = 0
        if data is None:
            return total
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name != scope:
                    continue
                for metric in scope_metrics.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        if isinstance(point, HistogramDataPoint):
                            total += point.count
        return total

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            self.tracer_provider.force_flush()
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown()


def assert_no_global_sdk() -> None:
    """The no-SDK cases are only honest if nobody installed an SDK globally."""
    tp = trace.get_tracer_provider()
    mp = metrics.get_meter_provider()
    if not isinstance(tp, trace.ProxyTracerProvider):
        raise SystemExit(f"a global tracer provider is set ({tp!r}): no-SDK cases would be wrong")
    if type(mp).__name__ != "_ProxyMeterProvider":
        raise SystemExit(f"a global meter provider is set ({mp!r}): no-SDK cases would be wrong")


def guardeddb_records(conn: Any) -> bool | None:
    """Whether a guarded connection found anything to record to (None: unknown).

    Peeks at a private attribute: only used to check the no-SDK case really
    has telemetry off.
    """
    telemetry = getattr(getattr(conn, "_self_guard", None), "telemetry", None)
    if telemetry is None:
        return None
    return getattr(telemetry, "tracer", None) is not None or (
        getattr(telemetry, "duration", None) is not None
    )


# --------------------------------------------------------------------------
# Cases and workloads


@dataclass
class Case:
    key: str
    label: str
    cursor: Cursor
    flush: Callable[[], None] | None = None  # run inside the timed region
    executed: int = 0  # queries run (warm-up and checks included)


@dataclass
class Workload:
    key: str
    title: str
    sql: str
    fetch: str  # "one" | "all"
    rounds: int
    batch: int  # queries per case per round
    params: list[tuple[int]] = field(default_factory=list)  # "one": one per query
    #: which guardeddb cases run it (a key of POLICIES)
    policy: str = "guardrails"
    #: "one" with inlined literals: the statements of one batch, made anew for
    #: every batch (outside the timing) so that no text is ever seen twice
    texts: Callable[[int], list[str]] | None = None
    #: False when guardeddb masks values: results are compared to raw's
    #: without their text cells, and some text cell must differ
    exact: bool = True


@dataclass
class Result:
    workload: Workload
    labels: dict[str, str]
    samples: dict[str, list[float]]  # case key -> µs/query of each round
    seconds: float

    def median(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def iqr(self, key: str) -> float:
        values = self.samples[key]
        if len(values) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return q3 - q1

    def paired_ratio(self, key: str, base: str) -> float:
        """Median over rounds of this round's ratio (robust to drift)."""
        return statistics.median(
            a / b for a, b in zip(self.samples[key], self.samples[base], strict=True)
        )


#: The agent-safe guardrails (analysis, decision, identity) without masking:
#: this benchmark measures the per-query path; bench_masking.py measures masking.
GUARDRAILS: dict[str, Any] = {"version": 1, "extends": ["agent-safe"], "masking": {"detectors": []}}
#: ``email`` masked by a rule; the preset's detectors stay on.
MASK_EMAIL: dict[str, Any] = {
    "version": 1,
    "extends": ["agent-safe"],
    "masking": {"rules": [{"columns": ["*.email"], "operator": "email"}]},
}
#: bench_masking.py's three masked columns of the ``customers`` table.
MASK_RULES = [
    {"columns": ["*.email"], "operator": "email"},
    {"columns": ["*.ssn"], "operator": "redact"},
    {"columns": ["*.card_number"], "operator": "last4"},
]
#: The policies the guardeddb cases run under; None is ``guardeddb.wrap(raw)``
#: with no policy: the agent-safe preset, with its detectors on every text cell.
POLICIES: dict[str, dict[str, Any] | None] = {
    "guardrails": GUARDRAILS,
    "default": None,
    "mask-email": MASK_EMAIL,
    "mask3": {
        "version": 1,
        "extends": ["agent-safe"],
        "masking": {"rules": MASK_RULES, "detectors": []},
    },
    "mask3-detectors": {"version": 1, "extends": ["agent-safe"], "masking": {"rules": MASK_RULES}},
}


def build_cases(
    raw: Any, system: str, label: str, sdk: Sdk, checks: list[str], policy: str = "guardrails"
) -> list[Case]:
    """The six cases over one raw connection (``system``: sqlite, postgresql),
    the guardeddb ones under ``POLICIES[policy]``."""
    floor = FloorConnection(raw)
    rules = POLICIES[policy]
    gdb_off = guardeddb.wrap(raw) if rules is None else guardeddb.wrap(raw, policy=rules)
    otel_off = instrument_connection(OTEL_DBAPI_SCOPE, raw, system)
    providers: dict[str, Any] = {
        "tracer_provider": sdk.tracer_provider,
        "meter_provider": sdk.meter_provider,
    }
    gdb_sdk = (
        guardeddb.wrap(raw, **providers)
        if rules is None
        else guardeddb.wrap(raw, policy=rules, **providers)
    )
    otel_sdk = instrument_connection(
        OTEL_DBAPI_SCOPE,
        raw,
        system,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    records_off = guardeddb_records(gdb_off)
    records_sdk = guardeddb_records(gdb_sdk)
    if records_off is True:
        raise SystemExit("guardeddb found a provider to record to in the no-SDK case")
    if records_sdk is False:
        raise SystemExit("guardeddb found nothing to record to in the SDK case")
    checks.append(
        f"{label} ({policy}): guardeddb telemetry is "
        f"{'off' if records_off is False else 'unknown'} without SDK, "
        f"{'on' if records_sdk else 'unknown'} with the SDK providers"
    )
    sdk_flush = sdk.flush
    return [
        Case(RAW, f"raw {label}", raw.cursor()),
        Case(FLOOR, "wrapt floor (BaseObjectProxy)", floor.cursor()),
        Case(GDB_OFF, "guardeddb, no SDK", gdb_off.cursor()),
        Case(OTEL_OFF, "otel-dbapi, no SDK", otel_off.cursor()),
        Case(GDB_SDK, "guardeddb, SDK", gdb_sdk.cursor(), sdk_flush),
        Case(OTEL_SDK, "otel-dbapi, SDK", otel_sdk.cursor(), sdk_flush),
    ]


def time_point(cur: Cursor, sql: str, params: Sequence[tuple[int]]) -> int:
    start = time.perf_counter_ns()
    for p in params:
        cur.execute(sql, p)
        cur.fetchone()
    return time.perf_counter_ns() - start


def time_texts(cur: Cursor, texts: Sequence[str]) -> int:
    start = time.perf_counter_ns()
    for text in texts:
        cur.execute(text)
        cur.fetchone()
    return time.perf_counter_ns() - start


def time_fetchall(cur: Cursor, sql: str, count: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(count):
        cur.execute(sql)
        cur.fetchall()
    return time.perf_counter_ns() - start


def run_batch(case: Case, work: Workload) -> float:
    """One timed batch; µs per query."""
    if work.texts is not None:
        elapsed = time_texts(case.cursor, work.texts(work.batch))
    elif work.fetch == "one":
        elapsed = time_point(case.cursor, work.sql, work.params)
    else:
        elapsed = time_fetchall(case.cursor, work.sql, work.batch)
    if case.flush is not None:
        start = time.perf_counter_ns()
        case.flush()
        elapsed += time.perf_counter_ns() - start
    case.executed += work.batch
    return elapsed / 1_000 / work.batch


def same_rows(got: Sequence[Any], want: Sequence[Any], exact: bool) -> bool:
    """Rows equal to raw's; when values are masked, equal but for text cells,
    and with at least one text cell changed (masking really ran)."""
    got = [tuple(r) for r in got]
    want = [tuple(r) for r in want]
    if exact or len(got) != len(want):
        return got == want
    changed = False
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            if isinstance(b, str):
                changed = changed or a != b
            elif a != b:
                return False
    return changed


def check_results(cases: Sequence[Case], work: Workload, expect_rows: int) -> None:
    """Every case returns what the raw driver returns (untimed); guardeddb
    under a masking policy returns it masked."""
    if work.fetch == "one":
        if work.texts is not None:
            probe: list[tuple[str, tuple[int, ...] | None]] = [(t, None) for t in work.texts(2)]
        else:
            probe = [(work.sql, work.params[0]), (work.sql, work.params[len(work.params) // 2])]
        expected: list[Any] = []
        for case in cases:
            got = []
            for sql, p in probe:
                if p is None:
                    case.cursor.execute(sql)
                else:
                    case.cursor.execute(sql, p)
                got.append(case.cursor.fetchone())
                case.executed += 1
            if case.key == RAW:
                expected = got
            elif not same_rows(got, expected, work.exact or case.key not in PAIRS):
                raise SystemExit(f"{case.label}: {got!r} against raw {expected!r}")
    else:
        raw_rows: list[Any] = []
        for case in cases:
            case.cursor.execute(work.sql)
            rows = case.cursor.fetchall()
            case.executed += 1
            if len(rows) != expect_rows:
                raise SystemExit(f"{case.label}: {len(rows)} rows, expected {expect_rows}")
            if case.key == RAW:
                raw_rows = rows
            elif not same_rows(rows, raw_rows, work.exact or case.key not in PAIRS):
                raise SystemExit(f"{case.label}: rows differ from raw's")


def run_workload(cases: Sequence[Case], work: Workload, warmup: int) -> Result:
    samples: dict[str, list[float]] = {c.key: [] for c in cases}
    started = time.perf_counter()
    for _ in range(warmup):
        for case in cases:
            run_batch(case, work)
    n = len(cases)
    for r in range(work.rounds):
        shift = r % n
        for case in [*cases[shift:], *cases[:shift]]:
            samples[case.key].append(run_batch(case, work))
    return Result(work, {c.key: c.label for c in cases}, samples, time.perf_counter() - started)


# --------------------------------------------------------------------------
# Data


def point_params(batch: int) -> list[tuple[int]]:
    return [(i % USERS_ROWS + 1,) for i in range(batch)]


def users_rows() -> list[tuple[int, str, str]]:
    return [(i, f"user {i:04d}", f"user{i:04d}@example.com") for i in range(1, USERS_ROWS + 1)]


def wide_rows() -> list[tuple[int, int, float, str, str, str]]:
    cities = ("Lisbon", "Nairobi", "Osaka", "Montevideo", "Tromsø", "Quebec City")
    return [
        (
            i,
            i * 7 % 1_000,
            i * 1.25,
            f"customer {i:05d}",
            f"customer{i:05d}@example.org",
            cities[i % len(cities)],
        )
        for i in range(1, WIDE_ROWS + 1)
    ]


def customer_rows() -> list[tuple[int, str, str, str, str, str]]:
    """bench_masking.py's table: three columns masked by rule (email, ssn,
    card_number), two text columns for the detectors (name, and a city where
    every tenth row carries a phone number)."""
    cities = ("London", "New York", "Manchester", "Paris", "Berlin", "Lisbon")
    return [
        (
            i,
            f"Customer {i}",
            f"customer{i}@example.com",
            f"{100 + i % 500:03d}-{10 + i % 80:02d}-{1000 + i:04d}",
            "4111111111111111",
            cities[i % len(cities)]
            + (f" (call +44 20 7946 {i % 10000:04d})" if i % 10 == 0 else ""),
        )
        for i in range(1, WIDE_ROWS + 1)
    ]


def setup_sqlite() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
    conn.executemany("INSERT INTO users VALUES (?, ?, ?)", users_rows())
    conn.execute(
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, qty INTEGER, price REAL,"
        " name TEXT, email TEXT, city TEXT)"
    )
    conn.executemany("INSERT INTO wide VALUES (?, ?, ?, ?, ?, ?)", wide_rows())
    conn.execute(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, ssn TEXT,"
        " card_number TEXT, city TEXT)"
    )
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", customer_rows())
    conn.commit()
    return conn


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write a run's figures for ``--json`` and say where."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    print(f"Wrote {path}")


def open_postgres(dsn: str, skip: bool, info: dict[str, str]) -> tuple[Any, str]:
    """The benchmark's PostgreSQL connection (its version noted in ``info``),
    or None and the line that says why the PostgreSQL part is skipped."""
    if skip:
        return None, "PostgreSQL: skipped (--no-pg)"
    try:
        conn = setup_postgres(dsn)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        return None, (
            f"PostgreSQL: skipped, {redact(dsn)} not reachable ({type(exc).__name__}: {reason})"
        )
    info["postgresql-server"] = str(conn.info.server_version)
    return conn, ""


def setup_postgres(dsn: str) -> Any:
    """A raw psycopg connection with TEMP tables, or raise if unreachable."""
    import psycopg

    conn = psycopg.connect(dsn, connect_timeout=3, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE users (id integer PRIMARY KEY, name text, email text)")
        cur.executemany("INSERT INTO users VALUES (%s, %s, %s)", users_rows())
        cur.execute(
            "CREATE TEMP TABLE wide (id integer PRIMARY KEY, qty integer,"
            " price double precision, name text, email text, city text)"
        )
        cur.executemany("INSERT INTO wide VALUES (%s, %s, %s, %s, %s, %s)", wide_rows())
        cur.execute("ANALYZE users")
        cur.execute("ANALYZE wide")
    return conn


# --------------------------------------------------------------------------
# Output


def redact(dsn: str) -> str:
    """``dsn`` without its password, for printing."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def odd(n: int) -> int:
    return n if n % 2 else n + 1


def fmt_us(value: float) -> str:
    return f"{value:,.2f}" if value < 1_000 else f"{value:,.0f}"


def print_result(res: Result) -> None:
    w = res.workload
    print()
    print(f"{w.title}")
    print(
        f"  {w.rounds} rounds x {w.batch:,} queries per case, rotating order; "
        f"median of rounds ({res.seconds:.1f}s)"
    )
    head = (
        f"  {'case':<32}{'us/query':>11}{'IQR':>9}{'x raw':>8}{'+us vs raw':>12}"
        f"{'guardeddb/otel-dbapi':>22}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    raw = res.median(RAW)
    for key in CASE_KEYS:
        med = res.median(key)
        pair = ""
        if key in PAIRS:
            other = res.median(PAIRS[key])
            pair = f"{med / other:.2f}x"
        print(
            f"  {res.labels[key]:<32}{fmt_us(med):>11}{fmt_us(res.iqr(key)):>9}"
            f"{med / raw:>7.2f}x{med - raw:>+12.2f}{pair:>22}"
        )


def result_json(res: Result) -> dict[str, Any]:
    raw = res.median(RAW)
    cases: dict[str, Any] = {}
    for key in CASE_KEYS:
        med = res.median(key)
        entry: dict[str, Any] = {
            "label": res.labels[key],
            "median_us": med,
            "iqr_us": res.iqr(key),
            "ratio_to_raw": med / raw,
            "paired_ratio_to_raw": res.paired_ratio(key, RAW),
            "overhead_us": med - raw,
            "rounds_us": res.samples[key],
        }
        if key in PAIRS:
            entry["ratio_to_otel_dbapi"] = med / res.median(PAIRS[key])
            entry["paired_ratio_to_otel_dbapi"] = res.paired_ratio(key, PAIRS[key])
        cases[key] = entry
    w = res.workload
    return {
        "title": w.title,
        "policy": w.policy,
        "sql": w.sql,
        "rounds": w.rounds,
        "batch": w.batch,
        "seconds": res.seconds,
        "cases": cases,
    }


def ratios(res: Result) -> dict[str, float]:
    """The comparisons of one workload at a glance (ratios of medians):
    every case to raw, and each guardeddb case to its otel-dbapi case."""
    raw = res.median(RAW)
    out = {f"{key}/raw": res.median(key) / raw for key in CASE_KEYS if key != RAW}
    for key, other in PAIRS.items():
        out[f"{key}/{other}"] = res.median(key) / res.median(other)
    return out


def guardeddb_revision() -> str:
    """The git commit of the guardeddb being measured (``+dirty`` if changed)."""
    root = Path(guardeddb.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "guardeddb"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}+dirty" if dirty else rev


def versions() -> dict[str, str]:
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "sqlite": sqlite3.sqlite_version,
    }
    for dist in (
        "guardeddb",
        "wrapt",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-dbapi",
        "psycopg",
        "sqlglot",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["guardeddb-revision"] = guardeddb_revision()
    return out


# --------------------------------------------------------------------------
# Main


@dataclass
class Plan:
    """(rounds, batch) of each kind of workload."""

    sqlite_point: tuple[int, int]
    sqlite_literals: tuple[int, int]
    sqlite_all: tuple[int, int]
    sqlite_masked_all: tuple[int, int]
    pg_point: tuple[int, int]
    pg_all: tuple[int, int]
    warmup: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan((5, 300), (3, 50), (3, 2), (3, 1), (3, 100), (3, 1), warmup=1)
    rounds = odd(max(1, args.rounds))
    fewer = odd(max(3, rounds // 2))
    return Plan(
        sqlite_point=(rounds, 5_000),
        sqlite_literals=(fewer, 1_000),
        sqlite_all=(fewer, 20),
        sqlite_masked_all=(fewer, 5),
        pg_point=(fewer, 2_000),
        pg_all=(fewer, 10),
        warmup=1,
    )


class Literals:
    """Point queries with their literals inlined, as agents write them: the id
    cycles through the table and the string literal never repeats, so every
    text of a run is new (to guardeddb's analysis cache and to the driver's
    statement cache alike)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, count: int) -> list[str]:
        start, self.n = self.n, self.n + count
        return [
            f"SELECT id, name, email FROM users WHERE id = {i % USERS_ROWS + 1} AND name <> 'x{i}'"
            for i in range(start, start + count)
        ]


def database_workloads(name: str, placeholder: str, plan: Plan) -> list[Workload]:
    """The workloads of one database (``name``: sqlite3, psycopg), in run order."""
    pg = name != "sqlite3"
    point = plan.pg_point if pg else plan.sqlite_point
    fetch_all = plan.pg_all if pg else plan.sqlite_all
    point_sql = f"SELECT id, name, email FROM users WHERE id = {placeholder}"
    users = f"{USERS_ROWS:,}-row users table, ids cycling"
    works = [
        Workload(
            f"{name}-point",
            f"[{name}] point query + fetchone, {users}",
            point_sql,
            "one",
            point[0],
            point[1],
            point_params(point[1]),
        ),
        Workload(
            f"{name}-fetchall",
            f"[{name}] fetchall of a {WIDE_ROWS:,}-row table, 6 columns (3 text, 3 numeric)",
            "SELECT id, qty, price, name, email, city FROM wide",
            "all",
            fetch_all[0],
            fetch_all[1],
        ),
        Workload(
            f"{name}-point-default",
            f"[{name}] point query + fetchone, default policy (detectors on), {users}",
            point_sql,
            "one",
            point[0],
            point[1],
            point_params(point[1]),
            policy="default",
            exact=False,
        ),
    ]
    if pg:
        return works
    literals = plan.sqlite_literals
    masked_all = plan.sqlite_masked_all
    customers = "SELECT id, name, email, ssn, card_number, city FROM customers"
    return [
        *works,
        Workload(
            f"{name}-point-literals",
            f"[{name}] point query + fetchone, a new literal every time "
            "(WHERE id = 4711 AND name <> 'x17'), default policy",
            "SELECT id, name, email FROM users WHERE id = <n> AND name <> 'x<n>'",
            "one",
            literals[0],
            literals[1],
            policy="default",
            texts=Literals(),
            exact=False,
        ),
        Workload(
            f"{name}-point-masked",
            f"[{name}] point query + fetchone, email masked by a rule + detectors, {users}",
            point_sql,
            "one",
            point[0],
            point[1],
            point_params(point[1]),
            policy="mask-email",
            exact=False,
        ),
        Workload(
            f"{name}-fetchall-masked",
            f"[{name}] fetchall of {WIDE_ROWS:,} x 6, three masked columns, no detectors",
            customers,
            "all",
            masked_all[0],
            masked_all[1],
            policy="mask3",
            exact=False,
        ),
        Workload(
            f"{name}-fetchall-masked-detectors",
            f"[{name}] fetchall of {WIDE_ROWS:,} x 6, three masked columns + detectors",
            customers,
            "all",
            masked_all[0],
            masked_all[1],
            policy="mask3-detectors",
            exact=False,
        ),
    ]


def selected(works: Sequence[Workload], patterns: Sequence[str]) -> list[Workload]:
    """The workloads whose key matches one of ``patterns`` (all without any)."""
    if not patterns:
        return list(works)
    return [w for w in works if any(fnmatch.fnmatchcase(w.key, p) for p in patterns)]


def bench_database(
    name: str,
    raw: Any,
    system: str,
    works: Sequence[Workload],
    warmup: int,
    sdk: Sdk,
    checks: list[str],
) -> tuple[list[Case], list[Result]]:
    """Run ``works`` on one raw connection; the guardeddb cases of each
    policy are made once (the other four cases are the same for all)."""
    made: dict[str, list[Case]] = {}
    out = []
    for work in works:
        cases = made.get(work.policy)
        if cases is None:
            cases = build_cases(raw, system, name, sdk, checks, work.policy)
            made[work.policy] = cases
        check_results(cases, work, WIDE_ROWS)
        res = run_workload(cases, work, warmup)
        print_result(res)
        out.append(res)
    all_cases = [case for cases in made.values() for case in cases]
    for case in all_cases:
        case.cursor.close()
    return all_cases, out


def verify_spans(sdk: Sdk, all_cases: Sequence[Case], checks: list[str]) -> None:
    """After shutdown: spans and metrics really were produced by the SDK cases."""
    executed = Counter[str]()
    for case in all_cases:
        executed[case.key] += case.executed
    got = sdk.exporter.by_scope
    problems = []
    for key, scope in ((GDB_SDK, GUARDEDDB_SCOPE), (OTEL_SDK, OTEL_DBAPI_SCOPE)):
        n, want = got[scope], executed[key]
        dropped = want - n
        checks.append(
            f"spans exported by {scope!r}: {n:,} for {want:,} queries"
            + (f" ({dropped:,} missing)" if dropped else " (one per query)")
        )
        if n == 0:
            problems.append(f"no span from {scope!r}")
        elif n < want * 0.99:
            problems.append(f"{scope!r} exported only {n:,} spans for {want:,} queries")
    others = {s: n for s, n in got.items() if s not in (GUARDEDDB_SCOPE, OTEL_DBAPI_SCOPE)}
    if others:
        problems.append(f"spans from unexpected scopes: {others}")
    hist = sdk.histogram_count(GUARDEDDB_SCOPE)
    checks.append(
        f"guardeddb {DURATION_METRIC} data points: {hist:,} for {executed[GDB_SDK]:,} queries"
    )
    if hist == 0:
        problems.append(f"guardeddb recorded no {DURATION_METRIC}")
    otel_hist = sdk.histogram_count(OTEL_DBAPI_SCOPE)
    checks.append(
        f"otel-dbapi {DURATION_METRIC} data points: {otel_hist:,}"
        + (f" (it records metrics only with {SEMCONV_OPT_IN}=database)" if otel_hist == 0 else "")
    )
    for scope in (GUARDEDDB_SCOPE, OTEL_DBAPI_SCOPE):
        span = sdk.exporter.samples.get(scope)
        if span is not None:
            attrs = dict(span.attributes or {})
            text = attrs.get("db.query.text", attrs.get("db.statement"))
            checks.append(f"sample {scope!r} span: name={span.name!r} query text={text!r}")
    for line in checks:
        print(f"  - {line}")
    if problems:
        raise SystemExit("telemetry check failed: " + "; ".join(problems))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rounds",
        type=int,
        default=41,
        help="rounds for the sqlite point query (default 41); fetchall and "
        "PostgreSQL workloads run fewer",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run of a few seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get(PG_DSN_ENV, DEFAULT_PG_DSN),
        help=f"PostgreSQL DSN (default ${PG_DSN_ENV} or {DEFAULT_PG_DSN})",
    )
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--workloads",
        type=lambda text: [p.strip() for p in text.split(",") if p.strip()],
        default=[],
        metavar="PATTERNS",
        help="run only the workloads whose key matches one of these comma-separated "
        "shell patterns (e.g. 'sqlite3-point*,psycopg-point'); --list shows the keys",
    )
    parser.add_argument("--list", action="store_true", help="list the workload keys and exit")
    parser.add_argument(
        "--otel-dbapi-metrics",
        action="store_true",
        help=f"set {SEMCONV_OPT_IN}=database so that otel-dbapi records its "
        "metrics too (by default it records none, guardeddb records a histogram)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.otel_dbapi_metrics:
        # Read once, when the first instrumentation initializes: before build_cases.
        os.environ[SEMCONV_OPT_IN] = "database"
    plan = make_plan(args)
    if args.list:
        for db, mark in (("sqlite3", "?"), ("psycopg", "%s")):
            for work in database_workloads(db, mark, plan):
                print(f"{work.key:36} {work.title.split('] ', 1)[1]}")
        return 0
    started = time.perf_counter()
    info = versions()

    assert_no_global_sdk()
    sdk = Sdk.create()
    checks: list[str] = []

    print("guardeddb per-query benchmark" + (" (--quick smoke run)" if args.quick else ""))
    print(
        f"  Python {info['python']} on {info['platform']}, {info['cpus']} CPUs; "
        f"sqlite {info['sqlite']}"
    )
    print(
        "  "
        + ", ".join(
            f"{k} {info[k]}"
            for k in (
                "guardeddb",
                "guardeddb-revision",
                "wrapt",
                "opentelemetry-sdk",
                "opentelemetry-instrumentation-dbapi",
                "psycopg",
            )
        )
    )
    print(
        "  no-SDK cases: global OTel providers left unset (proxies); SDK cases: explicit\n"
        "  TracerProvider + BatchSpanProcessor(do-nothing exporter) and MeterProvider +\n"
        "  InMemoryMetricReader, force_flush() at the end of each batch, inside the timing."
    )
    opt_in = os.environ.get(SEMCONV_OPT_IN, "")
    print(
        f"  {SEMCONV_OPT_IN}={opt_in!r}: otel-dbapi records "
        + ("metrics too" if "database" in opt_in else "spans only, no metrics")
    )
    gc.collect()

    results: list[Result] = []
    all_cases: list[Case] = []
    sqlite_works = selected(database_workloads("sqlite3", "?", plan), args.workloads)
    pg_works = selected(database_workloads("psycopg", "%s", plan), args.workloads)
    if not sqlite_works and not pg_works:
        raise SystemExit(f"no workload matches {args.workloads}: see --list")
    sqlite_conn = setup_sqlite()
    gc.freeze()  # setup data is long-lived: keep it out of the collector's way
    if sqlite_works:
        cases, done = bench_database(
            "sqlite3", sqlite_conn, "sqlite", sqlite_works, plan.warmup, sdk, checks
        )
        results.extend(done)
        all_cases.extend(cases)

    pg_conn, pg_note = (
        open_postgres(args.pg_dsn, args.no_pg, info)
        if pg_works or args.no_pg
        else (None, "PostgreSQL: no workload selected")
    )
    if pg_conn is not None:
        gc.collect()
        gc.freeze()
        cases, done = bench_database(
            "psycopg", pg_conn, "postgresql", pg_works, plan.warmup, sdk, checks
        )
        results.extend(done)
        all_cases.extend(cases)
        pg_conn.close()
    if pg_note:
        print()
        print(pg_note.strip())

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
            SEMCONV_OPT_IN: os.environ.get(SEMCONV_OPT_IN, ""),
            "postgresql": pg_note or "ran",
            "checks": checks,
            "ratios": {r.workload.key: ratios(r) for r in results},
            "workloads": {r.workload.key: result_json(r) for r in results},
        }
        write_json(args.json, payload)
    sqlite_conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
