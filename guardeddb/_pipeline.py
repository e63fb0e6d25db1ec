"""The guard pipeline: what happens to every statement, in this order.

1. **Analyze** the text (cached by text), refusing one over
   ``limits.max_statement_bytes`` before anything reads it.
2. **Decide**, purely: the policy, masking's side channels, and for a
   read-only identity the functions it calls (a catalog read, cached). A
   rule that needs a dry run's row count makes the decision wait for step 4.
3. **Write ahead.** Before anything touches the database or an approval on
   the statement's behalf, an ``intent`` record says what is about to happen
   (a dry run, asking for an approval); with ``audit.required`` a record
   that cannot be written stops the statement here.
4. **Dry run** (inside a SAVEPOINT, rolled back) when a rule asks how many
   rows the statement touches, then decide again.
5. **Review**: a held statement looks for an approval of exactly itself
   (without using it), asks an in-process approver, or files a request.
6. **Record the decision** (the span starts, the ``decision`` record is
   written): no record, no query. Refusals end here.
7. **Use the approval**, once, now that the record that names it exists; an
   approval another process used first refuses the statement.
8. **Switch the session** to the mode the identity needs (read-only or
   read-write), then the driver runs the statement; the span and the
   ``result`` record follow its rows.

Steps 2-8 are written once, as a generator of steps (``_steps``): the
blocking proxies run them, the asyncio proxies await them, blocking calls
(the audit sink, the approval store, an approver) in a thread. The hot path,
a statement decided before with nothing to wait for, makes no step at all.

``commit()`` (and driver APIs that commit as a side effect) are judged as
the SQL ``COMMIT`` with the identity current at the call, recorded before
the driver commits (the write-ahead COMMIT record) and after (its outcome);
they have no span of their own, as in other database instrumentations.
``rollback()`` is never refused (it can only undo) and is recorded after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from ._enforce import VALUE_STORING_FUNCTIONS, Engine, engine_for, use_database
from ._steps import Call, Commit, Sql, Steps, run_async
from ._steps import run as run_steps
from .approvals import (
    ApprovalStore,
    Approver,
    UnboundParameters,
    database_key,
    parse_ttl,
    render_params,
    request_hash,
)
from .approvals.notify import notifier_for
from .approvals.notify import payload as notify_payload
from .audit import AuditTrail, sink_for
from .drivers import ConnectionFacts, Driver
from .errors import ApprovalRequired, AuditUnavailable, QueryBlocked, for_driver
from .identity import Identity, _current
from .masking.channels import carries_masked, withheld
from .masking.filters import filters_masked
from .masking.plan import Masking
from .policy.decision import Decision
from .policy.model import Policy
from .sql.analysis import (
    CONVERTING,
    MAX_CACHED_TEXT,
    Analysis,
    analyze,
    cache_for,
    oversized,
)
from .telemetry import Operation, Telemetry

__all__ = [
    "DEFAULT_MAX_STATEMENT_BYTES",
    "Guard",
    "failed",
    "query_text",
    "shared_state",
]

_log = logging.getLogger("guardeddb")
_DECISION_CACHE_SIZE = 8192
#: ``limits.max_statement_bytes`` when a policy does not set it.
DEFAULT_MAX_STATEMENT_BYTES = 1024 * 1024

# decision, session must be read-only, rows are masked, raw values shown to an unmask identity
Verdict = tuple[Decision, bool, bool, bool]
# what begin hands the cursor: the operation being recorded, the analysis when rows are masked
Begun = tuple[Operation | None, Analysis | None]


#: cursor class -> whether it rewrites a text given parameters (Guard.converts);
#: a process has a handful of cursor classes
_REWRITES: dict[type, bool] = {}


class Guard:
    """What every cursor of one guarded connection shares: the policy, the
    decision cache, the session's read-only state, the telemetry and the
    audit trail; and the pipeline that runs every statement past them."""

    __slots__ = (
        "alock",
        "approvals",
        "approver",
        "audit",
        "blocked",
        "by_text",
        "cache",
        "converted",
        "decisions",
        "dialect",
        "driver",
        "enforce",
        "engine",
        "facts",
        "identity",
        "lock",
        "masking",
        "max_bytes",
        "max_rows",
        "notifier",
        "policy",
        "raw",
        "read_only",
        "telemetry",
    )

    def __init__(
        self,
        raw: Any,
        driver: Driver,
        facts: ConnectionFacts,
        telemetry: Telemetry,
        identity: Identity | None,
        policy: Policy,
        approver: Approver | None = None,
    ) -> None:
        self.raw = raw
        self.approver = approver
        self.driver = driver
        self.dialect = driver.dialect
        self.cache = cache_for(driver.dialect)
        # the analyses of texts a pyformat driver rewrites (given parameters)
        self.converted = (
            cache_for(driver.dialect, True) if driver.dialect in CONVERTING else self.cache
        )
        self.facts = facts
        self.telemetry = telemetry
        self.identity = identity
        self.policy = policy
        self.enforce = policy.mode == "enforce"
        cap = policy.limits.get("max_rows")
        self.max_rows: int | None = int(cap) if cap else None
        self.max_bytes = int(policy.limits.get("max_statement_bytes", DEFAULT_MAX_STATEMENT_BYTES))
        masking = policy.masker
        self.masking: Masking | None = masking if masking is not None and masking.active else None
        # (analysis, identity) -> the verdict, see decide(); texts of one
        # shape share it unless a rule reads the text itself (sql_regex)
        self.decisions: dict[tuple[Analysis, Identity | None], Verdict] = {}
        self.by_text = policy.reads_text
        # what guardeddb last told the server; None: it may have been changed since
        self.read_only: bool | None = False
        # Threads sharing the connection: one statement at a time from the
        # session switch to the driver's return, so no other identity's
        # switch lands between them (psycopg serializes its own calls alike).
        self.lock = threading.RLock()
        # The same for asyncio tasks sharing an asyncio connection.
        self.alock = asyncio.Lock()
        self.engine: Engine = engine_for(driver, raw, policy.limits)
        self.engine.decisions = self.decisions
        self.blocked: type[QueryBlocked] = for_driver(QueryBlocked, driver.programming_error())
        self.audit = _audit_trail(policy, driver, facts)
        for what in shared_state(policy, facts):
            _log.warning(
                "guardeddb: the %s is in the database this connection uses (%s); guarded SQL "
                "cannot reach its tables, but give it its own credentials so that nothing "
                "else with the application's can",
                what,
                facts.namespace,
            )
        cfg = policy.approvals
        self.approvals = (
            ApprovalStore(str(cfg["store"]), parse_ttl(cfg.get("ttl", "1h")))  # type: ignore[arg-type]
            if cfg.get("store")
            else None
        )
        self.notifier = notifier_for(cfg) if self.approvals is not None else None

    # --- 1. analyze ---------------------------------------------------------

    @staticmethod
    def converts(raw: Any) -> bool:
        """Whether a pyformat driver's cursor ``raw`` rewrites a text given
        parameters, even ``()``, before sending it (``%%`` as ``%``,
        ``sql/pyformat.py``): psycopg's RawCursor does not."""
        cls = type(raw)
        found = _REWRITES.get(cls)  # the hot path: a dict hit
        if found is None:
            query_cls = getattr(cls, "_query_cls", None)  # psycopg's own, per cursor class
            found = _REWRITES[cls] = query_cls is None or all(
                c.__name__ != "PostgresRawQuery" for c in getattr(query_cls, "__mro__", ())
            )
        return found

    def analyze(self, query: Any, raw: Any, converted: bool = False) -> Analysis:
        """The analysis of a query given as str, bytes or a composed object;
        one over ``limits.max_statement_bytes`` is not read at all.
        ``converted``: see ``converts``."""
        if isinstance(query, bytes | bytearray | memoryview):
            size = len(query)
            if size > self.max_bytes:
                return oversized(size, self.max_bytes, self.dialect)
        text = query if type(query) is str else query_text(query, raw)
        if len(text) * 4 > self.max_bytes:  # cheap first: UTF-8 takes at most 4 bytes a char
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self.max_bytes:
                return oversized(size, self.max_bytes, self.dialect)
        return analyze(text, self.dialect, converted)

    # --- 2. decide -----------------------------------------------------------

    def decide(
        self, analysis: Analysis, ident: Identity | None, impact: _Impact | None = None
    ) -> Verdict:
        """The decision, the session mode it needs, whether results are masked
        and whether raw values are shown to an unmask identity; no I/O, and
        cached unless it depended on a dry run's row count."""
        decision = self.policy.decide(analysis, ident, self.facts.schemas, impact)
        masking = self.masking
        masked = masking is not None and masking.applies_to(ident)
        if masked and decision.action != "block":
            for st in analysis.statements:
                if st.kind == "copy" and "read" in st.classes:
                    # COPY ... TO STDOUT bypasses row fetching, so it cannot be masked.
                    decision = Decision(
                        "block",
                        "masking-copy",
                        "COPY ... TO STDOUT cannot be masked; it is refused for identities "
                        "that may not see raw values",
                    )
            if decision.action != "block" and masking is not None:
                reason = carries_masked(analysis, masking)
                if reason is not None:
                    decision = Decision("block", "masking-side-channel", reason)
            if decision.action != "block" and masking is not None:
                reason = filters_masked(analysis, masking)
                if reason is not None:
                    decision = Decision("block", "masking-filter", reason)
            stores = analysis.functions & VALUE_STORING_FUNCTIONS
            if decision.action != "block" and stores and masking and masking.may_carry(analysis):
                decision = Decision(
                    "block",
                    "masking-side-channel",
                    f"{', '.join(sorted(stores))} would keep a value for the session to read "
                    "back unmasked; refused for identities whose results are masked",
                )
        unmasked = masking is not None and not masked
        result = (decision, self.policy.read_only_for(ident), masked, unmasked)
        if len(self.decisions) >= _DECISION_CACHE_SIZE:
            self.decisions.clear()
        if len(analysis.text) <= MAX_CACHED_TEXT and impact is None:
            self.decisions[(analysis if self.by_text else analysis.key, ident)] = result
        return result

    # --- the pipeline --------------------------------------------------------

    def prepare(
        self, query: Any, raw: Any, converted: bool = False
    ) -> tuple[Analysis, Identity | None, Verdict | None, bool]:
        """Step 1 and the cached part of step 2: the analysis, the identity
        current now, the cached verdict (None if there is none) and whether
        nothing is left to do before the statement runs but its record."""
        cache = self.converted if converted else self.cache
        analysis = cache.get(query) if type(query) is str else None
        if analysis is None:
            analysis = self.analyze(query, raw, converted)
        ident = _current.get() or self.identity
        verdict = self.decisions.get((analysis if self.by_text else analysis.key, ident))
        if verdict is None or verdict[0].action == "review":
            return analysis, ident, verdict, False
        engine = self.engine
        if engine.reconnected(self.raw) or engine.commits_first(analysis, self.raw):
            return analysis, ident, verdict, False
        if verdict[1] and engine.session_changed(self.raw):
            self.read_only = None  # re-asserted before this statement runs
        return analysis, ident, verdict, verdict[1] is self.read_only

    def begin(self, query: Any, raw: Any, batch: int = 0, params: Any = None) -> Begun:
        """Run the pipeline up to the driver's call; raise if refused.

        Returns the operation being recorded (None when nothing records) and
        the analysis when its rows must be masked (None when they need not).
        This is the hot path of every execute: a dict hit for the analysis,
        a contextvar read, a dict hit for the decision, the audit record when
        there is a trail, and nothing else when no SDK records.
        """
        converted = params is not None and self.converted is not self.cache and self.converts(raw)
        analysis, ident, verdict, ready = self.prepare(query, raw, converted)
        if not ready or verdict is None:
            steps = self.steps(analysis, ident, verdict, query, raw, batch, params)
            return run_steps(self.raw, steps)
        op = self.opened(analysis, ident, verdict, batch)
        audit = self.audit
        if audit is not None:
            self.recorded(op, analysis, audit.decision(*self.record(op, analysis, ident, verdict)))
        self.refuse(op, analysis, verdict[0])
        self.engine.arm(analysis, verdict[1])
        return op, (analysis if verdict[2] else None)

    async def begin_async(self, query: Any, raw: Any, batch: int = 0, params: Any = None) -> Begun:
        """``begin`` for an asyncio connection: the same pipeline, awaited;
        with an audit trail, the record is written off the event loop."""
        converted = params is not None and self.converted is not self.cache and self.converts(raw)
        analysis, ident, verdict, ready = self.prepare(query, raw, converted)
        if ready and verdict is not None and self.audit is None:
            op = self.opened(analysis, ident, verdict, batch)
            self.refuse(op, analysis, verdict[0])
            self.engine.arm(analysis, verdict[1])
            return op, (analysis if verdict[2] else None)
        return await run_async(
            self.raw, self.steps(analysis, ident, verdict, query, raw, batch, params)
        )

    def steps(
        self,
        analysis: Analysis,
        ident: Identity | None,
        verdict: Verdict | None,
        query: Any,
        raw: Any,
        batch: int,
        params: Any,
    ) -> Steps[Begun]:
        """Steps 2-8 for a statement ``prepare`` could not settle from its
        caches: ``verdict`` is the cached one, if any (a held statement's is
        reviewed again; a session that changed is switched back)."""
        engine = self.engine
        engine.arm(analysis, False)  # a dry run is held to the analysis too
        if engine.reconnected(self.raw):
            engine.renew(self.raw)  # a reconnect: the session starts over
            self.read_only = None
            verdict = None  # decided again, for the database the new session is in
        if engine.starting:
            yield from self.session_start()
        if engine.facts_stale:
            self.facts = use_database(
                self.facts, (yield Call(engine.current_database, (self.raw,)))
            )
            engine.facts_stale = False
        impact = None
        wrote_ahead = False
        if verdict is None:
            if _changes_rows(analysis) and (self.policy.uses_impact or self.approvals):
                impact = _Impact()
            while True:
                try:
                    verdict = self.decide(analysis, ident, impact)
                    break
                except _Unmeasured:  # a rule needs the count: measure, then decide again
                    assert impact is not None
                    yield from self.write_ahead(analysis, ident, "dry-run")
                    wrote_ahead = True
                    text = query_text(query, raw)
                    yield from impact.measure(self.driver, self.raw, text, params, analysis)
            if verdict[1] and verdict[0].action != "block" and analysis.functions:
                # read-only identities call only functions known not to write
                checked = yield from engine.functions_decision(self.raw, analysis, verdict[0])
                if checked is not verdict[0]:
                    verdict = (checked, *verdict[1:])
                    key = (analysis if self.by_text else analysis.key, ident)
                    if key in self.decisions:
                        self.decisions[key] = verdict
        decision, read_only, masked, unmasked = verdict
        request_id = grant = None
        if (
            decision.action == "review"
            and self.enforce
            and (self.approvals is not None or self.approver is not None)
        ):
            if not wrote_ahead:
                yield from self.write_ahead(analysis, ident, "approval")
            decision, request_id, grant = yield from self.review(
                decision, analysis, ident, query, raw, params, impact
            )
            verdict = (decision, read_only, masked, unmasked)
        rows = impact.count if impact is not None else None
        op = self.opened(analysis, ident, verdict, batch, rows)
        audit = self.audit
        if audit is not None:
            args = self.record(op, analysis, ident, verdict, rows)
            self.recorded(op, analysis, (yield Call(audit.decision, args)))
        self.refuse(op, analysis, decision, request_id)
        try:
            store = self.approvals
            if grant is not None and store is not None and not (yield Call(store.use, (grant,))):
                raise self.blocked(
                    Decision(
                        "block",
                        decision.rule_id,
                        f"approval {grant} was used or superseded by another run of this statement "
                        "first; ask for a new approval",
                    )
                )
            if engine.commits_first(analysis, self.raw):
                # The server would commit the open transaction before this
                # statement: guardeddb does, judged and recorded, first.
                yield from self.commit_steps()
            if analysis.kinds <= _ENDS:
                # A transaction end switches nothing (it ends what is open);
                # a read-only identity only ends a read-only transaction.
                if read_only and "commit" in analysis.kinds:
                    yield from self.read_only_commit()
            else:
                if read_only and self.read_only and engine.session_changed(self.raw):
                    self.read_only = None
                if read_only and self.read_only is None:
                    yield from self.reassert()
                elif read_only is not self.read_only:
                    yield from self.switch_session(read_only)
        except BaseException as exc:
            if op is not None:
                op.failed(exc)
            raise
        engine.arm(analysis, read_only)  # what the engine holds this statement to
        return op, (analysis if masked else None)

    def write_ahead(self, analysis: Analysis, ident: Identity | None, step: str) -> Steps[None]:
        """Step 3: the ``intent`` record before a dry run or an approval."""
        audit = self.audit
        if audit is None:
            return
        if not (yield Call(audit.intent, (analysis, ident, step))) and audit.required:
            exc = self.unaudited(audit)
            op = self.telemetry.start(analysis, ident, exc.decision)
            if op is not None:
                op.failed(exc)
            raise exc

    def opened(
        self,
        analysis: Analysis,
        ident: Identity | None,
        verdict: Verdict,
        batch: int,
        rows: int | None = None,
        traced: bool = True,
    ) -> Operation | None:
        """Step 6: the operation (span, metric, result record) starts; one
        not ``traced`` (``commit()``) has its records and no span."""
        audit = self.audit
        context = None if audit is None else (audit, analysis, ident)
        if not traced:
            return None if context is None else Operation(self.telemetry, None, None, context)
        op = self.telemetry.start(analysis, ident, verdict[0], batch, context)
        if op is not None:
            if verdict[3]:
                op.annotate("guardeddb.masking.unmasked", True)
            if rows is not None:
                op.annotate("guardeddb.impact.rows", rows)
        return op

    @staticmethod
    def record(
        op: Operation | None,
        analysis: Analysis,
        ident: Identity | None,
        verdict: Verdict,
        rows: int | None = None,
    ) -> tuple[Any, ...]:
        """The arguments of the decision record (``AuditTrail.decision``)."""
        trace = op.trace_ids() if op is not None else None
        return (analysis, ident, verdict[0], verdict[3], trace, rows)

    def recorded(self, op: Operation | None, analysis: Analysis, written: bool) -> None:
        """The decision record was written, or the statement stops here; a
        ROLLBACK runs all the same (it can only undo, and refusing it would
        keep a transaction open that nobody can end)."""
        audit = self.audit
        if not written and audit is not None and audit.required and analysis.kinds != _UNDO:
            exc = self.unaudited(audit)
            if op is not None:
                op.failed(exc)
            raise exc

    def unaudited(self, audit: AuditTrail) -> AuditUnavailable:
        error: AuditUnavailable = for_driver(AuditUnavailable, self.driver.programming_error())(
            Decision(
                "block",
                "audit-required",
                f"the audit record could not be written to {audit.sink.path}",
            )
        )
        return error

    def refuse(
        self,
        op: Operation | None,
        analysis: Analysis,
        decision: Decision,
        request_id: str | None = None,
    ) -> None:
        """Raise for a decision that does not let the statement run.

        Kernel refusals protect guardeddb itself (its tables, the settings
        its analysis depends on, its memory): report mode does not turn them off.
        """
        action = decision.action
        if action == "allow" or not (self.enforce or decision.rule_id in _ALWAYS):
            return
        if action == "warn":
            _log.warning(
                "guardeddb: rule %s warns: %s (%s)",
                decision.rule_id,
                decision.message or "",
                analysis.summary or analysis.sanitized[:200],
            )
            return
        exc = self.refusal(decision, request_id)
        if op is not None:
            op.failed(exc)
        raise exc

    def review(
        self,
        decision: Decision,
        analysis: Analysis,
        ident: Identity | None,
        query: Any,
        raw: Any,
        params: Any,
        impact: _Impact | None = None,
    ) -> Steps[tuple[Decision, str | None, str | None]]:
        """Step 5, a held statement: allowed when an approval of exactly it
        exists (returned to be used after the decision record), else its
        pending request filed (or found), with its measured impact. An
        approval filed with a count is for the statement as shown: measured
        again, it applies to at most that many rows, else it is superseded
        unused and the statement held again with the new count.

        Returns the decision, the pending request's id and the approval to use.
        """
        if self.approver is not None:
            shown = render_params(params, getattr(self.policy.masker, "scanner", None))
            verdict, by = yield Call(self.approver.ask, (analysis, ident, decision, shown))
            if verdict:
                return Decision("allow", decision.rule_id, f"approved by {by}"), None, None
            if self.approvals is None:
                return Decision("block", decision.rule_id, f"not approved by {by}"), None, None
        assert self.approvals is not None
        text = query_text(query, raw)
        where = database_key(self.driver.system, self.facts)
        try:
            digest = request_hash(ident, text, params, where)
        except UnboundParameters as exc:  # never hashed by address, never consumed
            return Decision("block", decision.rule_id, f"held for review, but {exc}"), None, None
        granted = yield Call(self.approvals.find, (digest,))
        retired = None
        if granted is not None and granted.impact is None:
            # approved with no count shown: nothing to hold it to
            why = f"approved by {granted.approver or 'an approver'} (request {granted.id})"
            return Decision("allow", decision.rule_id, why), None, granted.id
        if impact is not None and not impact.measured:
            yield from impact.measure(self.driver, self.raw, text, params, analysis)
        if granted is not None:
            # Approved as shown: measured again before the approval is used,
            # it covers at most the rows the person saw.
            by, limit = granted.approver or "an approver", granted.impact
            rows = impact.count if impact is not None else None
            if rows is not None and rows <= limit:
                why = f"approved by {by} (request {granted.id}, shown {limit} rows; "
                why += f"this run touches {rows})"
                return Decision("allow", decision.rule_id, why), None, granted.id
            yield Call(self.approvals.supersede, (granted.id,))
            now = "an unmeasured number of" if rows is None else str(rows)
            retired = (
                f"approval {granted.id} by {by} was for {limit} rows and this run would "
                f"touch {now}: not used, superseded"
            )
        reason = decision.message
        if retired is not None:  # the approver of the new request sees why
            reason = f"{reason}; {retired}" if reason else retired
        held = yield Call(
            self.approvals.hold_request,
            (
                ident,
                digest,
                text,
                decision.rule_id,
                reason,
                impact.count if impact is not None else None,
                render_params(params, getattr(self.policy.masker, "scanner", None)),
                where,
            ),
        )
        if held is None:
            return (
                Decision(
                    "block",
                    decision.rule_id,
                    "held for review, but this identity already has "
                    "the most pending approval requests allowed; wait for a decision"
                    + ("" if retired is None else f" ({retired})"),
                ),
                None,
                None,
            )
        if held.new and self.notifier is not None:
            # Queued, never sent here: a webhook cannot delay or decide the hold.
            self.notifier.submit(
                notify_payload(
                    held.id,
                    ident,
                    decision.rule_id,
                    reason,
                    analysis.sanitized,
                    analysis.summary,
                    impact.count if impact is not None else None,
                    held.created,
                    held.expires,
                    self.notifier.link(held.id),
                )
            )
        if retired is not None:
            decision = Decision(
                decision.action, decision.rule_id, f"{reason}; held again as request {held.id}"
            )
        return decision, held.id, None

    def refusal(self, decision: Decision, request_id: str | None = None) -> QueryBlocked:
        """The error for a blocked or held query, mixed with the driver's."""
        if request_id is not None:
            held: QueryBlocked = for_driver(ApprovalRequired, self.driver.programming_error())(
                decision, request_id
            )
            return held
        if decision.action == "review":
            # Without an approval store (or an in-process approver that said
            # yes) a held query cannot wait for anyone: it is blocked, and says why.
            return self.blocked(
                decision,
                f"query held for review by rule {decision.rule_id!r}"
                + (f": {decision.message}" if decision.message else "")
                + " (no approval store is configured, so it cannot run)",
            )
        return self.blocked(decision)

    # --- transaction ends ------------------------------------------------------

    def committing(self) -> Steps[Operation | None]:
        """A commit about to happen (``commit()``, or a driver API that
        commits): judged as the SQL ``COMMIT`` for the identity current now,
        its decision record written ahead; refused, nothing is committed.
        Returns the operation whose end writes the outcome (``commit``)."""
        analysis = analyze("COMMIT", self.dialect)  # cached after the first
        ident = _current.get() or self.identity
        verdict = self.decisions.get(
            (analysis if self.by_text else analysis.key, ident)
        ) or self.decide(analysis, ident)
        op = self.opened(analysis, ident, verdict, 0, None, traced=False)
        audit = self.audit
        if audit is not None:
            args = self.record(op, analysis, ident, verdict)
            self.recorded(op, analysis, (yield Call(audit.decision, args)))
        self.refuse(op, analysis, verdict[0])
        if verdict[1]:
            try:
                yield from self.read_only_commit()
            except BaseException as exc:
                if op is not None:
                    op.failed(exc)
                raise
        return op

    def commit_steps(self) -> Steps[None]:
        """``commit()``: judged and written ahead, committed, its outcome recorded."""
        op = yield from self.committing()
        try:
            yield Commit()
        except BaseException as exc:
            if op is not None:
                op.failed(exc, self.driver.status_code(exc))
            raise
        if op is not None:
            op.executed()
            op.end()

    # --- 8. the session -------------------------------------------------------

    def switch_session(self, read_only: bool) -> Steps[None]:
        """Tell the database to refuse (or allow again) writes for this session.

        Only between transactions: an identity that must be read-only never
        runs inside a transaction that a read-write identity opened.
        """
        raw = self.raw
        statements = self.driver.read_only_statements(read_only)
        if not statements:
            # A driver guardeddb knows no read-only switch for: the policy
            # alone keeps the identity to reads.
            self.read_only = read_only
            return
        if self.driver.in_transaction(raw):
            raise self.blocked(
                Decision(
                    "block",
                    "read-only-session",
                    "the identity changed inside an open transaction; commit or roll back "
                    "first so the database session can switch to "
                    + ("read-only" if read_only else "read-write"),
                )
            )
        with self.engine.own_steps():
            for sql in statements:
                yield Sql(sql)
        if self.driver.in_transaction(raw):
            # psycopg opened a transaction for the SET: close it, so the next
            # statement starts a transaction with the new characteristics.
            yield Commit()
        self.read_only = read_only
        self.engine.stale = False

    def read_only_commit(self) -> Steps[None]:
        """A read-only identity's COMMIT: refused when the open transaction
        is not read-only (a writer opened it: its writes are not this
        identity's to keep)."""
        raw = self.raw
        driver = self.driver
        if not driver.in_transaction(raw) or driver.failed_transaction(raw):
            return  # nothing to keep: the next statement puts the session right
        if self.read_only is False:
            raise self.blocked(
                Decision(
                    "block",
                    "read-only-session",
                    "a read-only identity cannot commit a transaction that was opened "
                    "read-write; roll back instead",
                )
            )
        if self.read_only is None or self.engine.session_changed(raw):
            # Verified read-only, and the session's default set again inside
            # the transaction, so that the COMMIT keeps it.
            yield from self.reassert()

    def reassert(self) -> Steps[None]:
        """The read-only session may have been changed (a statement that was
        not a plain read, a reconnect): put it back, or refuse if it cannot be."""
        opened = not self.driver.in_transaction(self.raw)
        held = yield from self.engine.reassert(self.driver, self.raw)
        if not held:
            raise self.blocked(
                Decision(
                    "block",
                    "read-only-session",
                    "the session is no longer read-only inside this transaction; roll back",
                )
            )
        if opened and self.driver.in_transaction(self.raw):
            yield Commit()
        self.read_only = True

    def session_start(self) -> Steps[None]:
        """The policy's limits, set on the session once, by guardeddb itself."""
        self.engine.starting = False
        statements = self.engine.session_start(self.driver)
        if not statements:
            return
        opened = not self.driver.in_transaction(self.raw)
        for sql in statements:
            yield Sql(sql)
        if opened and self.driver.in_transaction(self.raw):
            yield Commit()

    # --- after the driver's call ---------------------------------------------

    def engine_refusal(self, exc: BaseException) -> QueryBlocked | None:
        """The engine denied what the statement tried (the SQLite authorizer,
        a timeout): guardeddb's QueryBlocked, or None for any other error."""
        decision = self.engine.refusal(exc)
        return None if decision is None else self.blocked(decision)

    def replacement(self, exc: BaseException, masked: bool) -> BaseException | None:
        """What to raise instead of ``exc``: the engine's refusal, or for an
        identity whose results are masked the error with its text withheld
        (driver messages quote values); None to raise ``exc`` itself."""
        blocked = self.engine_refusal(exc)
        if blocked is None and masked:
            return withheld(exc, self.driver.status_code(exc))
        return blocked

    def fail(self, op: Operation, exc: BaseException) -> None:
        op.failed(exc, self.driver.status_code(exc))

    def run(
        self,
        raw: Any,
        method: Callable[..., Any],
        query: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        params: Any = None,
    ) -> Any:
        """Guard ``query`` and make one call that returns no rows to count."""
        with self.lock:
            op, mask = self.begin(query, raw, 0, params)
            failure = None
            try:
                result = method(*args, **kwargs)
            except BaseException as exc:
                failure = self.replacement(exc, mask is not None)
                if op is not None:
                    self.fail(op, exc if failure is None else failure)
                if failure is None:
                    raise
                if isinstance(failure, QueryBlocked):
                    raise failure from exc
        if failure is not None:
            raise failure from None  # outside the handler: no __context__ either
        if op is None:
            return result
        op.executed()
        op.end()
        return result


_UNDO = frozenset({"rollback"})
_ENDS = frozenset({"commit", "rollback"})
#: Rules enforced whatever the policy's mode: they protect guardeddb itself.
_ALWAYS = frozenset({"kernel"})


def failed(
    guard: Guard, op: Operation | None, exc: BaseException, masked: bool
) -> BaseException | None:
    """Record that a statement raised ``exc`` and re-raise it, or return what
    to raise instead (from outside the handler, so that the original is
    neither the cause nor the context). An engine refusal is raised here,
    chained to the engine's error, which quotes no values."""
    failure = guard.replacement(exc, masked)
    if op is not None:
        guard.fail(op, exc if failure is None else failure)
    if failure is None:
        raise  # called from the except block: exc itself, traceback intact
    if isinstance(failure, QueryBlocked):
        raise failure from exc
    return failure


_ROW_CHANGING = frozenset({"update", "delete", "merge", "insert"})


def _changes_rows(analysis: Analysis) -> bool:
    """UPDATE, DELETE, MERGE and INSERT (``INSERT ... SELECT`` adds as many
    rows as its query returns): statements a dry run can measure, when a
    rule asks.

    One statement only, and nothing that cannot be rolled back (DDL commits
    on MySQL; administration and unparsed statements are never run twice).
    """
    if len(analysis.statements) != 1:
        return False
    st = analysis.statements[0]
    if st.unparsed or st.classes - {"write", "read"}:
        return False
    return bool(st.kinds & _ROW_CHANGING)


class _Unmeasured(Exception):
    """A rule needs a dry run's row count that has not been measured yet."""


class _Impact:
    """The rows a statement would touch, measured by a dry run at most once.

    Called by the policy while it decides; until ``measure`` has run, the
    call raises ``_Unmeasured`` and the pipeline writes ahead, measures,
    then decides again, so the dry run happens only when a rule (or an
    approval request) asks.
    """

    __slots__ = ("count", "measured")

    def __init__(self) -> None:
        self.count: int | None = None
        self.measured = False

    def __call__(self) -> int | None:
        if not self.measured:
            raise _Unmeasured
        return self.count

    def measure(
        self, driver: Driver, conn: Any, sql: str, params: Any, analysis: Analysis
    ) -> Steps[None]:
        count = yield from driver.dry_run(conn, sql, params, analysis.tables)
        st = analysis.statements[0]
        if st.kind not in _ROW_CHANGING:
            # The write is nested (WITH d AS (DELETE ...) SELECT ...): the
            # driver's row count is the outer query's, not the rows touched.
            # Unknown, which a rule holding or blocking by count takes as large.
            count = None
        self.count = count
        self.measured = True


def shared_state(policy: Policy, facts: ConnectionFacts) -> list[str]:
    """The approval store and audit sink that live in the database this
    connection reaches: guardeddb refuses their tables to guarded SQL, but a
    process with the same credentials can still change them directly."""
    from pathlib import Path
    from urllib.parse import urlsplit

    found = []
    for what, url in (
        ("approval store", policy.approvals.get("store")),
        ("audit sink", policy.audit.get("postgresql")),
    ):
        if not isinstance(url, str) or facts.namespace is None:
            continue
        if url.startswith("sqlite:"):
            path = url.split(":", 1)[1].lstrip("/")
            with contextlib.suppress(OSError):
                if Path("/" + path).resolve() == Path(facts.namespace).resolve() or (
                    Path(path).resolve() == Path(facts.namespace).resolve()
                ):
                    found.append(what)
            continue
        parts = urlsplit(url)
        if parts.path.lstrip("/") == facts.namespace and (
            facts.address is None or (parts.hostname or "localhost") == facts.address
        ):
            found.append(what)
    return found


def _audit_trail(policy: Policy, driver: Driver, facts: ConnectionFacts) -> AuditTrail | None:
    """The audit trail a policy's ``audit:`` section asks for, if any."""
    sink = sink_for(policy.audit)
    if sink is None:
        return None
    return AuditTrail(sink, bool(policy.audit.get("required", True)), driver, facts)


def query_text(query: Any, raw: Any) -> str:
    """The SQL text of ``query``: str, bytes (undecodable bytes replaced) or
    an object that renders itself, like psycopg's ``sql.Composed``."""
    if isinstance(query, str):
        return query
    if isinstance(query, bytes | bytearray | memoryview):
        return bytes(query).decode("utf-8", "replace")
    as_string = getattr(query, "as_string", None)
    if callable(as_string):
        conn = getattr(raw, "connection", raw)
        try:
            return str(as_string(conn))
        except TypeError:
            return str(as_string())
    return str(query)
