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
    assert rows[0]["masked"] == 2  # the email and the phone number the agent read
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


EXAMPLE_POLICY = """\
version: 1
mode: enforce             # enforce | report (decide and record, block nothing)
default: allow            # action when no rule matches
on_unparsed: block        # statements the analyzer cannot fully understand
require_identity: false
extends: [agent-safe]

rules:                    # first matching rule wins, in file order
  - id: agents-read-only
    match:
      identity: {agent: "*"}
      statements: [write, ddl, dcl]
    action: block
    message: AI agents may only read
  - id: delete-needs-where
    match: {statements: [update, delete], where: false}
    action: block
  - id: billing-is-finance-only
    match: {tables: ["billing.*"], identity: {roles_absent: [finance]}}
    action: block
  - id: mass-delete-review
    match: {statements: [delete]}
    action: review

masking:
  rules:
    - {columns: ["*.email"], operator: email}
  detectors: [email, credit_card]
  unmask: {roles: [compliance]}

audit:
  jsonl: audit.jsonl
  required: true

approvals:
  store: sqlite:///approvals.db
  ttl: 1h
"""


def test_check_prints_decision_rule_and_facts(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """check judges SQL under a policy file for an identity and exits 1 when refused."""
    path = f"{tmp_path}/policy.yaml"
    with open(path, "w") as f:
        f.write(EXAMPLE_POLICY)
    assert (
        main(["check", "--policy", path, "--agent", "bot", "UPDATE t SET a = 1 WHERE id = 2"]) == 1
    )
    out = capsys.readouterr().out
    assert out.startswith("BLOCK by rule agents-read-only: AI agents may only read")
    assert "kind=update" in out and "tables=['t']" in out
    assert (
        main(
            [
                "check",
                "--policy",
                path,
                "--user",
                "bob",
                "--role",
                "finance",
                "SELECT * FROM billing.invoices",
            ]
        )
        == 0
    )
    assert main(["check", "--policy", path, "--user", "bob", "SELECT * FROM billing.invoices"]) == 1
    capsys.readouterr()
    assert (
        main(
            [
                "check",
                "--preset",
                "readonly",
                "--json",
                "--dialect",
                "mysql",
                "/*!50000 DROP TABLE t */",
            ]
        )
        == 1
    )
    facts = json.loads(capsys.readouterr().out)
    assert facts["rule"] == "on_unparsed" and "executable comment" in facts["message"]


def test_check_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    """check --json prints the decision and every statement's facts."""
    assert main(["check", "--json", "--dialect", "sqlite", "SELECT a FROM t; DROP TABLE t"]) == 1
    facts = json.loads(capsys.readouterr().out)
    assert facts["decision"] == "block" and facts["rule"] == "no-stacked-statements"
    assert [s["kind"] for s in facts["statements"]] == ["select", "drop"]
    assert facts["statements"][1]["classes"] == ["ddl"]


def test_policy_validate(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """policy validate lists the rules of a good file and names the line of a bad one."""
    good = f"{tmp_path}/good.yaml"
    with open(good, "w") as f:
        f.write(EXAMPLE_POLICY)
    assert main(["policy", "validate", good]) == 0
    assert "agents-read-only" in capsys.readouterr().out
    bad = f"{tmp_path}/bad.yaml"
    with open(bad, "w") as f:
        f.write("version: 1\nrules:\n  - id: x\n    action: maybe\n")
    assert main(["policy", "validate", bad]) == 1
    assert f"{bad}:4: rules[0].action: must be one of" in capsys.readouterr().err


def test_quickstart_example_runs() -> None:
    """examples/quickstart.py shows a masked read and a blocked DROP."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
    out = subprocess.run(
        [sys.executable, str(script)], check=True, capture_output=True, text=True
    ).stdout
    assert "('Ada Lovelace', 'a***@example.com')" in out
    assert "blocked by rule 'no-ddl'" in out
    assert "ada@example.com" not in out
