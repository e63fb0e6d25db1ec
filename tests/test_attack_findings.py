"""Bypasses found by the attack review of #10, each as the SAFE outcome.

Every test here fails while its bypass works: it states what the server
must show (no file read, no setting leaked, no masked value returned raw)
when a hostile statement or driver call goes through a guarded connection.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from tests.fix_db import Backend

READONLY: dict[str, Any] = {"version": 1, "extends": ["readonly"]}


def _rows(conn: Any, sql: str) -> list[Any] | None:
    """The rows ``sql`` returns through ``conn``, or None if guardeddb (or the
    server) refused it."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
        rows: list[Any] = cur.fetchall()
        return rows
    except Exception:
        return None
    finally:
        cur.close()


@pytest.fixture
def server_file() -> Iterator[tuple[str, str]]:
    """A world-readable file under /tmp holding a secret the server can read."""
    secret = f"atk-secret-{uuid.uuid4().hex}"
    path = f"/tmp/guardeddb-attack-{uuid.uuid4().hex}.txt"
    with open(path, "w") as fh:
        fh.write(secret)
    os.chmod(path, 0o644)
    try:
        yield path, secret
    finally:
        os.unlink(path)


@pytest.mark.pg
def test_pg_agent_safe_cannot_read_server_files_via_pg_read_file_old(
    pg_backend: Backend, server_file: tuple[str, str]
) -> None:
    """pg_read_file_old is pg_read_file under its pre-9.x adminpack name: the
    denylist glob 'pg_read_file' has no star, so it misses it."""
    path, secret = server_file
    conn = guardeddb.connect(pg_backend.url)
    try:
        rows = _rows(conn, f"SELECT pg_read_file_old('{path}', 0, 100)")
    finally:
        conn.close()
    assert rows is None or secret not in repr(rows)


@pytest.mark.pg
@pytest.mark.parametrize(
    "sql",
    [
        # pg_file_settings and pg_hba_file_rules are refused as catalogs; the
        # set-returning functions behind those views are not.
        "SELECT * FROM pg_show_all_file_settings()",
        "SELECT * FROM pg_hba_file_rules()",
        # pg_settings is refused; the function behind it is STABLE, so it is
        # even on readonly's function allowlist.
        "SELECT name, setting FROM pg_show_all_settings() WHERE name = 'data_directory'",
    ],
)
@pytest.mark.parametrize("policy", ["agent-safe", "readonly"])
def test_pg_credential_catalog_functions_are_refused(
    pg_backend: Backend, sql: str, policy: str
) -> None:
    conn = (
        guardeddb.connect(pg_backend.url)
        if policy == "agent-safe"
        else guardeddb.connect(pg_backend.url, policy=READONLY)
    )
    try:
        rows = _rows(conn, sql)
    finally:
        conn.close()
    assert not rows, f"{sql} returned server configuration: {rows!r:.200}"


@pytest.fixture
def sqlite_email(tmp_path: Path) -> str:
    path = str(tmp_path / "attack.db")
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT)")
    raw.execute("INSERT INTO people VALUES (1, 'alice@example.com')")
    raw.commit()
    raw.close()
    return path


@pytest.mark.parametrize(
    ("policy", "readonly"),
    [("agent-safe", None), ("agent-safe", True), ("readonly", True)],
)
def test_sqlite_blobopen_does_not_return_masked_values_raw(
    sqlite_email: str, policy: str, readonly: bool | None
) -> None:
    """SELECT email returns a***@example.com; blobopen on the same cell is
    judged as that SELECT (or an UPDATE) but its bytes never pass masking."""
    url = f"sqlite:///{sqlite_email}"
    conn = (
        guardeddb.connect(url)
        if policy == "agent-safe"
        else guardeddb.connect(url, policy=READONLY)
    )
    try:
        assert _rows(conn, "SELECT email FROM people") == [("a***@example.com",)]
        kwargs = {} if readonly is None else {"readonly": readonly}
        try:
            blob = conn.blobopen("people", "email", 1, **kwargs)
        except Exception:
            return  # refused: safe
        try:
            data = blob.read()
        finally:
            blob.close()
    finally:
        conn.close()
    assert b"alice@example.com" not in data


@pytest.mark.pg
def test_pg_catalog_dml_cannot_reach_a_kernel_protected_table(pg_backend: Backend) -> None:
    """UPDATE pg_class is DML to the analyzer (agent-safe allows it) but DDL to
    the server: rename guardeddb_approvals away, write a row, rename it back.
    The table's name only appears built by concat(), never as a string."""
    import psycopg

    schema = f"atk_{uuid.uuid4().hex[:8]}"
    hidden = f"plain_{schema}"
    raw = psycopg.connect(pg_backend.url, autocommit=True)
    raw.execute(f"CREATE SCHEMA {schema}")
    raw.execute(f"CREATE TABLE {schema}.guardeddb_approvals (id int, note text)")
    try:
        conn = guardeddb.connect(pg_backend.url)
        try:
            for sql in [
                f"UPDATE pg_catalog.pg_class SET relname = '{hidden}' "
                f"WHERE relnamespace = '{schema}'::regnamespace "
                "AND relname = concat('guardeddb', '_approvals')",
                f"INSERT INTO {schema}.{hidden} VALUES (1, 'approved by the agent')",
                "UPDATE pg_catalog.pg_class SET relname = concat('guardeddb', '_approvals') "
                f"WHERE relnamespace = '{schema}'::regnamespace AND relname = '{hidden}'",
            ]:
                cur = conn.cursor()
                try:
                    cur.execute(sql)
                    conn.commit()
                except Exception:
                    conn.rollback()
        finally:
            conn.close()
        rows = raw.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace", [schema]
        ).fetchall()
        names = {r[0] for r in rows}
        written = (
            raw.execute(f"SELECT count(*) FROM {schema}.guardeddb_approvals").fetchone()
            if "guardeddb_approvals" in names
            else (1,)
        )
        assert names == {"guardeddb_approvals"} and written == (0,), (names, written)
    finally:
        raw.execute(f"DROP SCHEMA {schema} CASCADE")
        raw.close()


@pytest.mark.pg
def test_pg_catalog_dml_is_not_a_schema_change_under_agent_safe(pg_backend: Backend) -> None:
    """no-ddl refuses ALTER TABLE ... RENAME; UPDATE pg_class does the same."""
    import psycopg

    table = f"atk_{uuid.uuid4().hex[:8]}"
    raw = psycopg.connect(pg_backend.url, autocommit=True)
    raw.execute(f"CREATE TABLE {table} (id int)")
    try:
        conn = guardeddb.connect(pg_backend.url)
        try:
            cur = conn.cursor()
            try:
                cur.execute(
                    f"UPDATE pg_catalog.pg_class SET relname = '{table}_renamed' "
                    f"WHERE oid = '{table}'::regclass"
                )
                conn.commit()
            except Exception:
                conn.rollback()
        finally:
            conn.close()
        row = raw.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
        assert row == (True,), "the table was renamed through the catalog"
    finally:
        raw.execute(f"DROP TABLE IF EXISTS {table}")
        raw.execute(f"DROP TABLE IF EXISTS {table}_renamed")
        raw.close()


@pytest.mark.mysql
def test_mysql_agent_safe_cannot_rewrite_a_stored_procedure_via_mysql_proc(
    mysql_backend: Backend,
) -> None:
    """no-ddl refuses CREATE/ALTER PROCEDURE; UPDATE mysql.proc rewrites a
    routine's body (run later with its definer's rights) as plain DML."""
    proc = f"atk_{uuid.uuid4().hex[:8]}"
    raw = mysql_backend.connect_raw()
    rc = raw.cursor()
    rc.execute(f"CREATE PROCEDURE {proc}() SELECT 1")
    try:
        conn = guardeddb.connect(mysql_backend.url)
        try:
            cur = conn.cursor()
            try:
                cur.execute(
                    "UPDATE mysql.proc SET body = 'SELECT 2', body_utf8 = 'SELECT 2' "
                    f"WHERE db = DATABASE() AND name = '{proc}'"
                )
                conn.commit()
            except Exception:
                conn.rollback()
        finally:
            conn.close()
        rc.execute(f"SELECT body FROM mysql.proc WHERE db = DATABASE() AND name = '{proc}'")
        assert rc.fetchall() == ((b"SELECT 1",),)
    finally:
        rc.execute(f"DROP PROCEDURE IF EXISTS {proc}")
        raw.close()


@pytest.mark.pg
def test_pg_kernel_setting_cannot_be_persisted_through_pg_db_role_setting(
    pg_backend: Backend,
) -> None:
    """ALTER ROLE ... SET standard_conforming_strings is a kernel refusal; the
    INSERT into the catalog it writes is not, and the next session of that
    role reads backslashes in strings the way the analyzer does not."""
    import psycopg

    role = f"atk_{uuid.uuid4().hex[:8]}"
    raw = psycopg.connect(pg_backend.url, autocommit=True)
    raw.execute(f"CREATE ROLE {role} LOGIN")
    try:
        conn = guardeddb.connect(pg_backend.url)
        try:
            cur = conn.cursor()
            try:
                cur.execute(
                    "INSERT INTO pg_catalog.pg_db_role_setting (setdatabase, setrole, setconfig) "
                    f"VALUES (0, '{role}'::regrole, array['standard_conforming_strings=off'])"
                )
                conn.commit()
            except Exception:
                conn.rollback()
        finally:
            conn.close()
        rows = raw.execute(
            "SELECT setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole", [role]
        ).fetchall()
        assert rows == []
    finally:
        raw.execute(f"DELETE FROM pg_db_role_setting WHERE setrole = '{role}'::regrole")
        raw.execute(f"DROP ROLE {role}")
        raw.close()


def test_sqlite_blobopen_cannot_rewrite_the_schema(tmp_path: Path) -> None:
    """blobopen('sqlite_master', 'sql', rowid) is judged as an UPDATE (allowed
    by agent-safe) but it rewrites CREATE statements: a schema change no-ddl
    refuses, without writable_schema and without the authorizer seeing it."""
    path = str(tmp_path / "schema.db")
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a BLOB)")
    raw.commit()
    raw.close()
    conn = guardeddb.connect(f"sqlite:///{path}")
    try:
        try:
            blob = conn.blobopen("sqlite_master", "sql", 1, readonly=False)
            data = blob.read()
            blob.seek(0)
            blob.write(data.replace(b"BLOB", b"TEXT"))
            blob.close()
            conn.commit()
        except Exception:
            pass
    finally:
        conn.close()
    check = sqlite3.connect(path)
    try:
        schema = check.execute("SELECT sql FROM sqlite_master").fetchall()
    finally:
        check.close()
    assert schema == [("CREATE TABLE t (id INTEGER PRIMARY KEY, a BLOB)",)]


@pytest.mark.mysql
def test_mysql_agent_safe_cannot_register_a_udf_via_mysql_func(mysql_backend: Backend) -> None:
    """CREATE FUNCTION ... SONAME is DDL; the row it writes into mysql.func is
    plain DML and the server loads that library at its next start."""
    name = f"atk_{uuid.uuid4().hex[:8]}"
    raw = mysql_backend.connect_raw()
    rc = raw.cursor()
    try:
        conn = guardeddb.connect(mysql_backend.url)
        try:
            cur = conn.cursor()
            try:
                cur.execute(
                    "INSERT INTO mysql.func (name, ret, dl, type) "
                    f"VALUES ('{name}', 0, 'lib_mysqludf_sys.so', 'function')"
                )
                conn.commit()
            except Exception:
                conn.rollback()
        finally:
            conn.close()
        rc.execute("SELECT name FROM mysql.func WHERE name = %s", (name,))
        assert rc.fetchall() == ()
    finally:
        rc.execute("DELETE FROM mysql.func WHERE name = %s", (name,))
        raw.commit()
        raw.close()


@pytest.mark.pg
def test_pg_agent_safe_cannot_grant_a_role_via_pg_auth_members(pg_backend: Backend) -> None:
    """GRANT is refused (no-dcl); the row GRANT writes is not."""
    import psycopg

    role = f"atk_{uuid.uuid4().hex[:8]}"
    raw = psycopg.connect(pg_backend.url, autocommit=True)
    raw.execute(f"CREATE ROLE {role} LOGIN")
    try:
        conn = guardeddb.connect(pg_backend.url)
        try:
            cur = conn.cursor()
            try:
                cur.execute(
                    "INSERT INTO pg_catalog.pg_auth_members "
                    "(roleid, member, grantor, admin_option) "
                    f"VALUES ('pg_read_server_files'::regrole, '{role}'::regrole, 10, false)"
                )
                conn.commit()
            except Exception:
                conn.rollback()
        finally:
            conn.close()
        row = raw.execute(
            "SELECT pg_has_role(%s, 'pg_read_server_files', 'member')", [role]
        ).fetchone()
        assert row == (False,)
    finally:
        raw.execute(f"DELETE FROM pg_auth_members WHERE member = '{role}'::regrole")
        raw.execute(f"DROP ROLE {role}")
        raw.close()


@pytest.mark.mysql
def test_mysql_readonly_refuses_a_stored_function_that_takes_a_lock(
    mysql_backend: Backend,
) -> None:
    """readonly lets a stored function run unless it declares MODIFIES SQL
    DATA, but CONTAINS SQL is MariaDB's unverified default: a function that
    calls GET_LOCK holds a lock another session sees."""
    name = f"atk_{uuid.uuid4().hex[:8]}"
    raw = mysql_backend.connect_raw()
    rc = raw.cursor()
    rc.execute(f"CREATE FUNCTION {name}() RETURNS INT RETURN GET_LOCK('{name}', 0)")
    try:
        conn = guardeddb.connect(mysql_backend.url, policy=READONLY)
        try:
            _rows(conn, f"SELECT {name}()")
            rc.execute("SELECT IS_USED_LOCK(%s)", (name,))
            holder = rc.fetchall()
        finally:
            conn.close()
        assert holder == ((None,),)
    finally:
        rc.execute(f"DROP FUNCTION IF EXISTS {name}")
        raw.close()
