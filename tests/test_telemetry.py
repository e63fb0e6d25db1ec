"""One CLIENT span per execute, with the semconv attributes and no literal values."""

from __future__ import annotations

import gc
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.context import attach, detach, set_value
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

import guardeddb
from guardeddb import GuardedConnection

from .fix_db import PERMISSIVE, Backend
from .fix_otel import Otel

SECRETS = ("ada@example.com", "s3cr3t-token", "4111111111111111", "987654")


def _connect(backend: Backend, otel: Otel, **kwargs: Any) -> GuardedConnection:
    return guardeddb.connect(
        backend.url,
        policy=PERMISSIVE,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        **kwargs,
    )


def _only(otel: Otel) -> ReadableSpan:
    spans = otel.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def _assert_no_secret(span: ReadableSpan) -> None:
    flat = repr(span.name) + repr(dict(span.attributes or {})) + repr(span.status.description)
    for event in span.events:
        flat += repr(dict(event.attributes or {}))
    for secret in SECRETS:
        assert secret not in flat, f"{secret!r} leaked into span {span.name}"


def test_select_span_name_kind_and_attributes(backend: Backend, otel: Otel, table: str) -> None:
    """A SELECT makes one CLIENT span named by its summary, with the stable attributes."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    cur.execute(f"SELECT name FROM {table} WHERE email = 'ada@example.com' AND id > 987654")
    assert cur.fetchall() == [] or True
    span = _only(otel)
    attrs = dict(span.attributes or {})
    assert span.kind is SpanKind.CLIENT
    assert span.name == f"SELECT {table}"
    assert attrs["db.system.name"] == backend.system
    assert attrs["db.query.summary"] == f"SELECT {table}"
    assert attrs["db.query.text"] == f"SELECT name FROM {table} WHERE email = ? AND id > ?"
    assert attrs["db.response.returned_rows"] == 0
    assert attrs["guardeddb.decision.action"] == "allow"
    assert attrs["db.namespace"] == backend.database
    if backend.name == "sqlite":
        assert "server.address" not in attrs
    else:
        assert attrs["server.address"] == backend.host
        default = {"postgresql": 5432, "mysql": 3306}[backend.name]
        if backend.port in (None, default):
            assert "server.port" not in attrs  # the default port is not repeated
        else:
            assert attrs["server.port"] == backend.port
    _assert_no_secret(span)
    conn.close()


def test_parameters_are_never_recorded(backend: Backend, otel: Otel, table: str) -> None:
    """Parameterized text is kept as written; the parameter values appear nowhere."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    q = backend.sql(f"SELECT id FROM {table} WHERE email = ? OR name = ?")
    cur.execute(q, ("ada@example.com", "s3cr3t-token"))
    cur.fetchall()
    span = _only(otel)
    assert dict(span.attributes or {})["db.query.text"] == q
    _assert_no_secret(span)
    conn.close()


def test_returned_rows_counts_rows_actually_fetched(
    backend: Backend, otel: Otel, table: str
) -> None:
    """Rows fetched, not rowcount: by fetchone until exhaustion, fetchmany, iteration."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    q = f"SELECT id FROM {table} ORDER BY id"
    cur.execute(q)
    while cur.fetchone() is not None:
        pass
    cur.execute(q)
    cur.fetchmany(2)
    cur.execute(q)  # running again ends the previous span with what was fetched
    list(cur)
    cur.execute(q)
    cur.fetchone()
    cur.close()  # closing ends it too
    counts = [dict(s.attributes or {})["db.response.returned_rows"] for s in otel.spans()]
    assert counts == [3, 2, 3, 1]
    conn.close()


def test_abandoned_cursor_span_ends_on_finalization(backend: Backend, otel: Otel) -> None:
    """A cursor dropped with rows unread still ends its span."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert otel.spans() == []
    del cur
    gc.collect()
    assert dict(_only(otel).attributes or {})["db.response.returned_rows"] == 0
    conn.close()


def test_statement_without_rows_ends_at_once(backend: Backend, otel: Otel, table: str) -> None:
    """DML has no result set: its span ends when execute returns."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    cur.execute(backend.sql(f"UPDATE {table} SET name = ? WHERE id = ?"), ("x", 1))
    span = _only(otel)
    assert span.name == f"UPDATE {table}"
    assert dict(span.attributes or {})["db.query.text"] == backend.sql(
        f"UPDATE {table} SET name = ? WHERE id = ?"
    )
    conn.rollback()
    conn.close()


def test_driver_error_is_reraised_unchanged_and_recorded(backend: Backend, otel: Otel) -> None:
    """The driver's own exception propagates; the span says ERROR with type and code."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    with pytest.raises(backend.error) as info:
        cur.execute("SELECT * FROM gdb_no_such_table WHERE secret = 's3cr3t-token'")
    assert type(info.value).__module__.split(".")[0] in ("sqlite3", "psycopg", "pymysql")
    span = _only(otel)
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    cls = type(info.value)
    assert attrs["error.type"] == f"{cls.__module__}.{cls.__qualname__}"
    expected_code = {"sqlite": "SQLITE_ERROR", "postgresql": "42P01", "mysql": "1146"}
    assert attrs["db.response.status_code"] == expected_code[backend.name]
    _assert_no_secret(span)
    conn.close()


def test_executemany_is_one_batch_span(backend: Backend, otel: Otel, table: str) -> None:
    """executemany: one span, BATCH prefix, db.operation.batch.size."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    cur.executemany(
        backend.sql(f"INSERT INTO {table} (id, name, email) VALUES (?, ?, ?)"),
        [(20, "n", "ada@example.com"), (21, "m", "s3cr3t-token")],
    )
    span = _only(otel)
    attrs = dict(span.attributes or {})
    assert span.name == f"BATCH INSERT {table}"
    assert attrs["db.operation.batch.size"] == 2
    _assert_no_secret(span)
    conn.rollback()
    conn.close()


def test_identity_attributes_on_span(backend: Backend, otel: Otel) -> None:
    """enduser.id, gen_ai.agent.name, user.roles and the session come from the identity."""
    conn = _connect(backend, otel)
    with guardeddb.identity(
        user="alice@example.com", agent="support-bot", roles={"b", "a"}, session="s-1"
    ):
        conn.cursor().execute("SELECT 1").fetchall() if backend.name != "mysql" else None
        if backend.name == "mysql":
            c = conn.cursor()
            c.execute("SELECT 1")
            c.fetchall()
    attrs = dict(_only(otel).attributes or {})
    assert attrs["enduser.id"] == "alice@example.com"
    assert attrs["gen_ai.agent.name"] == "support-bot"
    assert attrs["user.roles"] == ("a", "b")
    assert attrs["guardeddb.identity.session"] == "s-1"
    conn.close()


def test_connection_default_identity_and_context_wins(backend: Backend, otel: Otel) -> None:
    """A connection's default identity applies unless the context binds another."""
    conn = _connect(backend, otel, identity=guardeddb.Identity(user="batch-job"))
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    with guardeddb.identity(user="alice"):
        cur.execute("SELECT 1")
        cur.fetchall()
    users = [dict(s.attributes or {})["enduser.id"] for s in otel.spans()]
    assert users == ["batch-job", "alice"]
    conn.close()


def test_duration_metric_recorded(backend: Backend, otel: Otel) -> None:
    """db.client.operation.duration is recorded in seconds with low-cardinality attributes."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    with pytest.raises(backend.error):
        cur.execute("SELECT * FROM gdb_no_such_table")
    data = otel.reader.get_metrics_data()
    assert data is not None
    points: list[HistogramDataPoint] = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "db.client.operation.duration"
        for p in m.data.data_points
        if isinstance(p, HistogramDataPoint)
    ]
    assert sum(p.count for p in points) == 2
    errors = [p for p in points if "error.type" in (p.attributes or {})]
    assert len(errors) == 1
    for p in points:
        assert "db.query.text" not in (p.attributes or {})
        assert (p.attributes or {})["db.system.name"] == backend.system
    conn.close()


def test_suppress_instrumentation_is_respected(backend: Backend, otel: Otel) -> None:
    """Inside suppress_instrumentation, no span and no metric."""
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

    conn = _connect(backend, otel)
    token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        detach(token)
    assert otel.spans() == []
    conn.close()


def test_no_sdk_means_no_telemetry_work(backend: Backend) -> None:
    """Without any provider configured, guardeddb records nothing and still works."""
    conn = guardeddb.connect(backend.url)
    telemetry = conn._self_guard.telemetry
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone()[0] == 1
    assert telemetry.tracer is None and telemetry.duration is None
    assert cur._self_op is None
    conn.close()


def test_span_is_a_leaf_not_attached(backend: Backend, otel: Otel) -> None:
    """guardeddb never makes its span the current one."""
    from opentelemetry import trace

    conn = _connect(backend, otel)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert not trace.get_current_span().get_span_context().is_valid
    cur.fetchall()
    conn.close()


def test_connection_close_ends_unread_spans(backend: Backend, otel: Otel) -> None:
    """A point lookup read with one fetchone still gets its span ended at close."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchone()
    assert otel.spans() == []
    conn.close()
    assert dict(_only(otel).attributes or {})["db.response.returned_rows"] == 1


def test_decisions_counter_by_action_and_rule(backend: Backend, otel: Otel) -> None:
    """guardeddb.decisions counts every decision by action and rule."""
    conn = guardeddb.connect(
        backend.url, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    with pytest.raises(guardeddb.QueryBlocked):
        cur.execute("DROP TABLE gdb_never")
    data = otel.reader.get_metrics_data()
    assert data is not None
    points = {
        (
            p.attributes["db.system.name"],
            p.attributes["guardeddb.decision.action"],
            p.attributes.get("guardeddb.decision.rule"),
        ): p.value  # type: ignore[union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "guardeddb.decisions"
        for p in m.data.data_points
        if p.attributes
    }
    assert points[(backend.system, "block", "no-ddl")] >= 1
    assert points[(backend.system, "allow", None)] >= 1
    conn.close()


def _insert(backend: Backend, table: str) -> str:
    return backend.sql(f"INSERT INTO {table} (id, name, email) VALUES (?, ?, ?)")


@pytest.mark.parametrize(
    ("sets", "summary", "size"),
    [
        (lambda: [(20, "n", "ada@example.com"), (21, "m", "s3cr3t-token")], "BATCH INSERT {t}", 2),
        (lambda: [(20, "n", "ada@example.com")], "INSERT {t}", None),  # one set: not a batch
        (lambda: [], "BATCH INSERT {t}", 0),  # semconv's empty batch
        # No len(): a batch of a size not known in advance, except where guardeddb
        # lists the sets itself (PyMySQL binds on the client: see _surface.py).
        (lambda: ((i, "g", "x@example.org") for i in (30, 31)), "BATCH INSERT {t}", -1),
    ],
    ids=["two-sets", "one-set", "no-set", "generator"],
)
def test_executemany_summary_and_batch_size_follow_semconv(
    backend: Backend,
    otel: Otel,
    table: str,
    sets: Callable[[], Any],
    summary: str,
    size: int | None,
) -> None:
    """db.query.summary has the BATCH prefix the span name has, for 2+ (or an
    unknown number of) parameter sets; one set is a single operation, with no
    prefix and no db.operation.batch.size; none is a batch of size 0."""
    conn = _connect(backend, otel)
    try:
        if size == -1:
            size = 2 if backend.name == "mysql" else None
        conn.cursor().executemany(_insert(backend, table), sets())
        span = _only(otel)
        attrs = dict(span.attributes or {})
        assert span.name == attrs["db.query.summary"] == summary.format(t=table)
        assert attrs.get("db.operation.batch.size") == size
        _assert_no_secret(span)
        data = otel.reader.get_metrics_data()
        assert data is not None
        points = [
            dict(p.attributes or {})
            for m in data.resource_metrics[0].scope_metrics[0].metrics
            if m.name == "db.client.operation.duration"
            for p in m.data.data_points
        ]
        assert [p["db.query.summary"] for p in points] == [summary.format(t=table)]
    finally:
        conn.rollback()
        conn.close()


def test_call_is_summarized_with_its_procedure(backend: Backend, otel: Otel) -> None:
    """``CALL proc(1)`` is summarized ``CALL proc`` and names db.stored_procedure.name,
    on a real procedure where the database has them (SQLite has no CALL: its span
    records the database's error, with the same summary)."""
    proc = f"gdb_edges_proc_{uuid.uuid4().hex[:8]}"
    raw = backend.connect_raw()
    try:
        if backend.name == "postgresql":
            raw.execute(f"CREATE PROCEDURE {proc}(a integer) LANGUAGE SQL AS $$ SELECT a $$")
        elif backend.name == "mysql":
            raw.cursor().execute(f"CREATE PROCEDURE {proc}(IN a INT) BEGIN DO a; END")
        raw.commit()
        conn = _connect(backend, otel)
        try:
            cur = conn.cursor()
            if backend.name == "sqlite":
                with pytest.raises(sqlite3.OperationalError):
                    cur.execute(f"CALL {proc}(987654)")
            else:
                cur.execute(f"CALL {proc}(987654)")
            span = _only(otel)
            attrs = dict(span.attributes or {})
            assert span.name == attrs["db.query.summary"] == f"CALL {proc}"
            assert attrs["db.stored_procedure.name"] == proc
            assert attrs["db.query.text"] == f"CALL {proc}(?)"
            _assert_no_secret(span)
        finally:
            conn.rollback()
            conn.close()
    finally:
        if backend.name != "sqlite":
            raw.rollback()
            raw.cursor().execute(f"DROP PROCEDURE IF EXISTS {proc}")
            raw.commit()
        raw.close()


def test_cte_names_are_not_targets(backend: Backend, otel: Otel, table: str) -> None:
    """A CTE's name is no collection: the summary names what the CTE reads and
    what the query reads, in order, and never the CTE."""
    conn = _connect(backend, otel)
    try:
        cur = conn.cursor()
        cur.execute(
            f"WITH recent AS (SELECT id FROM {table} WHERE id > 1) "
            f"SELECT u.name FROM {table} u JOIN recent ON recent.id = u.id ORDER BY u.id"
        )
        assert [r[0] for r in cur.fetchall()] == ["Grace", "Linus"]
        cur.close()
        attrs = dict(_only(otel).attributes or {})
        assert attrs["db.query.summary"] == f"SELECT {table} SELECT {table}"
    finally:
        conn.close()


def test_masking_counts_and_rows_reach_the_span_together(
    backend: Backend, otel: Otel, table: str
) -> None:
    """The masked column and value counts are on the span with the row count
    (they are set in one call when the span ends), for each result alone."""
    conn = guardeddb.connect(
        backend.url,
        policy={
            "version": 1,
            "extends": [],
            "masking": {"rules": [{"columns": ["*.email"], "operator": "redact"}]},
        },
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    cur = conn.cursor()
    cur.execute(f"SELECT id, email FROM {table} ORDER BY id")
    rows = cur.fetchall()
    cur.execute(f"SELECT id FROM {table} WHERE id = 1")
    cur.fetchall()
    conn.close()
    assert "ada@example.com" not in repr(rows)
    masked, plain = (dict(s.attributes or {}) for s in otel.spans())
    assert masked["guardeddb.masked.columns"] == 1
    assert masked["guardeddb.masked.values"] == 3
    assert masked["db.response.returned_rows"] == 3
    assert "guardeddb.masked.columns" not in plain
    assert plain["db.response.returned_rows"] == 1


def test_cached_span_attributes_follow_identity_and_text(backend: Backend, otel: Otel) -> None:
    """Span attributes cached per statement and caller stay each span's own:
    the same statement under alternating identities, and statements that
    differ only in a literal, each carry their own caller and query text."""
    conn = _connect(backend, otel)
    cur = conn.cursor()
    users = ["alice", None, "bob", "alice", None]
    for n, user in enumerate(users):
        if user is None:
            cur.execute(f"SELECT {n % 2}")
            cur.fetchall()
        else:
            with guardeddb.identity(user=user):
                cur.execute(f"SELECT {n % 2}")
                cur.fetchall()
    conn.close()
    spans = [dict(s.attributes or {}) for s in otel.spans()]
    assert [s.get("enduser.id") for s in spans] == users
    assert {s["db.query.text"] for s in spans} == {"SELECT ?"}
    assert all("db.response.returned_rows" in s for s in spans)
