"""The statement-facts kernel: facts from normalized tokens, allowlists, kernel refusals.

Each example of issue #10 is written several other ways (comment placement,
quoting, case, escapes, another member of the family) and judged by both
presets; the SET examples are also run on the real servers, and judged by
what the server's session looks like afterwards.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity, QueryBlocked
from guardeddb.policy import preset
from guardeddb.sql import analyze
from guardeddb.sql.settings import OWN_TABLES, SETTABLE, TOKENIZER_SETTINGS

from .fix_db import Backend

AGENT = Identity(user="alice@example.com", agent="support-bot")
PRESETS = ("agent-safe", "readonly")
D = {"p": "postgres", "m": "mysql", "s": "sqlite"}


def _actions(sql: str, dialect: str) -> tuple[str, str]:
    return tuple(preset(p).check(sql, AGENT, dialect).action for p in PRESETS)  # type: ignore[return-value]


def _blocked(sql: str, dialect: str) -> None:
    assert _actions(sql, dialect) == ("block", "block"), (sql, analyze(sql, dialect).statements)


def _kernel(sql: str, dialect: str) -> None:
    """Refused by the kernel: under both presets, and under a policy that allows everything."""
    anything = guardeddb.load_policy({"version": 1, "extends": [], "on_unparsed": "allow"})
    for policy in (preset("agent-safe"), preset("readonly"), anything):
        d = policy.check(sql, AGENT, dialect)
        assert (d.action, d.rule_id) == ("block", "kernel"), (sql, d)


# --------------------------------------------------------------------------
# 1. COPY: direction and target from the tree


@pytest.mark.parametrize(
    "sql",
    [
        "COPY loot /*STDIN*/ FROM/**/PROGRAM/**/'id'",
        "COPY loot FROM PROGRAM 'id'",
        "copy loot from program 'id'",
        "COPY loot -- STDIN\n FROM PROGRAM 'id'",
        "COPY loot TO PROGRAM 'cat > /tmp/x'",
        "COPY (SELECT 'STDOUT') TO PROGRAM 'id'",
        'COPY loot FROM "STDIN"',
        "COPY loot TO STDIN",
        "COPY loot FROM STDOUT",
    ],
)
def test_copy_program_and_odd_targets_are_refused(sql: str) -> None:
    """PROGRAM, quoted or wrong-direction STDIN/STDOUT are not understood: refused."""
    _blocked(sql, "postgres")
    assert analyze(sql, "postgres").unparsed


@pytest.mark.parametrize(
    "sql",
    [
        "COPY customers TO '/tmp/stdout.csv'",
        "COPY customers TO '/tmp/STDOUT'",
        "COPY customers /* STDOUT */ TO '/tmp/x.csv'",
        "COPY customers FROM '/etc/hostname'",
        "COPY customers FROM '/tmp/stdin.csv' WITH (FORMAT csv)",
        "copy (select 1) to '/tmp/stdout'",
    ],
)
def test_copy_to_or_from_a_server_file_is_admin(sql: str) -> None:
    """A file path that mentions STDOUT is still a server file."""
    _blocked(sql, "postgres")
    assert "admin" in analyze(sql, "postgres").classes


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("COPY customers TO STDOUT", ("allow", "allow")),
        ("copy customers to stdout with (format csv)", ("allow", "allow")),
        ("COPY (SELECT 1) TO STDOUT", ("allow", "allow")),
        ("COPY customers FROM STDIN", ("allow", "block")),
    ],
)
def test_copy_through_the_client_keeps_working(sql: str, expected: tuple[str, str]) -> None:
    assert _actions(sql, "postgres") == expected


# --------------------------------------------------------------------------
# 2. SET: the target from tokens, an allowlist per dialect

PG_ADMIN_SETS = [
    'SET "default_transaction_read_only" = off',
    "SET/**/default_transaction_read_only/**/=/**/off",
    "SET SESSION DEFAULT_TRANSACTION_READ_ONLY TO off",
    "set local transaction_read_only = off",
    'SET U&"default\\005ftransaction\\005fread\\005fonly" = off',
    "SET session_replication_role = replica",
    "SET search_path TO billing",
    'SET "search_path" = billing, public',
    "SET SCHEMA 'billing'",
    "SET allow_system_table_mods = on",
    "SET log_statement = 'none'",
    "SET work_mem = '64GB'",
    "SET myapp.flag = 1",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "RESET ALL",
    "RESET default_transaction_read_only",
    'RESET "search_path"',
    "DISCARD ALL",
    "DISCARD PLANS",
]


@pytest.mark.parametrize("sql", PG_ADMIN_SETS)
def test_postgres_sets_outside_the_allowlist_are_admin(sql: str) -> None:
    _blocked(sql, "postgres")


PG_DCL_SETS = [
    'SET "role" = postgres',
    "SET/**/role/**/TO postgres",
    "SET ROLE postgres",
    "set local role postgres",
    'SET U&"r\\006fle" = postgres',
    "SET SESSION AUTHORIZATION postgres",
    'SET "session_authorization" = postgres',
    "SET session_authorization TO DEFAULT",
    "RESET ROLE",
    "RESET SESSION AUTHORIZATION",
    'RESET "role"',
]


@pytest.mark.parametrize("sql", PG_DCL_SETS)
def test_postgres_role_and_authorization_are_dcl(sql: str) -> None:
    _blocked(sql, "postgres")
    assert "dcl" in analyze(sql, "postgres").classes


PG_TOKENIZER_SETS = [
    "SET standard_conforming_strings = off",
    'SET "standard_conforming_strings" = off',
    "SET/**/STANDARD_CONFORMING_STRINGS/**/TO/**/off",
    "SET LOCAL standard_conforming_strings = on",
    'SET U&"standard\\005fconforming\\005fstrings" = off',
    "RESET standard_conforming_strings",
    "SET backslash_quote = on",
    "SET escape_string_warning = off",
    "SET client_encoding = 'SJIS'",
    "SET client_encoding TO 'BIG5'",
    "SET NAMES 'GBK'",
    "SET client_encoding = DEFAULT",
]


@pytest.mark.parametrize("sql", PG_TOKENIZER_SETS)
def test_postgres_tokenizer_settings_are_refused_under_every_policy(sql: str) -> None:
    _kernel(sql, "postgres")


PG_ALLOWED_SETS = [
    "SET application_name = 'agent'",
    "SET TIME ZONE 'UTC'",
    "SET timezone = 'Europe/Paris'",
    'SET "TimeZone" TO UTC',
    "SET datestyle = ISO, MDY",
    "SET extra_float_digits = 3",
    "SET intervalstyle = iso_8601",
    "RESET timezone",
    "RESET TIME ZONE",
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "SET TRANSACTION READ ONLY",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET CONSTRAINTS ALL DEFERRED",
    "SET client_encoding = 'UTF8'",
    "show standard_conforming_strings",
    "SHOW transaction isolation level",
]


@pytest.mark.parametrize("sql", PG_ALLOWED_SETS)
def test_postgres_allowlisted_settings_are_allowed(sql: str) -> None:
    assert _actions(sql, "postgres") == ("allow", "allow"), analyze(sql, "postgres").statements


MY_ADMIN_SETS = [
    "SET SESSION tx_read_only = 0",
    "SET tx_read_only = OFF",
    "SET @@session.transaction_read_only = 0",
    "SET @@tx_read_only = 0",
    "SET `tx_read_only` = 0",
    "SET GLOBAL/**/general_log = 1",
    "SET /**/ global max_connections = 1",
    "SET @@global.time_zone = '+00:00'",
    "SET @@GLOBAL.lock_wait_timeout = 5",
    "SET PERSIST max_connections = 1",
    "SET @@session.sql_log_bin = 0",
    "SET sql_log_bin = 0",
    "SET foreign_key_checks = 0",
    "SET unique_checks = 0",
    "SET time_zone = '+00:00', foreign_key_checks = 0",
    "SET @x = 1, @@session.sql_log_bin = 0",
    "SET GLOBAL time_zone = '+00:00', lock_wait_timeout = 5",
    "SET SESSION TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET GLOBAL TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET sql_safe_updates = 0",
    "SET big_tables = 1",
]


@pytest.mark.parametrize("sql", MY_ADMIN_SETS)
def test_mysql_sets_outside_the_allowlist_are_admin(sql: str) -> None:
    _blocked(sql, "mysql")


MY_DCL_SETS = [
    "SET PASSWORD = 'hunter2'",
    "SET PASSWORD/**/= 'hunter2'",
    "set password for root@localhost = 'x'",
    "SET ROLE ALL",
    "SET DEFAULT ROLE ALL TO root",
]


@pytest.mark.parametrize("sql", MY_DCL_SETS)
def test_mysql_password_and_roles_are_dcl(sql: str) -> None:
    _blocked(sql, "mysql")
    assert "dcl" in analyze(sql, "mysql").classes


MY_TOKENIZER_SETS = [
    "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
    "SET SESSION sql_mode = 'ANSI_QUOTES'",
    "SET @@sql_mode = ''",
    "SET @@session.SQL_MODE = 'PIPES_AS_CONCAT'",
    "SET `sql_mode` = 'NO_BACKSLASH_ESCAPES'",
    "SET/**/sql_mode/**/=/**/'NO_BACKSLASH_ESCAPES'",
    "SET time_zone = '+00:00', sql_mode = 'ANSI'",
    "SET NAMES gbk",
    "SET NAMES 'big5'",
    "SET CHARACTER SET sjis",
    "SET CHARSET cp932",
    "SET character_set_client = gbk",
    "SET @@character_set_connection = big5",
    "SET collation_connection = gbk_chinese_ci",
    "SET NAMES DEFAULT",
    "SET @@nosuchscope.x = 1, sql_mode = 'ANSI_QUOTES'",
    "SET STATEMENT x = 1 FOR SELECT 1, sql_mode = ''",
]


@pytest.mark.parametrize("sql", MY_TOKENIZER_SETS)
def test_mysql_tokenizer_settings_are_refused_under_every_policy(sql: str) -> None:
    _kernel(sql, "mysql")


MY_ALLOWED_SETS = [
    "SET time_zone = '+00:00'",
    "SET autocommit = 1",
    "SET @x = 1",
    "SET @x := 1, @y = 'a'",
    "SET NAMES utf8mb4",
    "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
    "SET CHARACTER SET utf8mb4",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET TRANSACTION READ ONLY",
    "SET group_concat_max_len = 100000",
]


#: Time limits belong to the policy (``limits:``): an agent cannot lift them.
TIMEOUT_SETS = [
    ("SET statement_timeout = 0", "postgres"),
    ("SET LOCAL lock_timeout = '1s'", "postgres"),
    ("SET SESSION idle_in_transaction_session_timeout = 1000", "postgres"),
    ("SET SESSION max_statement_time = 5", "mysql"),
    ("SET @@session.lock_wait_timeout = 10", "mysql"),
    ("SET @@local.innodb_lock_wait_timeout = 10", "mysql"),
]


@pytest.mark.parametrize(("sql", "dialect"), TIMEOUT_SETS)
def test_time_limits_are_not_settable(sql: str, dialect: str) -> None:
    assert _actions(sql, dialect) == ("block", "block"), analyze(sql, dialect).statements


@pytest.mark.parametrize("sql", MY_ALLOWED_SETS)
def test_mysql_allowlisted_settings_are_allowed(sql: str) -> None:
    assert _actions(sql, "mysql") == ("allow", "allow"), analyze(sql, "mysql").statements


@pytest.mark.parametrize(
    "sql",
    [
        "SET @x = (SELECT load_file('/etc/passwd'))",
        "SET @x = SLEEP(5)",
        "SET @x = GET_LOCK('a', 10)",
        "SET STATEMENT max_statement_time = 1 FOR DELETE FROM t",
    ],
)
def test_mysql_user_variables_keep_the_facts_of_their_values(sql: str) -> None:
    _blocked(sql, "mysql")


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("BEGIN READ WRITE", "postgres"),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", "postgres"),
        ("START TRANSACTION READ WRITE", "postgres"),
        ("START TRANSACTION /* ONLY */ READ WRITE", "mysql"),
        ("start transaction read write", "mysql"),
        ("START TRANSACTION READ ONLY, READ WRITE", "mysql"),
    ],
)
def test_read_write_transactions_are_admin(sql: str, dialect: str) -> None:
    _blocked(sql, dialect)


def test_the_allowlists_keep_search_path_and_tokenizer_settings_out() -> None:
    assert "search_path" not in SETTABLE["postgres"]
    for dialect, names in TOKENIZER_SETTINGS.items():
        assert not names & SETTABLE[dialect]


# --------------------------------------------------------------------------
# 3. Function names: normalized, and the families agent-safe refuses

DANGEROUS = [
    "SELECT U&\"pg\\005fread\\005ffile\"('/etc/hostname')",
    "SELECT U&\"pg!005fread!005ffile\" UESCAPE '!' ('/etc/hostname')",
    "SELECT u&\"pg\\005fread\\005ffile\"('/etc/hostname')",
    "SELECT \"PG_READ_FILE\"('/etc/hostname')",
    "SELECT pg_catalog.pg_read_file('/etc/hostname')",
    "SELECT pg_catalog . /**/ pg_read_file('/etc/hostname')",
    'SELECT U&"pg\\005fterminate\\005fbackend"(1)',
    "SELECT U&\"set\\005fconfig\"('role', 'x', false)",
    'SELECT U&"pg\\005fsleep"(10)',
    "SELECT ts_stat('SELECT vector FROM docs')",
    "SELECT * FROM ts_stat('SELECT 1')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT 1')",
    "SELECT query_to_xml('SELECT * FROM secrets', true, true, '')",
    "SELECT query_to_xml_and_xmlschema('SELECT 1', true, true, '')",
    "SELECT table_to_xml('secrets', true, true, '')",
    "SELECT table_to_xmlschema('secrets', true, true, '')",
    "SELECT schema_to_xml('billing', true, true, '')",
    "SELECT database_to_xml(true, true, '')",
    "SELECT cursor_to_xml('c', 1, true, true, '')",
    "SELECT lo_from_bytea(0, 'x')",
    "SELECT lo_create(0)",
    "SELECT lo_unlink(1)",
    "SELECT lo_put(1, 0, 'x')",
    "SELECT pg_logical_emit_message(true, 'x', 'y')",
    "SELECT pg_catalog.pg_logical_slot_get_changes('s', NULL, NULL)",
    "SELECT pg_notify('ch', 'x')",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT pg_try_advisory_lock(1)",
    "SELECT PG_ADVISORY_UNLOCK_ALL()",
    "SELECT pg_create_physical_replication_slot('s')",
    "SELECT pg_create_logical_replication_slot('s', 'test_decoding')",
    "SELECT pg_drop_replication_slot('s')",
    "SELECT pg_replication_origin_create('x')",
    "SELECT pg_stat_reset()",
    "SELECT pg_stat_reset_shared('bgwriter')",
    "SELECT pg_stat_statements_reset()",
]


@pytest.mark.parametrize("sql", DANGEROUS)
def test_postgres_dangerous_families_are_refused(sql: str) -> None:
    d = preset("agent-safe").check(sql, AGENT, "postgres")
    assert d.action == "block", (sql, analyze(sql, "postgres").statements)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT GET_LOCK('a', 10)",
        "SELECT get_lock('a', 10)",
        "SELECT `GET_LOCK`('a', 10)",
        "SELECT RELEASE_LOCK('a')",
        "SELECT release_all_locks()",
        "SELECT IS_USED_LOCK('a')",
    ],
)
def test_mysql_lock_functions_are_refused(sql: str) -> None:
    assert preset("agent-safe").check(sql, AGENT, "mysql").action == "block"


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT * FROM t FOR UPDATE", "postgres"),
        ("SELECT * FROM t FOR SHARE", "postgres"),
        ("SELECT * FROM t FOR NO KEY UPDATE", "postgres"),
        ("SELECT * FROM t FOR KEY SHARE", "postgres"),
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT", "postgres"),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "postgres"),
        ("select * from t for update", "mysql"),
        ("SELECT * FROM t LOCK IN SHARE MODE", "mysql"),
        ("SELECT * FROM t FOR SHARE", "mysql"),
    ],
)
def test_row_locks_are_refused(sql: str, dialect: str) -> None:
    _blocked(sql, dialect)
    assert "lock" in analyze(sql, dialect).kinds


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_setting('data_directory')",
        "SELECT current_setting('DATA_DIRECTORY')",
        "SELECT current_setting('config_file')",
        "SELECT current_setting('hba_file', true)",
        "SELECT current_setting('ident_file')",
        "SELECT current_setting('data_' || 'directory')",
        "SHOW data_directory",
        "SHOW config_file",
        "SHOW ALL",
        "SELECT setting FROM pg_settings WHERE name = 'data_directory'",
        "SELECT * FROM pg_catalog.pg_settings",
    ],
)
def test_server_paths_are_refused(sql: str) -> None:
    assert preset("agent-safe").check(sql, AGENT, "postgres").action == "block"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT @@datadir",
        "SELECT @@GLOBAL.secure_file_priv",
        "select @@session.TMPDIR",
        "SELECT @@plugin_dir, 1",
        "SELECT id FROM t WHERE name = @@basedir",
    ],
)
def test_mysql_server_paths_are_refused(sql: str) -> None:
    _blocked(sql, "mysql")


def test_current_setting_of_ordinary_settings_is_allowed() -> None:
    assert _actions("SELECT current_setting('TimeZone')", "postgres") == ("allow", "allow")


# --------------------------------------------------------------------------
# 4. SQLite parameter tokens SQLite reads differently

SQLITE_DIFFERENTIAL = [
    "SELECT 1 WHERE $a(')=1;PRAGMA query_only=0;ATTACH 'x' AS y;DROP TABLE t;--') IS NULL",
    "SELECT 1 WHERE $a(x) IS NULL",
    "SELECT 1 WHERE @a(')=1;DROP TABLE t;--') IS NULL",
    "SELECT 1 WHERE :a(')=1;DROP TABLE t;--') IS NULL",
    "SELECT 1 WHERE #a(')=1;DROP TABLE t;--') IS NULL",
    "SELECT $a::b(')=1;DROP TABLE t;--')",
    "SELECT 1 WHERE $a::b = 1",
    "select 1 where $A1_x(')  IS NULL",
]


@pytest.mark.parametrize("sql", SQLITE_DIFFERENTIAL)
def test_sqlite_parameter_token_differentials_are_unparsed(sql: str) -> None:
    _blocked(sql, "sqlite")
    assert analyze(sql, "sqlite").unparsed


@pytest.mark.parametrize("sql", SQLITE_DIFFERENTIAL)
def test_sqlite_parameter_token_differentials_are_refused_by_the_kernel(sql: str) -> None:
    """The analyzer cannot know what SQLite runs: no policy may allow it."""
    _kernel(sql, "sqlite")


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("DELETE FROM guardeddb_approvals WHERE x = 'unterminated", "postgres"),
        ("SELECT 'a' FROM guardeddb_audit WHERE x = 'b", "mysql"),
        ("SELECT 1; UPDATE GUARDEDDB_APPROVALS SET s = 'a", "sqlite"),
    ],
)
def test_untokenizable_text_naming_own_tables_is_refused(sql: str, dialect: str) -> None:
    _kernel(sql, dialect)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 WHERE :a IS NULL",
        "SELECT 1 WHERE $a IS NULL",
        "SELECT '$a(' FROM t",
        "SELECT 1 -- $a(\n",
        'SELECT "$a(" FROM t',
    ],
)
def test_sqlite_ordinary_parameters_and_text_are_fine(sql: str) -> None:
    assert not analyze(sql, "sqlite").unparsed


def test_sqlite_executescript_differential_changes_nothing(tmp_path: Any) -> None:
    """The attack of the issue, on a real sqlite3 database: the table survives."""
    path = tmp_path / "k.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE t (id INTEGER)")
    raw.commit()
    raw.close()
    for name in PRESETS:
        conn = guardeddb.connect(f"sqlite:///{path}", policy=preset(name))
        with pytest.raises(QueryBlocked):
            conn.executescript(
                "SELECT 1 WHERE $a(')=1;PRAGMA query_only=0;DROP TABLE t;--') IS NULL"
            )
        conn.close()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchone() == ("t",)
    raw.close()


# --------------------------------------------------------------------------
# 5. Credential catalogs


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT rolpassword FROM pg_authid", "postgres"),
        ("SELECT * FROM pg_catalog.pg_authid", "postgres"),
        ('SELECT * FROM "pg_authid"', "postgres"),
        ("SELECT passwd FROM PG_SHADOW", "postgres"),
        ("SELECT * FROM pg_user_mappings", "postgres"),
        ("SELECT * FROM pg_largeobject", "postgres"),
        ("SELECT user, password FROM mysql.user", "mysql"),
        ("SELECT * FROM `mysql`.`global_priv`", "mysql"),
        ("SELECT * FROM MYSQL.DB", "mysql"),
        ("SELECT * FROM information_schema.user_privileges", "mysql"),
    ],
)
def test_credential_catalogs_are_refused_by_agent_safe(sql: str, dialect: str) -> None:
    assert preset("agent-safe").check(sql, AGENT, dialect).action == "block"


# --------------------------------------------------------------------------
# 6. guardeddb's own tables


@pytest.mark.parametrize("code", "pms")
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM guardeddb_approvals",
        "SELECT * FROM GUARDEDDB_APPROVALS",
        "UPDATE guardeddb_approvals SET status = 'approved' WHERE id = 'x'",
        "DELETE FROM guardeddb_audit WHERE seq > 10",
        "DELETE/**/FROM/**/guardeddb_audit WHERE seq > 10",
        "SELECT * FROM public.guardeddb_audit",
        "SELECT * FROM test.guardeddb_audit",
        "INSERT INTO guardeddb_audit (stream) VALUES ('x')",
        "TRUNCATE guardeddb_audit",
        "DROP TABLE guardeddb_approvals",
        "SELECT id FROM t WHERE id IN (SELECT id FROM guardeddb_approvals)",
        "SELECT 'guardeddb_audit'",
    ],
)
def test_own_tables_are_refused_under_every_policy(sql: str, code: str) -> None:
    _kernel(sql, D[code])


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ('SELECT * FROM "guardeddb_approvals"', "postgres"),
        ('SELECT * FROM "GuardedDB_Audit"', "postgres"),
        ('SELECT * FROM U&"guardeddb\\005fapprovals"', "postgres"),
        ("SELECT query_to_xml('SELECT * FROM guardeddb_approvals', true, true, '')", "postgres"),
        ("LOCK TABLE guardeddb_audit", "postgres"),
        ("VACUUM guardeddb_audit", "postgres"),
        ("SELECT * FROM `guardeddb_audit`", "mysql"),
        ("SELECT * FROM `Test`.`GUARDEDDB_AUDIT`", "mysql"),
        ('SELECT * FROM "guardeddb_audit"', "sqlite"),
        ("SELECT * FROM [guardeddb_approvals]", "sqlite"),
    ],
)
def test_own_tables_are_refused_whatever_names_them(sql: str, dialect: str) -> None:
    _kernel(sql, dialect)


def test_own_tables_constant_names_what_the_stores_create() -> None:
    """The approval store and the PostgreSQL audit sink create the tables the kernel refuses."""
    import inspect

    from guardeddb import approvals
    from guardeddb.audit import chain

    created = {vars(approvals)["_TABLE"]} | {
        t for t in OWN_TABLES if f"CREATE TABLE IF NOT EXISTS {t} " in inspect.getsource(chain)
    }
    assert created == OWN_TABLES


# --------------------------------------------------------------------------
# 7. "Needs a WHERE" means a predicate on the target table


@pytest.mark.parametrize("code", "pms")
@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t WHERE id IS NOT NULL",
        "DELETE FROM t WHERE (id IS NOT NULL)",
        "DELETE FROM t WHERE NOT (id IS NULL)",
        "DELETE FROM t WHERE EXISTS (SELECT 1)",
        "DELETE FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.id = 0)",
        "DELETE FROM t WHERE 1 = (SELECT 1)",
        "DELETE FROM t WHERE (SELECT count(*) FROM u) > 0",
        "DELETE FROM t WHERE 5 IN (SELECT id FROM u)",
        "UPDATE t SET name = 'x' WHERE id IS NOT NULL",
        "UPDATE t SET name = 'x' WHERE EXISTS (SELECT 1)",
        "UPDATE t SET name = 'x' WHERE id IS NOT NULL OR id = 1",
        "DELETE FROM t WHERE id = 1 OR EXISTS (SELECT 1)",
    ],
)
def test_where_without_a_predicate_on_the_target_counts_as_none(sql: str, code: str) -> None:
    d = preset("agent-safe").check(sql, AGENT, D[code])
    assert (d.action, d.rule_id) == ("block", "write-needs-where"), sql


@pytest.mark.parametrize("code", "pms")
@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t WHERE id = 1",
        "DELETE FROM t WHERE id IS NULL",
        "DELETE FROM t WHERE t.id = 1",
        "DELETE FROM t WHERE id IS NOT NULL AND id = 1",
        "DELETE FROM t WHERE id IN (SELECT id FROM u WHERE u.x = 1)",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)",
        "UPDATE t SET name = 'x' WHERE id = 1 OR id = 2",
    ],
)
def test_where_with_a_predicate_on_the_target_counts(sql: str, code: str) -> None:
    assert preset("agent-safe").check(sql, AGENT, D[code]).action == "allow", sql


# --------------------------------------------------------------------------
# Server-judged: refused SETs leave the session as it was


@pytest.mark.pg
@pytest.mark.parametrize(
    "sql",
    [
        'SET "default_transaction_read_only" = off',
        "SET/**/default_transaction_read_only/**/=/**/off",
        'SET U&"default\\005ftransaction\\005fread\\005fonly" = off',
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "RESET ALL",
        "DISCARD ALL",
    ],
)
def test_postgres_readonly_session_stays_read_only(pg_backend: Backend, sql: str) -> None:
    conn = guardeddb.connect(pg_backend.url, policy=preset("readonly"), identity=AGENT)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")  # the session is put in read-only mode
        with pytest.raises(QueryBlocked):
            cur.execute(sql)
        raw = conn.__wrapped__
        raw.rollback()
        rc = raw.cursor()
        rc.execute("SHOW default_transaction_read_only")
        assert rc.fetchone()[0] == "on"
    finally:
        conn.close()


@pytest.mark.pg
@pytest.mark.parametrize(
    "sql",
    [
        'SET "role" = pg_read_all_settings',
        "SET/**/role/**/TO pg_read_all_settings",
        'SET U&"r\\006fle" = pg_read_all_settings',
        'SET "session_authorization" = postgres',
        "SET SESSION AUTHORIZATION DEFAULT",
    ],
)
def test_postgres_role_is_unchanged(pg_backend: Backend, sql: str) -> None:
    for name in PRESETS:
        conn = guardeddb.connect(pg_backend.url, policy=preset(name), identity=AGENT)
        try:
            raw = conn.__wrapped__
            before = raw.execute("SELECT current_user, session_user").fetchone()
            with pytest.raises(QueryBlocked):
                conn.cursor().execute(sql)
            raw.rollback()
            assert raw.execute("SELECT current_user, session_user").fetchone() == before
        finally:
            conn.close()


@pytest.mark.pg
@pytest.mark.parametrize(
    "sql",
    [
        "SET standard_conforming_strings = off",
        'SET "standard_conforming_strings" TO off',
        "SET backslash_quote = on",
        "SET client_encoding = 'SJIS'",
    ],
)
def test_postgres_tokenizer_settings_stay_pinned(pg_backend: Backend, sql: str) -> None:
    anything = {"version": 1, "extends": [], "on_unparsed": "allow"}
    conn = guardeddb.connect(pg_backend.url, policy=anything, identity=AGENT)
    try:
        raw = conn.__wrapped__
        before = raw.execute(
            "SELECT current_setting('standard_conforming_strings'), "
            "current_setting('backslash_quote'), current_setting('client_encoding')"
        ).fetchone()
        with pytest.raises(QueryBlocked):
            conn.cursor().execute(sql)
        raw.rollback()
        after = raw.execute(
            "SELECT current_setting('standard_conforming_strings'), "
            "current_setting('backslash_quote'), current_setting('client_encoding')"
        ).fetchone()
        assert after == before
    finally:
        conn.close()


@pytest.mark.mysql
@pytest.mark.parametrize(
    "sql",
    [
        "SET SESSION tx_read_only = 0",
        "SET @@session.tx_read_only = 0",
        "SET `transaction_read_only` = OFF",
        "SET SESSION TRANSACTION READ WRITE",
        "SET time_zone = '+00:00', tx_read_only = 0",
    ],
)
def test_mysql_readonly_session_stays_read_only(mysql_backend: Backend, sql: str) -> None:
    conn = guardeddb.connect(mysql_backend.url, policy=preset("readonly"), identity=AGENT)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        with pytest.raises(QueryBlocked):
            cur.execute(sql)
        rc = conn.__wrapped__.cursor()
        rc.execute("SELECT @@session.tx_read_only")
        assert int(rc.fetchone()[0]) == 1
    finally:
        conn.close()


@pytest.mark.mysql
@pytest.mark.parametrize(
    "sql",
    [
        "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "SET @@session.sql_mode = 'ANSI_QUOTES'",
        "SET `sql_mode` = ''",
        "SET NAMES gbk",
        "SET @@sql_log_bin = 0",
        "SET foreign_key_checks = 0",
    ],
)
def test_mysql_session_settings_stay_as_they_were(mysql_backend: Backend, sql: str) -> None:
    conn = guardeddb.connect(mysql_backend.url, policy=preset("agent-safe"), identity=AGENT)
    try:
        rc = conn.__wrapped__.cursor()
        q = (
            "SELECT @@session.sql_mode, @@session.character_set_client, "
            "@@session.sql_log_bin, @@session.foreign_key_checks"
        )
        rc.execute(q)
        before = rc.fetchone()
        with pytest.raises(QueryBlocked):
            conn.cursor().execute(sql)
        rc.execute(q)
        assert rc.fetchone() == before
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Data-driven: every server setting outside the allowlist is refused


def _spellings(name: str, dialect: str) -> list[str]:
    if dialect == "postgres":
        return [
            f"SET {name} = 'x'",
            f'SET "{name}" TO x',
            f"SET/**/SESSION/**/{name.upper()}/**/=/**/1",
            f"SET LOCAL {name} TO DEFAULT",
            f"RESET {name}",
        ]
    return [
        f"SET {name} = 1",
        f"SET SESSION `{name}` = 'x'",
        f"SET @@session.{name.upper()} = 1",
        f"SET @@{name} = DEFAULT",
        f"SET/**/LOCAL/**/{name}/**/=/**/0",
    ]


def _judge_every(names: list[str], dialect: str) -> None:
    allowed = SETTABLE[dialect]
    bad = []
    for name in names:
        if name.lower() in allowed:
            continue
        for sql in _spellings(name, dialect):
            if _actions(sql, dialect) != ("block", "block"):
                bad.append(sql)
    assert not bad, bad[:20]


@pytest.mark.pg
def test_every_postgres_setting_outside_the_allowlist_is_refused(pg_backend: Backend) -> None:
    import psycopg

    with psycopg.connect(pg_backend.url) as raw:
        names = [r[0] for r in raw.execute("SELECT name FROM pg_settings")]
    assert len(names) > 200
    _judge_every(names, "postgres")


@pytest.mark.mysql
def test_every_mysql_session_variable_outside_the_allowlist_is_refused(
    mysql_backend: Backend,
) -> None:
    from guardeddb.drivers import connect_url

    raw = connect_url(mysql_backend.url, {})
    try:
        cur = raw.cursor()
        cur.execute("SHOW SESSION VARIABLES")
        names = [r[0] for r in cur.fetchall()]
    finally:
        raw.close()
    assert len(names) > 200
    _judge_every(names, "mysql")


def test_uuid_is_not_a_setting() -> None:
    """A name nobody reviewed is admin, not 'other': the allowlist's default."""
    name = f"x{uuid.uuid4().hex}"
    _blocked(f"SET {name} = 1", "mysql")
    _blocked(f"SET {name} = 1", "postgres")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT SET_CONFIG('Standard_Conforming_Strings', 'off', true)",
        "SELECT set_config('client_encoding', 'SJIS', false)",
        "SELECT pg_catalog.set_config('backslash_quote', 'on', false)",
        "ALTER ROLE postgres SET standard_conforming_strings = off",
        'ALTER DATABASE test SET "standard_conforming_strings" TO off',
        "ALTER USER postgres SET backslash_quote = on",
        "DO $$ BEGIN EXECUTE 'SET standard_conforming_strings = off'; END $$",
        "DO 'BEGIN PERFORM set_config(''backslash_quote'', ''on'', false); END'",
    ],
)
def test_postgres_tokenizer_settings_are_refused_however_they_are_set(sql: str) -> None:
    _kernel(sql, "postgres")


@pytest.mark.parametrize(
    "sql",
    [
        "PREPARE s FROM 'SET sql_mode = 0'",
        "SET @q = 'SET SESSION sql_mode = 0'",
        "SET @q = CONCAT('SET character_set_', 'client = gbk')",
        "PREPARE s FROM 'SET @@character_set_client = gbk'",
        "EXECUTE IMMEDIATE 'SET sql_mode = ''ANSI_QUOTES'''",
    ],
)
def test_mysql_tokenizer_settings_in_dynamic_sql_are_refused(sql: str) -> None:
    _kernel(sql, "mysql")


@pytest.mark.parametrize(
    ("sql", "klass"),
    [
        ("SELECT set_config('role', 'postgres', false)", "dcl"),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", "admin"),
        ("SELECT set_config('search_path', 'billing', false)", "admin"),
        ("SELECT set_config(current_user, 'x', false)", "admin"),
    ],
)
def test_set_config_is_judged_like_set(sql: str, klass: str) -> None:
    """set_config outside the presets' function list is still judged by the allowlist."""
    assert klass in analyze(sql, "postgres").classes
    bare = guardeddb.load_policy(
        {
            "version": 1,
            "extends": [],
            "rules": [{"id": "r", "match": {"statements": [klass]}, "action": "block"}],
        }
    )
    assert bare.check(sql, AGENT, "postgres").action == "block"


@pytest.mark.parametrize(
    "sql",
    [
        "RESET /* c */ role",
        'RESET "role"',
        "RESET\nSESSION\nAUTHORIZATION",
        "SHOW /* x */ data_directory",
        'CALL p(U&"pg\\005fsleep"(1))',
        "VACUUM /* ; */ guardeddb_audit",
    ],
)
def test_command_tails_are_tokenized(sql: str) -> None:
    """What follows RESET, SHOW, CALL, VACUUM is judged from its own tokens."""
    _blocked(sql, "postgres")


def test_report_mode_does_not_lift_kernel_refusals(tmp_path: Path) -> None:
    """``mode: report`` blocks nothing a rule decides, but a kernel refusal
    protects guardeddb itself: the table is never created."""
    path = tmp_path / "report.db"
    conn = guardeddb.connect(f"sqlite:///{path}", policy={"version": 1, "mode": "report"})
    conn.execute("CREATE TABLE ordinary (id INT)")  # report mode: rules block nothing
    with pytest.raises(guardeddb.QueryBlocked):
        conn.execute("CREATE TABLE guardeddb_approvals (id INT)")
    conn.close()
    raw = sqlite3.connect(path)
    names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
    raw.close()
    assert names == {"ordinary"}


def test_use_names_a_database_not_a_table() -> None:
    """``USE test`` from inside ``billing`` is not a table ``billing.test``;
    ``USE billing`` under a ``billing.*`` rule is refused (every table in it)."""
    rule = {"id": "b", "match": {"tables": ["billing.*"]}, "action": "block"}
    policy = guardeddb.load_policy({"version": 1, "rules": [rule]})
    inside = frozenset({"billing"})
    assert policy.decide(analyze("USE test", "mysql"), None, inside).action == "allow"
    assert policy.decide(analyze("USE `Billing`", "mysql"), None, inside).action == "block"


@pytest.mark.pg
def test_a_store_in_the_guarded_database_draws_a_warning(
    pg_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """An approval store in the application's own database is named at connect."""
    import logging

    policy = {"version": 1, "approvals": {"store": pg_backend.url}}
    with caplog.at_level(logging.WARNING, logger="guardeddb"):
        conn = guardeddb.connect(pg_backend.url, policy=policy)
        conn.close()
    assert "approval store is in the database this connection uses" in caplog.text
