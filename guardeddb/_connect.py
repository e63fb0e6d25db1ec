"""The entry points that open or take a connection and guard it:
``connect``, ``connect_async``, ``wrap``, ``wrap_async``.

Their own module, not ``__init__.py``: the integrations (``instrument``,
SQLAlchemy) guard connections through ``wrap`` too, and importing it from the
package root made an import cycle. Every entry point turns its keyword
arguments into one ``GuardOptions`` and builds the guard from that.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import drivers as _drivers
from .approvals import ApprovalRequest, Approver
from .connection import GuardedConnection, guard_connection
from .connection_async import GuardedAsyncConnection, guard_connection_async
from .identity import Identity
from .options import DEFAULT_APPROVER_TIMEOUT, GuardOptions
from .policy import PolicySource
from .telemetry import Telemetry

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = [
    "connect",
    "connect_async",
    "guard",
    "is_instrumented_connection",
    "mark_instrumented",
    "release_instrumented",
    "wrap",
    "wrap_async",
]

#: The connection type a caller passed to ``wrap``: handed back as that type,
#: so a type checker keeps the driver's own methods (the proxy has them all).
C = TypeVar("C")
#: The same for ``wrap_async``.
AC = TypeVar("AC")

_MARK = "_self_guardeddb_instrumented"  # on the proxies ``instrument()`` made


def connect(
    target: Any,
    *args: Any,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    guard_options: GuardOptions | None = None,
    **kwargs: Any,
) -> GuardedConnection:
    """Open a database connection and guard it.

    ``target`` is a URL (``sqlite:///shop.db``, ``postgresql://...``,
    ``mysql://...``, ``mariadb://...``) whose driver gets ``kwargs``, or a
    DB-API ``connect`` callable or module that gets ``args`` and ``kwargs``.
    ``policy`` is a ``Policy``, a preset name (``"readonly"``), a YAML path
    or a dict; without one the ``agent-safe`` preset applies (secure by
    default). ``identity`` is the connection's default identity; one bound
    with ``guardeddb.identity()`` wins over it. The tracer and meter
    providers default to OpenTelemetry's global ones. ``approver`` is asked
    (within ``approver_timeout`` seconds) about queries a ``review`` rule
    holds: True runs the query. ``guard_options`` gives all of these as one
    ``GuardOptions`` instead.
    """
    # A bad policy fails before any connection opens.
    opts = GuardOptions.of(
        guard_options,
        policy=policy,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )
    if isinstance(target, str):
        if args:
            raise TypeError("a URL target takes keyword arguments only")
        raw = _drivers.connect_url(target, kwargs)
    else:
        with _drivers.unguarded():  # raw even from a driver instrument() patched
            raw = _drivers.connect_callable(target)(*args, **kwargs)
    return guard(raw, opts)


async def connect_async(
    target: Any,
    *args: Any,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    guard_options: GuardOptions | None = None,
    **kwargs: Any,
) -> GuardedAsyncConnection:
    """Open an asyncio connection (psycopg's ``AsyncConnection``) and guard it.

    ``target`` is a ``postgresql://`` URL whose driver gets ``kwargs``, or an
    async connect callable (``psycopg.AsyncConnection.connect``) that gets
    ``args`` and ``kwargs``. The other arguments are ``connect``'s. The
    ``approver`` callback stays a plain function: it is asked in a thread,
    so the event loop runs on while a person answers.
    """
    opts = GuardOptions.of(
        guard_options,
        policy=policy,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )
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
    return _guard_async(raw, opts)


def wrap(
    conn: C,
    *,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    guard_options: GuardOptions | None = None,
) -> C:
    """Guard an open DB-API connection; the options are ``connect``'s.

    The result is a ``GuardedConnection`` that is also an instance of the
    connection's own class, and typed as that class. An already guarded
    connection is returned as it is when no option is given; with options,
    one ``instrument()`` guarded is re-guarded with them, and any other is a
    ``TypeError`` (which guard would win is a guess). An asyncio connection is
    refused with a pointer to ``wrap_async``: a blocking proxy would hand its
    coroutines back unguarded.
    """
    opts = GuardOptions.of(
        guard_options,
        policy=policy,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )
    return cast("C", guard(conn, opts))


def wrap_async(
    conn: AC,
    *,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    guard_options: GuardOptions | None = None,
) -> AC:
    """Guard an open psycopg ``AsyncConnection``, as ``wrap`` guards a blocking one.

    A separate function rather than ``wrap`` detecting it: a blocking
    connection given here, or an asyncio one given there, is a mistake that
    is better refused than guessed at.
    """
    opts = GuardOptions.of(
        guard_options,
        policy=policy,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )
    return cast("AC", _guard_async(conn, opts))


def guard(conn: Any, opts: GuardOptions) -> GuardedConnection:
    """``wrap`` for code that already holds a ``GuardOptions`` (the integrations)."""
    if isinstance(conn, GuardedConnection):
        if not opts.given:
            return conn
        raw = release_instrumented(conn)
        if raw is None:
            raise TypeError(
                "this connection is already guarded (guardeddb.connect or guardeddb.wrap); "
                "give the options when it is guarded, not again"
            )
        conn = raw
    if _drivers.is_async(conn):
        raise TypeError(
            f"{type(conn).__name__} is an asyncio connection: use guardeddb.wrap_async()"
        )
    driver, facts, telemetry, asker = _parts(conn, opts)
    return guard_connection(
        conn, driver, facts, telemetry, opts.identity, opts.policy_object(), asker
    )


def _guard_async(conn: Any, opts: GuardOptions) -> GuardedAsyncConnection:
    if isinstance(conn, GuardedAsyncConnection):
        if opts.given:
            raise TypeError(
                "this connection is already guarded (guardeddb.connect_async or "
                "guardeddb.wrap_async); give the options when it is guarded, not again"
            )
        return conn
    if not _drivers.is_async(conn):
        raise TypeError(
            f"{type(conn).__name__} is not psycopg's AsyncConnection: use guardeddb.wrap()"
        )
    driver, facts, telemetry, asker = _parts(conn, opts)
    return guard_connection_async(
        conn, driver, facts, telemetry, opts.identity, opts.policy_object(), asker
    )


def _parts(
    conn: Any, opts: GuardOptions
) -> tuple[_drivers.Driver, _drivers.ConnectionFacts, Telemetry, Approver | None]:
    """What a guard is built from, besides the options themselves."""
    driver = _drivers.detect(conn)
    facts = _drivers.facts(driver, conn)
    telemetry = Telemetry(driver, facts, opts.tracer_provider, opts.meter_provider)
    asker = Approver(opts.approver, opts.approver_timeout) if opts.approver is not None else None
    return driver, facts, telemetry, asker


def mark_instrumented(conn: GuardedConnection) -> None:
    """Note that ``instrument()`` guarded ``conn``, so explicit options may re-guard it."""
    setattr(conn, _MARK, True)


def is_instrumented_connection(conn: GuardedConnection) -> bool:
    """Whether ``instrument()`` (rather than ``connect`` or ``wrap``) guarded ``conn``."""
    return bool(getattr(conn, _MARK, False))


def release_instrumented(conn: GuardedConnection) -> Any | None:
    """The raw connection under one ``instrument()`` guarded, that guard
    released (to be re-guarded with explicit options); None for any other."""
    if not is_instrumented_connection(conn):
        return None
    guard_ = conn._self_guard
    guard_.telemetry.end_all()
    if guard_.audit is not None:
        guard_.audit.close()
    return conn.__wrapped__
