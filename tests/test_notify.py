"""Approval notifications: a new held request is POSTed, signed, retried, and
never changes what the held query does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

import guardeddb
from guardeddb import ApprovalRequired, Identity
from guardeddb.approvals import ApprovalStore
from guardeddb.approvals.notify import Notifier, notifier_for, verify_signature
from guardeddb.cli import main

from .fix_db import PG_DSN, Backend

AGENT = Identity(user="alice@example.com", agent="support-bot", roles=frozenset({"support"}))
SECRET = "s3cret-webhook-key"


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 answering with ``statuses`` in turn
    (the last one repeated)."""

    statuses: list[int]
    location: str | None = None  # sent with every answer, for redirects
    got: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/guardeddb?token=abc"

    def wait(self, count: int, timeout: float = 15.0) -> list[Received]:
        """The first ``count`` requests, waiting up to ``timeout`` for them."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.got) >= count, timeout)
            return list(self.got)


@contextlib.contextmanager
def _receiver(*statuses: int) -> Iterator[Receiver]:
    rec = Receiver(list(statuses) or [200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server names it so
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with rec.cond:
                n = len(rec.got)
                rec.got.append(Received(dict(self.headers.items()), body, time.monotonic()))
                rec.cond.notify_all()
            status = rec.statuses[min(n, len(rec.statuses) - 1)]
            self.send_response(status)
            if rec.location:
                self.send_header("Location", rec.location)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self) -> None:  # http.server names it so
            self.headers["Content-Length"] = "0"
            self.do_POST()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def held_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, str, str]]:
    """(database, a table of three users in it, an approval store) on SQLite,
    and on PostgreSQL with the store in a schema of its own (other test runs
    use the default store table)."""
    table = f"notify_users_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        path = tmp_path / "shop.db"
        backend = Backend(
            "sqlite", f"sqlite:///{path}", lambda: sqlite3.connect(path), "?", "sqlite"
        )
        store = f"sqlite:///{tmp_path}/approvals.db"
        schema = None
    else:
        backend = request.getfixturevalue("pg_backend")
        schema = f"notify_{uuid.uuid4().hex[:8]}"
        store = PG_DSN + ("&" if "?" in PG_DSN else "?") + f"options=-csearch_path%3D{schema}"
    raw = backend.connect_raw()
    cur = raw.cursor()
    if schema:
        cur.execute(f"CREATE SCHEMA {schema}")
    cur.execute(
        f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(50), email VARCHAR(99))"
    )
    cur.executemany(
        backend.sql(f"INSERT INTO {table} VALUES (?, ?, ?)"),
        [(1, "Ada", "ada@example.com"), (2, "Grace", "grace@example.com"), (3, "Linus", "l@x.org")],
    )
    raw.commit()
    try:
        yield backend, table, store
    finally:
        with contextlib.suppress(Exception):
            raw.rollback()
        cur = raw.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        if schema:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        raw.commit()
        raw.close()


def _policy(store: str, *hooks: dict[str, Any], console: str | None = None) -> dict[str, Any]:
    approvals: dict[str, Any] = {"store": store, "notify": list(hooks)}
    if console:
        approvals["console_url"] = console
    return {
        "version": 1,
        "rules": [
            {
                "id": "deletes-need-a-human",
                "match": {"statements": ["delete"]},
                "action": "review",
                "message": "deletes are reviewed",
            }
        ],
        "approvals": approvals,
    }


def _fast(policy: guardeddb.Policy, deadline: float = 60.0) -> Notifier:
    """The notifier the policy's connections share, with a short retry schedule."""
    notifier = notifier_for(policy.approvals)
    assert notifier is not None
    notifier.backoff = 0.05
    notifier.deadline = deadline
    return notifier


def _count(backend: Backend, table: str) -> int:
    return int(backend.rows(f"SELECT count(*) FROM {table}")[0][0])


def _verify(got: Received, secret: str = SECRET) -> None:
    """The signature checked as a receiver would, by hand: HMAC-SHA256 over
    ``<timestamp>.<body>``, and a timestamp of now."""
    stamp = got.headers["X-Guardeddb-Timestamp"]
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + got.body, hashlib.sha256)
    assert got.headers["X-Guardeddb-Signature"] == "sha256=" + expected.hexdigest()
    assert abs(time.time() - int(stamp)) < 60


def test_a_new_held_request_is_posted_signed_once(held_db: tuple[Backend, str, str]) -> None:
    """The payload says who, which rule, the sanitized statement (no value,
    no parameter), the impact and the console link; signed; sent once per
    request, not once per retry of the same query."""
    backend, table, store = held_db
    with _receiver(200) as rec:
        hook = {"url": rec.url, "secret": SECRET}
        policy = guardeddb.load_policy(_policy(store, hook, console="https://console.example/"))
        notifier = _fast(policy)
        conn = guardeddb.connect(backend.url, policy=policy)
        cur = conn.cursor()
        delete = backend.sql(f"DELETE FROM {table} WHERE name = 'Ada' OR email = ?")
        with guardeddb.identity(AGENT):
            with pytest.raises(ApprovalRequired) as held:
                cur.execute(delete, ("grace@example.com",))
            with pytest.raises(ApprovalRequired) as again:
                cur.execute(delete, ("grace@example.com",))
        rid = held.value.request_id
        assert again.value.request_id == rid
        (got,) = rec.wait(1)
        _verify(got)
        event = json.loads(got.body)
        assert event["event"] == "approval.requested"
        assert event["id"] == rid
        assert event["requested_by"] == {
            "user": "alice@example.com",
            "agent": "support-bot",
            "roles": ["support"],
            "verified": False,
        }
        assert event["rule"] == "deletes-need-a-human"
        assert event["message"] == "deletes are reviewed"
        mark = backend.placeholder
        assert event["statement"] == f"DELETE FROM {table} WHERE name = ? OR email = {mark}"
        assert event["impact"] == 2  # a dry run counted Ada and Grace
        assert event["link"] == f"https://console.example/approvals/{rid}"
        request = ApprovalStore(store).get(rid)
        assert request is not None
        assert (event["created"], event["expires"]) == (request.created, request.expires)
        assert b"Ada" not in got.body and b"grace@example.com" not in got.body
        assert got.headers["Content-Type"] == "application/json"
        assert notifier.flush(10)
        assert len(rec.got) == 1  # the same pending request, found again: no second POST
        conn.close()
    assert _count(backend, table) == 3


def test_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    """Two 500s then a 200: three identical, freshly signed deliveries, the
    pauses growing; a 429 is retried too, a 400 is not, a redirect is
    neither retried nor followed (the body goes nowhere else)."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    db = tmp_path / "shop.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (1);")
    with (
        _receiver(500, 500, 200) as rec,
        _receiver(429, 200) as busy,
        _receiver(400) as bad,
        _receiver(200) as elsewhere,
        _receiver(302) as moved,
    ):
        moved.location = elsewhere.url
        policy = guardeddb.load_policy(
            _policy(
                store,
                {"url": rec.url, "secret": SECRET},
                {"url": busy.url, "secret": SECRET},
                {"url": bad.url, "secret": SECRET},
                {"url": moved.url, "secret": SECRET},
            )
        )
        notifier = _fast(policy)
        notifier.backoff = 0.2
        conn = guardeddb.connect(f"sqlite:///{db}", policy=policy)
        with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired):
            conn.cursor().execute("DELETE FROM t")
        got = rec.wait(3)
        assert notifier.flush(15)
        assert len(got) == 3
        assert len({g.headers["X-Guardeddb-Delivery"] for g in got}) == 1  # one delivery, retried
        assert len({g.body for g in got}) == 1
        for g in got:
            _verify(g)
        first, second = got[1].at - got[0].at, got[2].at - got[1].at
        # Exponential: at least 0.2 s, then at least 0.4 s (lower bounds only:
        # a loaded machine only adds to them).
        assert first >= 0.2 and second >= 0.4
        assert len(busy.got) == 2
        assert len(bad.got) == 1
        assert len(moved.got) == 1 and elsewhere.got == []  # a redirect is not followed
        conn.close()


def _silent_port() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return sock, accepted


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def test_a_dead_webhook_never_delays_or_releases_the_hold(
    held_db: tuple[Backend, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook that never answers and one on a closed port: the query is
    held as promptly as without them, stays pending, and once approved runs
    exactly once."""
    backend, table, store = held_db
    silent, accepted = _silent_port()
    hooks = (
        {"url": f"http://127.0.0.1:{silent.getsockname()[1]}/", "secret": SECRET, "timeout": 3},
        {"url": f"http://127.0.0.1:{_closed_port()}/", "secret": SECRET, "timeout": 1},
    )
    policy = guardeddb.load_policy(_policy(store, *hooks))
    notifier = _fast(policy, deadline=4)
    notifier.attempts = 2
    conn = guardeddb.connect(backend.url, policy=policy)
    cur = conn.cursor()
    delete = backend.sql(f"DELETE FROM {table} WHERE id = ?")
    try:
        with guardeddb.identity(AGENT):
            start = time.monotonic()
            with pytest.raises(ApprovalRequired) as held:
                cur.execute(delete, (1,))
            assert time.monotonic() - start < 1.0  # not the webhook's 3 s timeout
        rid = held.value.request_id
        deadline = time.monotonic() + 5
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert accepted  # a delivery was under way while the query was held
        request = ApprovalStore(store).get(rid)
        assert request is not None and request.status == "pending"
        assert _count(backend, table) == 3
        assert ApprovalStore(store).decide(rid, True, "dba@example.com", None)
        with guardeddb.identity(AGENT):
            cur.execute(delete, (1,))
            conn.commit()
            with pytest.raises(ApprovalRequired):
                cur.execute(delete, (1,))  # used once
        assert _count(backend, table) == 2
        with caplog.at_level(logging.WARNING, logger="guardeddb"):
            assert notifier.flush(20)
        assert "not delivered (TimeoutError: timed out)" in caplog.text
        assert "not delivered (ConnectionRefusedError" in caplog.text
        assert SECRET not in caplog.text
    finally:
        conn.close()
        silent.close()
        for s in accepted:
            s.close()


def test_slack_format(tmp_path: Path) -> None:
    """``format: slack``: a text line and blocks with a button to the
    console; mrkdwn's control characters escaped everywhere (an agent named
    ``<!channel>`` pings nobody); no secret needed."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    db = tmp_path / "shop.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (id INTEGER, note TEXT);")
    with _receiver(200) as rec:
        policy = guardeddb.load_policy(
            _policy(store, {"url": rec.url, "format": "slack"}, console="http://127.0.0.1:8080")
        )
        _fast(policy)
        conn = guardeddb.connect(f"sqlite:///{db}", policy=policy)
        pinger = Identity(
            user="alice@example.com", agent="<!channel>", roles=frozenset({"support"})
        )
        with guardeddb.identity(pinger), pytest.raises(ApprovalRequired) as held:
            conn.cursor().execute("DELETE FROM t WHERE id < 5 AND note <> 'x<y>'")
        rid = held.value.request_id
        (got,) = rec.wait(1)
        message = json.loads(got.body)
        link = f"http://127.0.0.1:8080/approvals/{rid}"
        assert set(message) == {"text", "blocks"}
        assert rid in message["text"] and link in message["text"]
        assert "alice@example.com" in message["text"]
        kinds = [b["type"] for b in message["blocks"]]
        assert kinds == ["section", "section", "actions"]
        assert message["blocks"][2]["elements"][0]["url"] == link
        details = message["blocks"][0]["text"]["text"]
        assert "deletes-need-a-human" in details and "support" in details
        assert message["blocks"][1]["text"]["text"].startswith("```DELETE FROM t WHERE id &lt; ?")
        assert "x<y>" not in got.body.decode() and "x&lt;y&gt;" not in got.body.decode()
        assert "<!channel>" not in got.body.decode()  # escaped: it pings nobody
        assert "&lt;!channel&gt;" in message["text"]
        assert "X-Guardeddb-Signature" not in got.headers  # unsigned without a secret
        conn.close()


def test_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``secret_env`` signs with the variable's value; unset, nothing is sent
    (fail closed: the policy asked for signed deliveries)."""
    store = f"sqlite:///{tmp_path}/approvals.db"
    db = tmp_path / "shop.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (id INTEGER);")
    with _receiver(200) as rec:
        policy = guardeddb.load_policy(_policy(store, {"url": rec.url, "secret_env": "NOTIFY_K"}))
        notifier = _fast(policy)
        conn = guardeddb.connect(f"sqlite:///{db}", policy=policy)
        monkeypatch.delenv("NOTIFY_K", raising=False)
        with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired):
            conn.cursor().execute("DELETE FROM t WHERE id = 1")
        assert notifier.flush(5)
        assert rec.got == []
        monkeypatch.setenv("NOTIFY_K", "from-the-env")
        with guardeddb.identity(AGENT), pytest.raises(ApprovalRequired):
            conn.cursor().execute("DELETE FROM t WHERE id = 2")
        (got,) = rec.wait(1)
        _verify(got, "from-the-env")
        conn.close()


def test_verify_signature_refuses_forgeries_and_replays() -> None:
    """The receiver-side helper: a changed body, another key or an old
    timestamp is refused."""
    body = b'{"id": "abc"}'
    now = int(time.time())
    stamp = str(now)
    mac = hmac.new(b"k", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert verify_signature(b"k", body, stamp, f"sha256={mac}")
    assert not verify_signature(b"k", body + b" ", stamp, f"sha256={mac}")
    assert not verify_signature(b"other", body, stamp, f"sha256={mac}")
    old = str(now - 600)
    old_mac = hmac.new(b"k", old.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert not verify_signature(b"k", body, old, f"sha256={old_mac}")
    assert not verify_signature(b"k", body, "soon", f"sha256={mac}")
    assert not verify_signature(b"k", body, stamp, "sha256=\u00e9")  # no TypeError


def test_a_full_queue_drops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Beyond the queue's size a notification is dropped, said in the log,
    and submit returns at once."""
    silent, accepted = _silent_port()
    from guardeddb.approvals.notify import Secret, Webhook

    hook = Webhook(f"http://127.0.0.1:{silent.getsockname()[1]}/", Secret("k"), timeout=1)
    notifier = Notifier([hook], size=2, attempts=1)
    try:
        with caplog.at_level(logging.WARNING, logger="guardeddb"):
            start = time.monotonic()
            kept = [notifier.submit({"id": str(i)}) for i in range(6)]
            assert time.monotonic() - start < 0.5
        assert kept[:2] == [True, True] and kept[-1] is False
        assert "approval notification for request 5 dropped" in caplog.text
        assert notifier.flush(10)
    finally:
        silent.close()
        for s in accepted:
            s.close()


@pytest.mark.parametrize(
    ("hook", "key", "says"),
    [
        ({"url": "ftp://x"}, "approvals.notify[0].url", "http:// or https://"),
        ({"secret": "k"}, "approvals.notify[0].url", "needs 'url'"),
        (
            {"url": "https://h/x", "secret": "k", "retries": 3},
            "approvals.notify[0].retries",
            "unknown key",
        ),
        ({"url": "https://h/x"}, "approvals.notify[0].secret", "secret_env"),
        ({"url": "https://u:p@h/x", "secret": "k"}, "approvals.notify[0].url", "credentials"),
        (
            {"url": "https://h/x", "secret": "k", "format": "teams"},
            "approvals.notify[0].format",
            "json, slack",
        ),
        (
            {"url": "https://h/x", "secret_env": "A-B"},
            "approvals.notify[0].secret_env",
            "environment",
        ),
        (
            {"url": "https://h/x", "secret": 12345678},
            "approvals.notify[0].secret",
            "non-empty string",
        ),
        (
            {"url": "https://h/x", "secret": "k", "timeout": 0},
            "approvals.notify[0].timeout",
            "seconds",
        ),
    ],
)
def test_bad_webhooks_are_refused_at_load(
    tmp_path: Path, hook: dict[str, Any], key: str, says: str
) -> None:
    """Each mistake is a PolicyError naming the file, the line and the key,
    and never echoing the secret."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\napprovals:\n  store: sqlite:///a.db\n  notify:\n    - "
        + json.dumps(hook)
        + "\n"
    )
    with pytest.raises(guardeddb.PolicyError) as err:
        guardeddb.load_policy(path)
    assert err.value.key == key
    assert err.value.line == 5
    assert str(err.value).startswith(f"{path}:5: {key}: ")
    assert says in err.value.message
    assert "12345678" not in str(err.value)


def test_other_bad_notify_sections(tmp_path: Path) -> None:
    """Not a list, no store to wait on, a console that is not http(s) or
    has a query a link cannot be appended to."""
    for approvals, key in (
        ({"store": "sqlite:///a.db", "notify": {"url": "https://h"}}, "approvals.notify"),
        ({"notify": [{"url": "https://h", "secret": "k"}]}, "approvals.notify"),
        (
            {"store": "sqlite:///a.db", "console_url": "javascript:alert(1)"},
            "approvals.console_url",
        ),
        (
            {"store": "sqlite:///a.db", "console_url": "https://c.example/?x=1"},
            "approvals.console_url",
        ),
    ):
        with pytest.raises(guardeddb.PolicyError) as err:
            guardeddb.load_policy({"version": 1, "approvals": approvals})
        assert err.value.key == key


def test_policy_show_and_validate_never_print_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The secret is shown as set, the URL's path (a Slack token) cut; an
    env-named secret shows its variable's name; the result still loads."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\n"
        "approvals:\n"
        "  store: sqlite:///a.db\n"
        "  console_url: https://console.example\n"
        "  notify:\n"
        f"    - {{url: 'https://hooks.example/T0/B0/tokentoken', secret: {SECRET}}}\n"
        "    - {url: 'https://hooks.slack.com/services/T1/B1/slacktoken', format: slack}\n"
        "    - {url: 'https://ops.example/hook', secret_env: OPS_HOOK_KEY}\n"
    )
    assert main(["policy", "show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert main(["policy", "validate", str(path)]) == 0
    out = capsys.readouterr()
    for text in (shown, out.out + out.err):
        assert SECRET not in text and "tokentoken" not in text and "slacktoken" not in text
    assert "<set, not shown>" in shown and "OPS_HOOK_KEY" in shown
    assert "https://hooks.slack.com (slack)" in out.out
    assert SECRET not in repr(guardeddb.load_policy(path))
    again = guardeddb.load_policy(yaml.safe_load(shown))  # what show prints loads back
    assert [h.where for h in again.approvals["notify"]] == [  # type: ignore[attr-defined]
        "https://hooks.example",
        "https://hooks.slack.com",
        "https://ops.example",
    ]


@pytest.mark.pg
@pytest.mark.parametrize("held_db", ["postgresql"], indirect=True)
def test_asyncio_hold_notifies_without_waiting(held_db: tuple[Backend, str, str]) -> None:
    """On an asyncio connection (psycopg's) the hold is as prompt, beside a
    webhook that never answers, and the other webhook still gets the request."""
    backend, table, store = held_db
    silent, accepted = _silent_port()
    try:
        with _receiver(200) as rec:
            hooks = (
                {"url": f"http://127.0.0.1:{silent.getsockname()[1]}/", "secret": SECRET},
                {"url": rec.url, "secret": SECRET},
            )
            policy = guardeddb.load_policy(_policy(store, *hooks))
            _fast(policy, deadline=3).attempts = 1

            async def hold() -> tuple[str, float]:
                conn = await guardeddb.connect_async(backend.url, policy=policy)
                try:
                    with guardeddb.identity(AGENT):
                        start = time.monotonic()
                        with pytest.raises(ApprovalRequired) as held:
                            await conn.cursor().execute(f"DELETE FROM {table} WHERE id = 2")
                        return held.value.request_id, time.monotonic() - start
                finally:
                    await conn.close()

            rid, took = asyncio.run(hold())
            assert took < 1.0  # not the silent webhook's 3 s
            (got,) = rec.wait(1, timeout=10)  # sent after the silent one timed out
            _verify(got)
            assert json.loads(got.body)["id"] == rid
    finally:
        silent.close()
        for s in accepted:
            s.close()
    assert _count(backend, table) == 3


def test_readme_notify_example_loads() -> None:
    """The README's notify example loads as written."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Telling approvers a request is waiting", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = guardeddb.load_policy(yaml.safe_load(block))
    hooks = policy.approvals["notify"]
    assert [h.format for h in hooks] == ["json", "slack"]  # type: ignore[attr-defined]
