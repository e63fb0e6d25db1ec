"""The audit trail: one tamper-evident record per decision and per result.

A ``decision`` record is written before the query reaches the database (so
with ``required: true``, no record means no query); a ``result`` record
follows when the result is consumed, the cursor runs again or closes, with
the rows returned, what masking did, the duration and any error. COMMIT and
ROLLBACK are recorded too, so the trail shows what was kept.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..drivers import ConnectionFacts, Driver
from ..identity import Identity
from ..policy.decision import Decision
from ..sql.analysis import Analysis
from .chain import (
    JsonlSink,
    PostgresSink,
    Problem,
    Report,
    check,
    check_postgres,
    verify,
    verify_postgres,
)

__all__ = [
    "AuditTrail",
    "JsonlSink",
    "PostgresSink",
    "Problem",
    "Report",
    "check",
    "check_postgres",
    "sink_for",
    "verify",
    "verify_postgres",
]


def sink_for(cfg: Mapping[str, Any]) -> JsonlSink | PostgresSink | None:
    """The sink a policy's ``audit:`` section names, if any."""
    target = cfg.get("postgresql") or cfg.get("jsonl")
    if not target:
        return None
    if str(target).startswith(("postgresql://", "postgres://")):
        return PostgresSink(str(target), str(cfg.get("stream", "default")))
    return JsonlSink(str(target), fsync=str(cfg.get("fsync", "always")))


_log = logging.getLogger("guardeddb")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def _identity(ident: Identity | None) -> dict[str, Any] | None:
    if ident is None:
        return None
    return {
        "user": ident.user,
        "agent": ident.agent,
        "roles": sorted(ident.roles),
        "session": ident.session,
        "verified": ident.verified,
    }


class AuditTrail:
    """Where one guarded connection records its decisions and results."""

    def __init__(
        self,
        sink: JsonlSink | PostgresSink,
        required: bool,
        driver: Driver | None = None,
        facts: ConnectionFacts | None = None,
    ) -> None:
        self.sink = sink
        self.required = required
        self.db = (
            {"system": driver.system, "namespace": facts.namespace, "address": facts.address}
            if driver is not None and facts is not None
            else None
        )
        self.failures = 0  # records lost while audit was not required
        # Which transaction a record belongs to: this connection's id and the
        # number of COMMITs and ROLLBACKs guardeddb has seen on it so far.
        self.connection_id = uuid.uuid4().hex[:12]
        self.transactions = 0

    @property
    def transaction(self) -> str:
        return f"{self.connection_id}:{self.transactions}"

    def ended_transaction(self, event: str, ident: Identity | None) -> None:
        """A COMMIT or ROLLBACK: record it, and count the next transaction."""
        self._write(
            {
                "ts": _now(),
                "event": event,
                "identity": _identity(ident),
                "db": self.db,
                "transaction": self.transaction,
            }
        )
        self.transactions += 1

    def _write(self, fields: Mapping[str, Any]) -> bool:
        """Write a record; False when it could not be written."""
        try:
            self.sink.write(fields)
        except Exception as exc:  # a full disk, a lost server, a value JSON refuses: no record
            self.failures += 1
            _log.error("guardeddb: audit record not written to %s: %s", self.sink.path, exc)
            return False
        return True

    def decision(
        self,
        analysis: Analysis,
        ident: Identity | None,
        decision: Decision,
        unmasked: bool,
        trace: tuple[str, str] | None,
        impact: int | None = None,
    ) -> bool:
        """Record a decision before the query runs (or is refused)."""
        return self._write(
            {
                "ts": _now(),
                "event": "decision",
                "identity": _identity(ident),
                "db": self.db,
                "statement": analysis.sanitized,
                "fingerprint": analysis.fingerprint,
                "kinds": sorted(analysis.kinds),
                "tables": sorted(analysis.tables),
                "decision": {
                    "action": decision.action,
                    "rule": decision.rule_id,
                    "message": decision.message,
                },
                "unmasked": unmasked,
                "impact_rows": impact,
                "transaction": self.transaction,
                "trace_id": trace[0] if trace else None,
                "span_id": trace[1] if trace else None,
            }
        )

    def result(
        self,
        analysis: Analysis,
        ident: Identity | None,
        started: float,
        rows: int,
        masked: tuple[int, int],
        error: str | None,
    ) -> None:
        """Record how a query that ran ended: rows, masking, duration, error."""
        self._write(
            {
                "ts": _now(),
                "event": "result",
                "identity": _identity(ident),
                "db": self.db,
                "statement": analysis.sanitized,
                "fingerprint": analysis.fingerprint,
                "rows": rows,
                "masked_columns": masked[0],
                "masked_values": masked[1],
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "error": error,
                "transaction": self.transaction,
            }
        )

    def approval(self, event: str, request_id: str, by: str | None, note: str | None) -> bool:
        """Record an approval or denial, with who made it."""
        return self._write(
            {
                "ts": _now(),
                "event": event,
                "request_id": request_id,
                "approver": by,
                "note": note,
                "db": self.db,
            }
        )

    def close(self) -> None:
        """Release the sink (a PostgreSQL sink's connection); never raises,
        so ``close()`` of a connection whose trail failed still closes it."""
        try:
            self.sink.close()
        except Exception as exc:
            _log.error("guardeddb: closing audit sink %s: %s", self.sink.path, exc)
