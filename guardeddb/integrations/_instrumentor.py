"""The OpenTelemetry instrumentor, so ``opentelemetry-instrument`` can turn guardeddb on.

Registered under the ``opentelemetry_instrumentor`` entry point group, so
``opentelemetry-instrument`` loads it in every program of an environment
where guardeddb is installed. Installing a package must not change programs
that never asked for it, so it is opt-in: it guards only when
``GUARDEDDB_POLICY`` names a policy (a preset name or a YAML path) or
``GUARDEDDB_ENABLED=1`` asks for the ``agent-safe`` preset, or when code calls
``GuardeddbInstrumentor().instrument(...)`` itself. Otherwise it patches
nothing and says once, at INFO level on the ``guardeddb`` logger, that it is idle.

When on, it guards whichever of sqlite3, psycopg and PyMySQL are importable.
A policy that fails to load, for any reason, does not leave the process
unguarded: the drivers stay patched and refuse to connect, because
``opentelemetry-instrument`` logs and swallows an instrumentor's errors
(raising would leave the raw drivers in place).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,  # the module opts out of type checking
)

from ..errors import PolicyError
from ..options import DEFAULT_APPROVER_TIMEOUT, GuardOptions
from .instrument import TARGETS, _install, _log, _Options, uninstrument

__all__ = ["ENABLED_ENV", "POLICY_ENV", "GuardeddbInstrumentor"]

#: The variable naming the policy (a preset name or a YAML path); setting it turns guarding on.
POLICY_ENV = "GUARDEDDB_POLICY"
#: ``1`` turns guarding on with the default policy when ``GUARDEDDB_POLICY`` is not set.
ENABLED_ENV = "GUARDEDDB_ENABLED"
#: Values of ``GUARDEDDB_ENABLED`` that mean off; any other non-empty value means on
#: (an operator who set the variable meant something: guess towards guarding).
_OFF = frozenset({"", "0", "false", "no", "off"})

#: Keyword arguments of ``instrument()`` that, given in code, ask for guarding.
_OPTION_KEYS = (
    "guard_options",
    "policy",
    "identity",
    "tracer_provider",
    "meter_provider",
    "approver",
    "approver_timeout",
)

_said_idle = False  # the idle notice is logged once per process


def _opted_in(kwargs: dict[str, Any]) -> bool:
    """Whether the program asked to be guarded: options passed in code, or the variables."""
    if any(kwargs.get(key) is not None for key in _OPTION_KEYS):
        return True
    if os.environ.get(POLICY_ENV):
        return True
    return os.environ.get(ENABLED_ENV, "").strip().lower() not in _OFF


class GuardeddbInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # an untyped base
    """Guard every sqlite3, psycopg and PyMySQL connection of the process.

    ``instrument()`` takes ``guardeddb.instrument``'s keyword options
    (``policy``, ``identity``, ``tracer_provider``, ``meter_provider``,
    ``approver``, ``approver_timeout``, or ``guard_options``). Without any of
    them it guards only if ``GUARDEDDB_POLICY`` or ``GUARDEDDB_ENABLED``
    is set (see the module docstring).
    """

    _modules: tuple[str, ...] = ()
    _idle = False

    def instrument(self, **kwargs: Any) -> None:
        """BaseInstrumentor's, except that staying idle does not count as
        instrumented: a later call with options from code still guards."""
        super().instrument(**kwargs)
        if self._idle:
            self._is_instrumented_by_opentelemetry = False

    def instrumentation_dependencies(self) -> Collection[str]:
        """None required: each driver is guarded only if it is importable."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        global _said_idle
        self._idle = not _opted_in(kwargs)
        if self._idle:
            if not _said_idle:
                _said_idle = True
                _log.info(
                    "guardeddb: instrumentation idle (set %s=PRESET|FILE or %s=1 to guard "
                    "sqlite3, psycopg and PyMySQL connections)",
                    POLICY_ENV,
                    ENABLED_ENV,
                )
            return
        try:
            source = kwargs.get("policy")
            if source is None and kwargs.get("guard_options") is None:
                source = os.environ.get(POLICY_ENV) or None
            options = _Options(
                GuardOptions.of(
                    kwargs.get("guard_options"),
                    policy=source,
                    identity=kwargs.get("identity"),
                    tracer_provider=kwargs.get("tracer_provider"),
                    meter_provider=kwargs.get("meter_provider"),
                    approver=kwargs.get("approver"),
                    approver_timeout=float(
                        kwargs.get("approver_timeout", DEFAULT_APPROVER_TIMEOUT)
                    ),
                )
            )
        except Exception as exc:  # whatever went wrong, never run unguarded
            refusal = (
                exc
                if isinstance(exc, PolicyError)
                else PolicyError(f"cannot load policy: {type(exc).__name__}: {exc}")
            )
            _log.error("guardeddb: %s; instrumented drivers will refuse to connect", refusal)
            options = _Options(GuardOptions(), refusal)
        done = []
        for name in TARGETS:
            try:
                module = importlib.import_module(name)
            except ImportError:
                _log.debug("guardeddb: %s is not importable, not instrumented", name)
                continue
            _install(name, module, options)
            done.append(name)
        self._modules = tuple(done)

    def _uninstrument(self, **kwargs: Any) -> None:
        for name in self._modules:
            uninstrument(name)
        self._modules = ()
