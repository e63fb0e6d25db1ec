"""Helpers for users' own tests (and the demo): capture guardeddb's spans.

Needs ``opentelemetry-sdk`` (the ``otlp``, ``cli`` or ``test`` extras).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .identity import identity as as_identity

__all__ = ["SpanCapture", "as_identity", "capture_spans"]


@dataclass
class SpanCapture:
    """A tracer provider to pass to ``guardeddb.connect`` and the spans it saw."""

    tracer_provider: TracerProvider
    exporter: InMemorySpanExporter

    @property
    def spans(self) -> list[ReadableSpan]:
        """Finished spans, oldest first."""
        return list(self.exporter.get_finished_spans())

    def attributes(self) -> list[dict[str, Any]]:
        """Each finished span's attributes, as plain dicts."""
        return [dict(s.attributes or {}) for s in self.spans]


@contextmanager
def capture_spans() -> Iterator[SpanCapture]:
    """Record spans in memory, synchronously, for assertions::

    with capture_spans() as cap:
        conn = guardeddb.connect("sqlite://", tracer_provider=cap.tracer_provider)
        conn.execute("SELECT 1").fetchall()
    assert cap.spans[0].name == "SELECT"
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield SpanCapture(provider, exporter)
    finally:
        provider.shutdown()
