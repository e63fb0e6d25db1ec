"""Spans and metrics per the OpenTelemetry database semantic conventions.

One CLIENT span per execute, a leaf: started with ``start_span`` and every
attribute passed at start (samplers see them), never attached as the current
span (attaching costs a third of a bare span), ended when the result is
exhausted, the cursor runs again or closes. The ``db.client.operation.duration``
histogram is recorded for every operation, sampled or not.

Only ``opentelemetry-api`` is imported. With no SDK configured, the global
providers are proxies; guardeddb notices that and skips telemetry entirely,
so an untraced application pays nothing for it.
"""

from __future__ import annotations

import contextlib
import sys
import time
import weakref
from collections.abc import Iterable, Mapping, Sized
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    MeterProvider,
    NoOpMeterProvider,
    Observation,
)
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
)

from .drivers import ConnectionFacts, Driver
from .identity import Identity
from .policy.decision import Decision
from .sql.analysis import Analysis, cache_counts

if TYPE_CHECKING:
    from .audit import AuditTrail

#: What an operation needs to write its audit result: the trail, the
#: statement and who ran it.
AuditContext = tuple["AuditTrail", Analysis, "Identity | None"]

__all__ = [
    "DURATION_BUCKETS",
    "UNSIZED_BATCH",
    "Operation",
    "Telemetry",
    "batch_size",
    "count_decision",
    "error_type",
]

_SCOPE = "guardeddb"
_VERSION = "0.1.0"
#: Bucket boundaries the semantic conventions advise for db.client.operation.duration.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
_ATTR_CACHE_SIZE = 2048
_MAX_SUMMARY_NAME = 255

try:  # the key is in the API package; instrumentations set it to silence each other
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as _SUPPRESS_KEY
except ImportError:  # pragma: no cover - older API
    _SUPPRESS_KEY = otel_context.create_key("suppress_instrumentation")

try:  # the API's stand-in until an SDK is set; not type(get_meter_provider()),
    # which is the SDK's class when guardeddb is imported after the SDK is set up
    from opentelemetry.metrics import _internal as _metrics_internal

    _ProxyMeterProvider: type[Any] = _metrics_internal._ProxyMeterProvider
except (ImportError, AttributeError):  # pragma: no cover - a future API that moves it
    _ProxyMeterProvider = type(metrics.get_meter_provider())
_PROXY_TRACER_PROVIDER: type[Any] = ProxyTracerProvider
# Where the API keeps the global providers once an application sets them.
# Reading them is the cheapest "is any SDK configured?" test there is; if a
# future API moves them, the public getters are used instead.
_trace_globals = sys.modules["opentelemetry.trace"]
_metrics_globals = sys.modules.get("opentelemetry.metrics._internal")
_FAST_UNSET_CHECK = hasattr(_trace_globals, "_TRACER_PROVIDER") and hasattr(
    _metrics_globals, "_METER_PROVIDER"
)


# guardeddb.decisions: counted here in a dict (a few nanoseconds per query) and
# reported through an observable counter when the SDK collects, instead of a
# synchronous counter.add() per query, which costs microseconds.
_decision_counts: dict[tuple[str, str, str], int] = {}
# Providers that already report the counter. Weak, so that a new provider
# that happens to reuse a collected one's id() is not mistaken for it.
_counted_providers: weakref.WeakSet[Any] = weakref.WeakSet()


def _observe_decisions(options: CallbackOptions) -> Iterable[Observation]:
    for (system, action, rule), count in list(_decision_counts.items()):
        attrs = {"db.system.name": system, "guardeddb.decision.action": action}
        if rule:
            attrs["guardeddb.decision.rule"] = rule
        yield Observation(count, attrs)


def _observe_analyses(options: CallbackOptions) -> Iterable[Observation]:
    """How texts not seen before were analyzed: ``shape`` (a known shape with
    other literal values: a tokenize and a lookup) or ``full``; ``checked``
    and ``refused`` count shapes checked before sharing and those refused.
    Repeats of a known text are the hot path and are not counted."""
    for outcome, count in cache_counts().items():
        yield Observation(count, {"guardeddb.analysis.outcome": outcome})


#: ``batch`` of an executemany whose parameter sets have no ``len()`` (a
#: generator): a batch of a size not known before the driver consumes it.
UNSIZED_BATCH = -1
#: ``batch`` of an executemany with no parameter set: semconv's empty batch.
EMPTY_BATCH = -2


def batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The ``batch`` of an executemany ``(query, *args, **kwargs)``: its number
    of parameter sets, ``EMPTY_BATCH`` for none, ``UNSIZED_BATCH`` when unknown.

    Per the semantic conventions one parameter set is a single operation, not
    a batch; 0 is reserved for ``execute``.
    """
    seq = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(seq, Sized):
        return UNSIZED_BATCH
    return len(seq) or EMPTY_BATCH


def _with_prefix(prefix: str, summary: str) -> str:
    """``prefix summary`` within the 255-character cap, cut between words."""
    text = f"{prefix} {summary}" if summary else prefix
    while len(text) > _MAX_SUMMARY_NAME:
        text = text.rsplit(" ", 1)[0]
    return text


def count_decision(system: str, decision: Decision) -> None:
    """Count one decision for the guardeddb.decisions metric."""
    key = (system, decision.action, decision.rule_id or "")
    _decision_counts[key] = _decision_counts.get(key, 0) + 1


def error_type(exc: BaseException) -> str:
    """``error.type``: the exception's fully qualified class name."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class Telemetry:
    """The tracer and instruments of one guarded connection.

    Resolved lazily from the global providers until the application sets
    real ones (OpenTelemetry lets that happen once, so a real provider, once
    found, is kept), or taken as given to ``connect(tracer_provider=...)``.
    """

    __slots__ = (
        "_attrs",
        "_explicit",
        "_meter_provider",
        "_ops",
        "_tracer_provider",
        "decisions",
        "driver",
        "duration",
        "facts",
        "open",
        "tracer",
    )

    def __init__(
        self,
        driver: Driver,
        facts: ConnectionFacts,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.driver = driver
        self.facts = facts
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._explicit = tracer_provider is not None or meter_provider is not None
        self.tracer: Tracer | None = None
        self.duration: Histogram | None = None
        self._attrs: dict[tuple[Analysis, int], tuple[str, dict[str, Any], dict[str, Any]]] = {}
        # Everything start() passes per (statement, batch, caller, decision),
        # built once: see _entry.
        self._ops: dict[_OpKey, _OpEntry] = {}
        self.open: set[Operation] = set()  # operations whose span has not ended
        self._resolve()

    def _resolve(self) -> bool:
        """Find real providers; True when there is anything to record to."""
        if self.tracer is None:
            tp = self._tracer_provider or trace.get_tracer_provider()
            if not isinstance(tp, _PROXY_TRACER_PROVIDER | NoOpTracerProvider):
                self.tracer = tp.get_tracer(_SCOPE, _VERSION)
        if self.duration is None:
            mp = self._meter_provider or metrics.get_meter_provider()
            if not isinstance(mp, _ProxyMeterProvider | NoOpMeterProvider):
                meter = mp.get_meter(_SCOPE, _VERSION)
                self.duration = meter.create_histogram(
                    "db.client.operation.duration",
                    unit="s",
                    description="Duration of database client operations.",
                    explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
                )
                if mp not in _counted_providers:
                    with contextlib.suppress(TypeError):  # a provider that cannot be weakly held
                        _counted_providers.add(mp)
                    meter.create_observable_counter(
                        "guardeddb.decisions",
                        callbacks=[_observe_decisions],
                        unit="{decision}",
                        description="Guardrail decisions, by action and rule.",
                    )
                    meter.create_observable_counter(
                        "guardeddb.analysis.cache",
                        callbacks=[_observe_analyses],
                        unit="{statement}",
                        description="New statement texts by how they were analyzed.",
                    )
        return self.tracer is not None or self.duration is not None

    def _static(self, analysis: Analysis, batch: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """Span name, span attributes and metric attributes that depend only
        on the statement and the connection; built once per statement."""
        key = (analysis.key, batch)
        cached = self._attrs.get(key)
        if cached is not None:
            return cached
        driver, facts = self.driver, self.facts
        # One parameter set is one operation; 2+, none, or an unknown number
        # make a batch, whose summary (and so span name) says BATCH.
        is_batch = batch >= 2 or batch < 0
        summary = _with_prefix("BATCH", analysis.summary) if is_batch else analysis.summary
        metric: dict[str, Any] = {"db.system.name": driver.system}
        if facts.namespace:
            metric["db.namespace"] = facts.namespace
        if summary:
            metric["db.query.summary"] = summary
        if facts.address:
            metric["server.address"] = facts.address
        if facts.port is not None and facts.port != driver.default_port:
            metric["server.port"] = facts.port
        span = dict(metric)
        span["db.query.text"] = analysis.sanitized
        if analysis.procedure:
            span["db.stored_procedure.name"] = analysis.procedure
        if batch >= 2 or batch == EMPTY_BATCH:
            span["db.operation.batch.size"] = max(batch, 0)
        name = summary or driver.system
        result = (name[:_MAX_SUMMARY_NAME], span, metric)
        if len(self._attrs) >= _ATTR_CACHE_SIZE:
            self._attrs.clear()
        self._attrs[key] = result
        return result

    def end_all(self) -> None:
        """End every open span: the connection is closing."""
        for op in list(self.open):
            op.end()

    def start(
        self,
        analysis: Analysis,
        ident: Identity | None,
        decision: Decision,
        batch: int = 0,
        audit: AuditContext | None = None,
    ) -> Operation | None:
        """Begin recording one operation; None when nothing records.

        ``batch`` is 0 for execute, else what ``batch_size`` says of an
        executemany.
        ``audit``, when the connection keeps an audit trail, makes sure an
        Operation exists to write the result record, traced or not.
        """
        if (
            self.tracer is None
            and self.duration is None
            and (
                (
                    _FAST_UNSET_CHECK
                    and not self._explicit
                    and _trace_globals._TRACER_PROVIDER is None
                    and _metrics_globals._METER_PROVIDER is None  # type: ignore[union-attr]
                )
                or not self._resolve()
            )
        ):
            # Nothing to trace; the audit trail still follows the operation.
            return None if audit is None else Operation(self, None, None, audit)
        ctx = otel_context.get_current()
        if ctx.get(_SUPPRESS_KEY):
            return None if audit is None else Operation(self, None, None, audit)
        # Keyed like _static: on analysis.key, one object per statement shape.
        key = (analysis.key, batch, ident, decision.action, decision.rule_id)
        entry = self._ops.get(key)
        if entry is None:
            entry = self._entry(key, analysis, ident, decision)
        name, attrs, metric, counted = entry
        _decision_counts[counted] = _decision_counts.get(counted, 0) + 1
        tracer = self.tracer
        if tracer is None:
            return Operation(self, None, metric, audit)
        # The attributes dict is shared by every span of this entry: the SDK
        # copies what it is given (SamplingResult, then BoundedAttributes),
        # and nothing here mutates it. The exception arguments only matter
        # when the span is used as a context manager, which it never is.
        span = tracer.start_span(
            name,
            ctx,
            SpanKind.CLIENT,
            attrs,
            record_exception=False,
            set_status_on_exception=False,
        )
        return Operation(self, span, metric, audit)

    def _entry(
        self, key: _OpKey, analysis: Analysis, ident: Identity | None, decision: Decision
    ) -> _OpEntry:
        """Span name, the span's start attributes, the metric attributes and
        the decision counter's key of one (statement, batch, caller,
        decision): everything start() would otherwise build per call.

        Keyed on the analysis's shape (the same ``db.query.text``, summary
        and procedure for every text of it), the identity (frozen, compared
        by value) and what the decision says: everything the entry is built
        from; bounded like the other per-statement caches.
        """
        name, static, metric = self._static(analysis, key[1])
        attrs = dict(static)
        if ident is not None:
            attrs.update(ident.span_attributes)
        attrs["guardeddb.decision.action"] = decision.action
        if decision.rule_id is not None:
            attrs["guardeddb.decision.rule"] = decision.rule_id
        counted = (self.driver.system, decision.action, decision.rule_id or "")
        entry = (name, attrs, metric, counted)
        if len(self._ops) >= _ATTR_CACHE_SIZE:
            self._ops.clear()
        self._ops[key] = entry
        return entry


#: What start() caches per operation kind: (statement, batch, identity,
#: decision action, decision rule).
_OpKey = tuple[Analysis, int, Identity | None, str, str | None]
#: (span name, span start attributes, metric attributes, decision counter key)
_OpEntry = tuple[str, dict[str, Any], dict[str, Any], tuple[str, str, str]]
#: ``Operation.masked_counts`` until masking reports: nothing to add to the span.
_UNMASKED = (0, 0)


class Operation:
    """One database operation being recorded: its span, timing, row count,
    masking counts, and the audit result record it owes."""

    __slots__ = ("_audit", "_metric", "_start", "_telemetry", "masked_counts", "rows", "span")

    def __init__(
        self,
        telemetry: Telemetry,
        span: Span | None,
        metric: Mapping[str, Any] | None,
        audit: AuditContext | None = None,
    ):
        self._telemetry = telemetry
        self.span = span
        self._metric = metric
        self._audit = audit
        self.rows = 0
        self.masked_counts = _UNMASKED
        self._start = time.perf_counter()
        if span is not None or audit is not None:
            telemetry.open.add(self)

    def trace_ids(self) -> tuple[str, str] | None:
        """(trace_id, span_id) in hex, for the audit record."""
        if self.span is None:
            return None
        ctx = self.span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    def executed(self) -> None:
        """The driver call returned: record the operation's duration."""
        duration = self._telemetry.duration
        if duration is not None and self._metric is not None:
            duration.record(time.perf_counter() - self._start, self._metric)

    def annotate(self, key: str, value: Any) -> None:
        """One more attribute on the span, if it records."""
        if self.span is not None:
            self.span.set_attribute(key, value)

    def masked(self, columns: int, values: int) -> None:
        """What masking did to the result: counts only, never values. They
        reach the span when it ends, with the row count, in one call (each
        ``set_attribute`` takes the span's lock)."""
        self.masked_counts = (columns, values)

    def _audit_result(self, error: str | None) -> None:
        audit = self._audit
        if audit is not None:
            self._audit = None
            trail, analysis, ident = audit
            trail.result(analysis, ident, self._start, self.rows, self.masked_counts, error)
            if error is None and analysis.kinds & {"commit", "rollback"}:
                trail.transactions += 1  # a COMMIT or ROLLBACK sent as SQL

    def failed(self, exc: BaseException, code: str | None = None) -> None:
        """The operation raised (or was refused): mark the span, record, end.

        Only the class name and status code are recorded: driver messages
        quote values (``Key (email)=(ada@example.com) already exists``).
        """
        etype = error_type(exc)
        duration = self._telemetry.duration
        if duration is not None and self._metric is not None:
            metric = dict(self._metric)
            metric["error.type"] = etype
            if code is not None:
                metric["db.response.status_code"] = code
            duration.record(time.perf_counter() - self._start, metric)
        span = self.span
        if span is not None:
            self.span = None
            attrs: dict[str, Any] = {"error.type": etype}
            if code is not None:
                attrs["db.response.status_code"] = code
            counts = self.masked_counts
            if counts is not _UNMASKED:
                attrs["guardeddb.masked.columns"] = counts[0]
                attrs["guardeddb.masked.values"] = counts[1]
            span.set_attributes(attrs)
            span.set_status(Status(StatusCode.ERROR, etype))
            span.end()
        self._telemetry.open.discard(self)
        self._audit_result(etype)

    def end(self) -> None:
        """The result is consumed or abandoned: record the row count, end the span."""
        span = self.span
        if span is not None:
            self.span = None
            counts = self.masked_counts
            if counts is _UNMASKED:
                span.set_attribute("db.response.returned_rows", self.rows)
            else:
                span.set_attributes(
                    {
                        "guardeddb.masked.columns": counts[0],
                        "guardeddb.masked.values": counts[1],
                        "db.response.returned_rows": self.rows,
                    }
                )
            span.end()
        self._telemetry.open.discard(self)
        if self._audit is not None:  # a call less per query without a trail
            self._audit_result(None)
