"""Spans and metrics reach a real OTLP/HTTP receiver, configured by OTEL_* variables.

The receiver is a small HTTP server in the test process that decodes what
the real OTLP exporters send (protobuf, gzip or deflate) the way a collector
or Jaeger would, and answers with the protocol's response messages.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import guardeddb
from guardeddb.otlp import OtlpProviders, configure

from .fix_db import Backend
from .fix_otlp import Received, Receiver, _attrs

AGENT = guardeddb.Identity(user="alice@example.com", agent="support-bot")


@pytest.fixture
def make_providers(receiver: Receiver) -> Iterator[Callable[..., OtlpProviders]]:
    """guardeddb.otlp.configure(), called once the test has set its variables;
    every provider made is shut down after the test."""
    made: list[OtlpProviders] = []

    def make(**kwargs: Any) -> OtlpProviders:
        providers = configure(**kwargs)
        made.append(providers)
        return providers

    yield make
    for providers in made:
        providers.shutdown()


def _guarded_traffic(conn: guardeddb.GuardedConnection, table: str) -> None:
    """What an agent does: a read with literals, then a DROP the policy refuses."""
    with guardeddb.identity(AGENT):
        cur = conn.cursor()
        cur.execute(f"SELECT id, name FROM {table} WHERE name = 'Ada' OR id > 1 ORDER BY id")
        assert len(cur.fetchall()) == 3
        with pytest.raises(guardeddb.QueryBlocked):
            cur.execute(f"DROP TABLE {table}")


def _assert_guarded_spans(spans: list[Received], table: str, system: str, service: str) -> None:
    by_name = {r.span.name: r for r in spans}
    select = by_name[f"SELECT {table}"]
    assert select.span.kind == Span.SPAN_KIND_CLIENT
    assert select.attributes["db.system.name"] == system
    assert select.attributes["db.query.text"] == (
        f"SELECT id, name FROM {table} WHERE name = ? OR id > ? ORDER BY id"
    )
    assert select.attributes["db.query.summary"] == f"SELECT {table}"
    assert select.attributes["enduser.id"] == "alice@example.com"
    assert select.attributes["gen_ai.agent.name"] == "support-bot"
    assert select.attributes["guardeddb.decision.action"] == "allow"
    assert select.attributes["db.response.returned_rows"] == 3
    assert select.span.status.code != Status.STATUS_CODE_ERROR
    assert "Ada" not in repr(select.attributes)
    drop = by_name[f"DROP TABLE {table}"]
    assert drop.span.kind == Span.SPAN_KIND_CLIENT
    assert drop.span.status.code == Status.STATUS_CODE_ERROR
    assert drop.attributes["error.type"] == "guardeddb.QueryBlocked"
    assert drop.attributes["guardeddb.decision.action"] == "block"
    assert drop.attributes["guardeddb.decision.rule"] == "no-ddl"
    assert select.resource["service.name"] == service
    assert drop.resource["service.name"] == service


def test_guarded_spans_and_metrics_arrive_over_otlp(
    backend: Backend,
    table: str,
    receiver: Receiver,
    make_providers: Callable[..., OtlpProviders],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES set, the real OTLP/HTTP exporters deliver every
    guarded query as a CLIENT span (sanitized text, identity, decision, rows;
    a blocked one as an ERROR span) and the db.client.operation.duration
    histogram, under that service's resource."""
    service = f"shop-{backend.name}-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,team=data")
    providers = make_providers()
    conn = guardeddb.connect(
        backend.url,
        tracer_provider=providers.tracer_provider,
        meter_provider=providers.meter_provider,
    )
    _guarded_traffic(conn, table)
    conn.close()
    assert providers.force_flush()
    spans = receiver.spans()
    _assert_guarded_spans(spans, table, backend.system, service)
    assert spans[0].resource["deployment.environment.name"] == "ci"
    assert spans[0].resource["team"] == "data"
    durations = receiver.metric_names()["db.client.operation.duration"]
    systems = {_attrs(p.attributes)["db.system.name"] for p in durations}
    assert systems == {backend.system}
    assert sum(p.count for p in durations) >= 1
    assert "guardeddb.decisions" in receiver.metric_names()


def test_gzip_compressed_export_is_decoded(
    tmp_path: Path,
    receiver: Receiver,
    make_providers: Callable[..., OtlpProviders],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_COMPRESSION=gzip reaches the exporter: the receiver
    sees gzip bodies and still decodes the spans."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    providers = make_providers()
    conn = guardeddb.connect(
        f"sqlite:///{tmp_path / 'x.db'}", tracer_provider=providers.tracer_provider
    )
    conn.execute("SELECT 1").fetchall()
    conn.close()
    assert providers.force_flush()
    assert receiver.encodings and set(receiver.encodings) == {"gzip"}
    assert [r.span.name for r in receiver.spans()] == ["SELECT"]


def test_default_service_name_yields_to_the_environment(
    receiver: Receiver,
    make_providers: Callable[..., OtlpProviders],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """configure(default_service_name=...) names the service only when neither
    OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES does."""

    def service(**kwargs: Any) -> Any:
        return make_providers(**kwargs).tracer_provider.resource.attributes["service.name"]

    assert service(default_service_name="dflt") == "dflt"
    assert service().startswith("unknown_service")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")
    assert service(default_service_name="dflt") == "from-attrs"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert service(default_service_name="dflt") == "from-env"


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _child_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GUARDEDDB_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    env.update(extra)
    return env


APP = """\
import sqlite3, sys

import guardeddb

conn = sqlite3.connect(sys.argv[1])  # a plain sqlite3 connection, as any app opens it
print("guarded" if isinstance(conn, guardeddb.GuardedConnection) else "raw")
with guardeddb.identity(user="alice@example.com", agent="support-bot"):
    cur = conn.cursor()
    cur.execute("SELECT id, name FROM {table} WHERE name = 'Ada' OR id > 1 ORDER BY id")
    print(len(cur.fetchall()), "rows")
    try:
        cur.execute("DROP TABLE {table}")
        print("dropped")
    except guardeddb.QueryBlocked:
        print("blocked")
conn.close()
"""


def _sqlite_table(path: Path) -> str:
    name = f"gdb_users_{uuid.uuid4().hex[:10]}"
    raw = sqlite3.connect(path)
    raw.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
    raw.executemany(
        f"INSERT INTO {name} VALUES (?, ?, ?)",
        [(1, "Ada", "ada@example.com"), (2, "Grace", "g@example.com"), (3, "Linus", "l@x.org")],
    )
    raw.commit()
    raw.close()
    return name


def _opentelemetry_instrument() -> str:
    script = Path(sys.executable).parent / "opentelemetry-instrument"
    assert script.exists(), "opentelemetry-instrumentation's console script is missing"
    return str(script)


@pytest.mark.slow
def test_opentelemetry_instrument_guards_a_plain_sqlite_app(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`GUARDEDDB_ENABLED=1 opentelemetry-instrument python app.py` loads
    GuardeddbInstrumentor by its entry point: the app's own sqlite3.connect() is
    guarded, its DROP is blocked, and the spans and metrics go to the OTLP
    endpoint of OTEL_*. (Without the variable it stays idle: test_instrument.py.)"""
    db = tmp_path / "app.db"
    table = _sqlite_table(db)
    app = tmp_path / "app.py"
    app.write_text(APP.format(table=table))
    env = _child_env(receiver, OTEL_SERVICE_NAME="instrumented-app", GUARDEDDB_ENABLED="1")
    done = _run([_opentelemetry_instrument(), sys.executable, str(app), str(db)], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["guarded", "3 rows", "blocked"], done.stderr
    receiver.wait_for(lambda: len(receiver.spans()) >= 2)
    _assert_guarded_spans(receiver.spans(), table, "sqlite", "instrumented-app")
    receiver.wait_for(lambda: "db.client.operation.duration" in receiver.metric_names())
    raw = sqlite3.connect(db)
    assert raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 3
    raw.close()


@pytest.mark.slow
def test_opentelemetry_instrument_with_a_broken_policy_runs_no_query(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A GUARDEDDB_POLICY that does not load leaves no connection unguarded:
    the app's sqlite3.connect() raises PolicyError."""
    db = tmp_path / "app.db"
    table = _sqlite_table(db)
    app = tmp_path / "app.py"
    app.write_text(APP.format(table=table))
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nrules: [{id: x, match: {nope: 1}, action: block}]\n")
    env = _child_env(receiver, GUARDEDDB_POLICY=str(bad))
    done = _run([_opentelemetry_instrument(), sys.executable, str(app), str(db)], env, tmp_path)
    assert done.returncode != 0
    assert "PolicyError" in done.stderr and "refuses to connect" in done.stderr
    assert "guarded" not in done.stdout and "raw" not in done.stdout


@pytest.mark.slow
def test_demo_exports_over_otlp(tmp_path: Path, receiver: Receiver) -> None:
    """`guardeddb demo --otlp` sends its spans to OTEL_EXPORTER_OTLP_ENDPOINT,
    named guardeddb-demo unless OTEL_SERVICE_NAME says otherwise."""
    env = _child_env(receiver, OTEL_METRICS_EXPORTER="none")
    cmd = [sys.executable, "-m", "guardeddb.cli", "demo", "--otlp", "--json"]
    done = _run(cmd, env, tmp_path)
    assert done.returncode == 0, done.stderr
    receiver.wait_for(lambda: len(receiver.spans()) >= 2)
    spans = receiver.spans()
    assert {r.resource["service.name"] for r in spans} == {"guardeddb-demo"}
    blocked = [r for r in spans if r.attributes.get("guardeddb.decision.action") == "block"]
    assert blocked
    assert all(r.attributes["error.type"] == "guardeddb.QueryBlocked" for r in blocked)
    assert all(r.span.kind == Span.SPAN_KIND_CLIENT for r in spans)
