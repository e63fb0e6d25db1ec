"""Guard every connection a process opens: patch the drivers' ``connect``.

::

    import sqlite3
    import guardeddb

    guardeddb.instrument(sqlite3, policy="policy.yaml")
    conn = sqlite3.connect("shop.db")      # comes back guarded, wherever it is called
    guardeddb.uninstrument(sqlite3)        # sqlite3.connect is the original again

For code that opens its connections itself (an ORM, a job runner, a library
you do not own). What is patched, with wrapt's ``FunctionWrapper``:

- ``sqlite3``: ``sqlite3.connect`` and ``sqlite3.dbapi2.connect`` (what
  SQLAlchemy's pysqlite dialect calls).
- ``psycopg``: ``psycopg.connect`` and ``psycopg.Connection.connect``.
  ``psycopg.connect`` is ``Connection.connect`` bound once at import, so
  patching the classmethod alone would miss it, and each patch calls the
  original directly: a connection is guarded once either way. Subclasses'
  ``connect()`` are guarded too. ``AsyncConnection`` is not patched.
- ``pymysql``: ``pymysql.connect``, ``pymysql.Connect`` and ``pymysql.Connection``,
  three names of one class that are all called as constructors. The wrapper
  stays transparent to ``isinstance`` and subclassing, but
  ``type(conn) is pymysql.Connection`` no longer holds while instrumented.
  ``pymysql.connections.Connection``, where the class is defined, is left
  alone (the class itself must stay a class); calling it directly, or a
  subclass of it, opens an unguarded connection.

Patching replaces names: code that took ``from sqlite3 import connect``
before ``instrument()`` keeps the original function; instrument first (or
use ``opentelemetry-instrument``, which runs before the application).
Instrumenting twice patches once; the latest call's options replace the
earlier ones for connections opened from then on (open ones keep theirs).
``guardeddb.connect()`` and guardeddb's own approval stores and audit tables
reach the original function, so their connections are guarded once, with
their own options; ``guardeddb.wrap(conn, policy=...)`` of a connection the
instrumentation guarded re-guards the raw connection with the explicit options,
and so does a SQLAlchemy engine given to ``guard_engine`` with options (without
options, the instrumentation's guard is the engine's).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import wrapt

from .._connect import guard, mark_instrumented
from ..approvals import ApprovalRequest
from ..connection import GuardedConnection
from ..drivers import is_unguarded
from ..errors import PolicyError
from ..identity import Identity
from ..options import DEFAULT_APPROVER_TIMEOUT, GuardOptions
from ..policy import PolicySource

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._instrumentor import GuardeddbInstrumentor

__all__ = ["GuardeddbInstrumentor", "instrument", "is_instrumented", "uninstrument"]

_log = logging.getLogger("guardeddb")

#: What is patched in each driver module, as paths from the module.
TARGETS: dict[str, tuple[str, ...]] = {
    "sqlite3": ("connect", "dbapi2.connect"),
    "psycopg": ("connect", "Connection.connect"),
    "pymysql": ("connect", "Connect", "Connection"),
}


class _Options:
    """How connections are guarded: replaced whole, never changed in place,
    so a concurrent connect sees one set or the other, never half of each."""

    __slots__ = ("guard", "refusal")

    def __init__(self, guard: GuardOptions, refusal: PolicyError | None = None) -> None:
        self.guard = guard
        self.refusal = refusal  # a policy that failed to load: refuse to connect


class _Patch:
    """One attribute replaced by a wrapper, and what was there before."""

    __slots__ = ("attribute", "original", "parent", "wrapper")

    def __init__(self, parent: Any, attribute: str, original: Any, wrapper: Any) -> None:
        self.parent = parent
        self.attribute = attribute
        self.original = original
        self.wrapper = wrapper


class _Instrumented:
    """One instrumented module: its patches and the options they apply."""

    __slots__ = ("name", "options", "patches")

    def __init__(self, name: str, options: _Options) -> None:
        self.name = name
        self.options: _Options | None = options  # None once uninstrumented
        self.patches: list[_Patch] = []

    def guard(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """The wrapt wrapper of every patched ``connect``."""
        # The options of the module's current instrumentation, not this
        # record's: a wrapper someone kept (``from sqlite3 import connect``)
        # passes through once uninstrumented, and guards again if re-instrumented.
        current = _active.get(self.name)
        options = current.options if current is not None else None
        if options is None or is_unguarded():
            return wrapped(*args, **kwargs)
        if options.refusal is not None:
            # Fail closed: without the policy it was told to apply, no connection.
            raise PolicyError(
                f"guardeddb instrumentation of {self.name} refuses to connect: {options.refusal}"
            ) from options.refusal
        raw = wrapped(*args, **kwargs)
        if isinstance(raw, GuardedConnection):
            return raw
        try:
            conn = guard(raw, options.guard)
        except BaseException:
            with contextlib.suppress(Exception):  # not guarded: not handed out either
                raw.close()
            raise
        mark_instrumented(conn)
        return conn


_lock = threading.Lock()
_active: dict[str, _Instrumented] = {}


def _module_name(module: ModuleType | str) -> str:
    name = module if isinstance(module, str) else getattr(module, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"instrument() takes a driver module or its name, not {module!r}")
    if name not in TARGETS:
        known = ", ".join(TARGETS)
        raise ValueError(f"cannot instrument {name!r}: guardeddb patches {known}")
    return name


def _patch(record: _Instrumented, module: ModuleType) -> None:
    """Apply every patch of the module, or none."""
    try:
        for path in TARGETS[record.name]:
            parent, attribute, original = wrapt.resolve_path(module, path)
            wrapper = wrapt.FunctionWrapper(original, record.guard)
            setattr(parent, attribute, wrapper)
            record.patches.append(_Patch(parent, attribute, original, wrapper))
    except BaseException:
        _unpatch(record)
        raise


def _current(patch: _Patch) -> Any:
    # A class's own __dict__: getattr would bind the classmethod.
    if isinstance(patch.parent, type):
        return vars(patch.parent).get(patch.attribute)
    return getattr(patch.parent, patch.attribute, None)


def _unpatch(record: _Instrumented) -> None:
    """Put each original back; splice ours out if another wrapper sits above it."""
    record.options = None  # a wrapper left reachable somewhere now passes through
    while record.patches:
        patch = record.patches.pop()
        node = _current(patch)
        if node is patch.wrapper:
            setattr(patch.parent, patch.attribute, patch.original)
            continue
        # Another instrumentation wrapped ours: take ours out of its chain.
        for _ in range(64):
            if not issubclass(type(node), wrapt.BaseObjectProxy):
                break
            inner = node.__wrapped__
            if inner is patch.wrapper:
                node.__wrapped__ = patch.original
                break
            node = inner


def _install(name: str, module: ModuleType, options: _Options) -> None:
    with _lock:
        record = _active.get(name)
        if record is not None:
            record.options = options
            return
        record = _Instrumented(name, options)
        _active[name] = record  # first: a connect racing the patching is guarded
        try:
            _patch(record, module)
        except BaseException:
            del _active[name]
            raise


def instrument(
    module: ModuleType | str,
    *,
    policy: PolicySource | None = None,
    identity: Identity | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    approver: Callable[[ApprovalRequest], bool] | None = None,
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    guard_options: GuardOptions | None = None,
) -> None:
    """Make every ``connect`` of ``module`` (``sqlite3``, ``psycopg``,
    ``pymysql``, or the name of one) return a guarded connection, anywhere in
    the process. The options are ``guardeddb.connect``'s; the policy is loaded
    now, so a bad one fails here. Calling again replaces the options."""
    name = _module_name(module)
    guard_options = GuardOptions.of(
        guard_options,
        policy=policy,
        identity=identity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        approver=approver,
        approver_timeout=approver_timeout,
    )
    _install(
        name,
        module if isinstance(module, ModuleType) else importlib.import_module(name),
        _Options(guard_options),
    )


def uninstrument(module: ModuleType | str) -> None:
    """Restore the module's original functions; nothing happens if it is not instrumented."""
    name = _module_name(module)
    with _lock:
        record = _active.pop(name, None)
        if record is not None:
            _unpatch(record)


def is_instrumented(module: ModuleType | str) -> bool:
    """Whether ``instrument()`` patched the module and ``uninstrument()`` has not undone it."""
    return _module_name(module) in _active


def __getattr__(name: str) -> Any:
    # The OpenTelemetry instrumentor needs opentelemetry-instrumentation,
    # which ``import guardeddb`` must not pull in.
    if name == "GuardeddbInstrumentor":
        from ._instrumentor import GuardeddbInstrumentor

        return GuardeddbInstrumentor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
