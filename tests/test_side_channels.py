"""Closed side channels for masked identities (issue #11): database errors
whose text is withheld, and statements that would carry a masked column's
value anywhere but into a masked result, refused.

Judged by what the caller can see (the exception, its repr, args, cause and
context, the span, the audit record) and by what the server holds after.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity

from .fix_db import Backend
from .fix_otel import Otel
from .fix_shop import CUSTOMERS, SECRETS, SHOP_POLICY, Shop

AGENT = Identity(user="u-1", agent="support-bot", roles=frozenset({"support"}))
AUDITOR = Identity(user="carol@example.com", roles=frozenset({"compliance"}))
CODE = {"sqlite": "s", "postgresql": "p", "mysql": "m"}

# Queries whose driver error quotes a masked value: (query, dialects).
ERRORS: list[tuple[str, str]] = [
    ("SELECT ssn::int FROM {c}", "p"),
    ("SELECT email::regclass FROM {c}", "p"),
    ("SELECT card_number::date FROM {c}", "p"),
    ("SELECT 1 FROM {c} WHERE iban::numeric > 0", "p"),
    ("SELECT json_extract('{}', ssn) FROM {c}", "s"),
    ("SELECT json_extract('{}', email) FROM {c}", "s"),
    ("SELECT json(ssn) FROM {c}", "s"),
    ("SELECT extractvalue(1, concat(0x7e, (SELECT ssn FROM {c} LIMIT 1)))", "m"),
    ("SELECT updatexml(1, concat(0x7e, (SELECT email FROM {c} LIMIT 1)), 1)", "m"),
    ("SELECT extractvalue(1, concat(0x7e, (SELECT iban FROM {c} WHERE id = 2)))", "m"),
    ("UPDATE {c} SET name = 'x' WHERE ssn = 1", "m"),
    ("UPDATE {c} SET name = 'x' WHERE email = 0", "m"),
]


def _per_backend(cases: list[tuple[str, str]]) -> list[Any]:
    """Each case once per database it is written for (no skipped combinations)."""
    marks = {"sqlite": (), "postgresql": (pytest.mark.pg,), "mysql": (pytest.mark.mysql,)}
    return [
        pytest.param(name, query, where, marks=marks[name], id=f"{name}-{query[:40]}")
        for query, where in cases
        for name, code in CODE.items()
        if code in where
    ]


def _secret_free(text: str) -> None:
    """No seeded secret, nor any 5-character window of one that holds a digit
    or an @ (letters alone, like "examp", occur in ordinary text)."""
    for secret in SECRETS:
        assert secret not in text, (secret, text)
        for k in range(len(secret) - 4):
            window = secret[k : k + 5]
            if any(ch.isdigit() or ch == "@" for ch in window):
                assert window not in text, (secret, text)


def _connect(backend: Backend, ident: Identity, **kw: Any) -> guardeddb.GuardedConnection:
    if backend.name == "mysql":
        kw["sql_mode"] = "STRICT_ALL_TABLES"  # truncation warnings become errors
    policy = kw.pop("policy", SHOP_POLICY)
    return guardeddb.connect(backend.url, policy=policy, identity=ident, **kw)


def _everything(exc: BaseException) -> str:
    """All a caller can read off an exception."""
    parts = [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    for attr in ("diag", "pgresult"):
        diag = getattr(exc, attr, None)
        if diag is not None and attr == "diag":
            parts += [str(getattr(diag, f, None)) for f in ("message_primary", "message_detail")]
    assert exc.__cause__ is None
    assert exc.__context__ is None
    return "\n".join(parts)


@pytest.mark.parametrize(("backend", "query", "where"), _per_backend(ERRORS), indirect=["backend"])
def test_error_text_is_withheld(
    backend: Backend, shop: Shop, otel: Otel, tmp_path: Path, query: str, where: str
) -> None:
    audit = tmp_path / "audit.jsonl"
    policy = {**SHOP_POLICY, "audit": {"jsonl": str(audit)}}
    sql = shop.sql(query)
    raw = backend.connect_raw()
    try:
        if backend.name == "mysql":
            raw.cursor().execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
        with pytest.raises(backend.error) as original:
            raw.cursor().execute(sql)
    finally:
        raw.rollback()
        raw.close()
    conn = _connect(
        backend,
        AGENT,
        policy=policy,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    with pytest.raises(backend.error) as caught:
        conn.cursor().execute(sql)
    exc = caught.value
    assert type(exc) is type(original.value)  # the driver's class, unchanged
    assert "withheld" in str(exc)
    _secret_free(_everything(exc))
    if backend.name == "postgresql":
        assert exc.sqlstate == original.value.sqlstate  # type: ignore[attr-defined]
    elif backend.name == "mysql":
        assert exc.args[0] == original.value.args[0]
    else:
        assert exc.sqlite_errorname == original.value.sqlite_errorname  # type: ignore[attr-defined]
    conn.close()
    spans = [s for s in otel.spans() if s.status.status_code.name == "ERROR"]
    assert spans
    for span in spans:
        _secret_free(json.dumps(dict(span.attributes or {}), default=str))
        _secret_free(str(span.status.description))
        _secret_free(repr([e.attributes for e in span.events]))
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    errors = [r["error"] for r in records if r.get("error")]
    assert errors == [f"{type(exc).__module__}.{type(exc).__qualname__}"]
    for record in records:  # timestamps and trace ids hold digits: whole secrets only
        for secret in SECRETS:
            assert secret not in json.dumps(record), secret


def test_unmask_identity_gets_the_original_error(backend: Backend, shop: Shop) -> None:
    query = {
        "postgresql": "SELECT ssn::int FROM {c}",
        "sqlite": "SELECT json_extract('{}', ssn) FROM {c}",
        "mysql": "SELECT extractvalue(1, concat(0x7e, (SELECT ssn FROM {c} LIMIT 1)))",
    }[backend.name]
    conn = _connect(backend, AUDITOR)
    try:
        with pytest.raises(backend.error) as caught:
            conn.cursor().execute(shop.sql(query))
        assert "withheld" not in str(caught.value)
        assert "123-45-6789" in str(caught.value) or backend.name == "sqlite"
    finally:
        conn.close()


def test_duplicate_key_text_is_withheld(backend: Backend, shop: Shop) -> None:
    """A unique key over a masked column: the duplicate's value is not quoted."""
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(shop.sql("UPDATE {c} SET ssn = '123-45-6789' WHERE id = 2"))
    cur.execute(shop.sql("CREATE UNIQUE INDEX u_{c} ON {c} (name, ssn)"))
    raw.commit()
    raw.close()
    conn = _connect(backend, AGENT)
    try:
        with pytest.raises(backend.error) as caught:
            conn.cursor().execute(shop.sql("UPDATE {c} SET name = 'Ada Lovelace' WHERE id = 2"))
        assert "withheld" in str(caught.value)
        _secret_free(_everything(caught.value))
    finally:
        conn.rollback()
        conn.close()


@pytest.mark.pg
def test_async_error_text_is_withheld(pg_backend: Backend) -> None:
    """The asyncio proxy withholds too (psycopg's AsyncConnection)."""
    import asyncio

    import psycopg

    async def go() -> None:
        conn = await guardeddb.connect_async(pg_backend.url, policy=SHOP_POLICY, identity=AGENT)
        try:
            cur = conn.cursor()
            with pytest.raises(psycopg.errors.InvalidTextRepresentation) as caught:
                await cur.execute("SELECT ('123-45' || '-6789')::int")
            assert "withheld" in str(caught.value)
            assert "123-45-6789" not in _everything(caught.value)
        finally:
            await conn.close()

    asyncio.run(go())


# Statements that would move a masked value somewhere masking does not reach.
CARRIERS: list[tuple[str, str]] = [
    ("UPDATE {c} SET notes = replace(ssn, '-', '_') WHERE id = 1", "pms"),
    ("UPDATE {c} SET notes = email WHERE id = 1", "pms"),
    ("UPDATE {c} SET notes = (SELECT max(token) FROM {p}) WHERE id = 1", "pms"),
    ("UPDATE {c} SET notes = upper(card_number), name = 'x' WHERE id = 1", "pms"),
    ("INSERT INTO {c} (id, notes) SELECT id + 100, ssn FROM {c}", "pms"),
    ("INSERT INTO {c} (id, notes) SELECT id + 100, iban FROM {p}", "pms"),
    ("INSERT INTO {p} SELECT * FROM {p} WHERE 1 = 0", "pms"),
    ("SET @x = (SELECT ssn FROM {c} WHERE id = 1)", "m"),
    ("SELECT @z := email FROM {c}", "m"),
    ("SELECT ssn INTO @x FROM {c} LIMIT 1", "m"),
    ("SELECT name, @y := card_number AS c FROM {c}", "m"),
    ("SELECT ssn INTO TEMP sidechan_x FROM {c}", "p"),
    ("CREATE TEMP TABLE sidechan_y AS SELECT email FROM {c}", "ps"),
    ("CREATE TEMPORARY TABLE sidechan_y AS SELECT email FROM {c}", "m"),
    ("CREATE TEMP TABLE sidechan_z AS SELECT * FROM {c}", "ps"),
    (
        "WITH d AS (DELETE FROM {c} WHERE id = 3 RETURNING ssn) INSERT INTO {p} (id, token) "
        "SELECT 9, ssn FROM d",
        "p",
    ),
    (
        "MERGE INTO {c} t USING {p} s ON t.id = s.id WHEN MATCHED THEN UPDATE SET notes = s.token",
        "p",
    ),
    # the value is renamed in a derived table or a CTE before it is stored
    (
        "UPDATE {c} SET notes = x.s FROM (SELECT id, replace(ssn, '-', 'x') AS s FROM {c}) x "
        "WHERE {c}.id = x.id",
        "ps",
    ),
    (
        "WITH x AS (SELECT id, replace(ssn, '-', 'x') AS s FROM {c}) "
        "INSERT INTO {c} (id, notes) SELECT id + 100, s FROM x",
        "ps",
    ),
    (
        "WITH x AS (SELECT id, replace(ssn, '-', 'x') AS s FROM {c}) "
        "UPDATE {c} SET notes = (SELECT s FROM x WHERE x.id = {c}.id) WHERE id > 0",
        "ps",
    ),
    (
        "UPDATE {c} t JOIN (SELECT id, replace(ssn, '-', 'x') AS s FROM {c}) x ON t.id = x.id "
        "SET t.notes = x.s WHERE t.id > 0",
        "m",
    ),
    (
        "UPDATE {c} t, (SELECT id, email AS s FROM {c}) x SET t.notes = x.s WHERE t.id = x.id",
        "m",
    ),
    ("INSERT INTO {c} (id, notes) SELECT 9, v.s FROM (SELECT ssn AS s FROM {c}) AS v", "pms"),
    ("SHOW WARNINGS", "m"),
    ("SHOW ERRORS", "m"),
    ("SHOW COUNT(*) WARNINGS", "m"),
]


@pytest.mark.parametrize(
    ("backend", "query", "where"), _per_backend(CARRIERS), indirect=["backend"]
)
def test_masked_data_does_not_move(backend: Backend, shop: Shop, query: str, where: str) -> None:
    conn = _connect(backend, AGENT)
    with pytest.raises(guardeddb.QueryBlocked) as caught:
        conn.cursor().execute(shop.sql(query))
    assert caught.value.decision.rule_id == "masking-side-channel"
    conn.rollback()
    conn.close()
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(shop.sql("SELECT id, notes FROM {c} ORDER BY id"))
        # nothing changed, nothing added
        assert [tuple(r) for r in cur.fetchall()] == [(c[0], c[8]) for c in CUSTOMERS]
        cur.execute(shop.sql("SELECT count(*) FROM {p}"))
        assert cur.fetchone()[0] == 3
    finally:
        raw.close()


ALLOWED: list[str] = [
    "UPDATE {c} SET notes = 'x' WHERE id = 1",
    "UPDATE {c} SET notes = name WHERE email = 'nobody@example.com'",
    "INSERT INTO {c} (id, name) SELECT id + 100, name FROM {c}",
    "DELETE FROM {c} WHERE id = 99",
    # renamed through a derived table, read beside a masked column: only name is stored
    "INSERT INTO {c} (id, notes) SELECT x.id + 100, x.n FROM (SELECT id, name AS n FROM {c} "
    "WHERE ssn <> '') x",
    "SELECT ssn FROM {c}",
]


@pytest.mark.parametrize("query", ALLOWED)
def test_writes_that_move_no_masked_value_run(backend: Backend, shop: Shop, query: str) -> None:
    conn = _connect(backend, AGENT)
    conn.cursor().execute(shop.sql(query))
    conn.rollback()
    conn.close()


def test_unmask_identity_may_move_values(backend: Backend, shop: Shop) -> None:
    conn = _connect(backend, AUDITOR)
    conn.cursor().execute(shop.sql("UPDATE {c} SET notes = replace(ssn, '-', '_') WHERE id = 1"))
    conn.commit()
    conn.close()
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(shop.sql("SELECT notes FROM {c} WHERE id = 1"))
    assert cur.fetchone()[0] == "123_45_6789"
    raw.close()


def test_fetch_time_error_text_is_withheld(tmp_path: Path, otel: Otel) -> None:
    """sqlite3 steps the statement as rows are fetched: a later row's error
    is raised by fetchall, and withheld there too (the span records only
    the class name, as before)."""
    import sqlite3

    path = tmp_path / "f.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT)")
    raw.executemany("INSERT INTO customers VALUES (?, ?)", [(1, "$"), (2, "123-45-6789")])
    raw.commit()
    raw.close()
    conn = guardeddb.connect(
        f"sqlite:///{path}",
        policy=SHOP_POLICY,
        identity=AGENT,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    cur = conn.cursor()
    cur.execute("SELECT json_extract('{}', ssn) FROM customers ORDER BY id")
    with pytest.raises(sqlite3.OperationalError) as caught:
        cur.fetchall()
    assert "withheld" in str(caught.value)
    _secret_free(_everything(caught.value))
    conn.close()


PG_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)


@PG_ONLY
def test_pg_error_text_is_withheld_from_conn_info(backend: Backend, shop: Shop) -> None:
    """libpq keeps the last error's text: ``conn.info.error_message`` is
    withheld like the exception; an unmask identity reads it as it is."""
    texts = {}
    for ident in (AGENT, AUDITOR):
        conn = _connect(backend, ident)
        try:
            with pytest.raises(backend.error):
                conn.cursor().execute(shop.sql("SELECT ssn::int FROM {c} ORDER BY id"))
            texts[str(ident.user)] = conn.info.error_message
        finally:
            conn.close()
    assert "withheld" in texts[str(AGENT.user)]
    _secret_free(texts[str(AGENT.user)])
    assert "123-45-6789" in texts[str(AUDITOR.user)]


# to_tsquery() of a text without lexemes says: NOTICE: text-search query doesn't
# contain lexemes: "<text>". Whitespace has none, so each SSN character is sent
# as a run of as many spaces as its code point, and the notice spells it out.
SPELL_SSN = (
    "SELECT to_tsquery('simple', array_to_string(ARRAY(SELECT repeat(' ', "
    "ascii(substr(ssn, i, 1))) FROM generate_series(1, length(ssn)) AS g(i)), "
    "E'\\t')) FROM {c} WHERE id = 1"
)


def _spelled(messages: list[str]) -> list[str]:
    decoded = []
    for text in messages:
        if '"' in text:
            inner = text.split('"', 1)[1].rsplit('"', 1)[0]
            decoded.append("".join(chr(len(run)) for run in inner.split("\t")))
    return decoded


@PG_ONLY
def test_pg_notices_do_not_carry_masked_values(backend: Backend, shop: Shop) -> None:
    """A notice handler gets severity and SQLSTATE, not the server's text,
    while masking applies; an unmask identity's handler gets the notice."""
    fields = ("severity", "sqlstate", "message_primary", "message_detail", "context")
    got: dict[str, list[list[str]]] = {}
    for ident in (AGENT, AUDITOR):
        seen: list[list[str]] = []

        def handler(diag: Any, seen: list[list[str]] = seen) -> None:
            # a diagnostic is valid during the call only (psycopg frees it after)
            seen.append([str(getattr(diag, f)) for f in fields] + [repr(diag)])

        conn = _connect(backend, ident)
        try:
            conn.add_notice_handler(handler)
            conn.cursor().execute(shop.sql(SPELL_SSN))
            conn.remove_notice_handler(handler)
            conn.cursor().execute(shop.sql(SPELL_SSN))  # no handler: not seen
            conn.rollback()
        finally:
            conn.close()
        got[str(ident.user)] = seen
    agent, auditor = got[str(AGENT.user)], got[str(AUDITOR.user)]
    assert len(agent) == len(auditor) == 1
    assert agent[0][:2] == ["NOTICE", "00000"]
    assert "withheld" in agent[0][2]
    assert _spelled(agent[0]) == []
    _secret_free(" ".join(agent[0][2:]).replace("00000", ""))  # SQLSTATE 00000 is no secret
    assert _spelled([auditor[0][2]]) == ["123-45-6789"]


# Statistics catalogs keep copies of column values: (ANALYZE run by the
# owner, what an agent reads, the clean-up). Digits read as letters: the
# detectors do not know them, only the refusal keeps them from the agent.
STATISTICS = {
    "postgresql": (
        "ANALYZE {p}",
        "SELECT attname, translate(histogram_bounds::text, '0123456789', 'abcdefghij') "
        "FROM pg_catalog.pg_stats WHERE tablename = '{p}'",
        None,
    ),
    "mysql": (
        "ANALYZE TABLE {c} PERSISTENT FOR ALL",
        "SELECT column_name, min_value, max_value FROM mysql.column_stats WHERE table_name = '{c}'",
        "DELETE FROM mysql.column_stats WHERE table_name = '{c}'",
    ),
    "sqlite": ("ANALYZE", 'SELECT * FROM "main".SQLITE_STAT1', None),
}


@pytest.mark.parametrize("preset", ["agent-safe", "readonly"])
def test_statistics_catalogs_are_refused_while_masking_applies(
    backend: Backend, shop: Shop, preset: str
) -> None:
    analyze, query, clean = STATISTICS[backend.name]
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(shop.sql(analyze))
        if cur.description:
            cur.fetchall()
        raw.commit()
        policy = {**SHOP_POLICY, "extends": [preset]}
        seen: dict[str, Any] = {}
        for ident in (AGENT, AUDITOR):
            conn = _connect(backend, ident, policy=policy)
            try:
                cur = conn.cursor()
                cur.execute(shop.sql(query))
                seen[str(ident.user)] = list(cur.fetchall())
            except guardeddb.QueryBlocked as exc:
                seen[str(ident.user)] = exc.decision.rule_id
            finally:
                conn.close()
    finally:
        if clean is not None:
            raw.cursor().execute(shop.sql(clean))
            raw.commit()
        raw.close()
    assert seen[str(AGENT.user)] == "masking-side-channel"
    assert isinstance(seen[str(AUDITOR.user)], list) and seen[str(AUDITOR.user)], seen
    if backend.name != "sqlite":  # sqlite_stat1 holds row counts only
        shown = repr(seen[str(AUDITOR.user)]).translate(str.maketrans("abcdefghij", "0123456789"))
        assert any(secret in shown for secret in SECRETS), shown  # the copies are there


@pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
def test_stream_errors_are_withheld(backend: Backend, shop: Shop) -> None:
    """psycopg's ``stream()`` raises while rows flow: for a masked identity
    the error's text is withheld there too; the compliance identity sees it."""
    import psycopg

    seen: dict[str, str] = {}
    for ident in (AGENT, AUDITOR):
        conn = _connect(backend, ident)
        try:
            with pytest.raises(psycopg.Error) as failed:
                for _ in conn.cursor().stream(shop.sql("SELECT ssn::int FROM {c}")):
                    pass
            exc = failed.value
            seen[str(ident.user)] = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )
            conn.rollback()
        finally:
            conn.close()
    assert not any(s in seen[str(AGENT.user)] for s in SECRETS), seen[str(AGENT.user)]
    assert "withheld" in seen[str(AGENT.user)]
    assert any(s in seen[str(AUDITOR.user)] for s in SECRETS)  # the oracle is real
