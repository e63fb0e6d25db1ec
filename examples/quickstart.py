"""The README's example on embedded SQLite: one identity, one query, one span.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import guardeddb
from guardeddb.testing import capture_spans

with capture_spans() as cap:
    conn = guardeddb.connect("sqlite:///:memory:", tracer_provider=cap.tracer_provider)
    conn.executescript(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT);"
        "INSERT INTO customers VALUES (42, 'Ada Lovelace', 'ada@example.com');"
    )
    with guardeddb.identity(user="alice@example.com", agent="support-bot", roles={"support"}):
        cur = conn.cursor()
        cur.execute("SELECT name, email FROM customers WHERE email = 'ada@example.com'")
        print(cur.fetchone())
    conn.close()

span = cap.spans[-1]
print(span.name, dict(span.attributes or {}))
