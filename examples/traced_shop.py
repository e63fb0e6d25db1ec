"""Guarded PostgreSQL traffic exported to Jaeger over OTLP.

Start Jaeger and PostgreSQL (examples/jaeger/docker-compose.yml), then:

    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python examples/traced_shop.py

and open http://localhost:16686 (service ``guardeddb-shop``). ``SHOP_DSN``
picks another database (default: the compose file's PostgreSQL).
"""

from __future__ import annotations

import os

import psycopg

import guardeddb
from guardeddb.otlp import configure

DSN = os.environ.get("SHOP_DSN", "postgresql://postgres:guardeddb@127.0.0.1:55432/shop")


def seed() -> None:
    """The application owns the schema; the agent only gets the guarded connection."""
    with psycopg.connect(DSN) as raw:
        raw.execute(
            "CREATE TABLE IF NOT EXISTS customers "
            "(id INTEGER PRIMARY KEY, name TEXT, email TEXT, card_number TEXT)"
        )
        raw.execute(
            "INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.com', "
            "'4242424242424242') ON CONFLICT (id) DO NOTHING"
        )


def main() -> None:
    # The OTEL_* variables say where; Jaeger takes traces only, so no metrics export.
    providers = configure(default_service_name="guardeddb-shop", metrics_export=False)
    seed()
    conn = guardeddb.connect(
        DSN,
        policy={"version": 1, "extends": ["agent-safe"]},
        tracer_provider=providers.tracer_provider,
        meter_provider=providers.meter_provider,
    )
    with guardeddb.identity(user="alice@example.com", agent="support-bot", roles={"support"}):
        cur = conn.cursor()
        cur.execute("SELECT name, email, card_number FROM customers WHERE id = %s", (1,))
        print("read:", cur.fetchone())  # masked by the detectors
        try:
            cur.execute("DROP TABLE customers")
        except guardeddb.QueryBlocked as exc:
            print("refused:", exc)
        conn.rollback()
        try:
            cur.execute("SELECT nope FROM customers")
        except psycopg.Error as exc:
            print("failed:", type(exc).__name__)
        conn.rollback()
    conn.close()
    providers.shutdown()  # flush the spans to Jaeger
    print("traces sent: open http://localhost:16686 and pick the service guardeddb-shop")


if __name__ == "__main__":
    main()
