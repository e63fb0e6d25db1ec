"""A real OTLP/HTTP receiver on 127.0.0.1, for tests of what reaches Jaeger.

The receiver is a small HTTP server in the test process that decodes what
the real OTLP exporters send (protobuf, gzip or deflate) the way a collector
or Jaeger would, and answers with the protocol's response messages.
"""

from __future__ import annotations

import gzip
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass
class Received:
    """One span as the receiver decoded it, with its resource's attributes."""

    span: Span
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class Receiver:
    """What arrived at the receiver, decoded."""

    endpoint: str
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    encodings: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[Received]:
        with self.lock:
            requests = list(self.traces)
        out: list[Received] = []
        for request in requests:
            for rs in request.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend(Received(s, _attrs(s.attributes), resource) for s in ss.spans)
        return out

    def metric_names(self) -> dict[str, list[Any]]:
        """Metric name -> its data points (any kind), from every request."""
        with self.lock:
            requests = list(self.metrics)
        names: dict[str, list[Any]] = {}
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        points = list(getattr(metric, kind).data_points) if kind else []
                        names.setdefault(metric.name, []).extend(points)
        return names

    def wait_for(self, ready: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing arrived in {timeout} s: {self.spans()!r}")
            time.sleep(0.05)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request: ExportTraceServiceRequest | ExportMetricsServiceRequest
            if self.path == "/v1/traces":
                request, response = ExportTraceServiceRequest(), ExportTraceServiceResponse()
            elif self.path == "/v1/metrics":
                request, response = ExportMetricsServiceRequest(), ExportMetricsServiceResponse()
            else:
                self.send_error(404)
                return
            try:
                request.ParseFromString(body)
            except DecodeError:
                self.send_error(400, "not an OTLP protobuf body")
                return
            with receiver.lock:
                receiver.encodings.append(encoding)
                if isinstance(request, ExportTraceServiceRequest):
                    receiver.traces.append(request)
                else:
                    receiver.metrics.append(request)
            payload = response.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    return Handler


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A real OTLP/HTTP receiver on 127.0.0.1, and the OTEL_* variables that
    point the exporters at it (every other OTEL_* variable cleared)."""
    rec = Receiver("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    rec.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rec.endpoint)
    yield rec
    server.shutdown()
    server.server_close()
    thread.join()
