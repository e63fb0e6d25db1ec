"""Findings of an adversarial review of approvals, sessions, dry runs,
transaction ends and function side channels (issue #12; the masking
findings of the same review are in test_side_channels.py).

Every test here states the SAFE outcome and failed while its bypass worked:
what the server must hold, or what the caller must not see, when a
prompt-injected agent with a non-privileged identity sends hostile SQL or
calls the public driver API of a guarded connection.
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity
from guardeddb.approvals import ApprovalStore

from .fix_db import Backend
from .fix_shop import CUSTOMERS, PAYMENTS, SHOP_POLICY, Shop

AGENT = Identity(user="u-1", agent="support-bot", roles=frozenset({"support"}))


def _policy(preset: str = "agent-safe", **extra: Any) -> dict[str, Any]:
    """The shop's masking rules over a preset, analyzer failures blocked."""
    return {"version": 1, "extends": [preset], "masking": SHOP_POLICY["masking"], **extra}


def _connect(backend: Backend, policy: dict[str, Any], **kw: Any) -> Any:
    return guardeddb.connect(backend.url, policy=policy, identity=AGENT, **kw)


def _run(conn: Any, sql: str, params: Any = None) -> list[Any] | None:
    """The rows ``sql`` returns through ``conn`` (committed), or None when
    guardeddb or the server refused it."""
    cur = conn.cursor()
    try:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        rows = list(cur.fetchall()) if cur.description else []
        conn.commit()
        return rows
    except Exception:
        with contextlib.suppress(Exception):
            conn.rollback()
        return None


SSNS = [c[4] for c in CUSTOMERS]

PG_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
MY_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True
)


# --- 5. an approval used on another database ---------------------------------


@MY_ONLY
def test_approval_is_not_used_on_another_database(
    backend: Backend, shop: Shop, tmp_path: Path
) -> None:
    """The approval is bound to approvals.database_key(), which reads
    facts.namespace: the database named at connect. ``USE`` (allowed by
    agent-safe; _enforce.use_database only updates facts.schemas) moves the
    session to another database, and the same text, approved for the first,
    runs there with the same approval."""
    other = f"attack2_{uuid.uuid4().hex[:8]}"
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"CREATE DATABASE {other}")
    cur.execute(shop.sql(f"CREATE TABLE {other}.{{p}} AS SELECT * FROM {{p}}"))
    raw.commit()
    store = f"sqlite:///{tmp_path / 'approvals.db'}"
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": "deletes-need-a-human",
                "match": {"statements": ["delete"], "where": True},
                "action": "review",
            }
        ],
        "approvals": {"store": store},
    }
    sql = shop.sql("DELETE FROM {p} WHERE amount > 0")
    conn = _connect(backend, policy)
    try:
        with pytest.raises(guardeddb.ApprovalRequired) as held:
            conn.cursor().execute(sql)
        assert ApprovalStore(store).decide(held.value.request_id, True, "dba@example.com", None)
        _run(conn, f"USE {other}")
        _run(conn, sql)  # approved for `test`, run in the other database
        cur.execute(shop.sql(f"SELECT count(*) FROM {other}.{{p}}"))
        left = cur.fetchone()[0]
    finally:
        conn.close()
        cur.execute(f"DROP DATABASE IF EXISTS {other}")
        raw.commit()
        raw.close()
    assert left == len(PAYMENTS), "the approval for one database deleted rows in another"


# --- 6. functions that store a value where masking never looks ---------------


@pytest.fixture
def pg_sequence(backend: Backend) -> Iterator[str]:
    name = f"attack2_seq_{uuid.uuid4().hex[:8]}"
    raw = backend.connect_raw()
    raw.execute(f"CREATE SEQUENCE {name}")
    raw.commit()
    try:
        yield name
    finally:
        raw.execute(f"DROP SEQUENCE IF EXISTS {name}")
        raw.commit()
        raw.close()


@PG_ONLY
def test_pg_setval_does_not_carry_a_masked_value(
    backend: Backend, shop: Shop, pg_sequence: str
) -> None:
    """carries_masked judges statements that move values by their kind
    (INSERT, UPDATE, SET, @variables); a SELECT calling setval() stores the
    SSN's digits in a sequence, read back unmasked from last_value."""
    conn = _connect(backend, _policy())
    try:
        _run(
            conn,
            shop.sql(
                f"SELECT setval('{pg_sequence}', replace(ssn, '-', '')::bigint) FROM {{c}} "
                "WHERE id = 1"
            ),
        )
        rows = _run(conn, f"SELECT last_value FROM {pg_sequence}")
    finally:
        conn.close()
    assert int(SSNS[0].replace("-", "")) not in [r[0] for r in rows or []], rows


@MY_ONLY
def test_mariadb_last_insert_id_does_not_carry_a_masked_value(backend: Backend, shop: Shop) -> None:
    """MariaDB's LAST_INSERT_ID(expr) stores expr for the session: read back
    by SELECT LAST_INSERT_ID(), or straight from cursor.lastrowid after an
    UPDATE whose WHERE calls it (a WHERE is not judged by carries_masked)."""
    conn = _connect(backend, _policy())
    try:
        _run(
            conn,
            shop.sql(
                "SELECT LAST_INSERT_ID(CAST(replace(ssn, '-', '') AS UNSIGNED)) FROM {c} "
                "WHERE id = 1"
            ),
        )
        rows = _run(conn, "SELECT LAST_INSERT_ID()")
        cur = conn.cursor()
        with contextlib.suppress(guardeddb.QueryBlocked):
            cur.execute(
                shop.sql(
                    "UPDATE {c} SET name = name WHERE id = 2 AND "
                    "LAST_INSERT_ID(CAST(replace(ssn, '-', '') AS UNSIGNED)) > 0"
                )
            )
        lastrowid = getattr(cur, "lastrowid", None)  # unset: the UPDATE never ran
        conn.rollback()
    finally:
        conn.close()
    assert int(SSNS[0].replace("-", "")) not in [r[0] for r in rows or []], rows
    assert lastrowid != int(SSNS[1].replace("-", "")), lastrowid


# --- 7. PyMySQL's ping(reconnect=True): a new session guardeddb never set up ---


@MY_ONLY
def test_reconnect_keeps_the_current_database_guardeddb_judges(
    backend: Backend, shop: Shop
) -> None:
    """``connect`` is refused, but ``close()`` then ``ping(reconnect=True)``
    (both forwarded) opens a new session in the database named at connect,
    while guardeddb still resolves unqualified names in the one a ``USE``
    chose: a table rule on the connect database no longer matches."""
    other = f"attack2_{uuid.uuid4().hex[:8]}"
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"CREATE DATABASE {other}")
    raw.commit()
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": "test-db-is-finance-only",
                "match": {"tables": ["test.*"], "identity": {"roles_absent": ["finance"]}},
                "action": "block",
            }
        ],
    }
    sql = shop.sql("SELECT ssn FROM {c} WHERE id = 1")
    conn = _connect(backend, policy)
    try:
        assert _run(conn, sql) is None  # the rule holds
        _run(conn, f"USE {other}")
        _run(conn, "SELECT 1")
        conn.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            conn.ping(reconnect=True)
        rows = _run(conn, sql)
    finally:
        conn.close()
        cur.execute(f"DROP DATABASE IF EXISTS {other}")
        raw.commit()
        raw.close()
    assert rows is None, f"read test.{shop.customers} against the rule: {rows}"


@MY_ONLY
def test_reconnect_keeps_the_statement_timeout(backend: Backend) -> None:
    """limits.statement_timeout is set once per connection (session_start);
    the session ping(reconnect=True) opens has no max_statement_time."""
    policy = {"version": 1, "extends": ["readonly"], "limits": {"statement_timeout": "2s"}}
    conn = _connect(backend, policy)
    try:
        before = _run(conn, "SELECT @@max_statement_time")
        conn.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            conn.ping(reconnect=True)
        after = _run(conn, "SELECT @@max_statement_time")
    finally:
        conn.close()
    assert before == [(2.0,)]
    assert after is None or after == [(2.0,)], after


# --- 8. the dry run of a held or blocked statement writes for real ------------


@MY_ONLY
def test_dry_run_does_not_write_a_non_transactional_table(backend: Backend, tmp_path: Path) -> None:
    """``affected_rows`` and approval requests are measured by running the
    statement inside a SAVEPOINT and rolling back (drivers.Driver.dry_run).
    MariaDB's MyISAM, Aria and MEMORY tables ignore the rollback: the DELETE
    a rule blocks, or holds for a person, has already deleted the rows."""
    table = f"attack2_logs_{uuid.uuid4().hex[:8]}"
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, msg VARCHAR(20)) ENGINE=MyISAM")
    cur.execute(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    raw.commit()
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": "bulk-deletes-blocked",
                "match": {"statements": ["delete"], "affected_rows": {"gt": 1}},
                "action": "block",
            },
            {
                "id": "deletes-need-a-human",
                "match": {"statements": ["delete"], "where": True},
                "action": "review",
            },
        ],
        "approvals": {"store": f"sqlite:///{tmp_path / 'approvals.db'}"},
    }
    conn = _connect(backend, policy)
    try:
        with pytest.raises(guardeddb.QueryBlocked) as blocked:
            conn.cursor().execute(f"DELETE FROM {table} WHERE id > 1")
        assert blocked.value.decision.rule_id == "bulk-deletes-blocked"
        # not measurable (MyISAM ignores ROLLBACK): held or blocked, never run
        with pytest.raises(guardeddb.QueryBlocked):
            conn.cursor().execute(f"DELETE FROM {table} WHERE id = 1")
        cur.execute(f"SELECT count(*) FROM {table}")
        left = cur.fetchone()[0]
    finally:
        conn.close()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        raw.commit()
        raw.close()
    assert left == 3, "a blocked and a held DELETE removed rows"


# --- 9. commits the audit trail never records --------------------------------


def _commit_around_the_audit(backend: Backend, conn: Any) -> None:
    """End the open transaction by a public driver API other than commit()."""
    if backend.name == "sqlite":
        conn.isolation_level = None  # sqlite3 commits the open transaction
    elif backend.name == "mysql":
        conn.autocommit(True)  # SET AUTOCOMMIT = 1 commits it
    else:
        raise AssertionError(backend.name)


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)],
    indirect=True,
)
def test_every_commit_is_in_the_audit_trail(backend: Backend, shop: Shop, tmp_path: Path) -> None:
    """README: COMMIT and ROLLBACK 'explicit or through the connection's
    methods' are recorded, so the trail shows what was kept. Setting
    sqlite3's isolation_level to None or PyMySQL's autocommit(True) commits
    with no record: the trail shows an UPDATE that was never committed."""
    import json

    audit = tmp_path / "audit.jsonl"
    conn = _connect(backend, {**_policy(), "audit": {"jsonl": str(audit)}})
    try:
        conn.cursor().execute(shop.sql("UPDATE {c} SET name = 'kept' WHERE id = 2"))
        _commit_around_the_audit(backend, conn)
    finally:
        conn.close()
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(shop.sql("SELECT name FROM {c} WHERE id = 2"))
    kept = cur.fetchone()[0] == "kept"
    raw.close()
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert not kept or "commit" in events, events


@PG_ONLY
def test_psycopg_transaction_commit_is_in_the_audit_trail(
    backend: Backend, shop: Shop, tmp_path: Path
) -> None:
    """``with conn.transaction():`` commits through psycopg's own code, not
    the proxy's commit(): the trail has the UPDATE and no commit."""
    import json

    audit = tmp_path / "audit.jsonl"
    conn = _connect(backend, {**_policy(), "audit": {"jsonl": str(audit)}})
    try:
        with conn.transaction():
            conn.cursor().execute(shop.sql("UPDATE {c} SET name = 'kept' WHERE id = 2"))
    finally:
        conn.close()
    raw = backend.connect_raw()
    kept = raw.execute(shop.sql("SELECT name FROM {c} WHERE id = 2")).fetchone()[0] == "kept"
    raw.close()
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert not kept or "commit" in events, events


# --- 10. a read-only identity commits a writer's open transaction ------------


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.pg),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
def test_reader_cannot_commit_a_writers_transaction(backend: Backend, shop: Shop) -> None:
    """The SQL ``COMMIT`` of an agent the policy keeps to reads is refused
    inside another identity's open transaction (read-only-session), but the
    connection's commit() method makes the writer's work durable anyway."""
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {
                "id": "agents-read-only",
                "match": {"identity": {"agent": "*"}, "statements": ["write", "ddl", "dcl"]},
                "action": "block",
            }
        ],
    }
    conn = guardeddb.connect(backend.url, policy=policy)
    try:
        with guardeddb.identity(user="alice@example.com"):
            conn.cursor().execute(shop.sql("UPDATE {c} SET name = 'draft' WHERE id = 2"))
        with guardeddb.identity(user="u-1", agent="support-bot"):
            with pytest.raises(guardeddb.QueryBlocked):
                conn.cursor().execute("COMMIT")
            with contextlib.suppress(guardeddb.Error):
                conn.commit()
        with guardeddb.identity(user="alice@example.com"):
            conn.rollback()  # alice changes her mind
    finally:
        conn.close()
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(shop.sql("SELECT name FROM {c} WHERE id = 2"))
    name = cur.fetchone()[0]
    raw.close()
    assert name != "draft", "the agent committed alice's transaction"


# --- 12. detectors scan only str cells ----------------------------------------

TO_BYTES = {
    "sqlite": "SELECT CAST(notes AS BLOB) FROM {c} ORDER BY id",
    "postgresql": "SELECT notes::bytea FROM {c} ORDER BY id",
    "mysql": "SELECT CAST(notes AS BINARY) FROM {c} ORDER BY id",
}
DETECTED = ["grace.h@example.org", "5500 0000 0000 0004", "AKIAIOSFODNN7EXAMPLE", "Tur1ngMachine!"]


@pytest.mark.parametrize("preset", ["agent-safe", "readonly"])
def test_detectors_scan_binary_cells(backend: Backend, shop: Shop, preset: str) -> None:
    """With no masking rules the presets' only masking is the detectors
    (``detectors: all``), and MaskRun._values scans a cell only when
    ``type(v) is str``: a cast to a binary type returns the emails, card
    numbers, AWS keys and passwords in free text as bytes, unscanned."""
    conn = _connect(backend, {"version": 1, "extends": [preset]})
    try:
        plain = _run(conn, shop.sql("SELECT notes FROM {c} ORDER BY id"))
        raw = _run(conn, shop.sql(TO_BYTES[backend.name]))
    finally:
        conn.close()
    assert plain is not None and all(s not in repr(plain) for s in DETECTED)  # text: masked
    seen = " ".join(
        bytes(v).decode("utf-8", "replace") for row in raw or [] for v in row if v is not None
    )
    for secret in DETECTED:
        assert secret not in seen, (secret, seen)
