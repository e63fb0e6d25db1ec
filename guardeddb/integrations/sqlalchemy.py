"""SQLAlchemy 2.x: every DB-API connection an Engine's pool opens is a guarded one.

::

    from guardeddb.integrations.sqlalchemy import create_engine, guard_engine

    engine = create_engine("postgresql+psycopg://app@db/shop", policy="policy.yaml")
    engine = guard_engine(existing_engine, policy="policy.yaml")

    with guardeddb.identity(user="alice@example.com"), Session(engine) as session:
        session.scalars(select(Customer)).all()  # masked, traced, audited

The hook is the pool's *creator*, the one callable through which every
DB-API connection of the engine is born (whether it comes from the dialect,
a ``do_connect`` listener or a ``creator=`` argument). The pool's
``connect`` event comes too late: the dialect's first-connect
initialization is handed the object the creator returned. A ``do_connect``
listener can be skipped: the first listener returning a connection ends
the chain. Only a guarded creator puts SQLAlchemy's own queries
(``select pg_catalog.version()``, ``SHOW VARIABLES``, ``PRAGMA
read_uncommitted``...), its cursors, ``executemany``, fetches, COMMIT and
ROLLBACK (the pool's reset on checkin too) under the guard.
``Engine.dispose()`` carries the creator over to the new pool.

- Connections opened before ``guard_engine`` are closed: the pool is
  disposed, so every connection handed out afterwards is a new, guarded one.
  A connection checked out at the time of the call stays as it is until it
  is returned; then it is closed, never handed out again. So guard an
  in-memory SQLite engine (``sqlite://``) before creating its tables: its
  database lives and dies with its connection. And the dialect's
  first-connect queries run once per engine: guarded only if the engine had
  not connected yet.
- Over a driver module ``guardeddb.instrument()`` patched, each connection
  is still guarded once: with ``guard_engine``'s options when any is given
  (the instrumented ``connect`` hands the raw connection back), else with
  the instrumentation's.
- Calling ``guard_engine`` again *replaces* the guard: the new policy and
  options apply to every connection opened from then on, and the pool is
  disposed again so that none keeps the old policy. Connections are never
  guarded twice.
- A refused query reaches the caller as ``sqlalchemy.exc.ProgrammingError``
  whose ``.orig`` is the ``guardeddb.QueryBlocked`` (or ``ApprovalRequired``);
  the pooled connection stays valid.
- ORM objects hold what the guard returned: masked values. Writing one
  back (assigning it to another object, ``session.merge`` of a detached
  copy) stores the masked text. And a Session's identity map keeps the
  values first loaded, whoever loads the object again: use one Session per
  identity (per request), as the ORM advises anyway.

SQLAlchemy's ``isolation_level`` (engine argument or execution option) is
set on MySQL/MariaDB with ``SET SESSION TRANSACTION ISOLATION LEVEL ...``
and on SQLite with ``PRAGMA read_uncommitted = 0|1``, also when the pool
restores the default after an ``AUTOCOMMIT`` connection. The ``agent-safe``
and ``readonly`` presets refuse both as session settings, and SQLAlchemy
does not return a connection to the pool when that restore fails. A policy
that allows isolation levels says so with ``ALLOW_ISOLATION_LEVELS`` among
its rules. (psycopg sets the level as a connection attribute, no SQL.)

Asyncio engines are not supported: guardeddb guards synchronous drivers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..drivers import missing_extra

try:
    import sqlalchemy
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "sqlalchemy", "sqlalchemy", __name__) from exc

from .._connect import guard, is_instrumented_connection
from ..approvals import ApprovalRequest
from ..connection import GuardedConnection
from ..drivers import unguarded
from ..identity import Identity
from ..options import DEFAULT_APPROVER_TIMEOUT, GuardOptions
from ..policy import PolicySource

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["ALLOW_ISOLATION_LEVELS", "create_engine", "guard_engine", "is_guarded"]

#: A policy rule allowing exactly the isolation-level statements SQLAlchemy
#: sends (MySQL/MariaDB, SQLite); never an access mode such as READ WRITE.
ALLOW_ISOLATION_LEVELS: dict[str, Any] = {
    "id": "sqlalchemy-isolation-levels",
    "match": {
        "sql_regex": r"\A(SET SESSION TRANSACTION ISOLATION LEVEL "
        r"(READ UNCOMMITTED|READ COMMITTED|REPEATABLE READ|SERIALIZABLE)"
        r"|PRAGMA read_uncommitted = [01])\Z"
    },
    "action": "allow",
}


class _GuardedCreator:
    """The pool's creator: the engine's own one, whose connections come out guarded.

    It keeps the creator it wraps, so that a second ``guard_engine`` replaces
    the guard instead of stacking one on another.
    """

    __slots__ = ("inner", "options")

    def __init__(
        self, inner: Callable[[ConnectionPoolEntry], DBAPIConnection], options: GuardOptions
    ) -> None:
        self.inner = inner
        self.options = options

    # One positional argument: SQLAlchemy's pool then passes the connection record.
    def __call__(self, rec: ConnectionPoolEntry) -> DBAPIConnection:
        if self.options.given:
            # The engine's options win over a driver ``instrument()`` patched:
            # its connect hands the raw connection back here, guarded once below.
            with unguarded():
                raw = self.inner(rec)
        else:
            raw = self.inner(rec)
            if isinstance(raw, GuardedConnection) and is_instrumented_connection(raw):
                return cast("DBAPIConnection", raw)  # instrument()'s guard, the only one
        if isinstance(raw, GuardedConnection):
            raw.close()
            raise TypeError(
                "this engine's creator already returns guarded connections "
                "(guardeddb.connect or guardeddb.wrap); give the policy either to them "
                "or to guard_engine, not to both"
            )
        try:
            # A proxy: every DB-API attribute of the raw connection is there.
            return cast("DBAPIConnection", guard(raw, self.options))
        except BaseException:
            raw.close()  # a connection that cannot be guarded is never handed out
            raise


def guard_engine(
    engine: Engine,
    *,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    guard_options: GuardOptions | None = None,
) -> Engine:
    """Guard every connection ``engine`` uses from now on; returns the engine.

    The arguments are ``guardeddb.wrap``'s: without a ``policy`` the
    ``agent-safe`` preset applies. The policy is loaded once, here, so a bad
    one fails before any connection is touched. The pool is disposed (its
    idle connections closed) and each new connection is guarded. A second
    call replaces the guard with the new options (see the module docstring).
    Over a driver that ``guardeddb.instrument()`` patched, each connection is
    guarded once: with these options if any is given, else with the
    instrumentation's.
    """
    if not isinstance(engine, Engine):
        raise TypeError(
            f"guard_engine takes a sqlalchemy Engine, not {type(engine).__name__}"
            + (
                " (asyncio engines are not supported)"
                if type(engine).__name__ == "AsyncEngine"
                else ""
            )
        )
    if engine.dialect.is_async:
        raise TypeError(
            f"the {engine.dialect.name}+{engine.dialect.driver} dialect is asyncio; "
            "guardeddb guards synchronous DB-API drivers only"
        )
    opts = GuardOptions.of(
        guard_options,
        policy=policy,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )
    pool = engine.pool
    current = pool._creator
    inner = current.inner if isinstance(current, _GuardedCreator) else pool._invoke_creator
    pool._creator = _GuardedCreator(inner, opts)
    # Close the connections opened unguarded; the new pool inherits the creator.
    engine.dispose()
    if engine.pool is not pool:
        sqlalchemy.event.listen(pool, "checkin", _close_on_return)
    return engine


def _close_on_return(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    """A connection checked out of the disposed pool, now returned: closed at
    once, rather than left open in a pool nobody draws from."""
    if dbapi_connection is not None:
        connection_record.close()


def create_engine(
    url: str | URL,
    *,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    guard_options: GuardOptions | None = None,
    **engine_kwargs: Any,
) -> Engine:
    """``sqlalchemy.create_engine(url, **engine_kwargs)``, guarded by ``guard_engine``."""
    # A bad policy fails before the engine exists.
    opts = GuardOptions.of(
        guard_options,
        policy=policy,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )
    return guard_engine(sqlalchemy.create_engine(url, **engine_kwargs), guard_options=opts)


def is_guarded(engine: Engine) -> bool:
    """Whether ``engine``'s pool opens guarded connections."""
    return isinstance(engine.pool._creator, _GuardedCreator)
