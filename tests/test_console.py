"""The console over HTTP: sign-in, CSRF, four eyes, approvers, and an
approval that lets a waiting guarded connection run its statement once."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the console extra is not installed")
from starlette.testclient import TestClient

import guardeddb
from guardeddb import ApprovalRequired, Identity
from guardeddb.approvals import ApprovalStore
from guardeddb.cli import main
from guardeddb.console import create_app
from guardeddb.console.auth import Auth
from guardeddb.errors import PolicyError

from .fix_db import PG_DSN, Backend

AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))
TOKEN = "console-test-token-" + uuid.uuid4().hex
BULK = "UPDATE {table} SET name = name || '!' WHERE id > 0"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def policy_dict(tmp_path: Path, audit: dict[str, Any]) -> dict[str, Any]:
    """Bulk changes wait for a person; dba may decide; a trail and a store."""
    return {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": "bulk-needs-a-human",
                "match": {"statements": ["update"], "where": True, "affected_rows": {"gt": 1}},
                "action": "review",
                "message": "changes to more than one row wait for a person",
            }
        ],
        "approvals": {
            "store": f"sqlite:///{tmp_path}/approvals.db",
            "ttl": "1h",
            "approvers": {"roles": ["dba"], "users": ["carol@example.com"]},
        },
        "audit": audit,
    }


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Backend, str, dict[str, Any]]]:
    """A three-row table on SQLite (JSONL trail) or PostgreSQL (PostgreSQL trail)."""
    table = f"console_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        path = tmp_path / "shop.db"
        backend = Backend(
            "sqlite", f"sqlite:///{path}", lambda: sqlite3.connect(path), "?", "sqlite"
        )
        audit: dict[str, Any] = {"jsonl": str(tmp_path / "audit.jsonl")}
    else:
        backend = request.getfixturevalue("pg_backend")
        audit = {"postgresql": PG_DSN, "stream": table}
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(100))")
    cur.executemany(
        backend.sql(f"INSERT INTO {table} (id, name) VALUES (?, ?)"),
        [(1, "Ada"), (2, "Grace"), (3, "Linus")],
    )
    raw.commit()
    try:
        yield backend, table, policy_dict(tmp_path, audit)
    finally:
        raw.rollback()
        cur = raw.cursor()
        cur.execute(f"DROP TABLE {table}")
        if "postgresql" in audit:  # the test's own stream of the shared trail tables
            for name in ("guardeddb_audit", "guardeddb_audit_head"):
                cur.execute(f"DELETE FROM {name} WHERE stream = %s", (table,))
        raw.commit()
        raw.close()


class AgentThread(threading.Thread):
    """An agent's guarded connection: holds a bulk UPDATE, waits for the
    decision, retries it once, then tries it a second time."""

    def __init__(self, url: str, policy: Any, sql: str) -> None:
        super().__init__(daemon=True)
        self.url, self.policy, self.sql = url, policy, sql
        self.held = threading.Event()
        self.request_id: str | None = None
        self.outcomes: list[str] = []

    def _try(self, conn: Any) -> str:
        cur = conn.cursor()
        try:
            cur.execute(self.sql)
        except ApprovalRequired as held:
            conn.rollback()
            self.request_id = self.request_id or held.request_id
            return "held"
        conn.commit()
        return "ran"

    def run(self) -> None:
        conn = guardeddb.connect(self.url, policy=self.policy)
        try:
            with guardeddb.identity(AGENT):
                self.outcomes.append(self._try(conn))
                self.held.set()
                store = ApprovalStore(str(self.policy.approvals["store"]))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    found = store.get(str(self.request_id))
                    if found is None or found.status != "pending":
                        break
                    time.sleep(0.05)
                self.outcomes.append(self._try(conn))
                self.outcomes.append(self._try(conn))
        finally:
            conn.close()


def sign_in(client: TestClient, token: str = TOKEN) -> Any:
    page = client.get("/login")
    csrf = CSRF.search(page.text)
    assert csrf is not None
    return client.post(
        "/login", data={"token": token, "csrf": csrf.group(1)}, follow_redirects=False
    )


def csrf_of(client: TestClient) -> str:
    found = CSRF.search(client.get("/approvals").text)
    assert found is not None
    return found.group(1)


def app_for(policy: Any, user: str, roles: set[str]) -> TestClient:
    auth = Auth(token=TOKEN, operator=Identity(user=user, roles=frozenset(roles)))
    return TestClient(create_app(policy, auth))


def names(backend: Backend, table: str) -> list[str]:
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"SELECT name FROM {table} ORDER BY id")
    out = [str(r[0]) for r in cur.fetchall()]
    raw.close()
    return out


@pytest.fixture
def held(
    db: tuple[Backend, str, dict[str, Any]],
) -> Iterator[tuple[Backend, str, Any, AgentThread]]:
    backend, table, raw_policy = db
    policy = guardeddb.load_policy(raw_policy)
    agent = AgentThread(backend.url, policy, BULK.format(table=table))
    agent.start()
    assert agent.held.wait(30) and agent.outcomes == ["held"]
    yield backend, table, policy, agent
    if agent.is_alive():  # let it go: deny what is still pending
        store = ApprovalStore(str(policy.approvals["store"]))
        store.decide(str(agent.request_id), False, "teardown", None)
        agent.join(10)


def test_every_page_needs_a_session_and_sends_security_headers(tmp_path: Path) -> None:
    policy = guardeddb.load_policy(policy_dict(tmp_path, {"jsonl": str(tmp_path / "a.jsonl")}))
    client = app_for(policy, "dba@example.com", {"dba"})
    for path in ("/approvals", "/audit", "/activity", "/"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login"
    refused = client.post("/approvals/abc", data={"decision": "approve", "note": "x"})
    assert refused.status_code == 401
    page = client.get("/login")
    headers = page.headers
    assert "script-src" not in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert "<script" not in page.text


def test_sign_in_needs_the_token_and_the_forms_csrf(tmp_path: Path) -> None:
    policy = guardeddb.load_policy(policy_dict(tmp_path, {"jsonl": str(tmp_path / "a.jsonl")}))
    client = app_for(policy, "dba@example.com", {"dba"})
    client.get("/login")
    no_csrf = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert no_csrf.status_code == 403 and "guardeddb_session" not in no_csrf.cookies
    wrong = sign_in(client, "not-the-token-at-all")
    assert wrong.status_code == 401 and "guardeddb_session" not in wrong.cookies
    assert client.get("/approvals", follow_redirects=False).status_code == 303
    ok = sign_in(client)
    assert ok.status_code == 303 and ok.headers["location"] == "/approvals"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert client.get("/approvals").status_code == 200
    forged = TestClient(client.app, cookies={"guardeddb_session": "abc.def"})
    assert forged.get("/approvals", follow_redirects=False).status_code == 303
    # Signing out ends the session on the server, not only in the browser.
    session = client.cookies["guardeddb_session"]
    assert client.post("/logout", data={"csrf": csrf_of(client)}).status_code == 200
    replay = TestClient(client.app, cookies={"guardeddb_session": session})
    assert replay.get("/approvals", follow_redirects=False).status_code == 303


def test_decisions_need_the_csrf_token(held: tuple[Backend, str, Any, AgentThread]) -> None:
    backend, table, policy, agent = held
    client = app_for(policy, "dba@example.com", {"dba"})
    sign_in(client)
    for data in (
        {"decision": "approve", "note": "ok"},
        {"decision": "approve", "note": "ok", "csrf": "x"},
    ):
        refused = client.post(f"/approvals/{agent.request_id}", data=data)
        assert refused.status_code == 403
    store = ApprovalStore(str(policy.approvals["store"]))
    assert store.get(str(agent.request_id)).status == "pending"  # type: ignore[union-attr]
    assert names(backend, table) == ["Ada", "Grace", "Linus"]


def test_nobody_approves_their_own_request(held: tuple[Backend, str, Any, AgentThread]) -> None:
    backend, table, policy, agent = held
    client = app_for(policy, "Alice@Example.com", {"dba"})  # alice is a dba too
    sign_in(client)
    page = client.get("/approvals")
    assert "Your own request" in page.text and 'value="approve"' not in page.text
    refused = client.post(
        f"/approvals/{agent.request_id}",
        data={"decision": "approve", "note": "mine", "csrf": csrf_of(client)},
    )
    assert refused.status_code == 403 and "own request" in refused.text
    store = ApprovalStore(str(policy.approvals["store"]))
    assert store.get(str(agent.request_id)).status == "pending"  # type: ignore[union-attr]
    assert names(backend, table) == ["Ada", "Grace", "Linus"]


def test_only_the_policys_approvers_decide_or_see_the_sql(
    held: tuple[Backend, str, Any, AgentThread],
) -> None:
    backend, table, policy, agent = held
    client = app_for(policy, "bob@example.com", {"support", "auditor"})
    sign_in(client)
    page = client.get("/approvals")
    assert str(agent.request_id) in page.text and "bulk-needs-a-human" in page.text
    assert table not in page.text  # the statement is shown to approvers only
    refused = client.post(
        f"/approvals/{agent.request_id}",
        data={"decision": "approve", "note": "looks fine", "csrf": csrf_of(client)},
    )
    assert refused.status_code == 403 and "not an approver" in refused.text
    store = ApprovalStore(str(policy.approvals["store"]))
    assert store.get(str(agent.request_id)).status == "pending"  # type: ignore[union-attr]
    assert names(backend, table) == ["Ada", "Grace", "Linus"]


def test_approved_in_the_console_the_statement_runs_exactly_once(
    held: tuple[Backend, str, Any, AgentThread],
) -> None:
    backend, table, policy, agent = held
    client = app_for(policy, "dba@example.com", {"dba"})
    sign_in(client)
    page = client.get("/approvals")
    section = page.text.split(f'id="request-{agent.request_id}"')[1]
    assert "alice@example.com" in section and "support-bot" in section
    assert f"UPDATE {table} SET name = name || &#39;!&#39; WHERE id &gt; 0" in section
    assert re.search(r"a dry run counts <strong>3</strong> rows", section)
    decided = client.post(
        f"/approvals/{agent.request_id}",
        data={"decision": "approve", "note": "three names, checked", "csrf": csrf_of(client)},
    )
    assert decided.status_code == 200, decided.text
    agent.join(30)
    assert agent.outcomes == ["held", "ran", "held"]
    assert names(backend, table) == ["Ada!", "Grace!", "Linus!"]  # once, not twice
    again = client.post(
        f"/approvals/{agent.request_id}",
        data={"decision": "approve", "note": "again", "csrf": csrf_of(client)},
    )
    assert again.status_code == 403  # no longer pending
    audit = client.get("/audit")
    assert "Hash chain intact" in audit.text
    assert "bulk-needs-a-human" in audit.text and "review" in audit.text
    assert f"approval of <code>{agent.request_id}</code>" in audit.text
    assert "dba@example.com" in audit.text and "three names, checked" in audit.text
    only = client.get("/audit", params={"action": "approval"})
    assert only.text.count('class="event-approval"') == 1
    assert 'class="event-decision"' not in only.text
    activity = client.get("/activity")
    assert "<svg" in activity.text and "support-bot" in activity.text
    assert "held 2" in activity.text  # the first attempt and the one after it ran


def test_the_cli_takes_the_same_path(
    held: tuple[Backend, str, Any, AgentThread], tmp_path: Path
) -> None:
    """`guardeddb approvals approve` refuses the requester too."""
    _backend, _table, policy, agent = held
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy_dict(tmp_path, dict(policy.audit))))
    rid = str(agent.request_id)
    assert main(["approvals", "--policy", str(path), "approve", rid, "--by", AGENT.user or ""]) == 1
    store = ApprovalStore(str(policy.approvals["store"]))
    assert store.get(rid).status == "pending"  # type: ignore[union-attr]


def test_the_banner_sees_an_edited_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    raw_policy = policy_dict(tmp_path, {"jsonl": str(audit)})
    policy = guardeddb.load_policy(raw_policy)
    db = tmp_path / "t.db"
    conn = guardeddb.connect(f"sqlite:///{db}", policy=policy)
    with guardeddb.identity(AGENT):
        for _ in range(3):
            conn.cursor().execute("SELECT 1").fetchall()
    client = app_for(policy, "dba@example.com", {"dba"})
    sign_in(client)
    verified = re.compile(r"Hash chain intact: (\d+) of (\d+) records verified")
    first = verified.search(client.get("/audit").text)
    assert first is not None and first.group(1) == first.group(2)
    with guardeddb.identity(AGENT):
        conn.cursor().execute("SELECT 2").fetchall()
    conn.close()
    later = verified.search(client.get("/audit").text)
    assert later is not None and later.group(1) == later.group(2)
    assert int(later.group(1)) > int(first.group(1))  # the appended records, verified
    lines = audit.read_text().splitlines()
    edited = json.loads(lines[-2])
    edited["ts"] = "2020-01-01T00:00:00+00:00"  # an earlier time, the hash left as it was
    lines[-2] = json.dumps(edited)
    audit.write_text("\n".join(lines) + "\n")
    assert "Hash chain broken" in client.get("/audit").text


@pytest.mark.parametrize(
    ("approvers", "key", "says"),
    [
        ("[dba]", "approvals.approvers", "must be a mapping"),
        ("{}", "approvals.approvers", "must name roles or users"),
        ("{groups: [dba]}", "approvals.approvers.groups", "unknown key 'groups'"),
        ("{roles: [1]}", "approvals.approvers.roles[0]", "non-empty string"),
    ],
)
def test_approvers_are_validated(tmp_path: Path, approvers: str, key: str, says: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\napprovals:\n  store: sqlite:///a.db\n  approvers: " + approvers + "\n"
    )
    with pytest.raises(PolicyError) as err:
        guardeddb.load_policy(str(path))
    assert err.value.source == str(path) and err.value.line == 4
    assert err.value.key == key and says in str(err.value)


def test_demo_console_waits_for_the_decision_made_in_the_console(tmp_path: Path) -> None:
    """`guardeddb demo --console`: the held bulk change waits until someone
    approves it in the console, then the agent's retry runs once."""
    import os
    import subprocess
    import sys

    import httpx

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "GUARDEDDB_CONSOLE_TOKEN": TOKEN}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    command = ["demo", "--console", "--port", "0", "--dir", str(tmp_path / "demo")]
    demo = subprocess.Popen(
        [sys.executable, "-m", "guardeddb.cli", *command],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert demo.stdout is not None
    try:
        url = rid = None
        for line in demo.stdout:
            if "is held (request " in line:
                rid = line.split("(request ")[1].split(")")[0]
            if "in the console: " in line:
                url = line.split("in the console: ")[1].strip().removesuffix("/approvals")
                break
        assert url and rid and TOKEN not in url
        with httpx.Client(base_url=url, timeout=10) as client:
            login = client.get("/login")
            csrf = CSRF.search(login.text)
            assert csrf is not None
            client.post("/login", data={"token": TOKEN, "csrf": csrf.group(1)})
            page = client.get("/approvals")
            assert f'id="request-{rid}"' in page.text and "a dry run counts" in page.text
            found = CSRF.search(page.text)
            assert found is not None
            decided = client.post(
                f"/approvals/{rid}",
                data={"decision": "approve", "note": "demo", "csrf": found.group(1)},
            )
            assert decided.status_code == 200 and "approved by dba@example.com" in decided.text
        rest = demo.stdout.read()
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()
    assert f"Request {rid}: approved" in rest
    assert "retries the approved change" in rest and "rows changed" in rest
    assert "hash chain intact" in rest


def test_oidc_tokens_sign_in_whoever_they_name(tmp_path: Path) -> None:
    """A JWT verified by Identity.from_jwt signs its subject in, with its
    roles; a token from another issuer, or signed by another key, does not;
    the session ends when the token expires."""
    from .test_jwt import AUDIENCE, ISSUER, _ec, _jwk, _rsa, _token

    policy = guardeddb.load_policy(policy_dict(tmp_path, {"jsonl": str(tmp_path / "a.jsonl")}))
    jwt = {"jwks": {"keys": [_jwk(_rsa(), "rsa1")]}, "issuer": ISSUER, "audience": AUDIENCE}
    client = TestClient(create_app(policy, Auth(jwt=jwt)))
    assert sign_in(client, TOKEN).status_code == 401  # no operator token configured
    assert sign_in(client, _token(_rsa(), iss="https://evil.example")).status_code == 401
    assert sign_in(client, _token(_ec(), alg="ES256")).status_code == 401  # unknown key
    carol = _token(_rsa(), sub="carol@example.com", roles=["dba"], exp=int(time.time()) + 2)
    assert sign_in(client, carol).status_code == 303
    page = client.get("/approvals")
    assert '<strong id="who">carol@example.com</strong>' in page.text and "(dba)" in page.text
    time.sleep(2.5)
    assert client.get("/approvals", follow_redirects=False).status_code == 303


def test_the_filter_indexes_agree_with_a_scan_of_the_trail(tmp_path: Path) -> None:
    """The audit page's indexed filters give what reading every record gives."""
    from guardeddb.audit import JsonlSink
    from guardeddb.console.trail import Filters, TrailView

    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, fsync="never")
    for i in range(600):
        sink.write(
            {
                "ts": f"2026-01-{1 + i // 100:02d}T{i % 24:02d}:00:00+00:00",
                "event": "decision" if i % 3 else "result",
                "identity": {"user": f"u{i % 7}", "agent": f"a{i % 4}", "roles": []},
                "tables": [f"t{i % 5}", f"t{i % 2 + 5}"],
                "decision": {"action": ["allow", "block", "review"][i % 3], "rule": f"r{i % 6}"},
                "approver": "u9" if i % 50 == 0 else None,
            }
        )
    sink.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    view = TrailView({"jsonl": str(path)})
    view.refresh()
    assert view.status().intact and view.count == 600

    def scan(f: Filters) -> list[dict[str, Any]]:
        def ok(r: dict[str, Any]) -> bool:
            d, who = r["decision"], r["identity"]
            return (
                (not f.user or f.user in (who["user"], r.get("approver")))
                and (not f.agent or f.agent == who["agent"])
                and (not f.action or f.action in (d["action"], r["event"]))
                and (not f.rule or f.rule == d["rule"])
                and (not f.table or f.table in r["tables"])
                and (not f.since or r["ts"] >= f.since)
                and (not f.until or r["ts"][: len(f.until)] <= f.until)
            )

        return [r for r in reversed(records) if ok(r)]

    for f in (
        Filters(),
        Filters(user="u9"),
        Filters(user="u3", table="t6", action="block"),
        Filters(agent="a1", rule="r5", since="2026-01-02"),
        Filters(action="result", until="2026-01-03"),
        Filters(since="2026-01-02T05", until="2026-01-04T10"),
        Filters(table="t2", since="2026-01-05"),
        Filters(user="nobody"),
    ):
        want = scan(f)
        got, total = view.query(f, 2, 10)
        assert total == len(want) and got == want[10:20], f


def test_what_a_reader_cannot_see_is_written_out_and_large_posts_refused(tmp_path: Path) -> None:
    """A bidi override in a held statement is shown as its escape, so the
    approver reads what would run; a huge POST is refused before it is read."""
    policy = guardeddb.load_policy(policy_dict(tmp_path, {"jsonl": str(tmp_path / "a.jsonl")}))
    store = ApprovalStore(str(policy.approvals["store"]))
    sql = "UPDATE t SET note = 'x\u202e; DROP TABLE t; --' WHERE id > 0"
    rid = store.hold(AGENT, "d" * 64, sql, "bulk-needs-a-human", "held")
    client = app_for(policy, "dba@example.com", {"dba"})
    sign_in(client)
    page = client.get("/approvals").text
    assert rid is not None and f'id="request-{rid}"' in page
    assert "\u202e" not in page and "x\\u202e; DROP TABLE t" in page
    big = client.post(
        f"/approvals/{rid}",
        data={"decision": "approve", "note": "x" * 100_000, "csrf": csrf_of(client)},
    )
    assert big.status_code == 413 and big.headers["x-frame-options"] == "DENY"
    assert store.get(rid).status == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("env", "flags", "says"),
    [
        ({}, [], "no way to sign in"),
        ({"GUARDEDDB_CONSOLE_TOKEN": "short"}, ["--user", "dba"], "at least 16 characters"),
        ({"GUARDEDDB_CONSOLE_TOKEN": TOKEN}, [], "needs the operator's identity"),
    ],
)
def test_the_console_will_not_start_open_to_anyone(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    flags: list[str],
    says: str,
) -> None:
    monkeypatch.delenv("GUARDEDDB_CONSOLE_TOKEN", raising=False)
    monkeypatch.delenv("GUARDEDDB_CONSOLE_USER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy_dict(tmp_path, {"jsonl": str(tmp_path / "a.jsonl")})))
    assert main(["console", "--policy", str(path), *flags]) == 2
    assert says in capsys.readouterr().err
