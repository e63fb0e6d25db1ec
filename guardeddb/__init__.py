"""guardeddb: identity, guardrails, masking, tracing and audit for DB-API connections.

::

    import guardeddb

    conn = guardeddb.connect("sqlite:///shop.db")
    with guardeddb.identity(user="alice@example.com", agent="support-bot"):
        conn.execute("SELECT name FROM customers WHERE id = ?", (42,)).fetchone()
"""

from __future__ import annotations

from ._connect import connect, connect_async, wrap, wrap_async
from .connection import GuardedConnection, GuardedCursor
from .connection_async import GuardedAsyncConnection, GuardedAsyncCursor
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
from .integrations.instrument import instrument, uninstrument
from .options import GuardOptions
from .policy import Decision, Policy, load_policy

__all__ = [
    "ApprovalRequired",
    "AttributeRefused",
    "AuditUnavailable",
    "Decision",
    "Error",
    "GuardOptions",
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
