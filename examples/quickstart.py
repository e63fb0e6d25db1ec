"""The README's example on embedded SQLite: an identity, a masked read, a blocked DROP.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import sqlite3

import guardeddb
from guardeddb.testing import capture_spans

# The application owns the schema; the agent only gets the guarded connection.
raw = sqlite3.connect(":memory:")
raw.executescript(
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT);"
    "INSERT INTO customers VALUES (42, 'Ada Lovelace', 'ada@example.com');"
)

with capture_spans() as cap:
    conn = guardeddb.wrap(raw, tracer_provider=cap.tracer_provider)  # agent-safe by default
    with guardeddb.identity(user="alice@example.com", agent="support-bot", roles={"support"}):
        cur = conn.cursor()
        cur.execute("SELECT name, email FROM customers WHERE id = ?", (42,))
        print(cur.fetchone())  # ('Ada Lovelace', 'a***@example.com')
        try:
            cur.execute("DROP TABLE customers")
        except guardeddb.QueryBlocked as exc:
            print(exc)  # query blocked by rule 'no-ddl': ...
    conn.close()

for span in cap.spans:
    print(span.name, dict(span.attributes or {}))
