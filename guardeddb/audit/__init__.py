"""The audit trail: one tamper-evident record per decision and per result.

A ``decision`` record is written before the query reaches the database (so
with ``required: true``, no record means no query); a ``result`` record
follows when the result is consumed, the cursor runs again or closes, with
the rows returned, what masking did, the duration and any error. COMMIT and
ROLLBACK get a decision record before the driver is asked and a
``commit``/``rollback`` record of the outcome, so the trail shows what was kept.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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
_ENDS = frozenset({"commit", "rollback"})


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
        # An asyncio connection's trail: every record is written by one thread
        # of its own, in order; result records without waiting (see write_behind).
        self.writer: ThreadPoolExecutor | None = None

    def write_behind(self) -> None:
        """Write records from a thread of this trail's own (an asyncio
        connection: no fsync or round-trip on the event loop). Records keep
        their order; a decision record is still waited for (in the thread
        the pipeline's step runs in), a result record is not."""
        if self.writer is None:
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="guardeddb-audit")

    @property
    def transaction(self) -> str:
        return f"{self.connection_id}:{self.transactions}"

    def ended_transaction(self, event: str, ident: Identity | None) -> None:
        """A rollback through the driver's method: record it (behind, on a
        write-behind trail), and count the next transaction."""
        self._write(
            {
                "ts": _now(),
                "event": event,
                "identity": _identity(ident),
                "db": self.db,
                "transaction": self.transaction,
            },
            wait=False,
        )
        self.transactions += 1

    def _write(self, fields: Mapping[str, Any], wait: bool = True) -> bool:
        """Write a record; False when it could not be written (True when it
        was queued behind, ``wait=False`` on a write-behind trail)."""
        writer = self.writer
        if writer is not None:
            done = writer.submit(self._written, fields)
            return done.result() if wait else True
        return self._written(fields)

    def _written(self, fields: Mapping[str, Any]) -> bool:
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

    def intent(self, analysis: Analysis, ident: Identity | None, step: str) -> bool:
        """Record, before it happens, a step taken on a statement's behalf
        before its decision: a dry run, asking for an approval."""
        return self._write(
            {
                "ts": _now(),
                "event": "intent",
                "step": step,
                "identity": _identity(ident),
                "db": self.db,
                "statement": analysis.sanitized,
                "fingerprint": analysis.fingerprint,
                "transaction": self.transaction,
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
        """Record how a query that ran ended: rows, masking, duration, error.

        A COMMIT or ROLLBACK (SQL or the driver's method) ends as a
        ``commit`` or ``rollback`` record: its outcome, after the decision
        record written before the driver was asked."""
        kinds = analysis.kinds
        event = "result"
        if len(analysis.statements) == 1 and kinds & _ENDS:
            event = next(iter(kinds & _ENDS))
        self._write(
            {
                "ts": _now(),
                "event": event,
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
            },
            wait=False,
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
            if self.writer is not None:
                self.writer.shutdown(wait=True)  # the records queued behind, first
                self.writer = None
            self.sink.close()
        except Exception as exc:
            _log.error("guardeddb: closing audit sink %s: %s", self.sink.path, exc)
