"""``guardeddb mcp``: a real MCP client session over stdio, on every database.

Each test starts the server as the installed CLI in a subprocess and speaks
to it with the SDK's own ``ClientSession``, so what is tested is what an
agent (Claude Desktop, an IDE) would see.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, Implementation

from guardeddb.integrations.mcp import _jsonable, table_name

from .fix_db import Backend
from .fix_otlp import Receiver
from .test_jwt import AUDIENCE, ISSUER, _jwk, _jwks, _rsa, _token, _write

REVIEW_RULE = "bulk-changes-need-a-human"


@pytest.fixture
def anyio_backend() -> str:
    """The SDK runs on anyio; asyncio is the loop every MCP host uses."""
    return "asyncio"


def _policy(tmp_path: Path, ttl: str = "10m") -> Path:
    """agent-safe, emails masked, an audit file, and bulk changes held for a person."""
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": REVIEW_RULE,
                "match": {
                    "statements": ["update", "delete"],
                    "where": True,  # no WHERE at all stays blocked by agent-safe
                    "affected_rows": {"gt": 1},
                },
                "action": "review",
                "message": "changes to more than one row need a person's approval",
            }
        ],
        "masking": {"rules": [{"columns": ["*.email"], "operator": "email"}]},
        "audit": {"jsonl": str(tmp_path / "audit.jsonl")},
        "approvals": {"store": f"sqlite:///{tmp_path / 'approvals.db'}", "ttl": ttl},
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@asynccontextmanager
async def _served(
    backend: Backend,
    tmp_path: Path,
    *options: str,
    client: str = "test-agent",
    env: dict[str, str] | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialized client session with ``guardeddb mcp`` over stdio."""
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guardeddb.cli", "mcp", "--dsn", backend.url, *options],
        env=env,
    )
    with (
        (tmp_path / "server.stderr").open("a") as errlog,
        anyio.fail_after(60),
    ):
        async with (
            stdio_client(server, errlog=errlog) as (read, write),
            ClientSession(read, write, client_info=Implementation(name=client, version="1.0")) as s,
        ):
            await s.initialize()
            yield s


def _payload(result: CallToolResult) -> dict[str, Any]:
    """The structured result, checked against the JSON text the model reads."""
    payload: dict[str, Any] = result.structured_content
    assert isinstance(payload, dict)
    if not result.is_error:
        assert json.loads(result.content[0].text) == payload  # type: ignore[union-attr]
    return payload


def _text(result: CallToolResult) -> str:
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


def _rows(backend: Backend, sql: str) -> list[tuple[Any, ...]]:
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
    finally:
        raw.close()


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _decisions(tmp_path: Path) -> list[dict[str, Any]]:
    """The decision records of the statements (not of each call's COMMIT)."""
    return [r for r in _audit(tmp_path) if r["event"] == "decision" and r["kinds"] != ["commit"]]


async def _cli(*args: str) -> str:
    """The installed ``guardeddb`` command in its own process, as a person runs it."""
    done = await anyio.run_process([sys.executable, "-m", "guardeddb.cli", *args], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.mark.anyio
async def test_tools_list_and_describe_tables(backend: Backend, table: str, tmp_path: Path) -> None:
    """The four tools are listed; list_tables and describe_table answer from the
    catalog through the guarded connection; an unknown tool is a protocol error."""
    async with _served(backend, tmp_path, "--policy", str(_policy(tmp_path))) as s:
        listed = await s.list_tools()
        assert [t.name for t in listed.tools] == [
            "query",
            "list_tables",
            "describe_table",
            "wait_for_approval",
        ]
        tables = _payload(await s.call_tool("list_tables", {}))
        assert table in [t["name"] for t in tables["tables"]]
        assert tables["truncated"] is False
        described = await s.call_tool("describe_table", {"table": table})
        assert not described.is_error, _text(described)
        columns = _payload(described)["columns"]
        assert [c["name"].lower() for c in columns] == ["id", "name", "email"]
        assert [c["primary_key"] for c in columns] == [True, False, False]
        missing = await s.call_tool("describe_table", {"table": "no_such_table_here"})
        assert missing.is_error and "no table 'no_such_table_here'" in _text(missing)
        with pytest.raises(MCPError, match="unknown tool"):
            await s.call_tool("drop_everything", {})
    catalog = _decisions(tmp_path)
    assert len(catalog) == 3  # the catalog queries were judged and recorded like any other


@pytest.mark.anyio
async def test_describe_table_refuses_injection(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """A table name that is not a plain identifier never reaches the database."""
    async with _served(backend, tmp_path, "--policy", str(_policy(tmp_path))) as s:
        for hostile in (
            f"{table}; DROP TABLE {table}",
            f"{table}' OR '1'='1",
            f'{table}" --',
            f"{table})--",
            "a.b.c",
        ):
            result = await s.call_tool("describe_table", {"table": hostile})
            assert result.is_error
            assert _payload(result)["status"] == "invalid_table_name"
    assert len(_rows(backend, f"SELECT id FROM {table}")) == 3
    assert not (tmp_path / "audit.jsonl").exists()  # nothing was even sent to be judged


def test_table_names_are_plain_identifiers() -> None:
    """table_name accepts table and schema.table, and refuses everything else."""
    assert table_name("users") == (None, "users")
    assert table_name("public.users_2$") == ("public", "users_2$")
    for bad in (
        "",
        ".",
        "users.",
        "a.b.c",
        "1users",
        "users ",
        "users;",
        "users\x00",
        "us`ers",
        "u\u0455ers",  # a Cyrillic lookalike
        "x" * 129,
    ):
        with pytest.raises(ValueError, match="not a table name"):
            table_name(bad)


@pytest.mark.anyio
async def test_query_returns_masked_rows_capped_at_max_rows(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """Rows come back masked by the policy, at most --max-rows, flagged as truncated;
    parameters bind with the driver's placeholder; a write reports its rowcount."""
    policy = str(_policy(tmp_path))
    async with _served(backend, tmp_path, "--policy", policy, "--max-rows", "2") as s:
        result = await s.call_tool("query", {"sql": f"SELECT id, name, email FROM {table}"})
        assert not result.is_error, _text(result)
        payload = _payload(result)
        assert payload["columns"] == ["id", "name", "email"]
        assert payload["rows"] == [[1, "Ada", "a***@example.com"], [2, "Grace", "g***@example.com"]]
        assert payload["truncated"]["rows"] is True and payload["row_count"] == 2
        assert "ada@example.com" not in _text(result)
        one = await s.call_tool(
            "query",
            {"sql": backend.sql(f"SELECT email FROM {table} WHERE id = ?"), "params": [3]},
        )
        assert _payload(one)["rows"] == [["l***@example.com"]]
        assert _payload(one)["truncated"] is False
        update = await s.call_tool(
            "query",
            {
                "sql": backend.sql(f"UPDATE {table} SET name = ? WHERE id = ?"),
                "params": ["Ada L", 1],
            },
        )
        assert _payload(update) == {"status": "ok", "rowcount": 1}
    assert _rows(backend, f"SELECT name FROM {table} WHERE id = 1") == [("Ada L",)]  # committed


@pytest.mark.anyio
async def test_refusals_name_the_rule(backend: Backend, table: str, tmp_path: Path) -> None:
    """DROP and a DELETE without WHERE are tool errors naming the rule and why,
    with no traceback, and nothing reaches the database."""
    async with _served(backend, tmp_path, "--policy", str(_policy(tmp_path))) as s:
        dropped = await s.call_tool("query", {"sql": f"DROP TABLE {table}"})
        assert dropped.is_error
        assert _text(dropped) == (
            "blocked by rule 'no-ddl': schema changes (CREATE, ALTER, DROP, TRUNCATE) "
            f"are not allowed. Instead: {_payload(dropped)['suggestion']}"
        )
        assert _payload(dropped)["rule"] == "no-ddl"
        deleted = await s.call_tool("query", {"sql": f"DELETE FROM {table}"})
        assert deleted.is_error
        assert _text(deleted).startswith("blocked by rule 'write-needs-where': ")
        stacked = await s.call_tool("query", {"sql": f"SELECT 1; DELETE FROM {table} WHERE id = 1"})
        assert stacked.is_error and "'no-stacked-statements'" in _text(stacked)
        bad = await s.call_tool("query", {"sql": "SELECT 1", "params": "1"})
        assert bad.is_error and _payload(bad)["status"] == "invalid_arguments"
        for result in (dropped, deleted, stacked):
            assert "Traceback" not in _text(result)
    assert len(_rows(backend, f"SELECT id FROM {table}")) == 3


@pytest.mark.anyio
async def test_database_errors_are_tool_errors_and_roll_back(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """A driver error is a tool error naming the driver's error class and code,
    no traceback; the transaction is rolled back, so the next call works. The
    identity's results are masked, so the driver's text is withheld (#11)."""
    async with _served(backend, tmp_path, "--policy", str(_policy(tmp_path))) as s:
        missing = await s.call_tool("query", {"sql": "SELECT * FROM no_such_table_xyz"})
        assert missing.is_error
        assert _text(missing).startswith("database error")
        assert "withheld" in _text(missing) and "Traceback" not in _text(missing)
        duplicate = await s.call_tool(
            "query",
            {
                "sql": backend.sql(f"INSERT INTO {table} (id, name, email) VALUES (?, ?, ?)"),
                "params": [1, "Again", "again@example.com"],
            },
        )
        assert duplicate.is_error and _text(duplicate).startswith("database error")
        assert "rolled back" in _text(duplicate)
        after = await s.call_tool("query", {"sql": f"SELECT count(*) FROM {table}"})
        assert not after.is_error, _text(after)  # PostgreSQL: no aborted transaction left
        assert _payload(after)["rows"] == [[3]]
        if backend.name == "postgresql":
            # The error message quotes the value: it must not carry it unmasked.
            leak = await s.call_tool(
                "query", {"sql": f"SELECT CAST(email AS INTEGER) FROM {table} WHERE id = 1"}
            )
            assert leak.is_error and "InvalidTextRepresentation" in _text(leak)
            assert "withheld" in _text(leak) and "22P02" in _text(leak)
            assert "ada@example.com" not in _text(leak)


@pytest.mark.anyio
async def test_identity_from_configuration_is_audited(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """--user, --agent and --roles are the identity every decision is recorded under."""
    options = ["--policy", str(_policy(tmp_path)), "--user", "alice@example.com"]
    options += ["--agent", "support-bot", "--roles", "support, analyst"]
    async with _served(backend, tmp_path, *options, client="ignored-client") as s:
        await s.call_tool("query", {"sql": f"SELECT name FROM {table}"})
        await s.call_tool("query", {"sql": f"DROP TABLE {table}"})
    records = _decisions(tmp_path)
    assert [r["decision"]["action"] for r in records] == ["allow", "block"]
    for record in records:
        assert record["identity"] == {
            "user": "alice@example.com",
            "agent": "support-bot",
            "roles": ["analyst", "support"],
            "session": None,
            "verified": False,
        }
    assert any(r["event"] == "commit" for r in _audit(tmp_path))  # each call its transaction


def _verified_policy(tmp_path: Path) -> Path:
    """The test policy, and no query without a verified identity."""
    path = _policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**policy, "require_identity": "verified"}))
    return path


@pytest.mark.anyio
async def test_verified_identity_from_a_token_file(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """--token-file/--jwks: the token's identity runs the queries (require_identity:
    verified allows it); the file is re-read per call, so an expired token stops
    working with an error the model can read, and a fresh one works again."""
    jwks = _write(tmp_path / "jwks.json", _jwks(_jwk(_rsa(), "rsa1")))
    token = tmp_path / "token"
    token.write_text(_token(_rsa(), sub="carol@example.com", azp="ops-agent"))
    options = ["--policy", str(_verified_policy(tmp_path)), "--token-file", str(token)]
    options += ["--jwks", str(jwks), "--issuer", ISSUER, "--audience", AUDIENCE]
    options += ["--user", "mallory@example.com"]  # asserted: a verified token overrides it
    async with _served(backend, tmp_path, *options, client="ignored-client") as s:
        ok = await s.call_tool("query", {"sql": f"SELECT name FROM {table} WHERE id = 1"})
        assert not ok.is_error and _payload(ok)["rows"] == [["Ada"]]
        token.write_text(_token(_rsa(), exp=int(time.time()) - 60))
        expired = await s.call_tool("query", {"sql": f"SELECT name FROM {table}"})
        assert expired.is_error and "identity token refused" in _text(expired)
        assert "expired" in _text(expired)
        token.write_text(_token(_rsa(), sub="carol@example.com", azp="ops-agent"))
        again = await s.call_tool("query", {"sql": f"SELECT name FROM {table} WHERE id = 2"})
        assert not again.is_error
    decisions = _decisions(tmp_path)
    assert len(decisions) == 2
    for record in decisions:
        assert record["decision"]["action"] == "allow"
        assert record["identity"]["user"] == "carol@example.com"
        assert record["identity"]["agent"] == "ops-agent"
        assert record["identity"]["verified"] is True


@pytest.mark.anyio
async def test_asserted_identity_is_refused_by_a_verified_policy(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """Without a token, --user is only asserted: require_identity: verified blocks it."""
    options = ["--policy", str(_verified_policy(tmp_path)), "--user", "alice@example.com"]
    async with _served(backend, tmp_path, *options) as s:
        refused = await s.call_tool("query", {"sql": f"SELECT name FROM {table}"})
    assert refused.is_error and "require_identity" in _text(refused)


@pytest.mark.parametrize(
    "options",
    [
        ["--jwks", "JWKS"],  # a key set without a token
        ["--token-file", "TOKEN"],  # a token without a key set
        ["--token-file", "TOKEN", "--jwks", "JWKS", "--audience", "someone-else"],
    ],
)
def test_a_wrong_token_setup_fails_before_serving(tmp_path: Path, options: list[str]) -> None:
    """A token that does not verify at start is an error on stderr and exit 2."""
    jwks = _write(tmp_path / "jwks.json", _jwks(_jwk(_rsa(), "rsa1")))
    token = tmp_path / "token"
    token.write_text(_token(_rsa()))
    args = [str(jwks) if o == "JWKS" else str(token) if o == "TOKEN" else o for o in options]
    done = subprocess.run(
        [sys.executable, "-m", "guardeddb.cli", "mcp", "--dsn", "sqlite:///:memory:", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ")


@pytest.mark.anyio
async def test_agent_name_comes_from_client_info(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """Without --agent, the agent is the name the MCP client gave in initialize."""
    options = ["--policy", str(_policy(tmp_path)), "--user", "bob@example.com"]
    async with _served(backend, tmp_path, *options, client="claude-desktop-test") as s:
        await s.call_tool("query", {"sql": f"SELECT id FROM {table}"})
    decision = next(r for r in _audit(tmp_path) if r["event"] == "decision")
    assert decision["identity"]["user"] == "bob@example.com"
    assert decision["identity"]["agent"] == "claude-desktop-test"


@pytest.mark.anyio
async def test_held_change_runs_once_after_cli_approval(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """A bulk UPDATE is held with its request id and measured impact; a person
    approves it with the CLI; wait_for_approval runs it exactly once; the same
    statement again is held again."""
    policy = str(_policy(tmp_path))
    bulk = {"sql": backend.sql(f"UPDATE {table} SET id = id + 10 WHERE id > ?"), "params": [0]}
    async with _served(backend, tmp_path, "--policy", policy, "--user", "alice@example.com") as s:
        held = await s.call_tool("query", bulk)
        assert not held.is_error, _text(held)
        pending = _payload(held)
        assert pending["status"] == "pending_approval"
        assert pending["rule"] == REVIEW_RULE and pending["impact_rows"] == 3
        rid = pending["request_id"]
        assert f"guardeddb approvals --policy {policy} approve {rid}" in pending["instructions"]
        assert _rows(backend, f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,), (3,)]

        still = await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_seconds": 0.3})
        assert not still.is_error and _payload(still)["status"] == "pending_approval"

        out = await _cli("approvals", "--policy", policy, "approve", rid, "--by", "dba@example.com")
        assert f"{rid} approved by dba@example.com" in out
        ran = await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_seconds": 10})
        assert not ran.is_error, _text(ran)
        assert _payload(ran)["rowcount"] == 3
        assert _payload(ran)["approval"] == {"request_id": rid, "by": "dba@example.com"}
        assert _rows(backend, f"SELECT id FROM {table} ORDER BY id") == [(11,), (12,), (13,)]

        again = await s.call_tool("query", bulk)
        assert _payload(again)["status"] == "pending_approval"
        assert _payload(again)["request_id"] != rid
        reused = await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_seconds": 1})
        assert reused.is_error and _payload(reused)["status"] == "unknown_request"
    assert _rows(backend, f"SELECT id FROM {table} ORDER BY id") == [(11,), (12,), (13,)]
    ran_records = [
        r
        for r in _audit(tmp_path)
        if r["event"] == "decision" and r["decision"]["action"] == "allow" and r["impact_rows"]
    ]
    assert len(ran_records) == 1
    assert "approved by dba@example.com" in ran_records[0]["decision"]["message"]
    # The server and the approving CLI wrote to one trail; its chain still holds.
    assert "chain intact" in await _cli("audit", "verify", str(tmp_path / "audit.jsonl"))


@pytest.mark.anyio
async def test_denied_change_is_a_tool_error_naming_who(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """A denial ends wait_for_approval with an error that says who denied it and why."""
    policy = str(_policy(tmp_path))
    bulk = {"sql": f"DELETE FROM {table} WHERE id >= 2"}
    async with _served(backend, tmp_path, "--policy", policy) as s:
        rid = _payload(await s.call_tool("query", bulk))["request_id"]
        await _cli(
            "approvals", "--policy", policy, "deny", rid, "--by", "dba@example.com", "--note", "no"
        )
        denied = await s.call_tool("wait_for_approval", {"request_id": rid})
        assert denied.is_error
        assert _text(denied) == f"request {rid} was denied by dba@example.com: no"
    assert len(_rows(backend, f"SELECT id FROM {table}")) == 3


def test_cells_become_json_values_without_losing_exactness() -> None:
    """Decimals stay exact as text, times become ISO 8601, bytes base64, NaN text."""
    import datetime
    import decimal
    import uuid

    cells = [
        decimal.Decimal("12.50"),
        datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        datetime.date(2024, 5, 1),
        datetime.timedelta(minutes=1),
        b"\x00\xff",
        memoryview(b"ab"),
        uuid.UUID(int=1),
        float("nan"),
        [1, decimal.Decimal("2")],
        {"k": b"v"},
    ]
    converted = [_jsonable(c) for c in cells]
    assert converted == [
        "12.50",
        "2024-05-01T12:30:00+00:00",
        "2024-05-01",
        60.0,
        {"base64": "AP8="},
        {"base64": "YWI="},
        "00000000-0000-0000-0000-000000000001",
        "nan",
        [1, "2"],
        {"k": {"base64": "dg=="}},
    ]
    json.dumps(converted, allow_nan=False)


def _two_rows(tmp_path: Path) -> Backend:
    """A SQLite file with a table ``t`` of two rows, for the approval tests."""
    import sqlite3

    db = tmp_path / "shop.db"
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE t (id INTEGER)")
    setup.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    setup.commit()
    setup.close()
    return Backend("sqlite", f"sqlite:///{db}", lambda: sqlite3.connect(db), "?", "sqlite")


@pytest.mark.anyio
async def test_unanswered_request_expires(tmp_path: Path) -> None:
    """A request nobody decides within its TTL ends wait_for_approval with an
    error, and its statement never runs."""
    backend = _two_rows(tmp_path)
    policy = str(_policy(tmp_path, ttl="1s"))
    async with _served(backend, tmp_path, "--policy", policy) as s:
        held = _payload(await s.call_tool("query", {"sql": "DELETE FROM t WHERE id > 0"}))
        rid = held["request_id"]
        expired = await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_seconds": 5})
        assert expired.is_error
        assert _text(expired) == f"request {rid} expired before anyone approved it"
    assert _rows(backend, "SELECT count(*) FROM t") == [(2,)]


def test_cli_reports_a_bad_policy_without_serving(tmp_path: Path) -> None:
    """A policy that does not load stops the server before it speaks MCP."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules: [{id: x, action: explode}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "guardeddb.cli", "mcp", "--dsn", "sqlite://", "--policy", str(bad)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "bad.yaml" in done.stderr
    assert done.stdout == ""


def test_import_guardeddb_needs_no_mcp_sdk() -> None:
    """guardeddb and its CLI import without loading the MCP SDK."""
    code = (
        "import sys, guardeddb, guardeddb.cli, guardeddb.integrations.mcp; "
        "assert not any(m == 'mcp' or m.startswith('mcp.') for m in sys.modules), 'mcp loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "server",
    [
        pytest.param("postgresql", marks=pytest.mark.pg),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
async def test_a_lost_connection_is_reopened_not_retried(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """When the database drops the server's connection, the call that meets it
    fails (it is not retried: it may have been half done) and the next call
    gets a fresh connection."""
    backend: Backend = request.getfixturevalue(
        "pg_backend" if server == "postgresql" else "mysql_backend"
    )
    who = "SELECT pg_backend_pid()" if server == "postgresql" else "SELECT CONNECTION_ID()"
    async with _served(backend, tmp_path, "--policy", str(_policy(tmp_path))) as s:
        pid = _payload(await s.call_tool("query", {"sql": who}))["rows"][0][0]
        raw = backend.connect_raw()
        if server == "postgresql":
            raw.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
        else:
            raw.cursor().execute(f"KILL {int(pid)}")
        raw.close()
        lost = await s.call_tool("query", {"sql": "SELECT 1"})
        assert lost.is_error and _text(lost).startswith("database error")
        fresh = await s.call_tool("query", {"sql": who})
        assert not fresh.is_error, _text(fresh)
        assert _payload(fresh)["rows"][0][0] != pid


@pytest.mark.anyio
async def test_otlp_export_puts_each_query_in_its_tool_call_trace(
    table: str, backend: Backend, tmp_path: Path, receiver: Receiver
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the SDK's tools/call span and
    guardeddb's query span are exported as one trace, parent and child."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    async with _served(backend, tmp_path, "--agent", "otel-bot", env=env) as s:
        result = await s.call_tool("query", {"sql": f"SELECT name FROM {table}"})
        assert not result.is_error, _text(result)
    receiver.wait_for(lambda: len(receiver.spans()) >= 2)
    spans = [r.span for r in receiver.spans()]
    tool = next(sp for sp in spans if sp.name == "tools/call query")
    query = next(r for r in receiver.spans() if r.span.name == f"SELECT {table}")
    assert query.span.trace_id == tool.trace_id and query.span.parent_span_id == tool.span_id
    assert query.attributes["gen_ai.agent.name"] == "otel-bot"
    assert query.resource["service.name"] == "guardeddb-mcp"
