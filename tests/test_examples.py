"""The examples in examples/ run as a user would run them, and say what they promise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import guardeddb

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


# --- Migrations and frameworks (README: "Migrations, pandas and LangChain") ---


def sqlalchemy_url(backend: Backend) -> str:
    """The SQLAlchemy URL of a test database: the drivers guardeddb guards."""
    scheme = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
    return scheme[backend.name] + backend.url[backend.url.index("://") :]


@pytest.fixture
def pg_schema(pg_backend: Backend) -> Iterator[str]:
    """An empty schema of this test's own, dropped after."""
    name = f"gdb_edges_{uuid.uuid4().hex[:10]}"
    raw = pg_backend.connect_raw()
    raw.autocommit = True
    raw.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        raw.execute("SET lock_timeout = '10s'")
        raw.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        raw.close()


def test_alembic_migrates_as_its_own_identity(
    pg_backend: Backend, pg_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/alembic: ``alembic upgrade head`` through a guarded engine runs
    the DDL as the ``migrations`` identity, which migrations.yaml lets change
    the schema; an agent on the same policy still may not, and downgrade works."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ProgrammingError

    from guardeddb.integrations.sqlalchemy import guard_engine

    shutil.copytree(EXAMPLES / "alembic", tmp_path / "alembic")
    url = f"{sqlalchemy_url(pg_backend)}?options=-csearch_path%3D{pg_schema}"
    monkeypatch.setenv("DATABASE_URL", url)
    audit = tmp_path / "audit.jsonl"
    policy = tmp_path / "alembic" / "migrations.yaml"
    policy.write_text(policy.read_text() + f"audit: {{jsonl: {audit}}}\n")
    config = Config()
    config.set_main_option("script_location", str(tmp_path / "alembic"))

    command.upgrade(config, "head")

    rows = pg_backend.rows(f"SELECT id, name, email, phone FROM {pg_schema}.customers")
    assert rows == [(1, "Ada Lovelace", "ada@example.com", "+44 20 7946 0958")]
    assert pg_backend.rows(f"SELECT version_num FROM {pg_schema}.alembic_version") == [("0002",)]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    ddl = [r for r in records if r["event"] == "decision" and "create" in r["kinds"]]
    assert ddl and {r["decision"]["rule"] for r in ddl} == {"migrations-change-the-schema"}
    assert {r["identity"]["user"] for r in ddl} == {"migrations"}

    engine = guard_engine(create_engine(url), policy=policy)
    try:
        with guardeddb.identity(user="alice@example.com", agent="support-bot"):
            with engine.connect() as conn, pytest.raises(ProgrammingError) as info:
                conn.execute(text("DROP TABLE customers"))
            assert isinstance(info.value.orig, guardeddb.QueryBlocked)
            assert info.value.orig.decision.rule_id == "no-ddl"
    finally:
        engine.dispose()

    command.downgrade(config, "base")
    left = pg_backend.rows(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{pg_schema}'"
    )
    assert left == [("alembic_version",)]


_MASKING: dict[str, Any] = {
    "version": 1,
    "extends": ["agent-safe"],
    "masking": {"rules": [{"columns": ["*.email"], "operator": "email"}]},
}


def test_pandas_reads_masked_and_appends_through_a_guarded_engine(
    backend: Backend, table: str
) -> None:
    """pandas ``read_sql`` over a guarded engine returns masked cells; ``to_sql``
    appends to an existing table; creating a table is DDL, refused under agent-safe."""
    import pandas as pd
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ProgrammingError

    from guardeddb.integrations.sqlalchemy import guard_engine

    engine = guard_engine(create_engine(sqlalchemy_url(backend)), policy=_MASKING)
    try:
        with guardeddb.identity(user="analyst@example.com", agent="notebook"):
            df = pd.read_sql(f"SELECT id, name, email FROM {table} ORDER BY id", engine)
            assert df["email"].tolist() == [
                "a***@example.com",
                "g***@example.com",
                "l***@example.com",
            ]
            new = pd.DataFrame({"id": [4], "name": ["Edsger"], "email": ["edsger@example.com"]})
            # The rows written, as the driver counts them (psycopg: -1, unknown).
            written = new.to_sql(table, engine, if_exists="append", index=False)
            assert written == (-1 if backend.name == "postgresql" else 1)
            with pytest.raises(ProgrammingError) as info:
                new.to_sql(f"{table}_copy", engine, index=False)
            assert isinstance(info.value.orig, guardeddb.QueryBlocked)
            assert info.value.orig.decision.rule_id == "no-ddl"
    finally:
        engine.dispose()
    rows = backend.rows(f"SELECT name, email FROM {table} WHERE id = 4")
    assert rows == [("Edsger", "edsger@example.com")]


def test_langchain_sql_toolkit_over_a_guarded_engine(backend: Backend, table: str) -> None:
    """LangChain's SQLDatabase and its agent toolkit over a guarded engine: the
    tools an agent calls list and describe the table, answer with masked rows,
    and hand a refusal back as text the model can act on; the DROP never ran."""
    with warnings.catch_warnings():
        # langchain-community warns on import that it is being split up.
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.agent_toolkits import SQLDatabaseToolkit
        from langchain_community.utilities import SQLDatabase
    from langchain_core.language_models.fake import FakeListLLM
    from sqlalchemy import create_engine

    from guardeddb.integrations.sqlalchemy import guard_engine

    engine = guard_engine(create_engine(sqlalchemy_url(backend)), policy=_MASKING)
    try:
        with guardeddb.identity(user="alice@example.com", agent="langchain-sql-agent"):
            db = SQLDatabase(engine, include_tables=[table], sample_rows_in_table_info=0)
            tools = {
                t.name: t
                for t in SQLDatabaseToolkit(db=db, llm=FakeListLLM(responses=["ok"])).get_tools()
            }
            assert tools["sql_db_list_tables"].invoke("") == table
            assert "email" in tools["sql_db_schema"].invoke(table)
            answer = tools["sql_db_query"].invoke(f"SELECT email FROM {table} WHERE id = 1")
            assert "a***@example.com" in answer and "ada@example.com" not in answer
            refused = tools["sql_db_query"].invoke(f"DROP TABLE {table}")
            assert refused.startswith("Error: ") and "no-ddl" in refused
    finally:
        engine.dispose()
    assert backend.rows(f"SELECT count(*) FROM {table}") == [(3,)]  # the DROP never ran
