"""SDK tracer and meter providers exporting over OTLP/HTTP, set by ``OTEL_*`` variables.

For the CLI and for applications that want guardeddb's spans and metrics in
Jaeger (or any OTLP collector) without writing the SDK setup themselves::

    providers = guardeddb.otlp.configure(default_service_name="shop", set_global=True)

Where to and how come from the standard variables, read by the SDK and the
exporters themselves: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (Jaeger: port 4318),
``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``, ``..._HEADERS``,
``..._COMPRESSION``, ``..._TIMEOUT``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``.
Needs the SDK and the OTLP/HTTP exporter (the ``otlp`` extra); the library
itself imports only the API, so nothing imports this module but its users.
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"guardeddb.otlp needs the OpenTelemetry SDK and OTLP exporter: "
        f"pip install 'guardeddb[otlp]' ({exc})"
    ) from exc

__all__ = ["OtlpProviders", "configure"]


@dataclass(frozen=True, slots=True)
class OtlpProviders:
    """The providers ``configure()`` made; pass them to ``guardeddb.connect`` or
    ``guardeddb.instrument``, and flush or shut them down before exiting."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send every finished span and the current metrics now."""
        spans = self.tracer_provider.force_flush(timeout_millis)
        return self.meter_provider.force_flush(timeout_millis) and spans

    def shutdown(self) -> None:
        """Flush, then stop the exporters' threads."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def configure(
    *,
    default_service_name: str | None = None,
    export: bool = True,
    metrics_export: bool = True,
    set_global: bool = False,
) -> OtlpProviders:
    """Build SDK providers whose spans and metrics go out over OTLP/HTTP.

    ``default_service_name`` names the service only when neither
    ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` does. ``export=False``
    builds the same providers with no exporter (for a caller that adds its
    own processors); ``metrics_export=False`` only for metrics, which saves
    the periodic reader's thread. ``set_global`` installs them as
    OpenTelemetry's global providers (possible once per process).
    """
    resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if default_service_name and str(resource.attributes.get(SERVICE_NAME, "")).startswith(
        "unknown_service"
    ):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    if export:
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if metrics_export:
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return OtlpProviders(tracer_provider, meter_provider)
