"""An AI agent's SQL tool, with guardeddb between the model and the database.

The tool is what you would register with any function-calling model (its JSON
schema is ``TOOL``): the model writes SQL, the tool runs it through a guarded
connection as the person the agent works for, and answers with rows (masked)
or with the rule that refused the query, so the model can correct itself.

To keep this example runnable offline, a scripted "model" plays the calls a
real one made in a session; swap ``SCRIPTED_MODEL`` for your model client.

Run: python examples/agent_tool.py
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import guardeddb

TOOL = {
    "name": "run_sql",
    "description": "Run one SQLite statement on the shop database and return the rows.",
    "input_schema": {
        "type": "object",
        "properties": {"sql": {"type": "string"}},
        "required": ["sql"],
    },
}

POLICY = {
    "version": 1,
    "extends": ["readonly"],  # this agent answers questions; it never writes
    "masking": {"rules": [{"columns": ["customers.email"], "operator": "email"}]},
}


def run_sql(conn: guardeddb.GuardedConnection, sql: str, max_rows: int = 20) -> str:
    """The tool: JSON rows, or a refusal that names the rule and says why."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
        columns = [d[0] for d in cur.description or ()]
        rows = cur.fetchmany(max_rows)
        return json.dumps({"columns": columns, "rows": [list(r) for r in rows]})
    except guardeddb.QueryBlocked as exc:
        return json.dumps({"error": str(exc), "rule": exc.decision.rule_id})
    except sqlite3.Error as exc:  # the model's SQL was wrong: let it see why
        return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        cur.close()


#: What a model asked, in order, while answering "who are our customers in
#: London, and clean up the test orders while you are at it".
SCRIPTED_MODEL = [
    "SELECT name, email FROM customers WHERE city = 'London'",
    "DELETE FROM orders WHERE status = 'test'",  # refused: this agent only reads
    "SELECT count(*) FROM orders WHERE status = 'test'",  # it reports instead
]


def main() -> list[dict[str, Any]]:
    """Seed a shop, let the 'model' call the tool, print the exchange."""
    db = Path(tempfile.mkdtemp(prefix="guardeddb-agent-")) / "shop.db"
    with sqlite3.connect(db) as raw:  # the application owns the schema
        raw.executescript(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, city TEXT);"
            "INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.com', 'London'),"
            " (2, 'Grace Hopper', 'grace@example.com', 'New York');"
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT);"
            "INSERT INTO orders VALUES (1, 'test'), (2, 'shipped');"
        )
    conn = guardeddb.connect(f"sqlite:///{db}", policy=POLICY)
    transcript = []
    with guardeddb.identity(user="alice@example.com", agent="shop-assistant"):
        for sql in SCRIPTED_MODEL:
            answer = run_sql(conn, sql)
            transcript.append({"tool_call": {"name": TOOL["name"], "sql": sql}, "result": answer})
            print(f"model -> {TOOL['name']}: {sql}\ntool  -> model: {answer}\n")
    conn.close()
    return transcript


if __name__ == "__main__":
    main()
