"""The OpenTelemetry instrumentor, so ``opentelemetry-instrument`` turns guardeddb on.

Registered under the ``opentelemetry_instrumentor`` entry point group. It
guards whichever of sqlite3, psycopg and PyMySQL are importable. The policy
comes from ``instrument(policy=...)`` or the ``GUARDEDDB_POLICY`` variable (a
YAML path), else the agent-safe preset. A policy that fails to load, for any reason, does not
leave the process unguarded: the drivers stay patched and refuse to connect,
because ``opentelemetry-instrument`` logs and swallows an instrumentor's errors
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
from ..policy import load_policy
from .instrument import TARGETS, _install, _log, _Options, uninstrument

__all__ = ["POLICY_ENV", "GuardeddbInstrumentor"]

#: The variable naming the policy file when none is passed.
POLICY_ENV = "GUARDEDDB_POLICY"


class GuardeddbInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # an untyped base
    """Guard every sqlite3, psycopg and PyMySQL connection of the process.

    ``instrument()`` takes ``guardeddb.instrument``'s keyword options
    (``policy``, ``identity``, ``tracer_provider``, ``meter_provider``,
    ``approver``, ``approver_timeout``).
    """

    _modules: tuple[str, ...] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        """None required: each driver is guarded only if it is importable."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        source = kwargs.get("policy")
        if source is None:
            source = os.environ.get(POLICY_ENV) or None
        try:
            options = _Options(
                load_policy(source),
                kwargs.get("identity"),
                kwargs.get("tracer_provider"),
                kwargs.get("meter_provider"),
                kwargs.get("approver"),
                float(kwargs.get("approver_timeout", 30.0)),
            )
        except Exception as exc:  # whatever went wrong, never run unguarded
            refusal = (
                exc
                if isinstance(exc, PolicyError)
                else PolicyError(f"cannot load policy: {type(exc).__name__}: {exc}")
            )
            _log.error("guardeddb: %s; instrumented drivers will refuse to connect", refusal)
            options = _Options(None, None, None, None, None, 30.0, refusal)
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
