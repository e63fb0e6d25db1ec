"""The story ``guardeddb demo`` tells, on an embedded SQLite database.

An AI support agent, acting for a person, works on a customer database:
it reads (masked), tries a DROP (blocked), a DELETE without WHERE (blocked)
and a bulk change (held; a human approves it; it runs once). Then the audit
trail is printed and verified. Everything runs through the public API and
the same code paths a user's application would take.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import guardeddb

from .approvals import ApprovalStore
from .audit import verify
from .drivers import unguarded
from .policy import Policy

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["POLICY_YAML", "Step", "Story", "run"]

_SEED = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
    phone TEXT, card_number TEXT, city TEXT
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
    total_cents INTEGER NOT NULL, status TEXT NOT NULL
);
INSERT INTO customers VALUES
    (1, 'Ada Lovelace', 'ada@example.com', '+44 20 7946 0958', '4242424242424242', 'London'),
    (2, 'Grace Hopper', 'grace@example.com', '+1 212 555 0100', '5555555555554444', 'New York'),
    (3, 'Alan Turing', 'alan@example.com', '+44 161 496 0000', '4000056655665556', 'Manchester');
INSERT INTO orders VALUES
    (1, 1, 12900, 'shipped'), (2, 1, 4500, 'pending'), (3, 2, 99900, 'pending'),
    (4, 3, 2500, 'pending'), (5, 3, 7700, 'refunded');
"""

#: The demo's policy, written beside the database so the user can read it.
POLICY_YAML = """\
version: 1
extends: [agent-safe]          # no DDL, no UPDATE/DELETE without WHERE, fail closed ...
rules:
  - id: bulk-changes-need-a-human
    match: {{statements: [update, delete], where: true, affected_rows: {{gt: 1}}}}
    action: review
    message: changes to more than one row wait for a person
masking:
  rules:
    - {{columns: ["customers.email"], operator: email}}
    - {{columns: ["customers.card_number"], operator: last4}}
  detectors: all               # phone numbers, IBANs, SSNs, keys ... in any text
approvals:
  store: sqlite:///{approvals}
  ttl: 1h
  approvers: {{roles: [dba]}}  # who may decide in `guardeddb console` (never the requester)
audit:
  jsonl: {audit}
  required: true
"""

AGENT = guardeddb.Identity(
    user="alice@example.com", agent="support-bot", roles=frozenset({"support"})
)
APPROVER = "dba@example.com"


@dataclass
class Step:
    """One thing the agent tried and what guardeddb did about it."""

    says: str
    sql: str
    outcome: str  # allowed | blocked | held | approved | ran
    rule: str | None = None
    reason: str | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    rowcount: int | None = None
    request_id: str | None = None
    impact: int | None = None


@dataclass
class Story:
    """What happened, and where the evidence is."""

    directory: Path
    policy_path: Path
    audit_path: Path
    steps: list[Step] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    audit_verified: int = 0
    audit_problem: str | None = None


def _attempt(
    conn: guardeddb.GuardedConnection,
    store: ApprovalStore,
    story: Story,
    says: str,
    sql: str,
    *params: Any,
) -> Step:
    """Run one statement as the agent; record what guardeddb decided."""
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
    except guardeddb.ApprovalRequired as held:
        conn.rollback()
        step = Step(says, sql, "held", held.decision.rule_id, held.decision.message)
        step.request_id = held.request_id
        request = store.get(held.request_id)
        step.impact = request.impact if request is not None else None
    except guardeddb.QueryBlocked as blocked:
        step = Step(says, sql, "blocked", blocked.decision.rule_id, blocked.decision.message)
    else:
        step = Step(says, sql, "allowed")
        if cur.description is not None:
            step.columns = [d[0] for d in cur.description]
            step.rows = [list(r) for r in cur.fetchall()]
        else:
            step.rowcount = cur.rowcount
        conn.commit()
    cur.close()
    story.steps.append(step)
    return step


def run(
    directory: Path,
    decide: Callable[[ApprovalStore, Policy, str], None],
    tracer_provider: TracerProvider | None = None,
) -> Story:
    """Seed a shop in ``directory``, play the agent's story, verify the trail.

    ``decide`` is the human: it approves a held request (the CLI passes the
    same function ``guardeddb approvals approve`` runs).
    """
    directory.mkdir(parents=True, exist_ok=True)
    db_path, audit_path = directory / "shop.db", directory / "audit.jsonl"
    policy_path, approvals_path = directory / "policy.yaml", directory / "approvals.db"
    for stale in (db_path, audit_path, approvals_path):
        stale.unlink(missing_ok=True)
    policy_path.write_text(
        POLICY_YAML.format(approvals=approvals_path, audit=audit_path), encoding="utf-8"
    )
    with unguarded():  # seeded by the application, not by the agent
        raw = sqlite3.connect(db_path)
        raw.executescript(_SEED)
        raw.close()

    policy = guardeddb.load_policy(str(policy_path))
    store = ApprovalStore(f"sqlite:///{approvals_path}")
    story = Story(directory, policy_path, audit_path)
    conn = guardeddb.connect(f"sqlite:///{db_path}", policy=policy, tracer_provider=tracer_provider)
    with guardeddb.identity(AGENT):
        _attempt(
            conn,
            store,
            story,
            "reads a customer's record",
            "SELECT id, name, email, phone, card_number, city FROM customers WHERE id = ?",
            1,
        )
        _attempt(conn, store, story, "cleans up by dropping the table", "DROP TABLE customers")
        _attempt(conn, store, story, "deletes every order", "DELETE FROM orders")
        bulk = "UPDATE orders SET total_cents = total_cents + 500 WHERE status = 'pending'"
        held = _attempt(conn, store, story, "adds a late fee to every pending order", bulk)
        if held.request_id is not None:
            decide(store, policy, held.request_id)
            story.steps.append(
                Step(f"{APPROVER} approves request {held.request_id}", "", "approved")
            )
            _attempt(conn, store, story, "retries the approved change", bulk)
            _attempt(conn, store, story, "tries to run it a second time", bulk)
    conn.close()

    story.audit = _records(audit_path)
    story.audit_verified, problem = verify(audit_path)
    if problem is not None:
        story.audit_problem = f"line {problem.line}: {problem.reason}"
    return story


def _records(path: Path) -> list[dict[str, Any]]:
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def default_directory() -> Path:
    """A fresh directory the user can look into after the demo."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="guardeddb-demo-"))
