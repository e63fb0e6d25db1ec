"""guardeddb's errors.

::

    Exception
     +-- Error                      every guardeddb error
          +-- PolicyError           a policy that cannot be loaded (file, line, key)
          +-- IdentityError         a token that does not prove who the caller is; carries .reason
          +-- MaskingError          rows that cannot be masked, refused; carries .row_type
          +-- AttributeRefused      a driver attribute outside the allowlisted surface
                                    (also an AttributeError: hasattr() answers False)
          +-- QueryBlocked          a query the guardrails refused; carries .decision
               +-- ApprovalRequired held for a human; carries .request_id
               +-- AuditUnavailable no audit record could be written, so no query

Raised from a guarded cursor, ``QueryBlocked`` and its subclasses and
``MaskingError`` are *also* instances of that driver's ``ProgrammingError``
(see ``for_driver``), so ``except psycopg.Error:`` handlers and SQLAlchemy's
DBAPI error wrapping keep working unchanged.

Every error pickles with its fields (``.decision``, ``.request_id``,
``.source``/``.line``/``.key``, ``.reason``, ``.row_type``), the driver-mixed classes too,
so it crosses a process pool or a task queue intact.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the policy package imports errors; only the type is needed here
    from .policy.decision import Decision

__all__ = [
    "ApprovalRequired",
    "AttributeRefused",
    "AuditUnavailable",
    "Error",
    "IdentityError",
    "MaskingError",
    "PolicyError",
    "QueryBlocked",
    "driver_error",
    "for_driver",
]


class Error(Exception):
    """Base of every guardeddb error: one ``except`` catches them all."""

    __module__ = "guardeddb"


class PolicyError(Error, ValueError):
    """A policy that cannot be loaded; a ValueError because the input is bad."""

    __module__ = "guardeddb"

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.key = key
        where = ""
        if source is not None:
            where = source if line is None else f"{source}:{line}"
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_policy_error, (type(self), self.message, self.source, self.line, self.key))


class IdentityError(Error):
    """A signed token refused by ``Identity.from_jwt``: no identity, say why.

    A ``guardeddb.Error`` and nothing narrower, so that no broad ``except
    ValueError`` in a caller mistakes a forged token for a bad argument.
    ``reason`` is a short stable code (``expired``, ``not_yet_valid``,
    ``signature``, ``unknown_kid``, ``issuer``, ``audience``, ``algorithm``,
    ``malformed``, ``too_large``, ``claims``, ``jwks_unavailable``) that a
    server can map to its own answer (an HTTP 401 with ``error_description``).
    """

    __module__ = "guardeddb"

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_identity_error, (type(self), str(self), self.reason))


class AttributeRefused(Error, AttributeError):
    """A public driver attribute the guarded proxy does not hand out (``_surface.py``).

    Also an ``AttributeError``, so feature probes (``hasattr``, ``getattr(x,
    name, default)``) see the attribute as absent and take their fallback:
    refusing fails closed without breaking libraries that probe.
    """

    __module__ = "guardeddb"

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message, name=name)


class MaskingError(Error):
    """A result guardeddb cannot mask (a row type it cannot rebuild), refused
    instead of returned raw. ``row_type`` names the type, when there is one."""

    __module__ = "guardeddb"

    def __init__(self, message: str, *, row_type: str | None = None) -> None:
        self.row_type = row_type
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        base, driver = getattr(type(self), "_guardeddb_parts", (type(self), None))
        return (_rebuild_masking, (base, driver, str(self), self.row_type))


class QueryBlocked(Error):
    """The guardrails refused a query before it reached the database."""

    __module__ = "guardeddb"

    def __init__(self, decision: Decision, message: str | None = None) -> None:
        self.decision = decision
        if message is None:
            rule = f" by rule {decision.rule_id!r}" if decision.rule_id else ""
            why = f": {decision.message}" if decision.message else ""
            message = f"query blocked{rule}{why}"
        super().__init__(message)

    def _args(self) -> tuple[Any, ...]:
        return (self.decision, str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        # A driver-mixed class is made at run time: rebuild it from its parts.
        base, driver = getattr(type(self), "_guardeddb_parts", (type(self), None))
        return (_rebuild, (base, driver, self._args()))


class ApprovalRequired(QueryBlocked):
    """The query is held until someone approves request ``request_id``."""

    __module__ = "guardeddb"

    def __init__(self, decision: Decision, request_id: str, message: str | None = None) -> None:
        self.request_id = request_id
        if message is None:
            rule = f" by rule {decision.rule_id!r}" if decision.rule_id else ""
            message = f"query held for approval{rule} (request {request_id})"
            if decision.message:
                message += f": {decision.message}"
        super().__init__(decision, message)

    def _args(self) -> tuple[Any, ...]:
        return (self.decision, self.request_id, str(self))


class AuditUnavailable(QueryBlocked):
    """The audit sink could not record the query, and the policy requires it."""

    __module__ = "guardeddb"


_E = TypeVar("_E", bound=Error)
_DRIVER_CLASSES: dict[tuple[type[Error], type[BaseException]], type[Error]] = {}


def for_driver(cls: type[_E], programming_error: type[BaseException] | None) -> Any:
    """``cls`` mixed with a driver's ``ProgrammingError``; one class per pair, cached.

    Returns ``cls`` itself when the driver has no ProgrammingError.
    """
    if programming_error is None or issubclass(cls, programming_error):
        return cls
    key = (cls, programming_error)
    mixed = _DRIVER_CLASSES.get(key)
    if mixed is None:
        mixed = type(
            cls.__name__,
            (cls, programming_error),
            {"__module__": "guardeddb", "_guardeddb_parts": (cls, programming_error)},
        )
        _DRIVER_CLASSES[key] = mixed
    return mixed


def driver_error(cls: type[_E], driver_object: Any) -> Any:
    """``cls`` mixed with the ``ProgrammingError`` of the DB-API module that
    ``driver_object`` (a raw cursor or connection, or an application's
    subclass of one) comes from, so an error raised where only that object
    is at hand is still the driver's Error; ``cls`` itself when none is found."""
    for klass in type(driver_object).__mro__:  # an application's subclass: its driver's
        root = klass.__module__.partition(".")[0]
        err = getattr(sys.modules.get(root), "ProgrammingError", None)
        if isinstance(err, type) and issubclass(err, Exception):
            return for_driver(cls, err)
    return cls


def _rebuild(
    cls: type[QueryBlocked], programming_error: type[BaseException] | None, args: tuple[Any, ...]
) -> QueryBlocked:
    """Unpickle a QueryBlocked (or a subclass), mixed with its driver's error again."""
    target: type[QueryBlocked] = for_driver(cls, programming_error)
    return target(*args)


def _rebuild_masking(
    cls: type[MaskingError],
    programming_error: type[BaseException] | None,
    message: str,
    row_type: str | None,
) -> MaskingError:
    """Unpickle a MaskingError, mixed with its driver's error again."""
    target: type[MaskingError] = for_driver(cls, programming_error)
    return target(message, row_type=row_type)


def _policy_error(
    cls: type[PolicyError], message: str, source: str | None, line: int | None, key: str | None
) -> PolicyError:
    return cls(message, source=source, line=line, key=key)


def _identity_error(cls: type[IdentityError], message: str, reason: str) -> IdentityError:
    return cls(message, reason=reason)
