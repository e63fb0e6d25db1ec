"""The examples in examples/ run as a user would run them, and say what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .fix_db import Backend
from .fix_otlp import Receiver

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str) -> str:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], check=True, capture_output=True, text=True
    ).stdout


def test_quickstart_example_runs() -> None:
    """examples/quickstart.py shows a masked read and a blocked DROP."""
    out = _run("quickstart.py")
    assert "('Ada Lovelace', 'a***@example.com')" in out
    assert "blocked by rule 'no-ddl'" in out
    assert "ada@example.com" not in out


def test_agent_tool_example_answers_masked_and_refuses_with_the_rule() -> None:
    """The agent tool returns masked rows, and a refusal the model can act on."""
    out = _run("agent_tool.py")
    results = [
        json.loads(line.split("tool  -> model: ", 1)[1])
        for line in out.splitlines()
        if line.startswith("tool  -> model: ")
    ]
    assert results[0] == {
        "columns": ["name", "email"],
        "rows": [["Ada Lovelace", "a***@example.com"]],
    }
    assert results[1]["rule"] == "read-only" and "only reads are allowed" in results[1]["error"]
    assert results[2]["rows"] == [[1]]  # the DELETE never ran
    assert "ada@example.com" not in out


def test_traced_shop_example_sends_its_spans_over_otlp(
    pg_backend: Backend, receiver: Receiver
) -> None:
    """examples/traced_shop.py (what the Jaeger compose file is for) sends a masked
    read, a refused DROP and a failed query to the OTLP endpoint of the OTEL_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(SHOP_DSN=pg_backend.url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    try:
        out = subprocess.run(
            [sys.executable, str(EXAMPLES / "traced_shop.py")],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        ).stdout
    finally:
        raw = pg_backend.connect_raw()
        raw.execute("DROP TABLE IF EXISTS customers")
        raw.commit()
        raw.close()
    assert "read: ('Ada Lovelace', 'a***@example.com', " in out and "4242424242424242" not in out
    assert "refused: query blocked by rule 'no-ddl'" in out
    spans = {r.span.name: r for r in receiver.spans()}
    assert set(spans) == {"SELECT customers", "DROP TABLE customers"}
    assert {r.resource["service.name"] for r in receiver.spans()} == {"guardeddb-shop"}
    assert spans["DROP TABLE customers"].attributes["error.type"] == "guardeddb.QueryBlocked"
    assert len(receiver.spans()) == 3  # the SELECT that failed in the database too
    failed = [
        r
        for r in receiver.spans()
        if str(r.attributes.get("error.type")).endswith("UndefinedColumn")
    ]
    assert failed and failed[0].attributes["db.response.status_code"] == "42703"


def test_jaeger_compose_file_exposes_the_ui_and_otlp_http() -> None:
    """The compose file (not runnable here: no Docker engine) names Jaeger's UI and
    OTLP/HTTP ports and the PostgreSQL the traced example connects to."""
    compose = yaml.safe_load((EXAMPLES / "jaeger" / "docker-compose.yml").read_text())
    jaeger, postgres = compose["services"]["jaeger"], compose["services"]["postgres"]
    assert jaeger["image"].startswith("cr.jaegertracing.io/jaegertracing/jaeger:2.")
    assert {"16686:16686", "4318:4318"} <= set(jaeger["ports"])
    assert postgres["ports"] == ["55432:5432"]
    source = (EXAMPLES / "traced_shop.py").read_text()
    env = postgres["environment"]
    assert f"postgres:{env['POSTGRES_PASSWORD']}@127.0.0.1:55432/{env['POSTGRES_DB']}" in source
