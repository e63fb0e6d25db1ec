"""The guardeddb command: the demo runs on embedded SQLite and tells the story."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from guardeddb.cli import main


def test_demo_json_reports_every_query(capsys: pytest.CaptureFixture[str]) -> None:
    """demo --json lists each query's identity, summary, sanitized text, rows and errors."""
    assert main(["demo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["span"] for r in rows] == [
        "SELECT customers",
        "SELECT orders customers",
        "SELECT refunds",
        "UPDATE orders",
        "DROP TABLE customers",
        "DELETE orders",
        "DELETE orders",
        "SELECT customers; DELETE orders",
        "SELECT orders customers",
    ]
    assert rows[0]["user"] == "alice@example.com" and rows[0]["agent"] == "support-bot"
    assert rows[-1]["user"] == "bob@example.com" and rows[-1]["agent"] == ""
    assert rows[0]["rows"] == 1 and rows[-1]["rows"] == 3
    assert rows[2]["error"] == "sqlite3.OperationalError"
    assert [(r["decision"], r["rule"]) for r in rows[4:8]] == [
        ("block", "no-ddl"),
        ("block", "write-needs-where"),
        ("block", "write-needs-where"),
        ("block", "no-stacked-statements"),
    ]
    assert all(r["error"] == "guardeddb.QueryBlocked" for r in rows[4:8])
    text = json.dumps(rows)
    for literal in ("ada@example.com", "pending", "shipped", "cancelled"):
        assert literal not in text


def test_demo_table_as_console_script(tmp_path: object) -> None:
    """The installed console script prints the table (and works on a file database)."""
    out = subprocess.run(
        [sys.executable, "-m", "guardeddb.cli", "demo", "--database", f"{tmp_path}/demo.db"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "SELECT customers" in out and "alice@example.com" in out
    assert "BLOCKED by no-ddl" in out
    assert "ada@example.com" not in out
