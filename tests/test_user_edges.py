"""What a new user meets at the edges: a missing extra, a closed pipe, a file
that is not an audit trail, ``--help``, and the words a refusal uses (#13)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import guardeddb
from guardeddb.sql import analyze

from .fix_db import PERMISSIVE, Backend

CLI = [sys.executable, "-m", "guardeddb.cli"]


def _without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``module`` cannot be
    imported, as after ``pip install guardeddb`` without its extra."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("module", "extra", "code"),
    [
        ("psycopg", "postgres", "guardeddb.connect('postgresql://u@127.0.0.1:1/x')"),
        ("pymysql", "mysql", "guardeddb.connect('mysql://u@127.0.0.1:1/x')"),
        ("pymysql", "mysql", "guardeddb.connect('mariadb://u@127.0.0.1:1/x')"),
        (
            "psycopg",
            "postgres",
            "import asyncio; asyncio.run(guardeddb.connect_async('postgresql://u@127.0.0.1:1/x'))",
        ),
        ("sqlalchemy", "sqlalchemy", "import guardeddb.integrations.sqlalchemy"),
    ],
)
def test_a_missing_extra_is_named(module: str, extra: str, code: str) -> None:
    """connect() with a driver not installed says which extra installs it,
    instead of a bare ``ModuleNotFoundError: psycopg``."""
    done = _without(module, "import guardeddb\n" + code)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: "), done.stderr
    assert f"pip install 'guardeddb[{extra}]'" in last


def test_sqlite_needs_no_extra() -> None:
    """The built-in driver works with both optional drivers absent."""
    done = _without(
        "psycopg",
        """
        sys.modules["pymysql"] = None
        import guardeddb
        conn = guardeddb.connect("sqlite:///:memory:")
        print(conn.cursor().execute("SELECT 1").fetchall())
        conn.close()
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(1,)]"


def _closed_pipe_run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reader is already gone (``| head``
    that has read what it wanted): every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(CLI + args, stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """A real audit trail of a few hundred records, written by a guarded connection."""
    path = tmp_path / "audit.jsonl"
    policy = {**PERMISSIVE, "audit": {"jsonl": str(path)}}
    conn = guardeddb.connect(f"sqlite:///{tmp_path / 'db.sqlite'}", policy=policy)
    try:
        cur = conn.cursor()
        for i in range(100):
            cur.execute("SELECT ?", (i,))
            cur.fetchall()
    finally:
        conn.close()
    return path


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["check", "--json", "DELETE FROM orders WHERE 1=1"], 141),
        (["audit", "show", "{trail}"], 141),
        (["--help"], 0),  # argparse itself ignores a failed write of help
    ],
)
def test_cli_survives_a_closed_pipe(trail: Path, args: list[str], status: int) -> None:
    """``guardeddb ... | head`` ends quietly: no BrokenPipeError traceback, and
    the status a shell gives a command that SIGPIPE ended."""
    done = _closed_pipe_run([a.format(trail=trail) for a in args])
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == status


def test_audit_show_refuses_a_file_that_is_not_a_trail(tmp_path: Path) -> None:
    """``audit show`` on a non-audit file exits 1 and says so, instead of printing
    nothing and exiting 0; on a JSON file that is not a trail, too."""
    for name, text in [
        ("policy.yaml", "version: 1\nrules: []\n"),
        ("other.jsonl", json.dumps({"level": "info", "msg": "hello"}) + "\n"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        done = subprocess.run([*CLI, "audit", "show", str(path)], capture_output=True, text=True)
        assert done.returncode == 1
        assert done.stdout == ""
        assert f"{path} is not a guardeddb audit trail" in done.stderr


def test_audit_show_prints_a_trail_and_flags_foreign_lines(trail: Path) -> None:
    """A real trail is shown with exit 0; a line that is no record is named
    (file and line), the rest still shown, and the exit status is 1."""
    done = subprocess.run([*CLI, "audit", "show", str(trail)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
    assert len(done.stdout.splitlines()) == 200  # a decision and a result per query
    with trail.open("a") as f:
        f.write("garbage\n")
    done = subprocess.run([*CLI, "audit", "show", str(trail)], capture_output=True, text=True)
    assert done.returncode == 1
    assert len(done.stdout.splitlines()) == 200
    assert f"{trail}:201: not JSON" in done.stderr


def test_audit_show_on_a_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "audit", "show", str(tmp_path / "nope.jsonl")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "No such file" in done.stderr


def test_help_has_no_markup() -> None:
    """``--help`` speaks plain words: no reST (``x``, :class:) from docstrings."""
    outs = [subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True).stdout]
    for cmd in ("demo", "check", "policy", "audit", "approvals", "mcp"):
        outs.append(subprocess.run([*CLI, cmd, "--help"], capture_output=True, text=True).stdout)
    for out in outs:
        assert "``" not in out and ":class:" not in out and ":func:" not in out, out
    assert "Guardrails, masking, tracing and audit" in outs[0]


_PARSER_WORDS = re.compile(r"<class |<Token |TokenType\.|sqlglot|\((?:Alias|Column|Anonymous)\)")


@pytest.mark.parametrize("dialect", ["postgres", "mysql", "sqlite"])
@pytest.mark.parametrize(
    "sql",
    [
        "foo bar",
        "x",
        "'s3cr3t' foo",
        "SELECT FROM WHERE",
        "SELECT * FROM t WHERE a = ANY",
        "SELECT 1 +",
        "SELECT * FROM 's3cr3t' x",
        "SELECT (1",
    ],
)
def test_analysis_reasons_are_in_user_words(dialect: str, sql: str) -> None:
    """Why a statement is not understood is said in words (where, what was
    expected), never with the parser's class names or token reprs, and never
    repeating a literal of the statement."""
    reason = analyze(sql, dialect).unparsed
    if reason is None:  # SQLite and MariaDB read a quoted table name
        assert dialect != "postgres" and "FROM 's3cr3t'" in sql
        return
    assert not _PARSER_WORDS.search(reason), reason
    assert "s3cr3t" not in reason


def test_refusal_names_rule_and_reason_in_words(backend: Backend) -> None:
    """Through a real connection: the QueryBlocked message a caller sees."""
    conn = guardeddb.connect(backend.url, policy={"version": 1, "extends": []})
    try:
        with pytest.raises(guardeddb.QueryBlocked) as info:
            conn.cursor().execute("foo bar")
        message = str(info.value)
        assert "'on_unparsed'" in message
        assert "'foo' is not a SQL command" in message
        assert not _PARSER_WORDS.search(message)
        with pytest.raises(guardeddb.QueryBlocked) as info:
            conn.cursor().execute("SELECT FROM WHERE 's3cr3t'")
        assert "parse error at line 1" in str(info.value) or "does not parse" in str(info.value)
        assert not _PARSER_WORDS.search(str(info.value)) and "s3cr3t" not in str(info.value)
    finally:
        conn.close()
