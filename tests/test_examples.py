"""The examples in examples/ run as a user would run them, and say what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str) -> str:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], check=True, capture_output=True, text=True
    ).stdout


def test_quickstart_example_runs() -> None:
    """examples/quickstart.py shows a masked read and a blocked DROP."""
    out = _run("quickstart.py")
    assert "('Ada Lovelace', 'a***@example.com')" in out
    assert "blocked by rule 'no-ddl'" in out
    assert "ada@example.com" not in out


def test_agent_tool_example_answers_masked_and_refuses_with_the_rule() -> None:
    """The agent tool returns masked rows, and a refusal the model can act on."""
    out = _run("agent_tool.py")
    results = [
        json.loads(line.split("tool  -> model: ", 1)[1])
        for line in out.splitlines()
        if line.startswith("tool  -> model: ")
    ]
    assert results[0] == {
        "columns": ["name", "email"],
        "rows": [["Ada Lovelace", "a***@example.com"]],
    }
    assert results[1]["rule"] == "read-only" and "only reads are allowed" in results[1]["error"]
    assert results[2]["rows"] == [[1]]  # the DELETE never ran
    assert "ada@example.com" not in out
