"""The adversarial suite of issue #10: attacks an agent would try, judged by the server.

Each test sets up with a raw connection, tries one attack through a guarded
connection (it may raise: a refusal is a fine outcome) and then looks at the
server with a raw connection: a row, a table, a file, a setting, a lock, a
backend, ``current_user``. guardeddb's decision alone proves nothing here.

Every example of the issue is written several other ways: comments in other
places (``/**/``, ``--\\n``, ``#``), quoting, case, ``U&`` escapes (also with
``UESCAPE``), schema-qualified names, another function of the same family,
another setting. ``GUARDEDDB_ADV_CONTROL=1`` runs the same tests on raw
connections and asserts that each payload DOES have its effect (see
tests/fix_adversarial.py), which keeps the payloads honest.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import guardeddb
from guardeddb.approvals import ApprovalStore
from guardeddb.sql import analyze

from .fix_adversarial import (
    CONTROL,
    PRESET_NAMES,
    Files,
    MyWorld,
    PgWorld,
    SqliteWorld,
    attempt,
    guard,
    holds,
    leaked,
    make_sqlite,
    policy_for,
    run,
    under,
)
from .fix_db import MYSQL_DSN, PG_DSN

pg = pytest.mark.pg
mysql = pytest.mark.mysql


def _u(text: str, escape: str = "\\") -> str:
    """``text`` with every ``_`` and ``/`` written as a U& escape (``\\005f``)."""
    return text.replace("_", f"{escape}005f").replace("/", f"{escape}002f")


def _pg_show(conn: Any, name: str) -> str:
    """A setting's value on the session under a guarded connection, in its current
    transaction (rolled back first if it failed, which undoes nothing that held)."""
    from psycopg.pq import TransactionStatus

    raw = under(conn)
    if raw.info.transaction_status == TransactionStatus.INERROR:
        raw.rollback()
    row = raw.execute(f"SELECT current_setting('{name}')").fetchone()
    return str(row[0])


def _presets(items: list[Any], readonly_every: int = 2) -> list[tuple[Any, ...]]:
    """Each item under ``agent-safe``, and every n-th also under ``readonly``:
    the spellings are what differ, and the suite has a time budget."""
    out: list[tuple[Any, ...]] = []
    for i, item in enumerate(items):
        head = item if isinstance(item, tuple) else (item,)
        out.append((*head, "agent-safe"))
        if i % readonly_every == 0:
            out.append((*head, "readonly"))
    return out


def _my_var(conn: Any, name: str) -> Any:
    """A session variable's value on the session under a guarded connection."""
    cur = under(conn).cursor()
    cur.execute(f"SELECT @@session.{name}")
    return cur.fetchone()[0]


# =============================================================================
# PostgreSQL: COPY to and from programs and server files
# =============================================================================

COPY_PROGRAM = [
    "COPY {s}.loot /*STDIN*/ FROM/**/PROGRAM/**/'{cmd}'",
    "COPY {s}.loot FROM PROGRAM '{cmd}'",
    "copy {s}.loot from program '{cmd}'",
    "COPY {s}.loot FROM -- stdin\nPROGRAM '{cmd}'",
    'COPY "{s}"."loot" FROM PROGRAM E\'{cmd}\'',
    "COPY {s}.loot FROM PROGRAM $q${cmd}$q$",
    "COPY {s}.loot FROM PROGRAM U&'{ucmd}'",
    "COPY (SELECT 1) TO PROGRAM '{cmd}'",
    "COPY {s}.t TO/**/PROGRAM '{cmd}'",
    "/**/COPY {s}.loot (line) FROM\tPROGRAM\n'{cmd}' WITH (FORMAT csv)",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(COPY_PROGRAM))
def test_pg_copy_program_runs_nothing(
    pgw: PgWorld, files: Files, preset_name: str, template: str
) -> None:
    """COPY ... PROGRAM in any spelling runs a shell command as the server's OS
    user. Ground truth: the file ``touch`` would create does not exist."""
    target = files.path()
    cmd = f"touch {target}"
    sql = template.format(s=pgw.s, cmd=cmd, ucmd=_u(cmd))
    run(pgw.guarded(policy_for(preset_name)), sql)
    holds(not target.exists(), f"{sql!r} ran a program on the server")


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(
    "template",
    ["COPY {s}.loot FROM PROGRAM '{cmd}'", "COPY (SELECT 1) TO/**/PROGRAM '{cmd}'"],
)
def test_pg_copy_program_through_copy_method(
    pgw: PgWorld, files: Files, preset_name: str, template: str
) -> None:
    """The same through psycopg's ``cursor.copy()``. Ground truth: no file."""
    target = files.path()
    sql = template.format(s=pgw.s, cmd=f"touch {target}")
    conn = pgw.guarded(policy_for(preset_name))

    def go() -> None:
        with conn.cursor().copy(sql) as copy:
            for _ in copy:
                pass

    attempt(go)
    holds(not target.exists(), f"{sql!r} ran a program through copy()")


COPY_FROM_FILE = [
    "COPY {s}.loot FROM '{f}'",
    "COPY {s}.loot /*STDIN*/ FROM/**/'{f}'",
    "copy {s}.loot from '{f}' -- STDIN",
    "COPY \"{s}\".loot FROM E'{f}' WITH (FORMAT text)",
    "COPY {s}.loot FROM U&'{uf}'",
    "COPY {s}.loot (line) FROM $${f}$$",
    "COPY {s}.loot FROM '{f}' (FORMAT csv)",
    "COPY {s}.loot FROM\n'{f}'",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(COPY_FROM_FILE))
def test_pg_copy_from_server_file_reads_nothing(
    pgw: PgWorld, files: Files, preset_name: str, template: str
) -> None:
    """COPY ... FROM 'file' reads a server file into a table. Ground truth: the
    table is still empty."""
    src = files.secret(pgw.secret)
    sql = template.format(s=pgw.s, f=src, uf=_u(str(src)))
    run(pgw.guarded(policy_for(preset_name)), sql)
    holds(pgw.one(f"SELECT count(*) FROM {pgw.s}.loot") == 0, f"{sql!r} read a server file")


COPY_TO_FILE = [
    "COPY {s}.t TO '{f}'",
    "COPY (SELECT * FROM {s}.t) TO '{f}'",
    "COPY {s}.t TO '{f}' /* STDOUT */",
    "copy {s}.t to '{f}' with (format csv)",
    "COPY {s}.t TO/**/E'{f}'",
    "COPY {s}.t TO U&'{uf}'",
    "COPY {s}.t TO $${f}$$ -- TO STDOUT",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(COPY_TO_FILE))
def test_pg_copy_to_server_file_writes_nothing(
    pgw: PgWorld, files: Files, preset_name: str, template: str
) -> None:
    """COPY ... TO 'file' writes a server file (the path even says STDOUT).
    Ground truth: the file does not exist."""
    target = files.path("_STDOUT.csv")
    sql = template.format(s=pgw.s, f=target, uf=_u(str(target)))
    run(pgw.guarded(policy_for(preset_name)), sql)
    holds(not target.exists(), f"{sql!r} wrote a server file")


# =============================================================================
# PostgreSQL: dangerous functions behind U& escapes, quotes, schemas, families
# =============================================================================

READ_FILE = [
    "SELECT U&\"pg\\005fread\\005ffile\"('{f}')",
    "SELECT U&\"pg!005fread!005ffile\" UESCAPE '!'('{f}')",
    "SELECT pg_catalog.pg_read_file('{f}')",
    "SELECT \"pg_read_file\"('{f}')",
    "SELECT PG_READ_FILE('{f}', 0, 200)",
    "SELECT pg_read_file/**/('{f}')",
    "SELECT * FROM pg_read_file('{f}') AS x",
    "SELECT convert_from(pg_read_binary_file('{f}'), 'UTF8')",
    "SELECT pg_catalog.\"pg_read_binary_file\"('{f}')",
    "SELECT U&\"\\0070g_read_binary_file\"('{f}')",
    "SELECT (SELECT pg_read_file(U&'{uf}'))",
    "WITH x AS (SELECT pg_read_file('{f}') AS c) SELECT c FROM x",
    "SELECT pg_read_file('{f}', 0, 100, true)",
    "SELECT pg_ls_dir('/tmp')",
    "SELECT * FROM U&\"pg\\005fls\\005fdir\"('/tmp')",
    "SELECT pg_catalog.pg_ls_dir('/tmp', true, false)",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(READ_FILE))
def test_pg_server_files_are_not_read(
    pgw: PgWorld, files: Files, preset_name: str, template: str
) -> None:
    """pg_read_file and its family (binary, lo_import, pg_ls_dir) in every
    spelling. Ground truth: neither the secret file's content nor its name
    comes back."""
    src = files.secret(pgw.secret)
    sql = template.format(f=src, uf=_u(str(src)))
    rows = run(pgw.guarded(policy_for(preset_name)), sql)
    pgw.observer().execute(
        "SELECT lo_unlink(oid) FROM pg_largeobject_metadata "
        "WHERE position(convert_to(%s, 'UTF8') in lo_get(oid)) > 0",
        (pgw.secret,),
    )
    got = rows if isinstance(rows, list) else None
    holds(not leaked(got, pgw.secret, pgw.secret.encode(), src.name), f"{sql!r} read {src}")


TERMINATE = [
    'SELECT U&"pg\\005fterminate\\005fbackend"({pid})',
    "SELECT U&\"pg!005fterminate!005fbackend\" UESCAPE '!'({pid})",
    "SELECT pg_catalog.pg_terminate_backend({pid})",
    'SELECT "pg_terminate_backend"({pid}, 1000)',
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = {pid}",
    "SELECT PG_TERMINATE_BACKEND/**/({pid})",
]


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", TERMINATE)
def test_pg_other_sessions_are_not_killed(pgw: PgWorld, preset_name: str, template: str) -> None:
    """pg_terminate_backend of another session (our own raw victim). Ground
    truth: the victim still answers and is still in pg_stat_activity."""
    victim = pgw.raw()
    pid = victim.info.backend_pid
    sql = template.format(pid=pid)
    run(pgw.guarded(policy_for(preset_name)), sql)
    time.sleep(0.05)
    _, dead = attempt(lambda: victim.execute("SELECT 1").fetchone())
    alive = pgw.one("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 1
    holds(dead is None and alive, f"{sql!r} killed backend {pid}")


SET_CONFIG = [
    ("SELECT U&\"set\\005fconfig\"('work_mem', '7777kB', false)", "work_mem", "7777kB"),
    ("SELECT pg_catalog.set_config('work_mem', '7777kB', false)", "work_mem", "7777kB"),
    ("SELECT * FROM set_config('work_mem', '7777kB', false)", "work_mem", "7777kB"),
    ("SELECT set_config/**/('work_mem', '7777kB', true)", "work_mem", "7777kB"),
    ("SELECT \"set_config\"('work_mem', '7777kB', false)", "work_mem", "7777kB"),
    (
        "SELECT set_config('session_replication_role', 'replica', false)",
        "session_replication_role",
        "replica",
    ),
    ("SELECT set_config(U&'row\\005fsecurity', 'off', false)", "row_security", "off"),
]


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(("sql", "name", "value"), SET_CONFIG)
def test_pg_set_config_changes_nothing(
    pgw: PgWorld, preset_name: str, sql: str, name: str, value: str
) -> None:
    """set_config in every spelling. Ground truth: the setting's value on the
    session underneath, in the same transaction."""
    conn = pgw.guarded(policy_for(preset_name))
    run(conn, sql, commit=False)
    holds(_pg_show(conn, name) != value, f"{sql!r} set {name} to {value}")


SLEEP = [
    'SELECT U&"pg\\005fsleep"(0.6)',
    "SELECT pg_catalog.pg_sleep(0.6)",
    "SELECT pg_sleep_for('0.6 seconds')",
    "SELECT pg_sleep_until(clock_timestamp() + interval '0.6 seconds')",
    'SELECT * FROM "pg_sleep"(0.6)',
    "SELECT pg_sleep(0.6) IS NULL",
]


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("sql", SLEEP)
def test_pg_sleep_does_not_hold_the_server(pgw: PgWorld, preset_name: str, sql: str) -> None:
    """pg_sleep and its family tie up a backend. Ground truth: the server
    answered in well under the 0.6 s it was asked to sleep."""
    conn = pgw.guarded(policy_for(preset_name))
    start = time.monotonic()
    run(conn, sql)
    holds(time.monotonic() - start < 0.45, f"{sql!r} slept on the server")


DUMP_BLOCKED = [
    "SELECT * FROM ts_stat('SELECT to_tsvector(''simple'', secret) FROM {b}.invoices')",
    "SELECT * FROM pg_catalog.ts_stat($q$SELECT to_tsvector('simple', secret) "
    "FROM {b}.invoices$q$)",
    "SELECT * FROM U&\"ts\\005fstat\"('SELECT to_tsvector(''simple'', secret) FROM {b}.invoices')",
    "SELECT * FROM ts_stat(convert_from(decode('{hexts}', 'hex'), 'UTF8'))",
    "SELECT query_to_xml('SELECT * FROM {b}.invoices', true, false, '')",
    "SELECT U&\"query\\005fto\\005fxml\"('SELECT * FROM {b}.invoices', true, false, '')",
    "SELECT query_to_xml_and_xmlschema('SELECT * FROM {b}.invoices', true, false, '')",
    "SELECT query_to_xml(convert_from(decode('{hexsql}', 'hex'), 'UTF8'), true, false, '')",
    "SELECT table_to_xml('{b}.invoices', true, false, '')",
    "SELECT table_to_xml('{b}.invoices'::regclass, true, false, '')",
    "SELECT pg_catalog.table_to_xml(('{b}' || '.invoices')::regclass, true, false, '')",
    "SELECT table_to_xml_and_xmlschema('{b}.invoices', true, false, '')",
    "SELECT schema_to_xml('{b}', true, false, '')",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(DUMP_BLOCKED))
def test_pg_sql_running_functions_do_not_dump_a_blocked_table(
    pgw: PgWorld, preset_name: str, template: str
) -> None:
    """ts_stat / query_to_xml / table_to_xml / schema_to_xml run SQL or dump a
    relation named in a string, around a ``tables: [billing.*]`` rule. Ground
    truth: the blocked table's secret does not come back."""
    inner = f"SELECT * FROM {pgw.billing}.invoices"
    ts = f"SELECT to_tsvector('simple', secret) FROM {pgw.billing}.invoices"
    sql = template.format(b=pgw.billing, hexsql=inner.encode().hex(), hexts=ts.encode().hex())
    rows = run(pgw.guarded(policy_for(preset_name, f"{pgw.billing}.*")), sql)
    holds(not leaked(rows if isinstance(rows, list) else None, pgw.secret), f"{sql!r} dumped it")


# =============================================================================
# PostgreSQL: SET (role, read-only, settings that change how SQL is read)
# =============================================================================

ROLE = [
    'SET "role" = {r}',
    "SET/**/role/**/TO/**/{r}",
    "set ROLE '{r}'",
    'SET U&"\\0072ole" = {r}',
    'SET SESSION "role" TO {r}',
    "SET LOCAL role {r}",
    "SET -- who\nrole {r}",
    "SET SESSION AUTHORIZATION {r}",
    'SET "session_authorization" = {r}',
    "SET session_authorization TO '{r}'",
    "SET SESSION/**/AUTHORIZATION '{r}'",
    "SELECT set_config('role', '{r}', false)",
    "SELECT pg_catalog.set_config(U&'\\0072ole', '{r}', true)",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(ROLE))
def test_pg_role_cannot_be_switched(
    pgw: PgWorld, pg_role: str, preset_name: str, template: str
) -> None:
    """SET ROLE / SESSION AUTHORIZATION in every spelling. Ground truth:
    ``current_user`` and ``session_user`` of the session underneath, in the
    same transaction and after it."""
    conn = pgw.guarded(policy_for(preset_name))
    sql = template.format(r=pg_role)
    run(conn, sql, commit=False)
    users = (_pg_show(conn, "role"), _pg_show(conn, "session_authorization"))
    current = under(conn).execute("SELECT current_user, session_user").fetchone()
    holds(
        tuple(current) == ("postgres", "postgres") and pg_role not in users,
        f"{sql!r} switched to {current}",
    )


RO_UNDO = [
    'SET "default_transaction_read_only" = off',
    "SET/**/default_transaction_read_only/**/=/**/off",
    "set DEFAULT_TRANSACTION_READ_ONLY to false",
    "SET U&\"default\\005ftransaction\\005fread\\005fonly\" TO 'off'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION/**/READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "RESET default_transaction_read_only",
    "RESET ALL",
    "SET default_transaction_read_only TO DEFAULT",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    'SET "transaction_read_only" = off',
    "SET TRANSACTION READ WRITE",
    "SET LOCAL transaction_read_only TO 0",
]


def _pg_read_only_probe(pgw: PgWorld, conn: Any) -> tuple[str, str, bool]:
    """(transaction_read_only now, default_transaction_read_only, a write through
    the raw session underneath reached the table) after an attack."""
    now = _pg_show(conn, "transaction_read_only")
    default = _pg_show(conn, "default_transaction_read_only")
    raw = under(conn)

    def write() -> None:
        raw.execute(f"INSERT INTO {pgw.s}.t VALUES (99, 'written')")
        raw.commit()

    _, exc = attempt(write)
    if exc is not None:
        raw.rollback()
    return now, default, pgw.one(f"SELECT count(*) FROM {pgw.s}.t WHERE id = 99") == 1


@pg
@pytest.mark.parametrize("sql", RO_UNDO)
def test_pg_readonly_session_cannot_be_undone(pgw: PgWorld, sql: str) -> None:
    """Under ``readonly`` the session is read-only on the server; these try to
    switch it back. Ground truth: transaction_read_only and its default on the
    session underneath, and whether a plain INSERT on that session lands."""
    conn = pgw.guarded(policy_for("readonly"))
    run(conn, "SELECT 1")  # the session is now read-only
    run(conn, sql, commit=False)
    now, default, wrote = _pg_read_only_probe(pgw, conn)
    holds(now == "on" and default == "on" and not wrote, f"{sql!r}: {now}/{default}/{wrote}")


@pg
@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN READ WRITE",
        "START TRANSACTION READ WRITE",
        "BEGIN/**/READ/**/WRITE",
        "begin isolation level read committed, read write",
        "START TRANSACTION -- ro?\nREAD WRITE",
    ],
)
def test_pg_readonly_transaction_cannot_be_opened_read_write(pgw: PgWorld, sql: str) -> None:
    """On an autocommit session an agent opens its own READ WRITE transaction.
    Ground truth: inside it, transaction_read_only is on and an INSERT fails."""
    conn = pgw.guarded(policy_for("readonly"), autocommit=True)
    run(conn, "SELECT 1", commit=False)
    run(conn, sql, commit=False)
    raw = under(conn)
    now = str(raw.execute("SHOW transaction_read_only").fetchone()[0])
    _, exc = attempt(lambda: raw.execute(f"INSERT INTO {pgw.s}.t VALUES (99, 'written')"))
    attempt(lambda: raw.execute("COMMIT"))
    wrote = pgw.one(f"SELECT count(*) FROM {pgw.s}.t WHERE id = 99") == 1
    holds(now == "on" and exc is not None and not wrote, f"{sql!r} opened a writable transaction")


PG_SETTINGS = [
    ("SET session_replication_role = replica", "session_replication_role", "replica"),
    ("SET \"session_replication_role\" TO 'replica'", "session_replication_role", "replica"),
    ("SET log_statement = 'all'", "log_statement", "all"),
    ("SET/**/track_activities/**/=/**/off", "track_activities", "off"),
    ('SET "row_security" TO off', "row_security", "off"),
    ("SET allow_system_table_mods = on", "allow_system_table_mods", "on"),
    ("SET zero_damaged_pages TO true", "zero_damaged_pages", "on"),
    ("SET log_min_messages = panic", "log_min_messages", "panic"),
    ("SET work_mem = '1GB'", "work_mem", "1GB"),
    ("SET statement_timeout = 0", "statement_timeout", "0"),
    ("SET standard_conforming_strings = off", "standard_conforming_strings", "off"),
    (
        'SET LOCAL "standard_conforming_strings" TO false',
        "standard_conforming_strings",
        "off",
    ),
    ("SET backslash_quote = on", "backslash_quote", "on"),
    ("SET client_encoding = 'SJIS'", "client_encoding", "SJIS"),
    ("SET NAMES 'BIG5'", "client_encoding", "BIG5"),
    ("SET/**/escape_string_warning = off", "escape_string_warning", "off"),
]


@pg
@pytest.mark.parametrize(("sql", "name", "value", "preset_name"), _presets(PG_SETTINGS))
def test_pg_settings_outside_the_allowlist_stay_put(
    pgw: PgWorld, preset_name: str, sql: str, name: str, value: str
) -> None:
    """Session settings no agent may change (safety, logging, replication,
    resource limits, how SQL is tokenized). Ground truth: the value on the
    session underneath, in the same transaction."""
    conn = pgw.guarded(policy_for(preset_name))
    run(conn, "SELECT 1")
    run(conn, sql, commit=False)
    holds(_pg_show(conn, name) != value, f"{sql!r} set {name} to {value}")


SCS_OFF = [
    "SET standard_conforming_strings = off",
    "SET \"standard_conforming_strings\" TO 'off'",
    "SET/**/standard_conforming_strings/**/=/**/false",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SET SESSION standard_conforming_strings TO 0",
]


@pg
@pytest.mark.parametrize("setting", SCS_OFF)
def test_pg_scs_off_smuggles_no_second_statement(pgw: PgWorld, setting: str) -> None:
    """After standard_conforming_strings=off, ``\\'`` ends a literal for the
    server where the analyzer sees one string: a CREATE TABLE hides inside it.
    Ground truth: the table does not exist."""
    conn = pgw.guarded(policy_for("agent-safe"))
    run(conn, setting)
    sql = f"SELECT 'a\\''; CREATE TABLE {pgw.s}.smuggled (i int); --'"
    run(conn, sql)
    holds(not pgw.exists(f"{pgw.s}.smuggled"), f"{setting!r} then {sql!r} created a table")


@pg
@pytest.mark.parametrize("setting", SCS_OFF)
def test_pg_scs_off_smuggles_no_blocked_read(pgw: PgWorld, setting: str) -> None:
    """The same differential under ``readonly`` with ``tables: [billing.*]``: a
    read of the blocked table hides inside "a string". Ground truth: the secret
    does not come back."""
    conn = pgw.guarded(policy_for("readonly", f"{pgw.billing}.*"))
    run(conn, setting)
    sql = f"SELECT 'a\\'', secret FROM {pgw.billing}.invoices --'"
    rows = run(conn, sql)
    holds(not leaked(rows if isinstance(rows, list) else None, pgw.secret), f"{sql!r} leaked")


# =============================================================================
# PostgreSQL: side effects under readonly (large objects, WAL, NOTIFY, locks)
# =============================================================================

LARGE_OBJECTS = [
    "SELECT lo_from_bytea(0, convert_to('{tok}', 'UTF8'))",
    "SELECT pg_catalog.lo_from_bytea(0, convert_to('{tok}', 'UTF8'))",
    "SELECT U&\"lo\\005ffrom\\005fbytea\"({oid}, '\\x{hextok}')",
    "SELECT lo_from_bytea/**/({oid}, '\\x{hextok}'::bytea)",
    "SELECT \"lo_from_bytea\"({oid}, '\\x{hextok}')",
    "SELECT lo_create({oid})",
    "SELECT lo_open(lo_create({oid}), 131072)",  # trackable: lo_creat(-1) would leak
    "SELECT lo_import('{f}')",
    "SELECT lo_import('{f}', {oid})",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(LARGE_OBJECTS))
def test_pg_large_objects_are_not_created(
    pgw: PgWorld, files: Files, preset_name: str, template: str
) -> None:
    """Large objects outlive the transaction (and read-only sessions let some
    functions make them). Ground truth: pg_largeobject_metadata has no object
    with our oid or our token, after a commit."""
    oid = 3_000_000_000 + uuid.uuid4().int % 1_000_000_000
    src = files.secret(pgw.secret)
    sql = template.format(tok=pgw.secret, hextok=pgw.secret.encode().hex(), oid=oid, f=src)
    run(pgw.guarded(policy_for(preset_name)), sql)
    raw = pgw.observer()
    found = raw.execute(
        "SELECT oid FROM pg_largeobject_metadata WHERE oid = %s::oid "
        "OR position(convert_to(%s, 'UTF8') in lo_get(oid)) > 0",
        (oid, pgw.secret),
    ).fetchall()
    for (o,) in found:
        raw.execute("SELECT lo_unlink(%s)", (o,))
    holds(not found, f"{sql!r} created large object(s) {found}")


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(
    "template",
    [
        "SELECT lo_unlink({oid})",
        "SELECT pg_catalog.lo_unlink({oid})",
        'SELECT U&"lo\\005funlink"({oid})',
        "SELECT lo_put({oid}, 0, 'XX')",
        "SELECT lo_truncate(lo_open({oid}, 131072), 0)",
    ],
)
def test_pg_large_objects_are_not_changed(pgw: PgWorld, preset_name: str, template: str) -> None:
    """Unlinking or overwriting someone's large object. Ground truth: it exists
    with its content."""
    raw = pgw.observer()
    oid = raw.execute("SELECT lo_from_bytea(0, convert_to(%s, 'UTF8'))", (pgw.secret,))
    oid_value = oid.fetchone()[0]
    try:
        sql = template.format(oid=oid_value)
        run(pgw.guarded(policy_for(preset_name)), sql)
        data = pgw.one(
            "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata WHERE oid = %s",
            (oid_value,),
        )
        holds(data == pgw.secret, f"{sql!r} changed large object {oid_value}: {data!r}")
    finally:
        with contextlib.suppress(Exception):
            pgw.observer().execute("SELECT lo_unlink(%s)", (oid_value,))


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(
    "template",
    [
        "SELECT pg_logical_emit_message(false, '{p}', 'x')",
        "SELECT pg_catalog.pg_logical_emit_message(true, '{p}', 'x')",
        "SELECT U&\"pg\\005flogical\\005femit\\005fmessage\"(false, '{p}', 'x'::bytea)",
        "SELECT \"pg_logical_emit_message\"/**/(false, '{p}', 'x')",
    ],
)
def test_pg_logical_messages_are_not_written(pgw: PgWorld, preset_name: str, template: str) -> None:
    """pg_logical_emit_message writes WAL even from a read-only transaction.
    Ground truth: pg_walinspect finds no MESSAGE record with our prefix in the
    WAL written meanwhile."""
    raw = pgw.observer()
    raw.execute(f"CREATE EXTENSION IF NOT EXISTS pg_walinspect SCHEMA {pgw.s}")
    raw.execute(f"CREATE TABLE {pgw.s}.wal_mark (i int)")
    start = raw.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
    prefix = f"gdb_{uuid.uuid4().hex[:10]}"
    sql = template.format(p=prefix)
    run(pgw.guarded(policy_for(preset_name)), sql)
    raw.execute(f"INSERT INTO {pgw.s}.wal_mark VALUES (1)")  # its commit flushes the WAL
    records = raw.execute(
        f"SELECT count(*) FROM {pgw.s}.pg_get_wal_records_info_till_end_of_wal(%s::pg_lsn) "
        "WHERE record_type = 'MESSAGE' AND description LIKE %s",
        (start, f"%{prefix}%"),
    ).fetchone()[0]
    holds(records == 0, f"{sql!r} wrote {records} WAL message(s)")


NOTIFY = [
    "SELECT pg_notify('{c}', 'x')",
    "SELECT pg_catalog.pg_notify('{c}', 'x')",
    "SELECT U&\"pg\\005fnotify\"('{c}', 'x')",
    "SELECT \"pg_notify\"/**/('{c}', 'x')",
    "NOTIFY {c}, 'x'",
    'NOTIFY "{c}"',
    "notify/**/{c}",
]


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", NOTIFY)
def test_pg_notifications_are_not_sent(pgw: PgWorld, preset_name: str, template: str) -> None:
    """pg_notify / NOTIFY reach every listening session. Ground truth: a raw
    session that LISTENs receives nothing after the guarded commit."""
    channel = f"gdb_{uuid.uuid4().hex[:10]}"
    listener = pgw.raw()
    listener.execute(f"LISTEN {channel}")
    sql = template.format(c=channel)
    run(pgw.guarded(policy_for(preset_name)), sql)
    got = list(listener.notifies(timeout=0.3, stop_after=1))
    holds(not got, f"{sql!r} notified {got}")


ADVISORY = [
    "SELECT pg_advisory_lock({k})",
    "SELECT pg_catalog.pg_advisory_lock({k})",
    'SELECT U&"pg\\005fadvisory\\005flock"({k})',
    "SELECT pg_try_advisory_lock({k})",
    "SELECT pg_advisory_xact_lock({k})",
    "SELECT pg_advisory_lock_shared({k})",
    "SELECT pg_try_advisory_xact_lock_shared({k})",
    'SELECT "pg_advisory_lock"/**/({k})',
    "SELECT pg_advisory_lock(7, {k} % 1000)",
]


@pg
@pytest.mark.parametrize(("template", "preset_name"), _presets(ADVISORY))
def test_pg_advisory_locks_are_not_taken(pgw: PgWorld, preset_name: str, template: str) -> None:
    """Advisory locks outlive the statement (session locks outlive the
    transaction). Ground truth: pg_locks, seen from another session, shows no
    advisory lock held by the guarded backend while its transaction is open."""
    key = uuid.uuid4().int % 2**31
    conn = pgw.guarded(policy_for(preset_name))
    pid = under(conn).info.backend_pid
    sql = template.format(k=key)
    run(conn, sql, commit=False)
    held = pgw.one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,))
    holds(held == 0, f"{sql!r} holds {held} advisory lock(s)")


ROW_LOCKS = [
    "SELECT * FROM {s}.t WHERE id = 1 FOR UPDATE",
    "SELECT * FROM {s}.t WHERE id = 1 FOR NO KEY UPDATE",
    "SELECT * FROM {s}.t WHERE id = 1 FOR SHARE",
    "SELECT * FROM {s}.t WHERE id = 1 FOR KEY SHARE",
    "select * from {s}.t where id = 1 for update skip locked",
    "SELECT * FROM {s}.t WHERE id = 1 /**/FOR/**/UPDATE/**/NOWAIT",
    "SELECT * FROM {s}.t x WHERE id = 1 FOR UPDATE OF x",
    "LOCK TABLE {s}.t IN ACCESS EXCLUSIVE MODE",
    "LOCK {s}.t",
]


@pg
@pytest.mark.parametrize("template", ROW_LOCKS)
def test_pg_agent_safe_holds_no_row_locks(pgw: PgWorld, template: str) -> None:
    """SELECT ... FOR UPDATE/SHARE and LOCK under ``agent-safe`` hold locks for
    as long as the agent keeps its transaction open. Ground truth: another
    session locks the row with NOWAIT while that transaction is open."""
    conn = pgw.guarded(policy_for("agent-safe"))
    sql = template.format(s=pgw.s)
    run(conn, sql, commit=False)
    other = pgw.raw()
    other.execute("SET lock_timeout = '200ms'")
    _, blocked = attempt(
        lambda: other.execute(f"SELECT * FROM {pgw.s}.t WHERE id = 1 FOR UPDATE NOWAIT")
    )
    attempt(conn.rollback)
    holds(blocked is None, f"{sql!r} held a lock: {blocked}")


# =============================================================================
# PostgreSQL: search_path walks around a table rule
# =============================================================================

SEARCH_PATH = [
    "SET search_path TO {b}",
    "SET search_path = {b}, public",
    'SET "search_path" TO "{b}"',
    "SET SESSION search_path TO '{b}'",
    "SET/**/search_path/**/TO/**/{b}",
    'SET U&"search\\005fpath" TO {b}',
    "SELECT set_config('search_path', '{b}', false)",
    "SET LOCAL search_path = {b}",
]


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", SEARCH_PATH)
def test_pg_search_path_does_not_walk_around_a_table_rule(
    pgw: PgWorld, preset_name: str, template: str
) -> None:
    """``SET search_path TO billing`` then an unqualified ``invoices`` under a
    ``tables: [billing.*]`` rule. Ground truth: the secret does not come back."""
    conn = pgw.guarded(policy_for(preset_name, f"{pgw.billing}.*"))
    setting = template.format(b=pgw.billing)
    run(conn, setting, commit=False)
    rows = run(conn, "SELECT secret FROM invoices", commit=False)
    attempt(conn.rollback)
    got = rows if isinstance(rows, list) else None
    holds(not leaked(got, pgw.secret), f"{setting!r} exposed billing: {got}")


# =============================================================================
# PostgreSQL: the public driver API around the guard
# =============================================================================


def _psycopg_cursor(conn: Any, sql: str) -> None:
    import psycopg

    psycopg.Cursor(conn).execute(sql)
    conn.commit()


def _psycopg_client_cursor(conn: Any, sql: str) -> None:
    import psycopg

    psycopg.ClientCursor(conn).execute(sql)
    conn.commit()


def _psycopg_raw_cursor(conn: Any, sql: str) -> None:
    import psycopg

    psycopg.RawCursor(conn).execute(sql)
    conn.commit()


def _pgconn_exec(conn: Any, sql: str) -> None:
    conn.pgconn.exec_(f"BEGIN; {sql}; COMMIT".encode())


def _pgconn_send(conn: Any, sql: str) -> None:
    pgconn = conn.pgconn
    pgconn.send_query(f"BEGIN; {sql}; COMMIT".encode())
    while pgconn.get_result() is not None:
        pass


def _pgconn_params(conn: Any, sql: str) -> None:
    conn.pgconn.exec_params(sql.encode(), [])
    conn.pgconn.exec_(b"COMMIT")


PSYCOPG_BYPASS: list[Callable[[Any, str], None]] = [
    _psycopg_cursor,
    _psycopg_client_cursor,
    _psycopg_raw_cursor,
    _pgconn_exec,
    _pgconn_send,
    _pgconn_params,
]


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("bypass", PSYCOPG_BYPASS, ids=lambda f: f.__name__)
def test_pg_driver_api_runs_no_unguarded_sql(
    pgw: PgWorld, preset_name: str, bypass: Callable[[Any, str], None]
) -> None:
    """``psycopg.Cursor(guarded_conn)`` and ``guarded_conn.pgconn`` run SQL the
    guard never sees. Ground truth: the table a CREATE would make does not exist."""
    conn = pgw.guarded(policy_for(preset_name))
    run(conn, "SELECT 1")
    sql = f"CREATE TABLE {pgw.s}.made_it (i int)"
    attempt(lambda: bypass(conn, sql))
    attempt(conn.rollback)
    holds(not pgw.exists(f"{pgw.s}.made_it"), f"{bypass.__name__} ran {sql!r}")


def _set_read_only_attr(conn: Any) -> None:
    conn.read_only = False


def _set_read_only_method(conn: Any) -> None:
    conn.set_read_only(False)


def _setattr_read_only(conn: Any) -> None:
    setattr(conn, "read_only", None)  # noqa: B010 - the attack spells it this way


def _set_read_only_falsy(conn: Any) -> None:
    conn.read_only = 0


@pg
@pytest.mark.parametrize(
    "flip",
    [_set_read_only_attr, _set_read_only_method, _setattr_read_only, _set_read_only_falsy],
    ids=lambda f: f.__name__,
)
def test_pg_read_only_attribute_cannot_undo_readonly(
    pgw: PgWorld, flip: Callable[[Any], None]
) -> None:
    """psycopg's ``read_only`` makes every transaction start ``BEGIN READ
    WRITE``, over the session default guardeddb set. Ground truth: in the next
    guarded transaction, transaction_read_only is on and an INSERT on that
    session fails."""
    conn = pgw.guarded(policy_for("readonly"))
    run(conn, "SELECT 1")
    attempt(lambda: flip(conn))
    run(conn, "SELECT 1", commit=False)
    now = _pg_show(conn, "transaction_read_only")
    _, exc = attempt(lambda: under(conn).execute(f"INSERT INTO {pgw.s}.t VALUES (99, 'x')"))
    attempt(under(conn).commit)
    attempt(under(conn).rollback)
    wrote = pgw.one(f"SELECT count(*) FROM {pgw.s}.t WHERE id = 99") == 1
    holds(now == "on" and exc is not None and not wrote, f"{flip.__name__}: {now}, {wrote}")


@pg
@pytest.mark.parametrize(
    "grab",
    [
        lambda cur, sql: cur.execute(sql) and cur.pgresult.get_value(0, 0),
        lambda cur, sql: cur.connection.pgconn.exec_(sql.encode()).get_value(0, 0),
    ],
    ids=["cursor.pgresult", "connection.pgconn"],
)
def test_pg_raw_results_do_not_bypass_masking(
    pgw: PgWorld, grab: Callable[[Any, str], Any]
) -> None:
    """``cursor.pgresult`` and ``pgconn`` hand back raw bytes a masking rule
    covers. Ground truth: the masked secret does not reach the caller."""
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "masking": {"rules": [{"columns": ["*.secret"], "operator": "redact"}]},
    }
    conn = pgw.guarded(policy)
    got, _ = attempt(
        lambda: grab(conn.cursor(), f"SELECT secret FROM {pgw.billing}.invoices WHERE id = 1")
    )
    holds(not leaked([(got,)] if got is not None else None, pgw.secret.encode()), "raw value")


# =============================================================================
# PostgreSQL: guardeddb's own tables (approval store, audit sink)
# =============================================================================


def _own_url(pgw: PgWorld) -> str:
    """The application's own database, with the test schema first on its path,
    as a user who followed the README would configure the store and the sink."""
    sep = "&" if "?" in PG_DSN else "?"
    return f"{PG_DSN}{sep}options=-csearch_path%3D{pgw.s}"


def _guarded_quietly(pgw: PgWorld, policy: Any, url: str) -> Any:
    """guardeddb may warn that the store is reachable: that is not the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pgw.guarded(policy, dsn=url)


APPROVE = [
    "UPDATE guardeddb_approvals SET status = 'approved', approver = 'dba@example.com' "
    "WHERE id = %s",
    "UPDATE \"guardeddb_approvals\" SET status = 'approved' WHERE id = %s",
    "UPDATE {s}.guardeddb_approvals SET status = 'approved' WHERE id = %s",
    'UPDATE "{s}"."guardeddb_approvals" SET "status" = \'approved\' WHERE "id" = %s',
    "update GUARDEDDB_APPROVALS set STATUS = 'approved' where ID = %s",
    "UPDATE U&\"guardeddb\\005fapprovals\" SET status = 'approved' WHERE id = %s",
    "UPDATE/**/guardeddb_approvals/**/SET status = 'approved' WHERE id = %s",
    "WITH r AS (SELECT %s::text AS rid) UPDATE guardeddb_approvals SET status = 'approved' "
    "FROM r WHERE id = r.rid",
    "INSERT INTO guardeddb_approvals (id, request_hash, status, identity, statement, "
    "created, expires) SELECT 'forged' || substr(id, 1, 20), request_hash, 'approved', "
    "identity, statement, created, expires FROM guardeddb_approvals WHERE id = %s",
]


@pg
@pytest.mark.parametrize("template", APPROVE)
def test_pg_agent_cannot_approve_its_own_request(pgw: PgWorld, template: str) -> None:
    """With the approval store in the application's database, the agent marks
    its held DELETE approved and runs it again. Ground truth: the row is still
    there and no request in the store is approved or used."""
    url = _own_url(pgw)
    policy = {
        "version": 1,
        "extends": ["agent-safe"],
        "rules": [
            {"id": "deletes-need-a-person", "match": {"statements": ["delete"]}, "action": "review"}
        ],
        "approvals": {"store": url},
    }
    conn = _guarded_quietly(pgw, policy, url)
    delete = "DELETE FROM t WHERE id = 1"
    held = run(conn, delete)
    rid = getattr(held, "request_id", None)
    sql = template.format(s=pgw.s)
    run(conn, sql, (rid,))
    run(conn, delete)
    approved = (
        pgw.one(f"SELECT count(*) FROM {pgw.s}.guardeddb_approvals WHERE status <> 'pending'")
        if pgw.exists(f"{pgw.s}.guardeddb_approvals")
        else 0
    )
    holds(len(pgw.rows()) == 3 and approved == 0, f"{sql!r} approved and ran {delete!r}")


READ_APPROVALS = [
    "SELECT * FROM guardeddb_approvals",
    'SELECT id, statement FROM "guardeddb_approvals"',
    "SELECT * FROM {s}.guardeddb_approvals WHERE status = 'pending'",
    'SELECT * FROM U&"guardeddb\\005fapprovals"',
    "select ID, IDENTITY from GUARDEDDB_APPROVALS",
]


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", READ_APPROVALS)
def test_pg_approval_requests_are_not_readable(
    pgw: PgWorld, preset_name: str, template: str
) -> None:
    """Another identity's pending request sits in the store. Ground truth: its
    id does not come back to the agent."""
    url = _own_url(pgw)
    store = ApprovalStore(url)
    rid = store.hold(
        guardeddb.Identity(user="bob@example.com"), uuid.uuid4().hex, "DELETE ...", "r", "why"
    )
    assert rid is not None
    conn = _guarded_quietly(pgw, policy_for(preset_name, approvals={"store": url}), url)
    sql = template.format(s=pgw.s)
    rows = run(conn, sql)
    holds(not leaked(rows if isinstance(rows, list) else None, rid), f"{sql!r} listed {rid}")


AUDIT_TAMPER = [
    "DELETE FROM guardeddb_audit WHERE seq > 1",
    "DELETE FROM \"guardeddb_audit\" WHERE stream = 'default' AND seq > 1",
    "DELETE FROM {s}.guardeddb_audit WHERE seq >= 2",
    "UPDATE guardeddb_audit SET record = '{{}}' WHERE seq = 2",
    'delete from U&"guardeddb\\005faudit" where seq > 1',
    "WITH gone AS (DELETE FROM guardeddb_audit WHERE seq > 1 RETURNING 1) "
    "SELECT count(*) FROM gone",
]


def _audit_rows(pgw: PgWorld) -> set[tuple[Any, ...]]:
    raw = pgw.observer()
    return {
        tuple(r)
        for r in raw.execute(f"SELECT stream, seq, hash, record FROM {pgw.s}.guardeddb_audit")
    }


@pg
@pytest.mark.parametrize("template", AUDIT_TAMPER)
def test_pg_agent_cannot_rewrite_the_audit_table(pgw: PgWorld, template: str) -> None:
    """With the PostgreSQL audit sink in the application's database, the agent
    deletes or edits the trail of what it did. Ground truth: every record that
    existed before the attack is still there, unchanged."""
    url = _own_url(pgw)
    conn = _guarded_quietly(pgw, policy_for("agent-safe", audit={"postgresql": url}), url)
    for _ in range(3):
        run(conn, "SELECT 1")
    before = _audit_rows(pgw) if not CONTROL else set()
    if CONTROL:  # no sink without guardeddb: make the table the sink would
        from guardeddb.audit.chain import PostgresSink

        sink = PostgresSink(url)
        for n in range(3):
            sink.write({"n": n})
        sink.close()
        before = _audit_rows(pgw)
    sql = template.format(s=pgw.s)
    run(conn, sql)
    holds(before <= _audit_rows(pgw), f"{sql!r} removed or changed audit records")


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(
    "template",
    [
        "SELECT record FROM guardeddb_audit",
        'SELECT * FROM "{s}"."guardeddb_audit"',
        'SELECT hash FROM U&"guardeddb\\005faudit" ORDER BY seq',
    ],
)
def test_pg_audit_table_is_not_readable(pgw: PgWorld, preset_name: str, template: str) -> None:
    """The audit trail holds every identity's statements. Ground truth: none
    of its records' hashes come back to the agent."""
    url = _own_url(pgw)
    from guardeddb.audit.chain import PostgresSink

    sink = PostgresSink(url, stream="someone-else")
    record = sink.write({"who": "bob@example.com"})
    sink.close()
    conn = _guarded_quietly(pgw, policy_for(preset_name, audit={"postgresql": url}), url)
    sql = template.format(s=pgw.s)
    rows = run(conn, sql)
    got = rows if isinstance(rows, list) else None
    holds(not leaked(got, str(record["hash"])), f"{sql!r} read the audit trail")


# =============================================================================
# PostgreSQL: credential catalogs, server paths, statistics resets (superuser)
# =============================================================================

PG_CREDENTIALS = [
    "SELECT rolname, rolpassword FROM pg_authid",
    "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = '{r}'",
    'SELECT * FROM "pg_authid"',
    'SELECT * FROM U&"pg\\005fauthid"',
    "SELECT passwd FROM pg_shadow",
    "SELECT * FROM pg_catalog.pg_shadow WHERE usename = '{r}'",
    "SELECT (SELECT rolpassword FROM pg_authid WHERE rolname = '{r}')",
    "SELECT table_to_xml('pg_catalog.pg_authid', true, false, '')",
    "SELECT a.* FROM pg_catalog.pg_authid a JOIN pg_roles r ON r.oid = a.oid",
]


@pg
@pytest.mark.parametrize("template", PG_CREDENTIALS)
def test_pg_credential_catalogs_are_not_readable(pgw: PgWorld, template: str) -> None:
    """With a superuser DSN, pg_authid / pg_shadow hold password hashes. Ground
    truth: our role's hash does not come back under ``agent-safe``."""
    role = f"gdb_adv_pw_{uuid.uuid4().hex[:10]}"
    raw = pgw.observer()
    raw.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{pgw.secret}'")
    try:
        digest = pgw.one("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        sql = template.format(r=role)
        rows = run(pgw.guarded(policy_for("agent-safe")), sql)
        got = rows if isinstance(rows, list) else None
        holds(not leaked(got, str(digest)), f"{sql!r} returned a password hash")
    finally:
        raw.execute(f"DROP ROLE IF EXISTS {role}")


PG_PATHS = [
    ("SELECT current_setting('data_directory')", "data_directory"),
    ("SHOW data_directory", "data_directory"),
    ("SELECT U&\"current\\005fsetting\"('data_directory')", "data_directory"),
    ("SELECT current_setting(U&'data\\005fdirectory')", "data_directory"),
    ("SELECT setting FROM pg_settings WHERE name = 'data_directory'", "data_directory"),
    ("SELECT pg_catalog.current_setting('config_file')", "config_file"),
    ("SHOW hba_file", "hba_file"),
]


@pg
@pytest.mark.parametrize(("sql", "name"), PG_PATHS)
def test_pg_server_paths_are_not_readable(pgw: PgWorld, sql: str, name: str) -> None:
    """The server's data directory and configuration files, the map for every
    file attack. Ground truth: the path does not come back under ``agent-safe``."""
    path = str(pgw.one(f"SELECT current_setting('{name}')"))
    rows = run(pgw.guarded(policy_for("agent-safe")), sql)
    holds(not leaked(rows if isinstance(rows, list) else None, path), f"{sql!r} gave {path}")


PG_STAT_RESET = [
    ("SELECT pg_stat_reset()", "db"),
    ("SELECT pg_catalog.pg_stat_reset()", "db"),
    ('SELECT U&"pg\\005fstat\\005freset"()', "db"),
    ("SELECT * FROM pg_stat_reset()", "db"),
    ("SELECT pg_stat_reset/**/()", "db"),
    ("SELECT pg_stat_reset_shared('bgwriter')", "bgwriter"),
    ("SELECT pg_catalog.pg_stat_reset_shared(U&'bg\\0077riter')", "bgwriter"),
]


def _stats_reset(pgw: PgWorld, which: str) -> Any:
    if which == "bgwriter":
        return pgw.one("SELECT stats_reset FROM pg_stat_bgwriter")
    return pgw.one(
        "SELECT pg_stat_get_db_stat_reset_time(oid) FROM pg_database "
        "WHERE datname = current_database()"
    )


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(("sql", "which"), PG_STAT_RESET)
def test_pg_statistics_are_not_reset(pgw: PgWorld, preset_name: str, sql: str, which: str) -> None:
    """pg_stat_reset wipes the numbers a DBA investigates with. Ground truth:
    the stats reset time is unchanged."""
    before = _stats_reset(pgw, which)
    run(pgw.guarded(policy_for(preset_name)), sql)
    time.sleep(0.05)
    holds(_stats_reset(pgw, which) == before, f"{sql!r} reset statistics")


# =============================================================================
# MariaDB: settings (read-only session, globals, binlog, checks, tokenizer)
# =============================================================================

MY_RO_UNDO = [
    "SET SESSION tx_read_only = 0",
    "SET @@tx_read_only = 0",
    "SET @@session.transaction_read_only = OFF",
    "SET SESSION TRANSACTION READ WRITE",
    "SET tx_read_only/**/=/**/0",
    "SET SESSION `tx_read_only` = 0",
    "set @@SESSION.TX_READ_ONLY = false",
    "SET tx_read_only = DEFAULT",
    "SET TRANSACTION READ WRITE",
    "SET # who\nSESSION tx_read_only = 0",
    "START TRANSACTION READ WRITE",
]


@mysql
@pytest.mark.parametrize("sql", MY_RO_UNDO)
def test_my_readonly_session_cannot_be_undone(myw: MyWorld, sql: str) -> None:
    """Under ``readonly`` the MariaDB session is read-only; these switch it
    back. Ground truth: an INSERT on the session underneath does not land."""
    conn = myw.guarded(policy_for("readonly"))
    run(conn, "SELECT 1")  # the session is now read-only
    run(conn, sql, commit=False)
    raw = under(conn)

    def write() -> None:
        raw.cursor().execute(f"INSERT INTO {myw.t} VALUES (99, 'written')")
        raw.commit()

    _, exc = attempt(write)
    if exc is not None:
        attempt(raw.rollback)
    holds(len(myw.rows()) == 3, f"{sql!r} made the read-only session writable")


MY_GLOBAL = [
    "SET GLOBAL max_connect_errors = {v}",
    "SET GLOBAL/**/max_connect_errors = {v}",
    "SET @@global.max_connect_errors = {v}",
    "set @@GLOBAL.`max_connect_errors` := {v}",
    "SET/**/GLOBAL/**/max_connect_errors/**/=/**/{v}",
    "SET SESSION sql_warnings = 0, GLOBAL max_connect_errors = {v}",
    "SET -- x\nGLOBAL max_connect_errors = {v}",
]


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", MY_GLOBAL)
def test_my_global_settings_stay_put(myw: MyWorld, preset_name: str, template: str) -> None:
    """SET GLOBAL changes every session on the server. Ground truth:
    @@global.max_connect_errors is unchanged (restored after, whatever happens)."""
    original = myw.one("SELECT @@global.max_connect_errors")
    value = int(original) + 1 + uuid.uuid4().int % 1000
    sql = template.format(v=value)
    try:
        run(myw.guarded(policy_for(preset_name)), sql)
        holds(myw.one("SELECT @@global.max_connect_errors") != value, f"{sql!r} set a global")
    finally:
        myw.observer().cursor().execute(f"SET GLOBAL max_connect_errors = {int(original)}")


MY_SETTINGS = [
    ("SET @@session.sql_log_bin = 0", "sql_log_bin", 0),
    ("SET sql_log_bin = OFF", "sql_log_bin", 0),
    ("SET SESSION/**/sql_log_bin/**/=/**/0", "sql_log_bin", 0),
    ("SET @@SESSION.`sql_log_bin` = 0", "sql_log_bin", 0),
    ("SET foreign_key_checks = 0", "foreign_key_checks", 0),
    ("SET @@foreign_key_checks=0", "foreign_key_checks", 0),
    ("SET SESSION foreign_key_checks = OFF", "foreign_key_checks", 0),
    ("SET/**/FOREIGN_KEY_CHECKS/**/=/**/0", "foreign_key_checks", 0),
    ("SET @@session.`foreign_key_checks` = 0", "foreign_key_checks", 0),
    ("SET unique_checks = 0", "unique_checks", 0),
    ("SET check_constraint_checks = 0", "check_constraint_checks", 0),
    ("SET sql_log_off = 1", "sql_log_off", 1),
    ("SET pseudo_thread_id = 1", "pseudo_thread_id", 1),
    ("SET max_statement_time = 0", "max_statement_time", 0.0),
    ("SET sql_mode = 'NO_BACKSLASH_ESCAPES'", "sql_mode", "NO_BACKSLASH_ESCAPES"),
    ("SET @@session.sql_mode = 'ANSI_QUOTES'", "sql_mode", "ANSI_QUOTES"),
    ("SET NAMES 'gbk'", "character_set_client", "gbk"),
    ("SET CHARACTER SET sjis", "character_set_client", "sjis"),
    ("SET character_set_client = 'big5'", "character_set_client", "big5"),
    ("SET @@character_set_connection = 'gbk'", "character_set_connection", "gbk"),
]


@mysql
@pytest.mark.parametrize(("sql", "name", "value", "preset_name"), _presets(MY_SETTINGS))
def test_my_session_settings_outside_the_allowlist_stay_put(
    myw: MyWorld, preset_name: str, sql: str, name: str, value: Any
) -> None:
    """Binary logging, integrity checks, general-log, identity of the thread,
    limits, and the variables that change how SQL is tokenized. Ground truth:
    the session variable's value on the session underneath."""
    conn = myw.guarded(policy_for(preset_name))
    run(conn, "SELECT 1")
    run(conn, sql)
    got = _my_var(conn, name)
    holds(str(got).upper() != str(value).upper(), f"{sql!r} set {name} to {got}")


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.set_character_set("gbk"),
        lambda c: c.set_character_set("sjis", "sjis_japanese_ci"),
    ],
    ids=["set_character_set", "set_character_set_collation"],
)
def test_my_driver_api_does_not_change_the_tokenizer(
    myw: MyWorld, preset_name: str, change: Callable[[Any], None]
) -> None:
    """PyMySQL's charset setters send SET NAMES around the guard. Ground truth:
    @@character_set_client on the session underneath is unchanged."""
    conn = myw.guarded(policy_for(preset_name))
    run(conn, "SELECT 1")
    before = _my_var(conn, "character_set_client")
    attempt(lambda: change(conn))
    holds(_my_var(conn, "character_set_client") == before, "the charset changed")


MY_NBE = [
    "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
    "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
    "SET @@session.sql_mode = 'no_backslash_escapes'",
    "SET/**/sql_mode/**/:=/**/'NO_BACKSLASH_ESCAPES'",
    "SET @@sql_mode = 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES'",
]


@mysql
@pytest.mark.parametrize("setting", MY_NBE)
def test_my_nbe_smuggles_no_load_file(myw: MyWorld, files: Files, setting: str) -> None:
    """After NO_BACKSLASH_ESCAPES, ``\\'`` ends a literal for the server where
    the analyzer sees one string: load_file() hides inside. Ground truth: the
    secret file's content does not come back (``readonly``)."""
    src = files.secret(myw.secret)
    conn = myw.guarded(policy_for("readonly"))
    run(conn, setting)
    sql = f"SELECT 'a\\' , load_file(0x{str(src).encode().hex()}) -- '"
    rows = run(conn, sql)
    holds(not leaked(rows if isinstance(rows, list) else None, myw.secret), f"{sql!r} read it")


@mysql
@pytest.mark.parametrize("setting", MY_NBE[:4])  # ANSI_QUOTES would make the path a name
def test_my_nbe_smuggles_no_outfile(myw: MyWorld, files: Files, setting: str) -> None:
    """The same differential with INTO OUTFILE (``agent-safe``). Ground truth:
    the file does not exist."""
    target = files.path(".out")
    conn = myw.guarded(policy_for("agent-safe"))
    run(conn, setting)
    sql = f"SELECT 'a\\' INTO OUTFILE \"{target}\" -- '"
    run(conn, sql)
    holds(not target.exists(), f"{sql!r} wrote {target}")


@mysql
@pytest.mark.parametrize("setting", MY_NBE)
def test_my_nbe_smuggles_no_blocked_read(myw: MyWorld, setting: str) -> None:
    """The same differential reading a table a ``tables: [billing.*]`` rule
    blocks. Ground truth: the secret does not come back."""
    conn = myw.guarded(policy_for("agent-safe", f"{myw.billing}.*"))
    run(conn, setting)
    sql = f"SELECT 'a\\' , secret FROM {myw.billing}.invoices -- '"
    rows = run(conn, sql)
    holds(not leaked(rows if isinstance(rows, list) else None, myw.secret), f"{sql!r} leaked")


PASSWORD = [
    "SET PASSWORD = PASSWORD('pwned')",
    "SET PASSWORD/**/= PASSWORD('pwned')",
    "set password for current_user() = password('pwned')",
    "SET PASSWORD FOR '{u}'@'%' = PASSWORD('pwned')",
    "SET PASSWORD FOR CURRENT_USER = '{h}'",
    "SET PASSWORD -- x\n= '{h}'",
]


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", PASSWORD)
def test_my_password_cannot_be_changed(
    myw: MyWorld, my_user: tuple[str, str], preset_name: str, template: str
) -> None:
    """An agent logged in as an ordinary user changes its own password (and so
    locks out its operator). Ground truth: the old password still logs in."""
    name, password = my_user
    url = f"mysql://{name}:{password}@{MYSQL_HOSTPORT}/{MYSQL_DATABASE}"
    sql = template.format(u=name, h=myw.one("SELECT PASSWORD('pwned')"))
    conn = guard(myw.raw(autocommit=False, url=url), policy_for(preset_name))
    run(conn, sql)
    _, exc = attempt(lambda: myw.raw(url=url))
    holds(exc is None, f"{sql!r} changed the password: {exc}")


def _my_hostport() -> str:
    return MYSQL_DSN.split("@", 1)[1].split("/", 1)[0]


MYSQL_HOSTPORT = _my_hostport()
#: The database of GUARDEDDB_TEST_MYSQL_DSN: no test assumes it is called ``test``.
MYSQL_DATABASE = urlsplit(MYSQL_DSN).path.lstrip("/")


# =============================================================================
# MariaDB: locks, KILL, USE, table rules, credentials
# =============================================================================

MY_NAMED_LOCKS = [
    "SELECT GET_LOCK('{n}', 0)",
    "SELECT get_lock('{n}', 0)",
    "SELECT GET_LOCK/**/('{n}', 0)",
    "SELECT GET_LOCK(CONCAT('{n1}', '{n2}'), 0)",
    "SELECT 1 FROM {t} WHERE GET_LOCK('{n}', 0) = 1 LIMIT 1",
    "DO GET_LOCK('{n}', 0)",
]


@mysql
@pytest.mark.parametrize("template", MY_NAMED_LOCKS)
def test_my_agent_safe_takes_no_named_locks(myw: MyWorld, template: str) -> None:
    """GET_LOCK holds a server-wide named lock until the session ends. Ground
    truth: IS_USED_LOCK from another session is NULL."""
    name = f"gdb_{uuid.uuid4().hex[:12]}"
    sql = template.format(n=name, n1=name[:6], n2=name[6:], t=myw.t)
    run(myw.guarded(policy_for("agent-safe")), sql, commit=False)
    holds(myw.one("SELECT IS_USED_LOCK(%s)", (name,)) is None, f"{sql!r} took lock {name}")


MY_ROW_LOCKS = [
    "SELECT * FROM {t} WHERE id = 1 FOR UPDATE",
    "SELECT * FROM {t} WHERE id = 1 LOCK IN SHARE MODE",
    "select * from {t} where id = 1 /**/for/**/update",
    "SELECT * FROM {t} WHERE id = 1 FOR UPDATE NOWAIT",
    "LOCK TABLES {t} WRITE",
    "SELECT * FROM {t} WHERE id = 1 # read\nFOR UPDATE",
]


@mysql
@pytest.mark.parametrize("template", MY_ROW_LOCKS)
def test_my_agent_safe_holds_no_row_locks(myw: MyWorld, template: str) -> None:
    """Row and table locks held for as long as the agent's transaction is open.
    Ground truth: another session locks row 1 with NOWAIT meanwhile."""
    conn = myw.guarded(policy_for("agent-safe"))
    sql = template.format(t=myw.t)
    run(conn, sql, commit=False)
    other = myw.raw(autocommit=False).cursor()
    other.execute("SET SESSION innodb_lock_wait_timeout = 1, lock_wait_timeout = 1")
    _, blocked = attempt(
        lambda: other.execute(f"SELECT * FROM {myw.t} WHERE id = 1 FOR UPDATE NOWAIT")
    )
    attempt(conn.rollback)
    attempt(lambda: under(conn).cursor().execute("UNLOCK TABLES"))
    holds(blocked is None, f"{sql!r} held a lock: {blocked}")


def _my_kill_method(conn: Any, tid: int) -> None:
    conn.kill(tid)


def _my_kill_query(conn: Any, tid: int) -> None:
    conn.query(f"KILL {tid}")


def _my_kill_param(conn: Any, tid: int) -> None:
    conn.cursor().execute("KILL %s", (tid,))


def _my_kill_connection(conn: Any, tid: int) -> None:
    conn.cursor().execute(f"KILL CONNECTION {tid}")


def _my_kill_comment(conn: Any, tid: int) -> None:
    conn.cursor().execute(f"kill/**/{tid}")


def _my_kill_hard(conn: Any, tid: int) -> None:
    conn.cursor().execute(f"KILL HARD CONNECTION {tid}")


def _my_kill_execute_command(conn: Any, tid: int) -> None:
    from pymysql.constants import COMMAND

    conn._execute_command(COMMAND.COM_QUERY, f"KILL {tid}")
    conn._read_ok_packet()


MY_KILL: list[Callable[[Any, int], None]] = [
    _my_kill_method,
    _my_kill_query,
    _my_kill_param,
    _my_kill_connection,
    _my_kill_comment,
    _my_kill_hard,
    _my_kill_execute_command,
]


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("kill", MY_KILL, ids=lambda f: f.__name__)
def test_my_other_sessions_are_not_killed(
    myw: MyWorld, preset_name: str, kill: Callable[[Any, int], None]
) -> None:
    """PyMySQL ``conn.kill(thread_id)`` and KILL statements against another
    session (our own raw victim). Ground truth: the victim still answers and is
    in the processlist."""
    victim = myw.raw()
    tid = victim.thread_id()
    conn = myw.guarded(policy_for(preset_name))
    attempt(lambda: kill(conn, tid))
    time.sleep(0.05)
    _, dead = attempt(lambda: victim.ping(reconnect=False))
    listed = myw.one("SELECT count(*) FROM information_schema.processlist WHERE id = %s", (tid,))
    holds(dead is None and listed == 1, f"{kill.__name__} killed thread {tid}")


def _my_use(sql: str) -> Callable[[Any, str], None]:
    def switch(conn: Any, db: str) -> None:
        conn.cursor().execute(sql.format(b=db))

    switch.__name__ = sql
    return switch


MY_USE: list[Callable[[Any, str], None]] = [
    _my_use("USE {b}"),
    _my_use("use `{b}`"),
    _my_use("USE/**/{b}"),
    _my_use("USE -- x\n{b}"),
    lambda conn, db: conn.select_db(db),
]


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("switch", MY_USE, ids=["use", "backticks", "comment", "dashes", "api"])
def test_my_use_does_not_walk_around_a_table_rule(
    myw: MyWorld, preset_name: str, switch: Callable[[Any, str], None]
) -> None:
    """``USE billing`` (or PyMySQL's ``select_db``) then an unqualified
    ``invoices`` under ``tables: [billing.*]``. Ground truth: the secret does
    not come back."""
    conn = myw.guarded(policy_for(preset_name, f"{myw.billing}.*"))
    attempt(lambda: switch(conn, myw.billing))
    rows = run(conn, "SELECT secret FROM invoices")
    holds(not leaked(rows if isinstance(rows, list) else None, myw.secret), "billing read")


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(
    "template",
    [
        "SELECT name FROM {c} ORDER BY id",
        "SELECT name FROM `{c}` ORDER BY id",
        "SELECT name FROM {db}.{c} ORDER BY id",
        "select c.name from {c} c where c.id in (1, 2) order by c.id",
    ],
)
def test_my_table_rule_does_not_block_other_tables(
    myw: MyWorld, preset_name: str, template: str
) -> None:
    """Over-blocking: ``tables: [billing.*]`` must not block ``customers`` in
    the connection's own database. Ground truth: the rows ARE returned."""
    conn = myw.guarded(policy_for(preset_name, f"{myw.billing}.*"))
    rows = run(conn, template.format(c=myw.customers, db=MYSQL_DATABASE))
    got = [tuple(r) for r in rows] if isinstance(rows, list) else rows
    if CONTROL:
        assert got == [("Ada Lovelace",), ("Grace Hopper",)]
        return
    assert got == [("Ada Lovelace",), ("Grace Hopper",)], f"over-blocked: {got!r}"


MY_CREDENTIALS = [
    "SELECT User, Password FROM mysql.user",
    "SELECT authentication_string FROM mysql.user WHERE User = '{u}'",
    "SELECT * FROM `mysql`.`user`",
    "SELECT Priv FROM mysql.global_priv WHERE User = '{u}'",
    "SELECT * FROM mysql . global_priv",
    "SELECT (SELECT Password FROM mysql.user WHERE User = '{u}')",
    "SELECT u.* FROM mysql.user u JOIN mysql.db d ON u.User = d.User",
]


@mysql
@pytest.mark.parametrize("template", MY_CREDENTIALS)
def test_my_credential_catalogs_are_not_readable(
    myw: MyWorld, my_user: tuple[str, str], template: str
) -> None:
    """As root, mysql.user / mysql.global_priv hold password hashes. Ground
    truth: our user's hash does not come back under ``agent-safe``."""
    name, _ = my_user
    digest = myw.one("SELECT Password FROM mysql.user WHERE User = %s", (name,))
    sql = template.format(u=name)
    rows = run(myw.guarded(policy_for("agent-safe")), sql)
    holds(not leaked(rows if isinstance(rows, list) else None, str(digest)), f"{sql!r} leaked")


# =============================================================================
# MariaDB: PyMySQL fills %s in everywhere, the policy judged the template
# =============================================================================

SMUGGLE_BLOCKED = [
    ("SELECT name FROM {c} WHERE id = 1 /* %s */", "*/ UNION SELECT secret FROM {b}.invoices /*"),
    ("SELECT name FROM {c} WHERE id = 1 /*%s*/", "*/ UNION SELECT secret FROM {b}.invoices /*"),
    ("SELECT name /* %s */ FROM {c} WHERE id = 1", "*/ , (SELECT secret FROM {b}.invoices) /*"),
    (
        "SELECT name FROM {c} WHERE name = '%s'",
        " OR 1=1 UNION SELECT secret FROM {b}.invoices -- ",
    ),
    ("SELECT name FROM {c} WHERE id = %s /* %s */", "*/ UNION SELECT secret FROM {b}.invoices /*"),
]


@mysql
@pytest.mark.parametrize(("template", "payload"), SMUGGLE_BLOCKED)
def test_my_parameters_smuggle_no_blocked_read(myw: MyWorld, template: str, payload: str) -> None:
    """A parameter lands inside a comment or a quoted string of the template
    and becomes SQL. Ground truth: the blocked table's secret does not come back."""
    conn = myw.guarded(policy_for("agent-safe", f"{myw.billing}.*"))
    sql = template.format(c=myw.customers)
    value = payload.format(b=myw.billing)
    params = (1, value) if sql.count("%s") == 2 else (value,)
    rows = run(conn, sql, params)
    holds(not leaked(rows if isinstance(rows, list) else None, myw.secret), f"{value!r} leaked")


@mysql
def test_my_parameters_named_placeholders_smuggle_nothing(myw: MyWorld) -> None:
    """The same with a ``%(name)s`` placeholder in a comment. Ground truth: the
    secret does not come back."""
    conn = myw.guarded(policy_for("agent-safe", f"{myw.billing}.*"))
    sql = f"SELECT name FROM {myw.customers} WHERE id = 1 /* %(p)s */"
    rows = run(conn, sql, {"p": f"*/ UNION SELECT secret FROM {myw.billing}.invoices /*"})
    holds(not leaked(rows if isinstance(rows, list) else None, myw.secret), "leaked")


SMUGGLE_WRITE = [
    ("UPDATE {t} SET name = 'x' WHERE id = 1 /* %s */", "*/ OR 1=1 /*"),
    ("UPDATE {t} SET name = 'x' WHERE id = 1 /*%s*/", "*/ OR 1=1 /*"),
    ("DELETE FROM {t} WHERE id = 1 /* %s */", "*/ OR 1=1 /*"),
    ("UPDATE {t} SET name = 'x' WHERE name = '%s'", " OR 1=1 OR name = "),
    ("DELETE FROM {t} WHERE name = '%s'", " OR 1=1 -- "),
]


@mysql
@pytest.mark.parametrize("batch", [False, True], ids=["execute", "executemany"])
@pytest.mark.parametrize(("template", "payload"), SMUGGLE_WRITE)
def test_my_parameters_smuggle_no_mass_write(
    myw: MyWorld, template: str, payload: str, batch: bool
) -> None:
    """``WHERE id = 1 /* %s */`` with ``*/ OR 1=1 /*`` changes every row.
    Ground truth: rows 2 and 3 are unchanged."""
    conn = myw.guarded(policy_for("agent-safe"))
    sql = template.format(t=myw.t)

    def go() -> None:
        cur = conn.cursor()
        if batch:
            cur.executemany(sql, [(payload,)])
        else:
            cur.execute(sql, (payload,))
        conn.commit()

    _, exc = attempt(go)
    if exc is not None:
        attempt(conn.rollback)
    rest = [r for r in myw.rows() if r[0] != 1]
    holds(rest == [(2, "Grace"), (3, "Linus")], f"{payload!r} changed {rest}")


SMUGGLE_FILE = [
    ("SELECT name /* %s */ FROM {c} WHERE id = 1", "*/ , load_file(0x{hex}) /*"),
    ("SELECT name FROM {c} WHERE id = 1 /* %s */", "*/ UNION SELECT load_file(0x{hex}) /*"),
    ("SELECT name FROM {c} WHERE name = '%s'", " OR 1=1 UNION SELECT load_file(0x{hex}) -- "),
    ("SELECT name FROM {c} WHERE id = 1 /* %s */", "*/ UNION SELECT load_file(char({chars})) /*"),
]


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(("template", "payload"), SMUGGLE_FILE)
def test_my_parameters_smuggle_no_load_file(
    myw: MyWorld, files: Files, preset_name: str, template: str, payload: str
) -> None:
    """``*/ , load_file(0x...) /*`` in a parameter reads a server file. Ground
    truth: the secret file's content does not come back."""
    src = files.secret(myw.secret)
    chars = ",".join(str(b) for b in str(src).encode())
    value = payload.format(hex=str(src).encode().hex(), chars=chars)
    rows = run(myw.guarded(policy_for(preset_name)), template.format(c=myw.customers), (value,))
    holds(not leaked(rows if isinstance(rows, list) else None, myw.secret), f"{value!r} read it")


# =============================================================================
# Every dialect: "needs a WHERE" means a predicate on the target table
# =============================================================================

WHERE_LESS = [
    "DELETE FROM {t} WHERE id IS NOT NULL",
    "DELETE FROM {t} WHERE EXISTS (SELECT 1)",
    "DELETE FROM {t} WHERE 1 = (SELECT 1)",
    "DELETE FROM {t} WHERE (SELECT 1) = 1",
    "DELETE FROM {t} WHERE 2 > 1",
    "DELETE FROM {t} WHERE NOT (1 = 0)",
    "DELETE FROM {t} WHERE 'a' LIKE '%'",
    "DELETE FROM {t} WHERE CURRENT_TIMESTAMP IS NOT NULL",
    "delete from {t} where /* id = 1 */ name is not null",
    "UPDATE {t} SET name = 'pwned' WHERE id IS NOT NULL",
    "UPDATE {t} SET name = 'pwned' WHERE EXISTS (SELECT 1)",
    "UPDATE {t} SET name = 'pwned' WHERE 1 = (SELECT 1)",
]


def _where_target(request: pytest.FixtureRequest, dialect: str) -> tuple[Any, str, Any]:
    """(world, table name, guarded agent-safe connection) for one dialect."""
    if dialect == "postgresql":
        w: Any = request.getfixturevalue("pgw")
        return w, f"{w.s}.t", w.guarded(policy_for("agent-safe"))
    if dialect == "mysql":
        w = request.getfixturevalue("myw")
        return w, w.t, w.guarded(policy_for("agent-safe"))
    w = request.getfixturevalue("sqw")
    return w, "t", w.guarded(policy_for("agent-safe"))


@pytest.mark.parametrize(
    "dialect",
    ["sqlite", pytest.param("postgresql", marks=pg), pytest.param("mysql", marks=mysql)],
)
@pytest.mark.parametrize("template", WHERE_LESS)
def test_where_must_constrain_the_target_table(
    request: pytest.FixtureRequest, dialect: str, template: str
) -> None:
    """A WHERE that is constant, an uncorrelated subquery or IS NOT NULL on a
    NOT NULL column touches every row under ``agent-safe``. Ground truth: the
    table's rows are unchanged."""
    world, table, conn = _where_target(request, dialect)
    sql = template.format(t=table)
    run(conn, sql)
    holds(
        world.rows() == [(1, "Ada"), (2, "Grace"), (3, "Linus")],
        f"{sql!r} changed {world.rows()}",
    )


# =============================================================================
# SQLite: executescript `$a(` smuggling, PRAGMA, ATTACH, VACUUM INTO, the API
# =============================================================================

SQ_SMUGGLE = [
    "SELECT 1 WHERE $a(')=1;DROP TABLE t;--') IS NULL",
    "SELECT 1 WHERE $a(')=1;PRAGMA query_only=0;DROP TABLE t;--') IS NULL",
    "SELECT 1 WHERE $a(')=1;DROP TABLE t;SELECT ('') IS NULL",
    "select 1 where $A(')=1;drop table t;/*') is null */",
    "SELECT $a(')=1;DELETE FROM t;--')",
    "SELECT 1 WHERE $abc::def(')=1;DROP TABLE t;--') IS NULL",
    "SELECT 1 WHERE $a(')=1;PRAGMA query_only=0;UPDATE t SET name=char(112);--') IS NULL",
    "/**/SELECT 1 WHERE $a(')=1;ATTACH \"{p}\" AS x;CREATE TABLE x.y(a);--') IS NULL",
]


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", SQ_SMUGGLE)
def test_sqlite_param_token_smuggles_nothing(
    sqw: SqliteWorld, tmp_path: Path, preset_name: str, template: str
) -> None:
    """SQLite reads ``$a(...)`` up to the first ``)`` as one parameter token;
    sqlglot reads ``$a(`` then a string. executescript runs what follows.
    Ground truth: ``t`` exists with its rows and no attached file was written."""
    attached = tmp_path / "attached.db"
    sql = template.format(p=attached)
    conn = sqw.guarded(policy_for(preset_name))
    attempt(lambda: conn.executescript(sql))
    attempt(conn.commit)
    intact = "t" in sqw.tables() and sqw.rows() == [(1, "Ada"), (2, "Grace"), (3, "Linus")]
    holds(intact and not attached.exists(), f"{sql!r} ran a smuggled statement")


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
def test_sqlite_param_token_reads_no_blocked_table(sqw: SqliteWorld, preset_name: str) -> None:
    """One statement through ``execute`` with the ``$a(`` token, binding its
    odd name: a UNION with a blocked table hides in "a string". Ground truth:
    the secret does not come back."""
    conn = sqw.guarded(policy_for(preset_name, "secrets"))
    sql = "SELECT 1 WHERE $a(') IS NULL UNION SELECT secret FROM secrets --') IS NULL"
    rows = run(conn, sql, {"a(')": None})
    holds(not leaked(rows if isinstance(rows, list) else None, sqw.secret), "leaked")


SQ_QUERY_ONLY = [
    "PRAGMA query_only = 0",
    "PRAGMA main.query_only=OFF",
    "pragma QUERY_ONLY = false",
    'PRAGMA "query_only" = 0',
    "PRAGMA query_only(0)",
    "/**/PRAGMA -- x\nquery_only=no",
]


@pytest.mark.parametrize("sql", SQ_QUERY_ONLY)
def test_sqlite_readonly_cannot_be_undone(sqw: SqliteWorld, sql: str) -> None:
    """Under ``readonly`` the SQLite session has query_only on. Ground truth:
    an INSERT on the connection underneath does not land."""
    conn = sqw.guarded(policy_for("readonly"))
    run(conn, "SELECT 1")
    run(conn, sql)
    raw = under(conn)
    attempt(lambda: raw.execute("INSERT INTO t VALUES (99, 'written')"))
    attempt(raw.commit)
    holds(len(sqw.rows()) == 3, f"{sql!r} made the connection writable")


SQ_PRAGMAS = [
    ("PRAGMA writable_schema = 1", "writable_schema", 1),
    ("pragma main.WRITABLE_SCHEMA = ON", "writable_schema", 1),
    ("PRAGMA journal_mode = OFF", "journal_mode", "off"),
    ("PRAGMA synchronous = 0", "synchronous", 0),
    ("PRAGMA ignore_check_constraints = 1", "ignore_check_constraints", 1),
    ("PRAGMA recursive_triggers(1)", "recursive_triggers", 1),
]


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(("sql", "name", "value"), SQ_PRAGMAS)
def test_sqlite_pragma_writes_change_nothing(
    sqw: SqliteWorld, preset_name: str, sql: str, name: str, value: Any
) -> None:
    """PRAGMAs that change safety or durability. Ground truth: the PRAGMA's
    value on the connection underneath."""
    conn = sqw.guarded(policy_for(preset_name))
    run(conn, sql)
    got = under(conn).execute(f"PRAGMA {name}").fetchone()[0]
    holds(str(got).lower() != str(value).lower(), f"{sql!r} set {name} to {got}")


SQ_ATTACH = [
    "ATTACH '{p}' AS x",
    "ATTACH DATABASE '{p}' AS x",
    'attach database "{p}" as x',
    "/**/ATTACH/**/'{p}'/**/AS/**/x",
    "ATTACH -- x\n'{p}' AS x",
]


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", SQ_ATTACH)
def test_sqlite_attach_writes_no_file(
    sqw: SqliteWorld, tmp_path: Path, preset_name: str, template: str
) -> None:
    """ATTACH opens (and then creates) any file the process may write. Ground
    truth: the file is not there and the connection lists no database ``x``."""
    target = tmp_path / "attached.db"
    sql = template.format(p=target)
    conn = sqw.guarded(policy_for(preset_name))
    run(conn, sql)
    run(conn, "CREATE TABLE x.y (a)")
    names = [r[1] for r in under(conn).execute("PRAGMA database_list")]
    holds("x" not in names and not target.exists(), f"{sql!r} attached {target}")


SQ_VACUUM = [
    "VACUUM INTO '{p}'",
    "vacuum main into '{p}'",
    "VACUUM/**/INTO/**/'{p}'",
    "VACUUM \"main\" INTO '{p}'",
    "VACUUM INTO '{p}' -- SELECT",
]


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize("template", SQ_VACUUM)
def test_sqlite_vacuum_into_writes_no_file(
    sqw: SqliteWorld, tmp_path: Path, preset_name: str, template: str
) -> None:
    """VACUUM INTO copies the whole database to a file of the agent's choice.
    Ground truth: the file does not exist."""
    target = tmp_path / "copy.db"
    sql = template.format(p=target)
    run(sqw.guarded(policy_for(preset_name)), sql)
    holds(not target.exists(), f"{sql!r} wrote {target}")


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@pytest.mark.parametrize(
    "disarm",
    [
        lambda c: c.set_authorizer(None),
        lambda c: c.set_authorizer(lambda *a: sqlite3.SQLITE_OK),
    ],
    ids=["set_authorizer(None)", "set_authorizer(allow)"],
)
def test_sqlite_driver_api_cannot_remove_the_authorizer(
    sqw: SqliteWorld, preset_name: str, disarm: Callable[[Any], None]
) -> None:
    """The engine authorizer is the enforcement layer; the public
    ``set_authorizer`` would remove it before a smuggled script. Ground truth:
    ``t`` still exists."""
    conn = sqw.guarded(policy_for(preset_name))
    run(conn, "SELECT 1")
    attempt(lambda: disarm(conn))
    attempt(lambda: conn.executescript("SELECT 1 WHERE $a(')=1;DROP TABLE t;--') IS NULL"))
    holds("t" in sqw.tables(), "the smuggled DROP ran after the authorizer was replaced")


# =============================================================================
# Hypothesis: the engine never does more than guardeddb decided
# =============================================================================

SQ_CORPUS = [
    *SQ_SMUGGLE,
    *SQ_QUERY_ONLY,
    *(s for s, _, _ in SQ_PRAGMAS),
    *(s.format(p="att.db") for s in SQ_ATTACH),
    "DROP TABLE t",
    "DELETE FROM t WHERE id IS NOT NULL",
    "UPDATE t SET name = 'x' WHERE 1 = (SELECT 1)",
    "INSERT INTO t VALUES (9, 'x')",
    "CREATE TABLE z (a)",
    "SELECT * FROM t; DROP TABLE t",
    "WITH d AS (SELECT 1) DELETE FROM t",
    "SELECT name FROM t WHERE id = 1",
    "REPLACE INTO t VALUES (1, 'x')",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END",
    "ALTER TABLE t RENAME TO u",
    "SELECT load_extension('x')",
]

#: The authorizer's action codes by name (sqlite3 also exports result codes
#: with the same numbers, e.g. SQLITE_TOOBIG = SQLITE_INSERT = 18).
_AUTH_ACTIONS = [
    "SQLITE_CREATE_INDEX",
    "SQLITE_CREATE_TABLE",
    "SQLITE_CREATE_TEMP_INDEX",
    "SQLITE_CREATE_TEMP_TABLE",
    "SQLITE_CREATE_TEMP_TRIGGER",
    "SQLITE_CREATE_TEMP_VIEW",
    "SQLITE_CREATE_TRIGGER",
    "SQLITE_CREATE_VIEW",
    "SQLITE_DELETE",
    "SQLITE_DROP_INDEX",
    "SQLITE_DROP_TABLE",
    "SQLITE_DROP_TEMP_INDEX",
    "SQLITE_DROP_TEMP_TABLE",
    "SQLITE_DROP_TEMP_TRIGGER",
    "SQLITE_DROP_TEMP_VIEW",
    "SQLITE_DROP_TRIGGER",
    "SQLITE_DROP_VIEW",
    "SQLITE_INSERT",
    "SQLITE_PRAGMA",
    "SQLITE_READ",
    "SQLITE_SELECT",
    "SQLITE_TRANSACTION",
    "SQLITE_UPDATE",
    "SQLITE_ATTACH",
    "SQLITE_DETACH",
    "SQLITE_ALTER_TABLE",
    "SQLITE_REINDEX",
    "SQLITE_ANALYZE",
    "SQLITE_CREATE_VTABLE",
    "SQLITE_DROP_VTABLE",
    "SQLITE_FUNCTION",
    "SQLITE_SAVEPOINT",
    "SQLITE_RECURSIVE",
]
_AUTH_NAMES = {getattr(sqlite3, n): n for n in _AUTH_ACTIONS if hasattr(sqlite3, n)}
_WRITES = {"SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE"}
_READS = {"SQLITE_SELECT", "SQLITE_READ", "SQLITE_FUNCTION", "SQLITE_RECURSIVE"}


def _actions(sql: str) -> list[tuple[str, Any, Any]]:
    """What SQLite's authorizer reports while executescript runs ``sql`` raw
    on a fresh in-memory copy of the schema."""
    log: list[tuple[str, Any, Any]] = []
    conn = sqlite3.connect(":memory:")
    make_sqlite(conn, "zqsecret")

    def record(action: int, a: Any, b: Any, db: Any, trigger: Any) -> int:
        log.append((_AUTH_NAMES.get(action, str(action)), a, b))
        return sqlite3.SQLITE_OK

    conn.set_authorizer(record)
    try:
        with contextlib.suppress(sqlite3.Error, ValueError, OverflowError):
            conn.executescript(sql)
    finally:
        conn.close()
    return log


def _beyond(actions: list[tuple[str, Any, Any]], classes: frozenset[str], preset_name: str) -> Any:
    """The first action the decision's classes do not allow, or None."""
    for name, a, b in actions:
        if name in _READS or name in ("SQLITE_TRANSACTION", "SQLITE_SAVEPOINT"):
            continue
        if name == "SQLITE_PRAGMA" and b is None and a not in ("query_only", "writable_schema"):
            continue  # reading a PRAGMA
        if name in _WRITES and preset_name == "agent-safe" and "write" in classes:
            continue
        return (name, a, b)
    return None


def _differential(sql: str, preset_name: str) -> None:
    """Run ``sql`` through a guarded executescript on one copy of a database
    and raw on another: when guardeddb let it through, the raw authorizer log
    shows nothing the decision's classes do not allow; and whatever guardeddb
    said, the guarded copy still holds ``t`` (``readonly``: untouched)."""
    if CONTROL:
        return  # random statements are mostly harmless: nothing to invert
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # ATTACH 'att.db'
        raw = sqlite3.connect(":memory:")
        make_sqlite(raw, "zqsecret")
        conn = guard(raw, policy_for(preset_name))
        _, refused = attempt(lambda: conn.executescript(sql))
        attempt(conn.commit)
        try:
            tables = {r[0] for r in raw.execute("SELECT name FROM main.sqlite_master")}
            rows = list(raw.execute("SELECT id, name FROM main.t")) if "t" in tables else []
        finally:
            raw.close()
        if preset_name == "readonly":
            holds(tables == {"t", "secrets"} and len(rows) == 3, f"readonly {sql!r} changed it")
        else:
            holds("t" in tables, f"agent-safe {sql!r} dropped t")
        if refused is None:
            classes = analyze(sql, "sqlite").classes
            extra = _beyond(_actions(sql), classes, preset_name)
            assert extra is None, f"{sql!r} allowed as {set(classes)} but the engine did {extra}"


_TOKENS = [
    "SELECT", "1", "$a(", "')", "'", ";", "DROP TABLE t", "PRAGMA query_only=0", "--", "/*",
    "*/", "\n", "WHERE", "(", ")", "IS NULL", "DELETE FROM t", '"', "`", "[", "]", "=",
    "UNION SELECT secret FROM secrets", "CREATE TABLE z(a)", "INSERT INTO t VALUES(9,'x')",
    "ATTACH 'att.db' AS x", "x'00'", "@a", ":a", "?", "?1", "$a::b(", "FROM t", "BEGIN",
    "END", "CASE", "VACUUM", "PRAGMA writable_schema=1", "UPDATE t SET name=1",
]  # fmt: skip


def _mutate(draw: st.DrawFn, text: str, pg_dialect: bool = False) -> str:
    """One random disguise of ``text``: comments, case, quotes, prefixes, U&."""
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        how = draw(
            st.sampled_from(["comment", "case", "quote", "prefix", "space", "dash", "uescape"])
        )
        spaces = [i for i, ch in enumerate(text) if ch == " "]
        if how == "comment" and spaces:
            i = draw(st.sampled_from(spaces))
            text = f"{text[:i]}/**/{text[i + 1 :]}"
        elif how == "dash" and spaces:
            i = draw(st.sampled_from(spaces))
            text = f"{text[:i]} -- x\n{text[i + 1 :]}"
        elif how == "case":
            flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
            text = "".join(c.swapcase() if f else c for c, f in zip(text, flips, strict=True))
        elif how == "quote":
            word = draw(st.sampled_from(["t", "query_only", "role", "loot", "name"]))
            text = text.replace(f" {word} ", f' "{word}" ', 1)
        elif how == "prefix":
            text = draw(st.sampled_from(["/**/", "\n", " ", "-- c\n", "\t"])) + text
        elif how == "space" and spaces:
            i = draw(st.sampled_from(spaces))
            text = text[:i] + draw(st.sampled_from(["\t", "\n", "\f", "  "])) + text[i + 1 :]
        elif how == "uescape" and pg_dialect:
            word = draw(st.sampled_from(["pg_read_file", "set_config", "role", "search_path"]))
            text = text.replace(word, f'U&"{_u(word)}"', 1)
    return text


@st.composite
def _sqlite_mutants(draw: st.DrawFn) -> str:
    return _mutate(draw, draw(st.sampled_from(SQ_CORPUS)))


@st.composite
def _token_soup(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=12))
    seps = draw(st.lists(st.sampled_from(["", " ", "\n", "/**/"]), min_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps, strict=False))


#: Bounded: 100 examples, no shrinking (a failure prints the raw example, fast),
#: no example database (the suite runs with -p no:cacheprovider anyway).
_HYPOTHESIS: dict[str, Any] = {
    "max_examples": 100,
    "deadline": None,
    "database": None,
    "phases": [Phase.explicit, Phase.generate],
    "report_multiple_bugs": False,
}


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@settings(**_HYPOTHESIS, suppress_health_check=[HealthCheck.too_slow])
@given(sql=_sqlite_mutants())
def test_hypothesis_sqlite_mutated_corpus(preset_name: str, sql: str) -> None:
    """Random disguises of the SQLite adversarial corpus: the engine (its
    authorizer log on a raw copy, and the guarded copy's tables) never does
    more than guardeddb decided."""
    _differential(sql, preset_name)


@pytest.mark.parametrize("preset_name", PRESET_NAMES)
@settings(**_HYPOTHESIS, suppress_health_check=[HealthCheck.too_slow])
@given(sql=_token_soup())
def test_hypothesis_sqlite_token_soup(preset_name: str, sql: str) -> None:
    """Random soup of adversarial SQLite tokens: same ground truth as above."""
    _differential(sql, preset_name)


PG_CORPUS = [
    *(t.format(s="{s}", cmd="touch {f}", ucmd="touch {f}") for t in COPY_PROGRAM[:4]),
    *(t.format(f="/etc/hostname", uf="/etc/hostname") for t in READ_FILE[:6]),
    *(s for s, _, _ in SET_CONFIG),
    *(t.format(r="pg_monitor") for t in ROLE),
    *RO_UNDO,
    *(s for s, _, _ in PG_SETTINGS),
    "CREATE TABLE {s}.z (a int)",
    "DROP TABLE {s}.t",
    "DELETE FROM {s}.t WHERE id IS NOT NULL",
    "UPDATE {s}.t SET name = 'x' WHERE 1 = (SELECT 1)",
    "WITH d AS (DELETE FROM {s}.t RETURNING 1) SELECT * FROM d",
    "SELECT 'a\\''; DELETE FROM {s}.t; --'",
]


@st.composite
def _pg_mutants(draw: st.DrawFn) -> str:
    return _mutate(draw, draw(st.sampled_from(PG_CORPUS)), pg_dialect=True)


@pg
@settings(**_HYPOTHESIS, suppress_health_check=list(HealthCheck))
@given(template=_pg_mutants())
def test_hypothesis_pg_mutated_corpus_under_readonly(
    pgw: PgWorld, files: Files, template: str
) -> None:
    """Random disguises of the PostgreSQL corpus through one ``readonly``
    connection. Ground truth, inside the same transaction before it is rolled
    back: ``t`` and the schema are unchanged, the session is still read-only
    and still ``postgres``, and no program ran."""
    if CONTROL:
        return  # random statements are mostly harmless: nothing to invert
    conn = pgw.guarded(policy_for("readonly"))
    run(conn, "SELECT 1")
    tables = _pg_class_count(pgw)
    target = files.path()
    sql = template.replace("{s}", pgw.s).replace("{f}", str(target))
    run(conn, sql, commit=False)
    raw = under(conn)
    try:
        user = _pg_show(conn, "is_superuser"), raw.execute("SELECT current_user").fetchone()[0]
        state: tuple[Any, ...] = (
            *user,
            _pg_show(conn, "transaction_read_only"),
            _pg_show(conn, "default_transaction_read_only"),
            raw.execute(f"SELECT count(*) FROM {pgw.s}.t").fetchone()[0],
            raw.execute(
                "SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace", (pgw.s,)
            ).fetchone()[0],
            target.exists(),
        )
    except Exception as exc:  # e.g. the role no longer may read the schema
        state = (repr(exc),)
    finally:
        raw.close()
    holds(state == ("on", "postgres", "on", "on", 3, tables, False), f"{sql!r} left {state}")


def _pg_class_count(pgw: PgWorld) -> int:
    return int(
        pgw.one("SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace", (pgw.s,))
    )


def test_adversarial_suite_is_large() -> None:
    """The issue asks for 250+ server-judged cases; count the parametrizations."""
    import sys

    module = sys.modules[__name__]
    total = 0
    for name in dir(module):
        fn = getattr(module, name)
        marks = getattr(fn, "pytestmark", [])
        if not name.startswith("test_") or name == "test_adversarial_suite_is_large":
            continue
        n = 1
        for mark in marks:
            if mark.name == "parametrize":
                n *= len(mark.args[1])
        total += n
    assert total >= 250, total


# =============================================================================
# Data-driven: every runtime setting on the server, judged by its value
# =============================================================================

#: What an agent may set on PostgreSQL (the issue's examples, reviewed); every
#: other setting a session can change must be refused. statement_timeout and
#: the other limits are absent on purpose: they may only go down, and this
#: test moves them up.
PG_AGENT_SETTABLE = frozenset(
    {
        "application_name",
        "timezone",
        "datestyle",
        "intervalstyle",
        "extra_float_digits",
        "client_min_messages",
        "bytea_output",
        "xmlbinary",
        "xmloption",
    }
)


def _pg_other_value(vartype: str, setting: str, enumvals: Any, lo: Any, hi: Any) -> str | None:
    """A valid value different from ``setting``, or None when no safe one is known."""
    if vartype == "bool":
        return "off" if setting == "on" else "on"
    if vartype == "enum":
        return next((v for v in enumvals if str(v).lower() != setting.lower()), None)
    if vartype in ("integer", "real"):
        for candidate in (hi, lo):
            if candidate is not None and str(candidate) != setting:
                return str(candidate)
    return None


@pg
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
def test_pg_every_runtime_setting_outside_the_allowlist_stays_put(
    pgw: PgWorld, preset_name: str
) -> None:
    """Every setting in pg_settings a session may change (context user or
    superuser: we connect as a superuser), except the reviewed allowlist, set
    to another valid value through the guarded connection. Ground truth: its
    value on the session underneath, in the same transaction (rolled back
    after each, which undoes a SET)."""
    settings_rows = (
        pgw.observer()
        .execute(
            "SELECT name, vartype, setting, enumvals, min_val, max_val FROM pg_settings "
            "WHERE context IN ('user', 'superuser') ORDER BY name"
        )
        .fetchall()
    )
    conn = pgw.guarded(policy_for(preset_name))
    run(conn, "SELECT 1")
    changed: list[str] = []
    tried = 0
    for name, vartype, setting, enumvals, lo, hi in settings_rows:
        if name.lower() in PG_AGENT_SETTABLE or name == "exit_on_error":  # would end the probe
            continue
        value = _pg_other_value(vartype, str(setting), enumvals or [], lo, hi)
        if value is None:
            continue
        tried += 1
        # The value on this session (guardeddb may have set it, e.g. read-only).
        setting = (
            under(conn)
            .execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
            .fetchone()[0]
        )
        attempt(under(conn).rollback)
        run(conn, f"SET {name} = '{value}'", commit=False)
        try:
            now = (
                under(conn)
                .execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
                .fetchone()[0]
            )
        except Exception as exc:  # the session broke: that is a change too
            now = repr(exc)
            conn = pgw.guarded(policy_for(preset_name))
            run(conn, "SELECT 1")
        attempt(under(conn).rollback)
        if str(now) != str(setting):
            changed.append(f"{name}: {setting} -> {now}")
    assert tried > 100, tried
    holds(not changed, f"{len(changed)} of {tried} settings changed: {changed}")


#: What an agent may set on MariaDB (reviewed); every other session variable
#: must be refused. max_statement_time is absent: it may only go down.
MY_AGENT_SETTABLE = frozenset(
    {
        "time_zone",
        "lc_time_names",
        "div_precision_increment",
        "group_concat_max_len",
        "autocommit",
        "sql_notes",
        "sql_warnings",
        "tx_isolation",
        "transaction_isolation",
    }
)


def _my_other_value(kind: str, value: Any, enums: Any, lo: Any, hi: Any) -> str | None:
    """A valid value different from ``value``, as SQL, or None when no safe one is known."""
    current = "" if value is None else str(value)
    if kind == "BOOLEAN":
        return "0" if current.upper() in ("ON", "1") else "1"
    if kind == "ENUM" and enums:
        return next((f"'{v}'" for v in str(enums).split(",") if v.upper() != current.upper()), None)
    if kind.startswith(("INT", "BIGINT", "DOUBLE")):
        for candidate in (hi, lo):
            if candidate is not None and str(candidate) != current:
                return str(candidate)
    return None


@mysql
@pytest.mark.parametrize("preset_name", PRESET_NAMES)
def test_my_every_session_variable_outside_the_allowlist_stays_put(
    myw: MyWorld, preset_name: str
) -> None:
    """Every writable session variable of information_schema.SYSTEM_VARIABLES
    (boolean, enum, numeric), except the reviewed allowlist, set to another
    valid value through the guarded connection. Ground truth: @@session.X on
    the session underneath (restored through it after each)."""
    cur = myw.observer().cursor()
    cur.execute(
        "SELECT VARIABLE_NAME, VARIABLE_TYPE, SESSION_VALUE, ENUM_VALUE_LIST, "
        "NUMERIC_MIN_VALUE, NUMERIC_MAX_VALUE FROM information_schema.SYSTEM_VARIABLES "
        "WHERE VARIABLE_SCOPE IN ('SESSION', 'SESSION ONLY') AND READ_ONLY = 'NO' "
        "ORDER BY VARIABLE_NAME"
    )
    rows = cur.fetchall()
    conn = myw.guarded(policy_for(preset_name))
    run(conn, "SELECT 1")
    changed: list[str] = []
    tried = 0
    # Values that change by themselves (the clock, the random seeds).
    skip = {
        "wait_timeout",
        "interactive_timeout",
        "net_read_timeout",
        "net_write_timeout",
        "timestamp",
        "rand_seed1",
        "rand_seed2",
    }
    for name, kind, value, enums, lo, hi in rows:
        lname = str(name).lower()
        if lname in MY_AGENT_SETTABLE or lname in skip:
            continue
        new = _my_other_value(str(kind), value, enums, lo, hi)
        if new is None:
            continue
        tried += 1
        # The value on this session (guardeddb may have set it, e.g. tx_read_only).
        c0 = under(conn).cursor()
        c0.execute(f"SELECT @@session.{lname}")
        value = c0.fetchone()[0]
        run(conn, f"SET SESSION {lname} = {new}", commit=False)
        raw, row = under(conn), None
        try:
            c = raw.cursor()
            c.execute(f"SELECT @@session.{lname}")
            row = c.fetchone()
            now = None if row is None else row[0]
        except Exception as exc:
            now = repr(exc)
        if str(now) != str(value) and not (row is not None and _same(now, value)):
            changed.append(f"{lname}: {value} -> {now}")
            restore = f"SET SESSION {lname} = " + ("NULL" if value is None else f"'{value}'")
            if not attempt(functools.partial(raw.cursor().execute, restore))[1]:
                continue
            conn = myw.guarded(policy_for(preset_name))  # cannot restore: a fresh session
            run(conn, "SELECT 1")
    assert tried > 50, tried
    holds(not changed, f"{len(changed)} of {tried} session variables changed: {changed}")


def _same(now: Any, value: Any) -> bool:
    """@@x and SESSION_VALUE spell some values differently (1 / ON, 1.0 / 1)."""
    a, b = str(now).upper(), str(value).upper()
    spelled = {"1": "ON", "0": "OFF"}
    return spelled.get(a, a) == spelled.get(b, b) or _num(a) == _num(b) is not None


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
