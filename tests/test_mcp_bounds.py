"""``guardeddb mcp`` bounds every call (#14): time, size, state, what the
catalog shows, the JSON-RPC edges, and refusals that say what would pass.

Driven as an agent would drive it: the MCP SDK's stdio client (or, for the
wire's edges, raw JSON-RPC lines), against each database. Time bounds are
judged by the server (pg_stat_activity, the processlist), memory by the
server process's peak RSS.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from .fix_db import Backend
from .test_jwt import AUDIENCE, ISSUER, _jwk, _jwks, _rsa, _token, _write
from .test_mcp import _cli, _payload, _rows, _served, _text


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _policy_file(tmp_path: Path, **extra: Any) -> Path:
    """agent-safe with a short statement timeout, emails masked, an audit file."""
    policy: dict[str, Any] = {
        "version": 1,
        "extends": ["agent-safe"],
        "limits": {"statement_timeout": "2s"},
        "masking": {"rules": [{"columns": ["*.email"], "operator": "email"}]},
        "audit": {"jsonl": str(tmp_path / "audit.jsonl")},
        **extra,
    }
    path = tmp_path / "bounds.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def _marker() -> str:
    return f"mcpbounds_{uuid.uuid4().hex[:12]}"


def _runaway(backend: Backend, marker: str) -> str:
    """A read that would run for minutes, named by ``marker`` so the server
    can be asked whether it still runs."""
    if backend.name == "postgresql":
        return (
            f"SELECT count(*) AS {marker} FROM generate_series(1, 1000000) a, "
            "generate_series(1, 100000) b"
        )
    if backend.name == "mysql":
        return f"SELECT sum(a.seq * b.seq) AS {marker} FROM seq_1_to_100000000 a, seq_1_to_1000 b"
    return (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000) "
        f"SELECT count(*) AS {marker} FROM n"
    )


def _running(backend: Backend, marker: str) -> int:
    """How many statements carrying ``marker`` the server is running now."""
    if backend.name == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE %s AND pid <> pg_backend_pid()"
        )
    elif backend.name == "mysql":
        sql = (
            "SELECT count(*) FROM information_schema.processlist WHERE info LIKE %s "
            "AND id <> CONNECTION_ID()"
        )
    else:
        return 0
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(sql, (f"%{marker}%",))
        return int(cur.fetchone()[0])
    finally:
        raw.close()


async def _until(check: Any, seconds: float) -> float:
    """Poll ``check()`` until true; the seconds it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            pytest.fail(f"not within {seconds}s")
        await anyio.sleep(0.05)
    return time.monotonic() - start


# -- time --------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_runaway_query_times_out_on_the_server(backend: Backend, tmp_path: Path) -> None:
    """The policy's statement_timeout bounds the call: status timeout with a
    suggestion, the statement gone from the server, and the next call served."""
    marker = _marker()
    async with _served(backend, tmp_path, "--policy", str(_policy_file(tmp_path))) as s:
        start = time.monotonic()
        result = await s.call_tool("query", {"sql": _runaway(backend, marker)})
        took = time.monotonic() - start
        assert result.is_error, _text(result)
        payload = _payload(result)
        assert payload["status"] == "timeout", payload
        assert "2s" in payload["message"] and "narrow" in payload["suggestion"]
        assert took < 2 + 2.5  # the engine's timeout, or the watchdog one second later
        assert _running(backend, marker) == 0
        after = await s.call_tool("query", {"sql": "SELECT 1"})
        assert not after.is_error, _text(after)


@pytest.mark.anyio
async def test_cancellation_stops_the_query_on_the_server(backend: Backend, tmp_path: Path) -> None:
    """A client that gives up (the SDK sends notifications/cancelled) stops the
    statement on the server, and the next call does not wait for it."""
    marker = _marker()
    policy = _policy_file(tmp_path, limits={"statement_timeout": "120s"})
    async with _served(backend, tmp_path, "--policy", str(policy)) as s:
        with anyio.move_on_after(1.5) as scope:
            await s.call_tool("query", {"sql": _runaway(backend, marker)})
        assert scope.cancelled_caught
        gone = await _until(lambda: _running(backend, marker) == 0, 10)
        start = time.monotonic()
        after = await s.call_tool("query", {"sql": "SELECT 1"})
        assert not after.is_error, _text(after)
        assert time.monotonic() - start < 5
    print(f"{backend.name}: cancelled query gone from the server after {gone:.2f}s")


def _server_cmd(backend: Backend, *options: str) -> list[str]:
    return [sys.executable, "-m", "guardeddb.cli", "mcp", "--dsn", backend.url, *options]


class _Raw:
    """``guardeddb mcp`` spoken to line by line: for what the SDK's client
    would never send, and to watch the process itself."""

    def __init__(self, cmd: list[str], errlog: Path) -> None:
        self.errlog = errlog.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errlog
        )
        self.next_id = 100

    def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_line(json.dumps(message).encode())

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the server closed stdout"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def initialize(self) -> None:
        self.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw-agent", "version": "1"},
                },
            }
        )
        assert "result" in self.recv()
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(self, name: str, arguments: dict[str, Any]) -> int:
        self.next_id += 1
        self.send(
            {
                "jsonrpc": "2.0",
                "id": self.next_id,
                "method": "tools/call",
                "params": {"name": name, "arguments": arguments},
            }
        )
        return self.next_id

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.errlog.close()


@pytest.fixture
def raw_server(backend: Backend, tmp_path: Path) -> Iterator[Any]:
    servers: list[_Raw] = []

    def start(*options: str) -> _Raw:
        server = _Raw(_server_cmd(backend, *options), tmp_path / "server.stderr")
        servers.append(server)
        server.initialize()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["stdin-eof", "sigterm"])
async def test_leaving_cancels_the_running_query_and_exits(
    backend: Backend, tmp_path: Path, raw_server: Any, how: str
) -> None:
    """When the client closes stdin, or the server gets SIGTERM, in the middle
    of a statement: the statement stops on the server and the process exits."""
    marker = _marker()
    policy = _policy_file(tmp_path, limits={"statement_timeout": "120s"})
    server: _Raw = raw_server("--policy", str(policy))
    server.call("query", {"sql": _runaway(backend, marker)})
    if backend.name != "sqlite":
        await _until(lambda: _running(backend, marker) >= 1, 10)  # parallel workers too
    else:
        await anyio.sleep(0.5)
    start = time.monotonic()
    if how == "stdin-eof":
        assert server.proc.stdin is not None
        server.proc.stdin.close()
    else:
        server.proc.send_signal(signal.SIGTERM)
    await _until(lambda: server.proc.poll() is not None, 10)
    exited = time.monotonic() - start
    assert server.proc.returncode == 0
    assert _running(backend, marker) == 0
    print(f"{backend.name} {how}: exited after {exited:.2f}s, query gone")


# -- size --------------------------------------------------------------------


def _many_rows(backend: Backend) -> str:
    if backend.name == "postgresql":
        # In the select list: generate_series in FROM is materialized before the first row.
        return "SELECT g, md5(g::text) AS h FROM (SELECT generate_series(1, 10000000) AS g) s"
    if backend.name == "mysql":
        return "SELECT seq, md5(seq) AS h FROM seq_1_to_10000000"
    return (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000) "
        "SELECT i, hex(randomblob(16)) AS h FROM n"
    )


def _big_cell(backend: Backend) -> str:
    # MariaDB returns NULL for a value over max_allowed_packet (16 MB by default).
    size = 12_000_000 if backend.name == "mysql" else 50_000_000
    if backend.name == "sqlite":
        return f"SELECT printf('%.*c', {size}, 'x') AS big"
    return f"SELECT repeat('x', {size}) AS big"


@pytest.mark.anyio
async def test_ten_million_rows_are_read_in_batches_and_stopped(
    backend: Backend, tmp_path: Path, raw_server: Any
) -> None:
    """10**7 rows: the first --max-rows come back flagged as truncated, fast,
    without the server process loading the result."""
    server: _Raw = raw_server("--policy", str(_policy_file(tmp_path)), "--max-rows", "50")
    before = server.peak_rss_mb()
    start = time.monotonic()
    rid = server.call("query", {"sql": _many_rows(backend)})
    reply = server.recv()
    took = time.monotonic() - start
    assert reply["id"] == rid
    payload = reply["result"]["structuredContent"]
    assert payload["status"] == "ok" and payload["row_count"] == 50
    assert payload["truncated"]["rows"] is True and "LIMIT" in payload["truncated"]["hint"]
    grown = server.peak_rss_mb() - before
    print(f"{backend.name}: 10^7-row query answered in {took:.2f}s, peak RSS +{grown:.0f} MB")
    assert took < 5 and grown < 60


@pytest.mark.anyio
async def test_a_huge_cell_is_cut_and_the_result_says_so(
    backend: Backend, tmp_path: Path, raw_server: Any
) -> None:
    """A 50 MB cell (12 MB on MariaDB) comes back cut to --max-cell-bytes."""
    server: _Raw = raw_server("--policy", str(_policy_file(tmp_path, limits={})))
    before = server.peak_rss_mb()
    start = time.monotonic()
    server.call("query", {"sql": _big_cell(backend)})
    reply = server.recv()
    took = time.monotonic() - start
    payload = reply["result"]["structuredContent"]
    assert payload["status"] == "ok", payload
    cell = payload["rows"][0][0]
    assert len(cell.encode()) < 8 * 1024 + 16 and cell.endswith("[cut]")
    assert payload["truncated"]["cells"] == 1
    grown = server.peak_rss_mb() - before
    print(f"{backend.name}: big cell answered in {took:.2f}s, peak RSS +{grown:.0f} MB")
    assert took < 20 and grown < 400


@pytest.mark.anyio
async def test_the_byte_budget_stops_a_wide_result(backend: Backend, tmp_path: Path) -> None:
    """Rows stop at --max-bytes (as JSON) even under the row cap."""
    if backend.name == "postgresql":
        sql = "SELECT g, repeat('y', 1000) AS w FROM generate_series(1, 1000) g"
    elif backend.name == "mysql":
        sql = "SELECT seq, repeat('y', 1000) AS w FROM seq_1_to_1000"
    else:
        sql = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
            "SELECT i, printf('%.*c', 1000, 'y') AS w FROM n"
        )
    options = ["--policy", str(_policy_file(tmp_path)), "--max-rows", "1000"]
    async with _served(backend, tmp_path, *options, "--max-bytes", "20000") as s:
        payload = _payload(await s.call_tool("query", {"sql": sql}))
    assert payload["truncated"]["bytes"] is True and payload["truncated"]["rows"] is False
    assert 10 <= payload["row_count"] <= 20
    assert len(json.dumps(payload["rows"])) <= 20000


# -- state -------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.pg),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
    indirect=True,
)  # SQLite has no session-level or row locks
@pytest.mark.anyio
async def test_locks_do_not_outlive_a_call(backend: Backend, table: str, tmp_path: Path) -> None:
    """Session-level locks (advisory, GET_LOCK) and row locks (FOR UPDATE)
    are free for a second connection as soon as the call has returned."""
    server = backend.name
    key = int(uuid.uuid4().int % 2**31)
    name = _marker()
    # A policy that allows lock functions (agent-safe refuses them): the
    # server must still release them.
    policy = tmp_path / "locks.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "extends": []}))
    async with _served(backend, tmp_path, "--policy", str(policy)) as s:
        if server == "postgresql":
            took = await s.call_tool("query", {"sql": f"SELECT pg_advisory_lock({key})"})
            assert not took.is_error, _text(took)
            assert _rows(backend, f"SELECT pg_try_advisory_lock({key})") == [(True,)]
        else:
            took = await s.call_tool("query", {"sql": f"SELECT GET_LOCK('{name}', 0)"})
            assert _payload(took)["rows"] == [[1]]
            assert _rows(backend, f"SELECT IS_FREE_LOCK('{name}')") == [(1,)]
        locked = await s.call_tool(
            "query", {"sql": f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE"}
        )
        assert not locked.is_error, _text(locked)
        raw = backend.connect_raw()
        try:
            cur = raw.cursor()
            cur.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE NOWAIT")
            assert cur.fetchall() in ([(1,)], ((1,),))
        finally:
            raw.rollback()
            raw.close()


# -- the catalog -------------------------------------------------------------


@pytest.fixture
def secret_table(backend: Backend, table: str) -> Iterator[str]:
    """A table the policy will hide, with a column default that is a secret."""
    name = f"{table}_keys"
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(
        f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, "
        "api_key VARCHAR(100) DEFAULT 'sk_live_4eC39HqLyjWDarjtT1zdp7dc')"
    )
    raw.commit()
    try:
        yield name
    finally:
        cur = raw.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {name}")
        raw.commit()
        raw.close()


@pytest.mark.anyio
async def test_catalog_tools_show_only_what_the_policy_allows(
    backend: Backend, table: str, secret_table: str, tmp_path: Path
) -> None:
    """A blocked table is absent from list_tables and refused by describe_table;
    a blocked column is not listed; a masked column's default is withheld and
    other defaults pass the detectors."""
    rules = [
        {"id": "no-keys", "match": {"tables": [f"*{secret_table}"]}, "action": "block"},
        {"id": "no-names", "match": {"columns": [f"{table}.name"]}, "action": "block"},
    ]
    policy = _policy_file(tmp_path, rules=rules)
    async with _served(backend, tmp_path, "--policy", str(policy)) as s:
        listed = _payload(await s.call_tool("list_tables", {}))
        names = [t["name"] for t in listed["tables"]]
        assert table in names and secret_table not in names
        assert "not listed" in listed["note"]
        refused = await s.call_tool("describe_table", {"table": secret_table})
        assert refused.is_error and "sk_live" not in _text(refused)
        described = _payload(await s.call_tool("describe_table", {"table": table}))
        assert [c["name"].lower() for c in described.get("columns", [])] == ["id", "email"], (
            described
        )

    # Without the table rule: the default is scanned, never shown raw.
    policy = _policy_file(tmp_path)
    async with _served(backend, tmp_path, "--policy", str(policy)) as s:
        scanned = await s.call_tool("describe_table", {"table": secret_table})
        assert not scanned.is_error, _text(scanned)
        assert "sk_live_4eC39HqLyjWDarjtT1zdp7dc" not in json.dumps(_payload(scanned))


@pytest.mark.anyio
async def test_a_masked_columns_default_is_withheld(backend: Backend, tmp_path: Path) -> None:
    """describe_table does not show the default of a column the policy masks."""
    name = _marker()
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(
        f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, "
        "email VARCHAR(100) DEFAULT 'owner@example.com')"
    )
    raw.commit()
    try:
        async with _served(backend, tmp_path, "--policy", str(_policy_file(tmp_path))) as s:
            described = _payload(await s.call_tool("describe_table", {"table": name}))
        email = next(c for c in described["columns"] if c["name"].lower() == "email")
        assert "withheld" in email["default"]
        assert "owner@example.com" not in json.dumps(described)
    finally:
        cur = raw.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {name}")
        raw.commit()
        raw.close()


# -- the wire ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the wire is the same for all
def test_malformed_lines_get_json_rpc_errors(
    backend: Backend, tmp_path: Path, raw_server: Any
) -> None:
    """Not JSON: -32700; not a JSON-RPC message or a huge id: -32600 with a
    bounded id; the session goes on after each."""
    server: _Raw = raw_server("--policy", str(_policy_file(tmp_path)))
    server.send_line(b'{"jsonrpc": "2.0", "id": 7, "method": "tools/list"')
    assert server.recv() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error: the line is not JSON"},
    }
    server.send_line(b'{"jsonrpc": "2.0", "id": 8, "params": {}}')
    reply = server.recv()
    assert reply["error"]["code"] == -32600 and reply["id"] == 8
    huge = "x" * 100_000
    server.send({"jsonrpc": "2.0", "id": huge, "method": "tools/list"})
    line_reply = server.recv()
    assert line_reply["error"]["code"] == -32600 and line_reply["id"] is None
    assert len(json.dumps(line_reply)) < 300
    server.send({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})
    assert server.recv()["result"]["tools"][0]["name"] == "query"


@pytest.mark.anyio
async def test_arguments_are_checked_strictly(backend: Backend, table: str, tmp_path: Path) -> None:
    """Unknown argument keys are invalid params; an object as a parameter is a
    clear tool error on every database (not the driver's TypeError)."""
    async with _served(backend, tmp_path, "--policy", str(_policy_file(tmp_path))) as s:
        with pytest.raises(MCPError, match="unknown argument") as caught:
            await s.call_tool("query", {"sql": "SELECT 1", "sqll": "DROP TABLE x"})
        assert caught.value.error.code == -32602
        with pytest.raises(MCPError, match="unknown argument"):
            await s.call_tool("list_tables", {"schema": "public"})
        bad = await s.call_tool(
            "query",
            {"sql": backend.sql(f"SELECT id FROM {table} WHERE id = ?"), "params": [{"a": 1}]},
        )
        assert bad.is_error and _payload(bad)["status"] == "invalid_arguments"
        assert "params[0] is an object" in _text(bad) and "TypeError" not in _text(bad)


@pytest.mark.anyio
async def test_approval_waits_are_capped_per_identity(tmp_path: Path) -> None:
    """At most four wait_for_approval calls wait at once for one identity;
    the fifth is told so at once."""
    from .test_mcp import _policy as review_policy
    from .test_mcp import _two_rows

    backend = _two_rows(tmp_path)
    async with _served(backend, tmp_path, "--policy", str(review_policy(tmp_path))) as s:
        rid = _payload(await s.call_tool("query", {"sql": "DELETE FROM t WHERE id > 0"}))[
            "request_id"
        ]
        results: list[Any] = []

        async def wait() -> None:
            args = {"request_id": rid, "timeout_seconds": 3}
            results.append(await s.call_tool("wait_for_approval", args))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(wait)
            await anyio.sleep(0.5)
            start = time.monotonic()
            fifth = await s.call_tool("wait_for_approval", {"request_id": rid})
            assert time.monotonic() - start < 1
            assert fifth.is_error and _payload(fifth)["status"] == "too_many_waiters"
        assert [_payload(r)["status"] for r in results] == ["pending_approval"] * 4


# -- refusals ------------------------------------------------------------------


@pytest.mark.anyio
async def test_each_refusal_suggests_what_would_be_allowed(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """A scripted agent: for each kind of refusal it applies the suggestion
    it was given, and the changed statement is allowed."""
    rules = [
        {
            "id": "select-needs-limit",
            "match": {"statements": ["select"], "limit": False, "tables": [f"*{table}"]},
            "action": "block",
        },
        {"id": "no-inserts", "match": {"statements": ["insert"]}, "action": "block"},
    ]
    policy = _policy_file(tmp_path, rules=rules)
    q = backend.sql
    transcript: list[tuple[str, str, str]] = []
    cases = [
        # (refused, rule, a word the suggestion must carry, the statement applying it)
        (
            f"DELETE FROM {table}",
            "write-needs-where",
            "WHERE",
            (q(f"DELETE FROM {table} WHERE id = ?"), [3]),
        ),
        (
            f"SELECT id FROM {table} LIMIT 5; SELECT 1",
            "no-stacked-statements",
            "one statement",
            (f"SELECT id FROM {table} LIMIT 5", None),
        ),
        (
            f"SELECT name FROM {table}",
            "select-needs-limit",
            "LIMIT",
            (f"SELECT name FROM {table} LIMIT 10", None),
        ),
        (
            f"CREATE TABLE {table}_new (id INTEGER)",
            "no-ddl",
            "existing tables",
            (f"SELECT id FROM {table} LIMIT 1", None),
        ),
        (
            q(f"INSERT INTO {table} (id, name) VALUES (?, ?)"),
            "no-inserts",
            "SELECT",
            (f"SELECT count(*) FROM {table} LIMIT 1", None),
        ),
    ]
    async with _served(backend, tmp_path, "--policy", str(policy)) as s:
        for refused_sql, rule, word, (fixed_sql, params) in cases:
            args: dict[str, Any] = {"sql": refused_sql}
            if "INSERT" in refused_sql:
                args["params"] = [9, "x"]
            refused = await s.call_tool("query", args)
            payload = _payload(refused)
            assert refused.is_error and payload["status"] == "blocked", payload
            assert payload["rule"] == rule
            assert word in payload["suggestion"], payload["suggestion"]
            fixed: dict[str, Any] = {"sql": fixed_sql}
            if params is not None:
                fixed["params"] = params
            allowed = await s.call_tool("query", fixed)
            assert not allowed.is_error, (rule, _text(allowed))
            transcript.append((refused_sql, payload["suggestion"], fixed_sql))
        unparsed = await s.call_tool("query", {"sql": "SELECT FROM WHERE ((("})
        payload = _payload(unparsed)
        assert (
            payload["rule"] == "on_unparsed" and "could not fully understand" in payload["reason"]
        )
        assert "Expected" not in _text(unparsed) and "Line" not in _text(unparsed)
    assert _rows(backend, f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]


# -- identity ------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_approved_statement_does_not_run_under_a_replaced_token(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """#12: the token is read again before an approved statement runs; when
    it now names someone else, the statement does not run at all."""
    from .test_mcp import _verified_policy

    jwks = _write(tmp_path / "jwks.json", _jwks(_jwk(_rsa(), "rsa1")))
    token = tmp_path / "token"
    token.write_text(_token(_rsa(), sub="carol@example.com", azp="ops-agent"))
    policy = str(_verified_policy(tmp_path))
    options = ["--policy", policy, "--token-file", str(token)]
    options += ["--jwks", str(jwks), "--issuer", ISSUER, "--audience", AUDIENCE]
    bulk = {"sql": backend.sql(f"UPDATE {table} SET name = ? WHERE id > ?"), "params": ["z", 0]}
    async with _served(backend, tmp_path, *options) as s:
        held = _payload(await s.call_tool("query", bulk))
        assert held["status"] == "pending_approval", held
        rid = held["request_id"]
        await _cli("approvals", "--policy", policy, "approve", rid, "--by", "dba@example.com")
        token.write_text(_token(_rsa(), sub="mallory@example.com", azp="ops-agent"))
        refused = await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_seconds": 5})
        assert refused.is_error and _payload(refused)["status"] == "identity_changed"
        token.write_text(_token(_rsa(), exp=int(time.time()) - 60))
        expired = await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_seconds": 5})
        assert expired.is_error and _payload(expired)["status"] == "identity_refused"
    assert _rows(backend, f"SELECT name FROM {table} ORDER BY id") == [
        ("Ada",),
        ("Grace",),
        ("Linus",),
    ]


@pytest.mark.parametrize("preset_name", ["agent-safe", "readonly"])
def test_every_preset_rule_has_its_own_suggestion(preset_name: str) -> None:
    """Each rule of the presets, and each refusal guardeddb makes itself,
    gets a suggestion of its own, not the generic fallback."""
    from guardeddb.integrations._mcp_advice import suggestion
    from guardeddb.policy.decision import Decision
    from guardeddb.policy.loader import preset

    generic = "change the statement; do not send it again as it is"
    policy = preset(preset_name)
    own = [
        "on_unparsed",
        "read-only-functions",
        "masking-side-channel",
        "masking-copy",
        "parameter-placement",
        "kernel",
        "require_identity",
    ]
    seen = set()
    for rule_id in [r.id for r in policy.rules] + own:
        text = suggestion(Decision("block", rule_id, "x"), policy)
        assert text and text != generic, rule_id
        seen.add(text)
    assert len(seen) >= len(policy.rules)  # not one sentence for every rule


@pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
@pytest.mark.anyio
async def test_session_state_does_not_outlive_a_call(backend: Backend, tmp_path: Path) -> None:
    """A setting and a temporary table made in one call are gone in the next
    (DISCARD ALL), while guardeddb's own session state, the policy's
    statement timeout and the read-only mode of a read-only policy, is back."""
    for extends, read_only in (([], "off"), (["readonly"], "on")):
        policy = tmp_path / "state.yaml"
        limits = {"statement_timeout": "7s"}
        policy.write_text(yaml.safe_dump({"version": 1, "extends": extends, "limits": limits}))
        async with _served(backend, tmp_path, "--policy", str(policy)) as s:
            made = ["SET application_name = 'left-behind'"]
            if not extends:
                made.append("CREATE TEMP TABLE left_behind (x int)")
            for sql in made:
                done = await s.call_tool("query", {"sql": sql})
                assert not done.is_error, _text(done)
            shown = await s.call_tool(
                "query",
                {
                    "sql": "SELECT current_setting('application_name'), "
                    "to_regclass('pg_temp.left_behind') IS NULL, "
                    "current_setting('statement_timeout'), "
                    "current_setting('default_transaction_read_only')"
                },
            )
            assert _payload(shown)["rows"][0][1:] == [True, "7s", read_only], _text(shown)
            assert _payload(shown)["rows"][0][0] != "left-behind"
