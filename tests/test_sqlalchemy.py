"""SQLAlchemy 2.x: engines whose every pooled connection is guarded, on every database."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.trace import StatusCode
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import guardeddb
from guardeddb import ApprovalRequired, GuardedConnection, Identity, QueryBlocked
from guardeddb.audit import verify
from guardeddb.integrations.sqlalchemy import (
    ALLOW_ISOLATION_LEVELS,
    create_engine,
    guard_engine,
    is_guarded,
)

from .fix_db import PERMISSIVE, Backend
from .fix_otel import Otel
from .fix_shop import CUSTOMERS, SECRETS, SHOP_POLICY, Shop

AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))
AUDITOR = Identity(user="carol@example.com", roles=frozenset({"compliance"}))

#: A statement SQLAlchemy's dialect runs when it first connects, per backend.
FIRST_CONNECT = {
    "sqlite": "PRAGMA read_uncommitted",
    "postgresql": "select pg_catalog.version()",
    "mysql": "SELECT DATABASE()",
}


def sa_url(backend: Backend) -> str:
    """The SQLAlchemy URL of a test backend, naming the driver guardeddb knows."""
    rest = backend.url.split("://", 1)[1]
    driver = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
    return f"{driver[backend.name]}://{rest}"


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test made, disposed at its end (before its tables are dropped)."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def _engine(backend: Backend, engines: list[Engine], **kwargs: Any) -> Engine:
    engine = sa.create_engine(sa_url(backend), **kwargs)
    engines.append(engine)
    return engine


def _users(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100)),
        sa.Column("email", sa.String(200)),
    )


def _user_model(table_name: str) -> Any:
    """A fresh ORM model over the ``table`` fixture's table."""

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = table_name
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(100))
        email: Mapped[str] = mapped_column(sa.String(200))

    return User


def _customer_model(table_name: str) -> Any:
    """A fresh ORM model over the ``shop`` fixture's customers table."""

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = table_name
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(100))
        email: Mapped[str] = mapped_column(sa.String(200))
        phone: Mapped[str] = mapped_column(sa.String(50))
        ssn: Mapped[str] = mapped_column(sa.String(20))
        card_number: Mapped[str] = mapped_column(sa.String(30))
        iban: Mapped[str] = mapped_column(sa.String(40))
        ip: Mapped[str | None] = mapped_column(sa.String(40))
        notes: Mapped[str] = mapped_column(sa.String(500))

    return Customer


def _raw_rows(backend: Backend, sql: str) -> list[tuple[Any, ...]]:
    """Rows read past guardeddb, straight from the database."""
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
    finally:
        raw.close()


def _closed(backend: Backend, dbapi: Any) -> bool:
    """Whether a raw DB-API connection is closed, as its driver tells."""
    if backend.name == "sqlite":
        try:
            dbapi.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return True
        return False
    if backend.name == "postgresql":
        return bool(dbapi.closed)
    return not dbapi.open


def _leaked(values: Any) -> list[str]:
    text = "\n".join(str(v) for v in values)
    return [s for s in SECRETS if s in text]


# --------------------------------------------------------------------------
# The hook


def test_every_pooled_connection_is_guarded_with_the_default_policy(
    backend: Backend, engines: list[Engine], otel: Otel
) -> None:
    """Under agent-safe, the dialect's first-connect queries run guarded and allowed."""
    engine = guard_engine(
        _engine(backend, engines),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    assert is_guarded(engine)
    with engine.connect() as conn:
        assert isinstance(conn.connection.dbapi_connection, GuardedConnection)
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    texts = [dict(s.attributes or {}).get("db.query.text") for s in otel.spans()]
    assert FIRST_CONNECT[backend.name] in texts
    for span in otel.spans():
        attrs = dict(span.attributes or {})
        assert attrs["guardeddb.decision.action"] == "allow", attrs
        assert span.status.status_code is not StatusCode.ERROR, attrs


def test_connections_opened_before_are_replaced(backend: Backend, engines: list[Engine]) -> None:
    """Idle pooled connections are closed; one checked out then is never handed out again."""
    engine = _engine(backend, engines)
    busy = engine.connect()
    with engine.connect() as conn:
        idle = conn.connection.dbapi_connection
    busy_raw = busy.connection.dbapi_connection
    assert idle is not busy_raw
    guard_engine(engine)
    assert _closed(backend, idle)
    # The checked-out connection stays as it was until it is returned ...
    assert not isinstance(busy_raw, GuardedConnection) and not _closed(backend, busy_raw)
    busy.close()
    # ... then it is closed and never handed out again: every checkout is guarded.
    assert _closed(backend, busy_raw)
    held = [engine.connect() for _ in range(2)]
    for conn in held:
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, GuardedConnection)
        assert dbapi.__wrapped__ is not busy_raw
        conn.close()
    with engine.connect() as conn, pytest.raises(sa_exc.ProgrammingError):
        conn.execute(sa.text("DROP TABLE nothing_here"))


def _blocked(conn: sa.Connection) -> QueryBlocked:
    """The QueryBlocked a DROP raises on ``conn`` (and the transaction rolled back)."""
    with pytest.raises(sa_exc.ProgrammingError) as info:
        conn.execute(sa.text("DROP TABLE gdb_never_there"))
    conn.rollback()
    assert isinstance(info.value.orig, QueryBlocked)
    return info.value.orig


def test_no_way_around_the_guard(backend: Backend, engines: list[Engine]) -> None:
    """Option engines, autocommit, raw_connection(), driver_connection, a later
    dispose() and a reconnect after invalidation all stay guarded."""
    policy = {"version": 1, "extends": ["agent-safe"], "rules": [ALLOW_ISOLATION_LEVELS]}
    engine = guard_engine(_engine(backend, engines), policy=policy)
    with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        assert _blocked(conn).decision.rule_id == "no-ddl"
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # restored, returned
    raw = engine.raw_connection()
    assert isinstance(raw.driver_connection, GuardedConnection)
    with pytest.raises(QueryBlocked):
        raw.cursor().execute("DROP TABLE gdb_never_there")
    raw.close()
    engine.dispose()
    with engine.connect() as conn:
        assert isinstance(conn.connection.dbapi_connection, GuardedConnection)
        conn.invalidate()
        conn.rollback()
        assert isinstance(conn.connection.dbapi_connection, GuardedConnection)  # reconnected
        _blocked(conn)


@pytest.mark.parametrize(
    "sql",
    [
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE",
        "SET SESSION TRANSACTION READ WRITE",
        "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET SESSION TRANSACTION READ WRITE",
        "PRAGMA read_uncommitted = 1; PRAGMA query_only = 0",
        "PRAGMA query_only = 0",
        "SET GLOBAL TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    ],
)
def test_isolation_rule_allows_nothing_else(sql: str) -> None:
    """ALLOW_ISOLATION_LEVELS lets no access mode, stacked statement or global change by."""
    from guardeddb.sql.analysis import analyze

    policy = guardeddb.load_policy(
        {"version": 1, "extends": ["agent-safe"], "rules": [ALLOW_ISOLATION_LEVELS]}
    )
    dialect = "sqlite" if sql.startswith("PRAGMA") else "mysql"
    assert policy.decide(analyze(sql, dialect), None, None).action == "block"
    for allowed, d in (
        ("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", "mysql"),
        ("PRAGMA read_uncommitted = 0", "sqlite"),
    ):
        assert policy.decide(analyze(allowed, d), None, None).action == "allow"


def test_connections_from_do_connect_and_creator_are_guarded(
    tmp_path: Path, engines: list[Engine]
) -> None:
    """Whatever makes the DB-API connection (a do_connect listener, a creator=
    callable), the pool hands out a guarded one."""
    path = tmp_path / "x.db"
    listened = sa.create_engine(f"sqlite:///{path}")
    engines.append(listened)

    @sa.event.listens_for(listened, "do_connect")
    def own_connection(*args: Any) -> Any:
        return sqlite3.connect(path, check_same_thread=False)

    created = sa.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(path, check_same_thread=False)
    )
    engines.append(created)
    for engine in (listened, created):
        guard_engine(engine)
        with engine.connect() as conn:
            assert isinstance(conn.connection.dbapi_connection, GuardedConnection)
            _blocked(conn)


def test_guard_engine_twice_replaces_the_guard(backend: Backend, engines: list[Engine]) -> None:
    """A second call swaps the policy for every connection; nothing is wrapped twice."""
    engine = guard_engine(_engine(backend, engines), policy=PERMISSIVE)
    with engine.connect() as conn:
        first = conn.connection.dbapi_connection
        conn.execute(sa.text("SELECT 1"))
    guard_engine(engine, policy={"version": 1, "extends": ["readonly"]})
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not first
        assert isinstance(dbapi, GuardedConnection)
        assert not isinstance(dbapi.__wrapped__, GuardedConnection)
        with pytest.raises(sa_exc.ProgrammingError) as info:
            conn.execute(sa.text("CREATE TABLE gdb_never (id INTEGER)"))
    assert isinstance(info.value.orig, QueryBlocked)
    assert info.value.orig.decision.rule_id == "read-only"


def test_a_creator_that_already_guards_is_refused(tmp_path: Path) -> None:
    """A pool whose creator returns guarded connections cannot take a second policy."""
    path = tmp_path / "x.db"
    opened: list[Any] = []

    def creator() -> Any:
        conn = guardeddb.connect(f"sqlite:///{path}", policy=PERMISSIVE)
        opened.append(conn)
        return conn

    engine = guard_engine(sa.create_engine("sqlite://", creator=creator))
    with pytest.raises(TypeError, match="already returns guarded connections"):
        engine.connect()
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")  # closed, not leaked
    engine.dispose()


def test_guard_engine_refuses_what_it_cannot_guard(tmp_path: Path) -> None:
    """Not an Engine, or a bad policy: an error before the engine is touched."""
    with pytest.raises(TypeError, match="takes a sqlalchemy Engine"):
        guard_engine(object())  # type: ignore[arg-type]
    engine = sa.create_engine(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(guardeddb.PolicyError):
        guard_engine(engine, policy={"version": 1, "rules": [{"id": "x", "action": "maybe"}]})
    assert not is_guarded(engine)
    with pytest.raises(guardeddb.PolicyError):
        create_engine(f"sqlite:///{tmp_path}/x.db", policy={"version": 2})
    engine.dispose()


def test_in_memory_sqlite_engine() -> None:
    """create_engine("sqlite://"): one guarded in-memory database for the thread."""
    engine = create_engine("sqlite://", policy=PERMISSIVE)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1, 'ada@example.com')"))
    with engine.connect() as conn:
        assert isinstance(conn.connection.dbapi_connection, GuardedConnection)
        assert conn.execute(sa.text("SELECT email FROM t")).scalar_one() == "ada@example.com"
    engine.dispose()


def test_create_engine_helper_passes_engine_arguments(
    backend: Backend, table: str, engines: list[Engine]
) -> None:
    """create_engine() guards and forwards pool options (pre-ping goes through the proxy)."""
    engine = create_engine(sa_url(backend), pool_pre_ping=True, pool_recycle=3600)
    engines.append(engine)
    assert is_guarded(engine) and engine.pool._pre_ping
    for _ in range(2):  # the second checkout pings the pooled connection
        with engine.connect() as conn:
            assert isinstance(conn.connection.dbapi_connection, GuardedConnection)
            rows = conn.execute(sa.text(f"SELECT name FROM {table} ORDER BY id")).all()
            assert [r.name for r in rows] == ["Ada", "Grace", "Linus"]


# --------------------------------------------------------------------------
# Core and ORM through the guard


def test_core_select_insert_update_in_transactions(
    backend: Backend, table: str, engines: list[Engine]
) -> None:
    """Core statements, executemany and rollbacks all work under agent-safe."""
    users = _users(table)
    engine = guard_engine(_engine(backend, engines))
    with engine.begin() as conn:
        conn.execute(users.insert().values(id=4, name="Barbara", email="b@example.com"))
        conn.execute(  # executemany
            users.insert(),
            [
                {"id": 5, "name": "Edsger", "email": "e@example.com"},
                {"id": 6, "name": "Donald", "email": "d@example.com"},
            ],
        )
        conn.execute(users.update().where(users.c.id == 1).values(name="Ada L."))
    with engine.connect() as conn:
        conn.execute(users.delete().where(users.c.id == 2))
        conn.rollback()  # never kept
        rows = conn.execute(sa.select(users.c.id, users.c.name).order_by(users.c.id)).all()
    assert [tuple(r) for r in rows] == [
        (1, "Ada L."),
        (2, "Grace"),
        (3, "Linus"),
        (4, "Barbara"),
        (5, "Edsger"),
        (6, "Donald"),
    ]
    assert _raw_rows(backend, f"SELECT count(*) FROM {table}") == [(6,)]


def test_orm_session_add_commit_query(backend: Backend, table: str, engines: list[Engine]) -> None:
    """An ORM unit of work (insert, update, delete, get, select) runs through the guard."""
    User = _user_model(table)
    engine = guard_engine(_engine(backend, engines), policy=PERMISSIVE)
    with guardeddb.identity(AGENT), Session(engine) as session:
        session.add_all([User(id=7, name="Ken", email="k@example.com")])
        session.commit()
        ken = session.get(User, 7)
        assert ken is not None and ken.name == "Ken"
        ken.name = "Ken T."
        session.delete(session.get(User, 3))
        session.commit()
        names = session.scalars(sa.select(User.name).order_by(User.id)).all()
    assert names == ["Ada", "Grace", "Ken T."]
    assert _raw_rows(backend, f"SELECT name FROM {table} WHERE id = 7") == [("Ken T.",)]


def test_schema_reflection_runs_under_the_default_policy(
    backend: Backend, table: str, engines: list[Engine]
) -> None:
    """Inspector queries and autoload (how agents learn a schema) are reads agent-safe allows."""
    engine = guard_engine(_engine(backend, engines))
    inspector = sa.inspect(engine)
    assert inspector.has_table(table) and table in inspector.get_table_names()
    assert [c["name"] for c in inspector.get_columns(table)] == ["id", "name", "email"]
    assert inspector.get_pk_constraint(table)["constrained_columns"] == ["id"]
    reflected = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(reflected)).scalar_one() == 3


# --------------------------------------------------------------------------
# Refusals


def test_blocked_drop_is_a_programming_error_and_keeps_the_connection(
    backend: Backend, table: str, engines: list[Engine]
) -> None:
    """DROP raises ProgrammingError(.orig=QueryBlocked); the pooled connection stays valid."""
    engine = guard_engine(_engine(backend, engines))
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        with pytest.raises(sa_exc.ProgrammingError) as info:
            conn.execute(sa.text(f"DROP TABLE {table}"))
        err = info.value
        assert isinstance(err.orig, QueryBlocked)
        assert err.orig.decision.rule_id == "no-ddl"
        assert "blocked by rule 'no-ddl'" in str(err)
        assert not err.connection_invalidated
        assert not engine.dialect.is_disconnect(err.orig, dbapi, None)  # type: ignore[arg-type]
        assert not conn.invalidated
        conn.rollback()
        assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == 3
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is dbapi  # the same one, back from the pool
    assert _raw_rows(backend, f"SELECT count(*) FROM {table}") == [(3,)]


def test_delete_without_where_is_blocked_in_core_and_orm(
    backend: Backend, table: str, engines: list[Engine]
) -> None:
    """DELETE (and UPDATE) with no WHERE are refused, whichever API sent them."""
    users = _users(table)
    User = _user_model(table)
    engine = guard_engine(_engine(backend, engines))
    with engine.connect() as conn:
        for stmt in (users.delete(), users.update().values(name="x")):
            with pytest.raises(sa_exc.ProgrammingError) as info:
                conn.execute(stmt)
            assert isinstance(info.value.orig, QueryBlocked)
            assert info.value.orig.decision.rule_id == "write-needs-where"
            conn.rollback()
    with Session(engine) as session:
        with pytest.raises(sa_exc.ProgrammingError) as info:
            session.execute(sa.delete(User))
        assert isinstance(info.value.orig, QueryBlocked)
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 3
    assert _raw_rows(backend, f"SELECT count(*) FROM {table}") == [(3,)]


def test_held_query_is_a_programming_error_with_the_request(
    backend: Backend, table: str, engines: list[Engine], tmp_path: Path
) -> None:
    """A review rule raises ProgrammingError(.orig=ApprovalRequired) and runs nothing."""
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {"id": "deletes-need-review", "match": {"statements": ["delete"]}, "action": "review"}
        ],
        "approvals": {"store": f"sqlite:///{tmp_path}/approvals.db"},
    }
    User = _user_model(table)
    engine = guard_engine(_engine(backend, engines), policy=policy)
    with guardeddb.identity(AGENT), Session(engine) as session:
        session.delete(session.get(User, 1))
        with pytest.raises(sa_exc.ProgrammingError) as info:
            session.commit()
        orig = info.value.orig
        assert isinstance(orig, ApprovalRequired) and orig.request_id
        assert orig.decision.rule_id == "deletes-need-review"
        assert not info.value.connection_invalidated
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 3


# --------------------------------------------------------------------------
# Masking, spans, audit


def test_orm_and_core_results_are_masked(
    backend: Backend, shop: Shop, engines: list[Engine]
) -> None:
    """ORM entities and Core rows carry masked values; compliance sees raw ones."""
    Customer = _customer_model(shop.customers)
    engine = guard_engine(_engine(backend, engines), policy=SHOP_POLICY)
    with guardeddb.identity(AGENT), Session(engine) as session:
        people = session.scalars(sa.select(Customer).order_by(Customer.id)).all()
        ada = session.get(Customer, 1)
        values = [getattr(p, c) for p in people for c in ("email", "ssn", "card_number", "notes")]
        assert len(people) == 3 and not _leaked(values)
        assert ada is not None and ada.name == "Ada Lovelace"
        assert ada.email != CUSTOMERS[0][2] and ada.email.endswith("@example.com")
        assert ada.card_number.endswith("1111") and ada.ip is None
        # Changing one attribute writes that attribute only, never the masked ones.
        ada.name = "Ada King"
        session.commit()
    with guardeddb.identity(AGENT), engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT name, email, ssn FROM {shop.customers}")).all()
        assert isinstance(rows[0], sa.Row) and not _leaked(v for r in rows for v in r)
        mapped = conn.execute(sa.select(Customer.email)).scalars().all()
        assert not _leaked(mapped)
    with guardeddb.identity(AUDITOR), Session(engine) as session:  # one Session per identity
        raw_ada = session.get(Customer, 1)
        assert raw_ada is not None and raw_ada.email == CUSTOMERS[0][2]
    stored = _raw_rows(backend, shop.sql("SELECT name, email, ssn FROM {c} WHERE id = 1"))
    assert stored == [("Ada King", CUSTOMERS[0][2], CUSTOMERS[0][4])]


def test_each_statement_sqlalchemy_sends_has_a_span_with_the_identity(
    backend: Backend, table: str, engines: list[Engine], otel: Otel
) -> None:
    """One guardeddb span per statement the engine sends, carrying the context identity."""
    User = _user_model(table)
    engine = guard_engine(
        _engine(backend, engines),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    with engine.connect():
        pass  # the dialect's first-connect queries, outside the identity
    otel.clear()
    sent: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def record(*args: Any) -> None:
        sent.append(args[2])

    with guardeddb.identity(AGENT), Session(engine) as session:
        session.add(User(id=8, name="Barbara", email="b@example.com"))
        session.commit()
        assert session.get(User, 8) is not None
        session.scalars(sa.select(User).where(User.id < 3)).all()
    spans = otel.spans()
    assert len(spans) == len(sent) >= 3
    for span in spans:
        attrs = dict(span.attributes or {})
        assert attrs["enduser.id"] == "alice@example.com"
        assert attrs["gen_ai.agent.name"] == "support-bot"
        assert attrs["db.system.name"] == backend.system
    assert [s.name.split()[0] for s in spans][:2] == ["INSERT", "SELECT"]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_orm_statements_are_audited_with_the_identity(
    backend: Backend, table: str, engines: list[Engine], tmp_path: Path
) -> None:
    """ORM inserts, reads, a refused bulk delete and the commit land in a verified chain."""
    path = tmp_path / "audit.jsonl"
    User = _user_model(table)
    policy = {"version": 1, "extends": ["agent-safe"], "audit": {"jsonl": str(path)}}
    engine = guard_engine(_engine(backend, engines), policy=policy)
    with guardeddb.identity(AGENT), Session(engine) as session:
        session.add(User(id=9, name="Frances", email="f@example.com"))
        session.commit()
        session.scalars(sa.select(User)).all()
        with pytest.raises(sa_exc.ProgrammingError):
            session.execute(sa.delete(User))
    records = _records(path)
    mine = [r for r in records if r.get("identity") and r["identity"]["user"] == AGENT.user]
    decisions = [r for r in mine if r["event"] == "decision"]
    statements = [r["statement"] for r in decisions]
    assert any(s.startswith(f"INSERT INTO {table}") for s in statements)
    assert any(s.startswith("SELECT") and table in s for s in statements)
    blocked = [r for r in decisions if r["decision"]["action"] == "block"]
    assert [r["decision"]["rule"] for r in blocked] == ["write-needs-where"]
    assert any(r["event"] == "commit" for r in mine)
    assert all(r["identity"]["agent"] == "support-bot" for r in mine)
    assert "Frances" not in path.read_text()  # parameters are never recorded
    assert verify(path) == (len(records), None)


def test_identities_stay_apart_on_a_shared_pool(
    backend: Backend, table: str, engines: list[Engine], otel: Otel, tmp_path: Path
) -> None:
    """Threads with their own identity share two pooled connections; spans and
    audit records name the thread's identity, never another's."""
    path = tmp_path / "audit.jsonl"
    policy = {"version": 1, "extends": ["agent-safe"], "audit": {"jsonl": str(path)}}
    engine = guard_engine(
        _engine(backend, engines, pool_size=2, max_overflow=0),
        policy=policy,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(i: int) -> None:
        try:
            start.wait()
            with guardeddb.identity(user=f"user{i}@example.com", agent=f"agent-{i}"):
                for _ in range(5):
                    with engine.connect() as conn:
                        sql = f"SELECT name AS who_{i} FROM {table} WHERE id = :id"
                        conn.execute(sa.text(sql), {"id": 1}).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert engine.pool.checkedout() == 0 and engine.pool.size() == 2  # type: ignore[attr-defined]
    seen = 0
    for span in otel.spans():
        attrs = dict(span.attributes or {})
        text = str(attrs.get("db.query.text", ""))
        if "who_" in text:
            i = text.split("who_", 1)[1].split()[0]
            assert attrs["enduser.id"] == f"user{i}@example.com"
            assert attrs["gen_ai.agent.name"] == f"agent-{i}"
            seen += 1
    assert seen == 30
    audited = 0
    for rec in _records(path):
        if "who_" in str(rec.get("statement", "")):
            i = rec["statement"].split("who_", 1)[1].split()[0]
            assert rec["identity"]["user"] == f"user{i}@example.com"
            audited += 1
    assert audited == 60  # a decision and a result per query
    assert verify(path)[1] is None


def test_orm_example_runs() -> None:
    """examples/sqlalchemy_orm.py shows a masked ORM read and a blocked DELETE, traced."""
    script = Path(__file__).resolve().parent.parent / "examples" / "sqlalchemy_orm.py"
    out = subprocess.run(
        [sys.executable, str(script)], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert "Ada Lovelace a***@example.com ************1111" in out
    assert "blocked by rule 'write-needs-where'" in out
    assert "DELETE customers alice@example.com block" in out
    assert "ada@example.com" not in out and "4111111111111111" not in out
