"""guardeddb.instrument(): every connection the process opens through a patched
driver comes back guarded, once, and uninstrument() restores the originals."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest
import wrapt
from opentelemetry.trace import StatusCode, Tracer, TracerProvider

import guardeddb
from guardeddb import GuardedConnection, QueryBlocked
from guardeddb.approvals import ApprovalStore
from guardeddb.integrations.instrument import TARGETS, is_instrumented

from .fix_db import PERMISSIVE, PG_DSN, Backend
from .fix_otel import Otel

AGENT = guardeddb.Identity(user="alice@example.com", agent="support-bot")
MODULES = {"sqlite": sqlite3, "postgresql": psycopg, "mysql": pymysql}
READONLY: dict[str, Any] = {"version": 1, "extends": ["readonly"]}


def _slot(parent: Any, attribute: str) -> Any:
    """What is stored under the name, unbound (a class's __dict__ entry)."""
    return vars(parent)[attribute] if isinstance(parent, type) else getattr(parent, attribute)


def _originals() -> dict[tuple[str, str], Any]:
    found = {}
    for name, paths in TARGETS.items():
        module = importlib.import_module(name)
        for path in paths:
            parent, attribute, _ = wrapt.resolve_path(module, path)
            found[(name, path)] = _slot(parent, attribute)
    return found


@pytest.fixture
def originals() -> Iterator[dict[tuple[str, str], Any]]:
    """The drivers' functions before the test; every module is uninstrumented
    after it, and the originals must be back in place."""
    before = _originals()
    yield before
    for name in TARGETS:
        guardeddb.uninstrument(name)
    after = _originals()
    for key, original in before.items():
        assert after[key] is original, f"{key} not restored"


def plain_connect(backend: Backend) -> Any:
    """Open a connection the way an application does, with the driver's own connect."""
    if backend.name == "sqlite":
        return sqlite3.connect(backend.url.removeprefix("sqlite:///"))
    if backend.name == "postgresql":
        return psycopg.connect(backend.url)
    parts = urlsplit(backend.url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        password=parts.password or "",
        database=parts.path.lstrip("/"),
    )


def _inner(obj: Any) -> Any:
    """One layer down a wrapt wrapper or proxy."""
    return obj.__wrapped__


def _raw_class(backend: Backend) -> type:
    classes: dict[str, type] = {
        "sqlite": sqlite3.Connection,
        "postgresql": psycopg.Connection,
        "mysql": pymysql.connections.Connection,
    }
    return classes[backend.name]


def test_plain_connect_comes_back_guarded(
    backend: Backend, table: str, otel: Otel, originals: Any
) -> None:
    """After instrument(), the driver's own connect() returns a guarded connection
    that is still an instance of the driver's class: DROP is refused before it
    reaches the database, and every query is a span."""
    guardeddb.instrument(
        MODULES[backend.name],
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    conn = plain_connect(backend)
    try:
        assert isinstance(conn, GuardedConnection)
        assert isinstance(conn, _raw_class(backend))
        with guardeddb.identity(AGENT):
            cur = conn.cursor()
            cur.execute(f"SELECT id FROM {table} ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == [1, 2, 3]
            with pytest.raises(QueryBlocked):
                cur.execute(f"DROP TABLE {table}")
            cur.execute(f"SELECT count(*) FROM {table}")  # still there
            assert cur.fetchone()[0] == 3
    finally:
        conn.close()
    spans = otel.spans()
    attrs = [dict(s.attributes or {}) for s in spans]
    assert [a["guardeddb.decision.action"] for a in attrs] == ["allow", "block", "allow"]
    assert spans[1].status.status_code is StatusCode.ERROR
    assert attrs[1]["error.type"] == "guardeddb.QueryBlocked"
    assert attrs[0]["enduser.id"] == "alice@example.com"


def test_psycopg_connect_and_connection_connect_are_both_guarded(
    pg_backend: Backend, originals: Any
) -> None:
    """psycopg.connect is Connection.connect bound at import: both names, and a
    subclass's connect(), return guarded connections, each guarded once."""

    class Sub(psycopg.Connection[Any]):
        pass

    guardeddb.instrument("psycopg")
    for opener in (psycopg.connect, psycopg.Connection.connect, Sub.connect):
        conn = opener(pg_backend.url)
        try:
            assert isinstance(conn, GuardedConnection), opener
            assert type(conn.__wrapped__) in (psycopg.Connection, Sub)
            with pytest.raises(QueryBlocked):
                conn.execute("DROP TABLE gdb_never_there")
        finally:
            conn.close()
    sub: Any = Sub.connect(pg_backend.url)
    assert isinstance(sub.__wrapped__, Sub)
    sub.close()
    guardeddb.uninstrument(psycopg)
    assert psycopg.Connection.__dict__["connect"] is originals[("psycopg", "Connection.connect")]
    assert psycopg.connect is originals[("psycopg", "connect")]
    raw = psycopg.connect(pg_backend.url)
    assert not isinstance(raw, GuardedConnection)
    raw.close()


def test_pymysql_constructor_names_are_guarded(mysql_backend: Backend, originals: Any) -> None:
    """pymysql.connect, Connect and Connection (one class under three names)
    return guarded connections; isinstance and subclassing still work through
    the patch; pymysql.connections.Connection, the class itself, is left alone."""
    parts = urlsplit(mysql_backend.url)
    kwargs: dict[str, Any] = {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": parts.username,
        "password": parts.password or "",
        "database": parts.path.lstrip("/"),
    }
    guardeddb.instrument(pymysql)
    for opener in (pymysql.connect, pymysql.Connect, pymysql.Connection):
        conn = opener(**kwargs)
        try:
            assert isinstance(conn, GuardedConnection)
            assert isinstance(conn, pymysql.Connection)
            assert type(conn.__wrapped__) is pymysql.connections.Connection
        finally:
            conn.close()

    class Sub(pymysql.Connection):  # type: ignore[misc]  # a FunctionWrapper while patched
        pass

    assert Sub.__mro__[1] is pymysql.connections.Connection
    raw = pymysql.connections.Connection(**kwargs)
    assert not isinstance(raw, GuardedConnection)  # documented: the class is not patched
    raw.close()


def test_sqlite_dbapi2_connect_is_guarded(tmp_path: Path, originals: Any) -> None:
    """sqlite3.dbapi2.connect, which SQLAlchemy's pysqlite dialect calls, is patched too."""
    guardeddb.instrument(sqlite3)
    conn = sqlite3.dbapi2.connect(str(tmp_path / "x.db"))
    assert isinstance(conn, GuardedConnection)
    with pytest.raises(QueryBlocked):
        conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()


def test_instrumenting_twice_patches_once_and_the_latest_options_win(
    tmp_path: Path, originals: Any
) -> None:
    """A second instrument() adds no second layer; its policy applies to the
    connections opened after it, while an open one keeps the policy it got."""
    path = str(tmp_path / "x.db")
    guardeddb.instrument(sqlite3, policy=PERMISSIVE)
    first = sqlite3.connect(path)
    guardeddb.instrument("sqlite3", policy=READONLY)
    assert _inner(sqlite3.connect) is originals[("sqlite3", "connect")]
    second: Any = sqlite3.connect(path)
    assert type(second.__wrapped__) is sqlite3.Connection
    first.execute("CREATE TABLE t (x INTEGER)")  # permissive
    with pytest.raises(QueryBlocked):
        second.execute("INSERT INTO t VALUES (1)")  # read-only
    first.close()
    second.close()


def test_guardeddb_connect_while_instrumented_guards_once_with_its_own_policy(
    backend: Backend, table: str, originals: Any
) -> None:
    """guardeddb.connect() reaches the original driver function: its connection
    is guarded once, by its explicit policy, not the instrumented one."""
    guardeddb.instrument(MODULES[backend.name], policy=READONLY)
    conns = [guardeddb.connect(backend.url, policy=PERMISSIVE)]
    if backend.name == "sqlite":
        path = backend.url.removeprefix("sqlite:///")
        conns.append(guardeddb.connect(sqlite3.connect, path, policy=PERMISSIVE))
        conns.append(guardeddb.connect(sqlite3, path, policy=PERMISSIVE))
    elif backend.name == "postgresql":
        conns.append(guardeddb.connect(psycopg.connect, backend.url, policy=PERMISSIVE))
    for i, conn in enumerate(conns):
        assert type(conn.__wrapped__) is _raw_class(backend)  # not a guarded one inside
        cur = conn.cursor()
        cur.execute(backend.sql(f"INSERT INTO {table} VALUES (?, ?, ?)"), (10 + i, "x", "y"))
        conn.rollback()
        conn.close()
    instrumented = plain_connect(backend)
    with pytest.raises(QueryBlocked):
        instrumented.cursor().execute(
            backend.sql(f"INSERT INTO {table} VALUES (?, ?, ?)"), (9, "", "")
        )
    instrumented.close()


def test_wrap_with_explicit_options_regards_an_instrumented_connection(
    tmp_path: Path, originals: Any
) -> None:
    """wrap() of a connection the instrumentation guarded returns it as it is,
    unless options are given: then they win (a stricter policy is never ignored)."""
    path = str(tmp_path / "x.db")
    guardeddb.instrument(sqlite3, policy=PERMISSIVE)
    conn: Any = sqlite3.connect(path)
    assert guardeddb.wrap(conn) is conn
    strict = guardeddb.wrap(conn, policy=READONLY)
    assert strict is not conn
    assert type(strict.__wrapped__) is sqlite3.Connection
    with pytest.raises(QueryBlocked):
        strict.execute("CREATE TABLE t (x INTEGER)")
    own = guardeddb.wrap(sqlite3.connect(path), policy=PERMISSIVE)
    assert guardeddb.wrap(own) is own
    with pytest.raises(TypeError, match="already guarded"):  # which guard wins is no guess
        guardeddb.wrap(own, policy=READONLY)
    strict.close()
    own.close()


def test_uninstrument_restores_the_exact_originals(tmp_path: Path, originals: Any) -> None:
    """uninstrument() puts back the very objects that were there; connections
    opened after it are raw; a second uninstrument() is a no-op."""
    for name in TARGETS:
        guardeddb.instrument(name)
        assert is_instrumented(name)
    assert sqlite3.connect is not originals[("sqlite3", "connect")]
    for name in TARGETS:
        guardeddb.uninstrument(name)
        guardeddb.uninstrument(name)
        assert not is_instrumented(name)
    assert sqlite3.connect is originals[("sqlite3", "connect")]
    assert sqlite3.dbapi2.connect is originals[("sqlite3", "dbapi2.connect")]
    assert pymysql.connect is originals[("pymysql", "connect")]
    assert pymysql.Connection is pymysql.connections.Connection
    raw = sqlite3.connect(str(tmp_path / "x.db"))
    assert type(raw) is sqlite3.Connection
    raw.close()


def test_a_kept_reference_follows_the_current_instrumentation(
    tmp_path: Path, originals: Any
) -> None:
    """A patched connect someone kept (``from sqlite3 import connect``) opens raw
    connections once uninstrumented, and guarded ones, once, when instrumented again."""
    path = str(tmp_path / "x.db")
    guardeddb.instrument(sqlite3)
    kept = sqlite3.connect
    guardeddb.uninstrument(sqlite3)
    raw = kept(path)
    assert type(raw) is sqlite3.Connection
    raw.close()
    guardeddb.instrument(sqlite3, policy=READONLY)
    conn: Any = kept(path)
    assert type(conn.__wrapped__) is sqlite3.Connection
    with pytest.raises(QueryBlocked):
        conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()


def test_uninstrument_under_another_wrapper_splices_ours_out(
    tmp_path: Path, originals: Any
) -> None:
    """When another instrumentation wrapped sqlite3.connect over ours,
    uninstrument() removes ours from its chain and leaves theirs working."""
    calls: list[str] = []

    def theirs(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append("theirs")
        return wrapped(*args, **kwargs)

    guardeddb.instrument(sqlite3)
    wrapper = wrapt.wrap_function_wrapper(sqlite3, "connect", theirs)
    try:
        assert isinstance(sqlite3.connect(":memory:"), GuardedConnection)
        guardeddb.uninstrument(sqlite3)
        assert sqlite3.connect is wrapper
        assert _inner(sqlite3.connect) is originals[("sqlite3", "connect")]
        conn = sqlite3.connect(str(tmp_path / "x.db"))
        assert type(conn) is sqlite3.Connection
        conn.close()
        assert calls == ["theirs", "theirs"]
    finally:
        sqlite3.connect = originals[("sqlite3", "connect")]


def test_concurrent_instrument_calls_patch_once(tmp_path: Path, originals: Any) -> None:
    """Threads instrumenting and connecting at once leave exactly one layer,
    and every connection opened while instrumented is guarded exactly once."""
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    seen: list[Any] = []

    def work() -> None:
        try:
            start.wait()
            for _ in range(20):
                guardeddb.instrument(sqlite3)
                conn: Any = sqlite3.connect(str(tmp_path / "x.db"))
                seen.append(type(conn.__wrapped__))
                conn.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _inner(sqlite3.connect) is originals[("sqlite3", "connect")]
    assert set(seen) == {sqlite3.Connection}


def test_concurrent_uninstrument_and_connect(tmp_path: Path, originals: Any) -> None:
    """Connecting while another thread instruments and uninstruments never
    fails and never returns a doubly guarded connection."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                guardeddb.instrument(sqlite3)
                guardeddb.uninstrument(sqlite3)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(200):
            conn = sqlite3.connect(":memory:")
            inner = getattr(conn, "__wrapped__", conn)
            assert type(inner) is sqlite3.Connection
            conn.close()
    finally:
        stop.set()
        t.join()
    assert errors == []


def test_guardeddb_own_connections_stay_raw(tmp_path: Path, originals: Any) -> None:
    """An approval store opens its own sqlite3 connection and creates its table:
    instrumentation with the agent-safe policy (which blocks DDL) leaves it alone."""
    guardeddb.instrument(sqlite3)
    store = ApprovalStore(f"sqlite:///{tmp_path / 'approvals.db'}")
    assert store.list() == []


def test_bad_arguments_patch_nothing(tmp_path: Path, originals: Any) -> None:
    """An unknown module, a non-module, or a policy that does not load raise
    before anything is patched."""
    with pytest.raises(ValueError, match="cannot instrument 'json'"):
        guardeddb.instrument("json")
    with pytest.raises(TypeError):
        guardeddb.instrument(42)  # type: ignore[arg-type]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules: [{id: x, action: explode}]\n")
    with pytest.raises(guardeddb.PolicyError):
        guardeddb.instrument(sqlite3, policy=str(bad))
    assert sqlite3.connect is originals[("sqlite3", "connect")]
    assert not is_instrumented(sqlite3)


class _BrokenTracerProvider(TracerProvider):
    """A tracer provider that fails, as a misconfigured SDK plugin can."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        raise RuntimeError("tracer provider unavailable")


def test_a_connection_that_cannot_be_guarded_is_closed_not_handed_out(originals: Any) -> None:
    """When guarding fails, connect() raises and the raw connection it opened
    is closed: an unguarded connection never escapes."""
    opened: list[sqlite3.Connection] = []

    class Tracked(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    guardeddb.instrument(sqlite3, tracer_provider=_BrokenTracerProvider())
    with pytest.raises(RuntimeError, match="tracer provider unavailable"):
        sqlite3.connect(":memory:", factory=Tracked)
    (raw,) = opened
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        raw.execute("SELECT 1")


@pytest.fixture
def instrumentor(originals: Any) -> Iterator[Any]:
    """The OpenTelemetry instrumentor, uninstrumented after the test."""
    from guardeddb.integrations.instrument import GuardeddbInstrumentor

    inst = GuardeddbInstrumentor()
    yield inst
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


def test_instrumentor_guards_every_importable_driver(
    instrumentor: Any, otel: Otel, tmp_path: Path
) -> None:
    """GuardeddbInstrumentor().instrument() patches sqlite3, psycopg and pymysql
    with the given providers; uninstrument() restores them."""
    instrumentor.instrument(tracer_provider=otel.tracer_provider, policy=READONLY)
    assert all(is_instrumented(name) for name in TARGETS)
    conn = sqlite3.connect(str(tmp_path / "x.db"))
    with pytest.raises(QueryBlocked):
        conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()
    assert dict(otel.spans()[0].attributes or {})["guardeddb.decision.rule"] == "read-only"
    instrumentor.uninstrument()
    assert not any(is_instrumented(name) for name in TARGETS)


def test_instrumentor_reads_the_policy_file_from_the_environment(
    instrumentor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GUARDEDDB_POLICY names the policy YAML when none is passed."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nextends: [readonly]\n")
    monkeypatch.setenv("GUARDEDDB_POLICY", str(policy))
    instrumentor.instrument()
    conn = sqlite3.connect(str(tmp_path / "x.db"))
    with pytest.raises(QueryBlocked, match="only reads"):
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()


def test_instrumentor_with_a_broken_policy_refuses_to_connect(
    instrumentor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GUARDEDDB_POLICY that does not load must not leave the process
    unguarded (opentelemetry-instrument swallows instrumentor errors): the
    drivers stay patched and every connect raises PolicyError."""
    monkeypatch.setenv("GUARDEDDB_POLICY", str(tmp_path / "missing.yaml"))
    instrumentor.instrument()
    with pytest.raises(guardeddb.PolicyError, match="refuses to connect"):
        sqlite3.connect(":memory:")
    assert guardeddb.connect("sqlite://") is not None  # explicit connects are not affected


def test_instrumentor_is_an_entry_point_and_import_guardeddb_stays_light() -> None:
    """opentelemetry-instrument finds the instrumentor by its entry point, and
    ``import guardeddb`` does not import opentelemetry-instrumentation."""
    eps = importlib.metadata.entry_points(group="opentelemetry_instrumentor", name="guardeddb")
    (ep,) = eps
    assert ep.load().__name__ == "GuardeddbInstrumentor"
    code = (
        "import sys, guardeddb; "
        "assert 'opentelemetry.instrumentation' not in sys.modules, 'imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- #13 finding 3: the opentelemetry-instrument entry point is opt-in ---------

OPT_IN_APP = """\
import sys

import psycopg

import guardeddb

dsn, table = sys.argv[1], sys.argv[2]
conn = psycopg.connect(dsn, autocommit=True)  # the app's own connect, as any app opens it
print("guarded" if isinstance(conn, guardeddb.GuardedConnection) else "raw")
print(conn.execute(f"SELECT email FROM {table}").fetchone()[0])
try:
    conn.execute(f"CREATE TABLE {table}_ddl (id int)")  # what a migration does
    print("created")
except guardeddb.QueryBlocked as exc:
    print("blocked", exc.decision.rule_id)
conn.close()
"""


def _opt_in_run(tmp_path: Path, **env_extra: str) -> tuple[list[str], bool]:
    """OPT_IN_APP under ``opentelemetry-instrument`` on PostgreSQL, with only
    ``env_extra`` among the GUARDEDDB_* variables: its output lines, and whether
    its CREATE TABLE reached the server."""
    table = f"defaults_optin_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE TABLE {table} (id int, email text)")
        raw.execute(f"INSERT INTO {table} VALUES (1, 'ada@example.com')")
    app = tmp_path / "app.py"
    app.write_text(OPT_IN_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GUARDEDDB_"))}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    env.update(env_extra)
    exe = Path(sys.executable).parent / "opentelemetry-instrument"
    try:
        done = subprocess.run(
            [str(exe), sys.executable, str(app), PG_DSN, table],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            created = raw.execute("SELECT to_regclass(%s)", (f"{table}_ddl",)).fetchone()
            raw.execute(f"DROP TABLE IF EXISTS {table}_ddl")
            raw.execute(f"DROP TABLE {table}")
    assert done.returncode == 0 or "refuses to connect" in done.stderr, done.stderr
    return done.stdout.splitlines(), created != (None,)


@pytest.mark.pg
@pytest.mark.slow
def test_opentelemetry_instrument_without_the_variables_changes_nothing(
    tmp_path: Path, pg_backend: Backend
) -> None:
    """Installing guardeddb does not change an app: without GUARDEDDB_POLICY or
    GUARDEDDB_ENABLED its connections are raw, its DDL runs, nothing is masked."""
    out, created = _opt_in_run(tmp_path)
    assert out == ["raw", "ada@example.com", "created"]
    assert created
    out, created = _opt_in_run(tmp_path, GUARDEDDB_ENABLED="0")
    assert out == ["raw", "ada@example.com", "created"] and created


@pytest.mark.pg
@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("GUARDEDDB_ENABLED", "1", "no-ddl"),  # the agent-safe preset
        ("GUARDEDDB_POLICY", "readonly", "read-only"),  # a preset by name
    ],
)
def test_opentelemetry_instrument_with_the_variable_applies_the_policy(
    variable: str, value: str, rule: str, tmp_path: Path, pg_backend: Backend
) -> None:
    """Opted in, the app's own psycopg.connect() is guarded: the email comes
    back masked and the DDL is refused before it reaches the server."""
    out, created = _opt_in_run(tmp_path, **{variable: value})
    assert out == ["guarded", "a***@example.com", f"blocked {rule}"]
    assert not created


@pytest.mark.pg
@pytest.mark.slow
def test_opentelemetry_instrument_with_a_hostile_policy_file_refuses(
    tmp_path: Path, pg_backend: Backend
) -> None:
    """Opted in with a policy file that does not load: no connection at all."""
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nmode: !!python/name:os.system\n")
    out, created = _opt_in_run(tmp_path, GUARDEDDB_POLICY=str(bad))
    assert out == [] and not created


def test_an_idle_instrumentor_patches_nothing_and_says_so_once(
    instrumentor: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No variable, no option: no driver is patched, and the log says why, once.
    Idle is not "instrumented": options passed from code later still guard."""
    from guardeddb.integrations import _instrumentor

    monkeypatch.delenv("GUARDEDDB_POLICY", raising=False)
    monkeypatch.delenv("GUARDEDDB_ENABLED", raising=False)
    monkeypatch.setattr(_instrumentor, "_said_idle", False)
    caplog.set_level("INFO", logger="guardeddb")
    instrumentor.instrument()
    assert not any(is_instrumented(name) for name in TARGETS)
    assert type(sqlite3.connect(":memory:")) is sqlite3.Connection
    instrumentor.instrument()
    idle = [r for r in caplog.records if "idle" in r.getMessage()]
    assert len(idle) == 1 and "GUARDEDDB_POLICY" in idle[0].getMessage()
    assert not any(is_instrumented(name) for name in TARGETS)
    instrumentor.instrument(policy="readonly")
    conn = sqlite3.connect(":memory:")
    with pytest.raises(QueryBlocked, match="only reads"):
        conn.execute("CREATE TABLE t (a)")
    conn.close()


# --- #13 finding 4: instrument() then guard_engine() guard once -----------------


@pytest.mark.pg
def test_guard_engine_over_an_instrumented_driver_guards_once(
    pg_backend: Backend, originals: Any, otel: Otel
) -> None:
    """instrument(psycopg) then guard_engine(create_engine(...)): each pooled
    connection is guarded once, by the engine's options when it has any (the
    instrumented connect hands back the raw connection), else by instrument's."""
    import sqlalchemy as sa

    from guardeddb.integrations.sqlalchemy import guard_engine

    table = f"defaults_engine_{uuid.uuid4().hex[:10]}"
    url = pg_backend.url.replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE TABLE {table} (id int)")
    guardeddb.instrument(psycopg, policy=READONLY)
    engines = []
    try:
        # The engine's own (permissive) options win over the instrumentation's.
        engine = guard_engine(
            sa.create_engine(url), policy=PERMISSIVE, tracer_provider=otel.tracer_provider
        )
        engines.append(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (1)"))
            dbapi: Any = conn.connection.dbapi_connection
            assert isinstance(dbapi, GuardedConnection)
            assert type(dbapi.__wrapped__) is psycopg.Connection  # one guard, not two
        # Without options, the instrumentation's read-only guard is the only one.
        plain = guard_engine(sa.create_engine(url))
        engines.append(plain)
        with plain.connect() as conn:
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 1
            dbapi = conn.connection.dbapi_connection
            assert type(dbapi.__wrapped__) is psycopg.Connection
            with pytest.raises(sa.exc.ProgrammingError, match="only reads"):
                conn.execute(sa.text(f"INSERT INTO {table} VALUES (2)"))
    finally:
        for e in engines:
            e.dispose()
        guardeddb.uninstrument(psycopg)  # the cleanup below needs the raw driver
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            count = raw.execute(f"SELECT count(*) FROM {table}").fetchone()
            raw.execute(f"DROP TABLE {table}")
    assert count == (1,)
