"""guardeddb: identity, guardrails, masking, tracing and audit for DB-API connections.

::

    import guardeddb

    conn = guardeddb.connect("sqlite:///shop.db")
    with guardeddb.identity(user="alice@example.com", agent="support-bot"):
        conn.execute("SELECT name FROM customers WHERE id = ?", (42,)).fetchone()
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import drivers as _drivers
from .approvals import ApprovalRequest, Approver
from .connection import GuardedConnection, GuardedCursor, guard_connection
from .connection_async import GuardedAsyncConnection, GuardedAsyncCursor, guard_connection_async
from .errors import (
    ApprovalRequired,
    AttributeRefused,
    AuditUnavailable,
    Error,
    IdentityError,
    MaskingError,
    PolicyError,
    QueryBlocked,
)
from .identity import Identity, current_identity, identity
from .integrations.instrument import instrument, instrumented_raw, uninstrument
from .policy import Decision, Policy, PolicySource, load_policy
from .telemetry import Telemetry

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from psycopg import AsyncConnection

    from .drivers import ConnectionFacts, Driver

__all__ = [
    "ApprovalRequired",
    "AttributeRefused",
    "AuditUnavailable",
    "Decision",
    "Error",
    "GuardedAsyncConnection",
    "GuardedAsyncCursor",
    "GuardedConnection",
    "GuardedCursor",
    "Identity",
    "IdentityError",
    "MaskingError",
    "Policy",
    "PolicyError",
    "QueryBlocked",
    "connect",
    "connect_async",
    "current_identity",
    "identity",
    "instrument",
    "load_policy",
    "uninstrument",
    "wrap",
    "wrap_async",
]

__version__ = "0.1.0.dev0"


def connect(
    target: Any,
    *args: Any,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = 30.0,
    **kwargs: Any,
) -> GuardedConnection:
    """Open a database connection and guard it.

    ``target`` is a URL (``sqlite:///shop.db``, ``postgresql://...``,
    ``mysql://...``, ``mariadb://...``) whose driver gets ``kwargs``, or a
    DB-API ``connect`` callable or module that gets ``args`` and ``kwargs``.
    ``policy`` is a ``Policy``, a YAML path or a dict; without one the
    ``agent-safe`` preset applies (secure by default). ``identity`` is the
    connection's default identity; one bound with ``guardeddb.identity()``
    wins over it. The tracer and meter providers default to OpenTelemetry's
    global ones. ``approver`` is asked (within ``approver_timeout`` seconds)
    about queries a ``review`` rule holds: True runs the query.
    """
    resolved = load_policy(policy)  # a bad policy fails before any connection opens
    if isinstance(target, str):
        if args:
            raise TypeError("a URL target takes keyword arguments only")
        raw = _drivers.connect_url(target, kwargs)
    else:
        with _drivers.unguarded():  # raw even from a driver instrument() patched
            raw = _drivers.connect_callable(target)(*args, **kwargs)
    return wrap(
        raw,
        policy=resolved,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )


async def connect_async(
    target: Any,
    *args: Any,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = 30.0,
    **kwargs: Any,
) -> GuardedAsyncConnection:
    """Open an asyncio connection (psycopg's ``AsyncConnection``) and guard it.

    ``target`` is a ``postgresql://`` URL whose driver gets ``kwargs``, or an
    async connect callable (``psycopg.AsyncConnection.connect``) that gets
    ``args`` and ``kwargs``. The other arguments are ``connect``'s. The
    ``approver`` callback stays a plain function: it is asked in a thread,
    so the event loop runs on while a person answers.
    """
    resolved = load_policy(policy)  # a bad policy fails before any connection opens
    if isinstance(target, str):
        if args:
            raise TypeError("a URL target takes keyword arguments only")
        raw = await _drivers.connect_url_async(target, kwargs)
    else:
        opened = _drivers.connect_callable(target)(*args, **kwargs)
        if not inspect.isawaitable(opened):
            if hasattr(opened, "close"):
                opened.close()
            raise TypeError(
                f"{target!r} is not an async connect callable: pass "
                "psycopg.AsyncConnection.connect, or use guardeddb.connect()"
            )
        raw = await opened
    return wrap_async(
        raw,
        policy=resolved,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )


def wrap(
    conn: Any,
    *,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = 30.0,
) -> GuardedConnection:
    """Guard an open DB-API connection; a guarded one is returned as it is,
    unless ``instrument()`` guarded it and options are given here: they win.

    An asyncio connection is refused with a pointer to ``wrap_async``: a
    blocking proxy would hand its coroutines back unguarded.
    """
    if isinstance(conn, GuardedConnection):
        explicit = (policy, identity, tracer_provider, meter_provider, approver)
        raw = instrumented_raw(conn) if any(o is not None for o in explicit) else None
        if raw is None:
            return conn
        conn = raw
    if _drivers.is_async(conn):
        raise TypeError(
            f"{type(conn).__name__} is an asyncio connection: use guardeddb.wrap_async()"
        )
    driver, facts, telemetry, resolved, asker = _guard_parts(
        conn, policy, tracer_provider, meter_provider, approver, approver_timeout
    )
    return guard_connection(conn, driver, facts, telemetry, identity, resolved, asker)


def wrap_async(
    conn: AsyncConnection[Any] | GuardedAsyncConnection,
    *,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = 30.0,
) -> GuardedAsyncConnection:
    """Guard an open psycopg ``AsyncConnection``, as ``wrap`` guards a blocking one.

    A separate function rather than ``wrap`` detecting it, so that each
    returns one type: typed overloads would make every ``wrap(raw)`` whose
    argument a type checker sees as ``Any`` return ``Any``.
    """
    if isinstance(conn, GuardedAsyncConnection):
        return conn
    if not _drivers.is_async(conn):
        raise TypeError(
            f"{type(conn).__name__} is not psycopg's AsyncConnection: use guardeddb.wrap()"
        )
    driver, facts, telemetry, resolved, asker = _guard_parts(
        conn, policy, tracer_provider, meter_provider, approver, approver_timeout
    )
    return guard_connection_async(conn, driver, facts, telemetry, identity, resolved, asker)


def _guard_parts(
    conn: Any,
    policy: PolicySource | None,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
    approver: Callable[[ApprovalRequest], bool] | None,
    approver_timeout: float,
) -> tuple[Driver, ConnectionFacts, Telemetry, Policy, Approver | None]:
    """What ``wrap`` and ``wrap_async`` build a guard from."""
    resolved = load_policy(policy)
    driver = _drivers.detect(conn)
    facts = _drivers.facts(driver, conn)
    telemetry = Telemetry(driver, facts, tracer_provider, meter_provider)
    asker = Approver(approver, approver_timeout) if approver is not None else None
    return driver, facts, telemetry, resolved, asker
