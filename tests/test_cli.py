"""The guardeddb command: the demo runs on embedded SQLite and tells the story."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from guardeddb.cli import main


def test_demo_json_tells_the_whole_story(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """demo --json: a masked read, a blocked DROP, a blocked DELETE without WHERE, a
    bulk change held, approved, run once and held again, and a verified audit trail."""
    assert main(["demo", "--json", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    story = json.loads(out)
    steps = story["steps"]
    assert [(s["outcome"], s["rule"]) for s in steps] == [
        ("allowed", None),
        ("blocked", "no-ddl"),
        ("blocked", "write-needs-where"),
        ("held", "bulk-changes-need-a-human"),
        ("approved", None),
        ("allowed", None),
        ("held", "bulk-changes-need-a-human"),
    ]
    read = steps[0]
    assert read["columns"] == ["id", "name", "email", "phone", "card_number", "city"]
    assert read["rows"] == [
        [1, "Ada Lovelace", "a***@example.com", "[REDACTED]", "************4242", "London"]
    ]
    assert steps[3]["impact"] == 3 and steps[3]["request_id"]
    assert steps[5]["rowcount"] == 3  # the approved change ran, once
    assert steps[6]["request_id"] != steps[3]["request_id"]  # an approval is used once
    for secret in ("ada@example.com", "4242424242424242", "+44 20 7946 0958"):
        assert secret not in out
    audit = story["audit"]
    assert audit["problem"] is None and audit["verified_records"] == len(audit["records"])
    events = [r["event"] for r in audit["records"]]
    assert events.count("approval") == 1
    who = {(r.get("identity") or {}).get("agent") for r in audit["records"]}
    assert who == {"support-bot", None}  # None: the approver's record
    assert [s["span"] for s in story["spans"]] == [
        "SELECT customers",
        "DROP TABLE customers",
        "DELETE orders",
        "UPDATE orders",
        "UPDATE orders",
        "UPDATE orders",
    ]
    assert all(s["user"] == "alice@example.com" for s in story["spans"])
    # The database agrees: the fee was added to the three pending orders once.
    with sqlite3.connect(tmp_path / "shop.db") as db:
        totals = dict(db.execute("SELECT id, total_cents FROM orders").fetchall())
    assert totals == {1: 12900, 2: 5000, 3: 100400, 4: 3000, 5: 7700}
    assert main(["audit", "verify", str(tmp_path / "audit.jsonl")]) == 0


def test_demo_as_console_script(tmp_path: Path) -> None:
    """The console script tells the story readably, in a fresh directory of its own."""
    out = subprocess.run(
        [sys.executable, "-m", "guardeddb.cli", "demo", "--dir", str(tmp_path / "d")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "a***@example.com" in out and "ada@example.com" not in out
    assert "BLOCKED by rule no-ddl" in out and "BLOCKED by rule write-needs-where" in out
    assert "HELD for approval" in out and "a dry run says 3 rows would change" in out
    assert "allowed: 3 rows changed" in out
    assert "hash chain intact" in out
    assert (tmp_path / "d" / "policy.yaml").exists()


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


def test_policy_validate_prints_the_effective_masking(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the presets merge: each column rule with its operator, parameters
    and filter, the preset's detectors added to the file's, who may unmask;
    a bad filter is named by file, line and key (#11)."""
    from guardeddb.masking.detectors import DETECTORS

    path = f"{tmp_path}/masking.yaml"
    with open(path, "w") as f:
        f.write(
            "version: 1\n"
            "extends: [agent-safe]\n"
            "masking:\n"
            "  rules:\n"
            "    - {columns: [customers.ssn], operator: redact, filter: deny}\n"
            "    - {columns: ['*.iban'], operator: partial, keep_first: 2, filter: equality}\n"
            "    - {columns: ['*.email'], operator: email}\n"
            "  unmask: {roles: [compliance], users: [dpo@example.com]}\n"
        )
    assert main(["policy", "validate", path]) == 0
    out = capsys.readouterr().out
    assert "customers.ssn: operator redact, filter deny" in out
    assert "*.iban: operator partial (keep_first=2), filter equality" in out
    assert "*.email: operator email, filter allow" in out
    detectors = next(line for line in out.splitlines() if "detectors:" in line)
    assert set(detectors.split(":", 1)[1].strip().split(", ")) == set(DETECTORS)
    assert "roles compliance; users dpo@example.com" in out
    none = f"{tmp_path}/none.yaml"
    with open(none, "w") as f:
        f.write("version: 1\nextends: []\n")
    assert main(["policy", "validate", none]) == 0
    assert "masking: none" in capsys.readouterr().out
    bad = f"{tmp_path}/bad_filter.yaml"
    with open(bad, "w") as f:
        f.write(
            "version: 1\nextends: []\nmasking:\n  rules:\n"
            "    - columns: [ssn]\n      operator: redact\n      filter: sometimes\n"
        )
    assert main(["policy", "validate", bad]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:7: masking.rules[0].filter: must be one of allow, equality, deny" in err


# --- #13: validate warns about policies that protect nothing; policy show ----


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("", "the policy is empty"),
        ("version: 1\nextends: []\n", "extends no preset (extends: []) and does not block DDL"),
        (
            "version: 1\nextends: []\nrules:\n  - {id: ro, match: {statements: [write]}, "
            "action: block}\n",
            "does not block DDL",
        ),
    ],
)
def test_policy_validate_warns_about_a_policy_that_protects_nothing(
    text: str, warning: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Still valid (exit 0), but said on stderr, where a CI log shows it."""
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert main(["policy", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out
    assert "warning: " in captured.err and warning in captured.err


@pytest.mark.parametrize(
    "text",
    [
        'version: 1\nmasking:\n  rules: [{columns: ["*.email"], operator: email}]\n',
        "version: 1\nextends: [readonly]\n",
        "version: 1\nextends: []\nrules:\n  - {id: no-ddl, match: {statements: [ddl]}, "
        "action: block}\n",
    ],
)
def test_policy_validate_is_quiet_about_protective_policies(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert main(["policy", "validate", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("source", ["readonly", "agent-safe", "FILE"])
def test_policy_show_prints_the_effective_policy_and_it_loads_back(
    source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """policy show NAME|FILE writes the presets out: what a file means, in YAML
    that loads back to the same rules, limits and masking."""
    import guardeddb

    if source == "FILE":
        path = tmp_path / "mine.yaml"
        path.write_text(
            'version: 1\nmasking:\n  rules: [{columns: ["*.email"], operator: email}]\n'
            "  hash_key: s3cret-key\n"
        )
        source = str(path)
    assert main(["policy", "show", source]) == 0
    out = capsys.readouterr().out
    assert "s3cret-key" not in out  # a key is never printed
    shown = tmp_path / "shown.yaml"
    shown.write_text(out.replace("<set, not shown>", "another-key"))
    original, again = guardeddb.load_policy(source), guardeddb.load_policy(str(shown))
    assert again.rules == original.rules and again.extends == ()
    assert again.limits == original.limits and again.on_unparsed == original.on_unparsed
    assert again.masking.get("detectors") == original.masking.get("detectors")
    if source.endswith("mine.yaml"):
        assert "no-ddl" in out and "built on agent-safe" in out


def test_policy_show_of_an_unknown_name_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "show", "read-only"]) == 1
    assert "cannot read policy" in capsys.readouterr().err
