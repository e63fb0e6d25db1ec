"""The ``guardeddb`` command.

``guardeddb demo`` runs a small agent scenario on an embedded SQLite database
and prints what each query looked like to guardeddb: who ran it, how it was
summarized and sanitized, how many rows came back, and whether it failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import guardeddb

__all__ = ["main"]

_RESET = "DROP TABLE IF EXISTS orders; DROP TABLE IF EXISTS customers;"
_SEED = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
    phone TEXT, city TEXT
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
    total_cents INTEGER NOT NULL, status TEXT NOT NULL
);
INSERT INTO customers VALUES
    (1, 'Ada Lovelace', 'ada@example.com', '+44 20 7946 0958', 'London'),
    (2, 'Grace Hopper', 'grace@example.com', '+1 212 555 0100', 'New York'),
    (3, 'Alan Turing', 'alan@example.com', '+44 161 496 0000', 'Manchester');
INSERT INTO orders VALUES
    (1, 1, 12900, 'shipped'), (2, 1, 4500, 'pending'),
    (3, 2, 99900, 'shipped'), (4, 3, 2500, 'refunded');
"""


def _scenario(conn: guardeddb.GuardedConnection) -> None:
    """What a support agent and an analyst do on a Monday morning."""
    agent = guardeddb.Identity(
        user="alice@example.com", agent="support-bot", roles=frozenset({"support"})
    )
    with guardeddb.identity(agent):
        cur = conn.cursor()
        cur.execute("SELECT id, name, email, phone FROM customers WHERE id = ?", (1,))
        cur.fetchall()  # the detectors mask the email and the phone number
        cur.execute(
            "SELECT o.id, o.total_cents FROM orders o JOIN customers c ON c.id = o.customer_id "
            "WHERE c.email = 'ada@example.com' AND o.status IN ('pending', 'shipped')"
        )
        cur.fetchall()
        with contextlib.suppress(sqlite3.Error):  # the agent guesses a table that is not there
            cur.execute("SELECT * FROM refunds WHERE customer_id = 1")
        cur.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (2,))
        conn.commit()
        # What a confused or injected model tries next; the guardrails refuse
        # before anything reaches the database.
        for attempt in (
            "DROP TABLE customers",
            "DELETE FROM orders",
            "DELETE FROM orders WHERE 1 = 1",
            "SELECT name FROM customers; DELETE FROM orders WHERE id > 0",
        ):
            with contextlib.suppress(guardeddb.QueryBlocked):
                cur.execute(attempt)
    with guardeddb.identity(user="bob@example.com", roles={"analyst"}):
        cur = conn.cursor()
        cur.execute(
            "SELECT c.city, count(*), sum(o.total_cents) FROM orders o "
            "JOIN customers c ON c.id = o.customer_id GROUP BY c.city"
        )
        cur.fetchall()


def _rows(spans: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for span in spans:
        attrs = dict(span.attributes or {})
        rows.append(
            {
                "user": attrs.get("enduser.id", ""),
                "agent": attrs.get("gen_ai.agent.name", ""),
                "span": span.name,
                "db.query.text": attrs.get("db.query.text", ""),
                "rows": attrs.get("db.response.returned_rows", ""),
                "decision": attrs.get("guardeddb.decision.action", ""),
                "rule": attrs.get("guardeddb.decision.rule", ""),
                "masked": attrs.get("guardeddb.masked.values", 0),
                "error": attrs.get("error.type", ""),
                "trace_id": f"{span.context.trace_id:032x}",
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    def who(r: dict[str, Any]) -> str:
        return f"{r['user']}\nvia {r['agent']}" if r["agent"] else str(r["user"])

    def outcome(r: dict[str, Any]) -> str:
        if r["decision"] == "block":
            return f"BLOCKED by {r['rule']}"
        if r["error"]:
            return f"{r['decision']}, failed: {r['error']}"
        masked = f", {r['masked']} value(s) masked" if r["masked"] else ""
        return f"{r['decision']}, ok{masked}"

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text without the cli extra
        for i, r in enumerate(rows, 1):
            print(f"{i}. {who(r)!s:40} {r['span']}  rows={r['rows']}  {outcome(r)}")
            print(f"   {r['db.query.text']}")
        return
    table = Table(title="guardeddb demo: every query, as guardeddb recorded it", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("who")
    table.add_column("span name / db.query.text", overflow="fold")
    table.add_column("rows", justify="right")
    table.add_column("outcome")
    for i, r in enumerate(rows, 1):
        style = "bold red" if r["decision"] == "block" else "red" if r["error"] else None
        query = f"[bold]{r['span']}[/bold]\n{r['db.query.text']}"
        table.add_row(str(i), who(r), query, str(r["rows"]), outcome(r), style=style)
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)


def _demo(args: argparse.Namespace) -> int:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "guardeddb-demo"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if args.otlp or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        # Standard OTEL_EXPORTER_OTLP_* variables configure where (Jaeger: :4318).
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

    raw = sqlite3.connect(args.database)
    raw.executescript(_RESET + _SEED)  # seeded by the application, not the agent
    raw.commit()
    conn = guardeddb.wrap(raw, tracer_provider=provider)  # the agent-safe preset
    _scenario(conn)
    conn.close()
    provider.shutdown()
    rows = _rows(exporter.get_finished_spans())
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        _print_table(rows)
        print(
            "\nEvery query became one OpenTelemetry span tied to the identity that ran it;"
            "\nevery literal in the SQL (an email, a status) was replaced by ? before it"
            " was recorded.\nEmails and phone numbers the agent read were masked in-process.\n"
            "The agent-safe policy (the default) refused the DROP, the"
            " DELETE without a real WHERE\nand the stacked statements before they reached"
            " the database."
        )
    return 0


def _load_policy(source: str | None) -> Any:
    """The policy at ``source`` (agent-safe when None), or None after saying why not."""
    from .errors import PolicyError
    from .policy import load_policy

    try:
        return load_policy(source)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _audit_records(path: str) -> Iterator[dict[str, Any]]:
    """The records of a JSONL audit file (torn lines are for ``audit verify``)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _check(args: argparse.Namespace) -> int:
    """Judge one statement under a policy, without a database."""
    from .policy import preset
    from .sql import analyze

    policy = preset(args.preset) if args.preset else _load_policy(args.policy)
    if policy is None:
        return 2
    ident = None
    if args.user or args.agent or args.role:
        ident = guardeddb.Identity(user=args.user, agent=args.agent, roles=frozenset(args.role))
    analysis = analyze(args.sql, args.dialect)
    decision = policy.decide(analysis, ident)
    statements: list[dict[str, Any]] = [
        {
            "kind": s.kind,
            "kinds": sorted(s.kinds),
            "classes": sorted(s.classes),
            "tables": sorted(s.tables) if not s.tables_unknown else "unknown",
            "columns": sorted(s.columns),
            "functions": sorted(s.functions),
            "where": s.has_where,
            "limit": s.has_limit,
            "unparsed": s.unparsed,
        }
        for s in analysis.statements
    ]
    facts = {
        "decision": decision.action,
        "rule": decision.rule_id,
        "message": decision.message,
        "mode": policy.mode,
        "summary": analysis.summary,
        "sanitized": analysis.sanitized,
        "statements": statements,
    }
    if args.json:
        json.dump(facts, sys.stdout, indent=2)
        print()
    else:
        rule = f" by rule {decision.rule_id}" if decision.rule_id else ""
        print(
            f"{decision.action.upper()}{rule}"
            + (f": {decision.message}" if decision.message else "")
        )
        print(f"  summary:   {analysis.summary}")
        print(f"  sanitized: {analysis.sanitized}")
        for i, st in enumerate(statements, 1):
            print(f"  statement {i}: " + ", ".join(f"{k}={v}" for k, v in st.items()))
    return 0 if decision.action in ("allow", "warn") else 1


_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}


def _replay(args: argparse.Namespace) -> int:
    """Re-judge an audit trail's decisions under another policy; print what changes."""
    from collections import Counter

    policy = _load_policy(args.policy)
    if policy is None:
        return 2
    changes: Counter[tuple[str, str, str]] = Counter()
    examples: dict[tuple[str, str, str], str] = {}
    total = 0
    for rec in _audit_records(args.audit):
        if rec.get("event") != "decision" or not rec.get("statement"):
            continue
        total += 1
        who = rec.get("identity") or {}
        ident = (
            guardeddb.Identity(
                user=who.get("user"),
                agent=who.get("agent"),
                roles=frozenset(who.get("roles") or ()),
                session=who.get("session"),
                verified=bool(who.get("verified")),
            )
            if who
            else None
        )
        dialect = _DIALECTS.get((rec.get("db") or {}).get("system", ""), "postgres")
        new = policy.check(rec["statement"], ident, dialect)
        old = (rec.get("decision") or {}).get("action", "?")
        if new.action != old:
            key = (old, new.action, new.rule_id or "(default)")
            changes[key] += 1
            examples.setdefault(key, rec["statement"])
    print(f"{total} recorded decisions re-judged under {args.policy}")
    if not changes:
        print("no decision would change")
        return 0
    for key, n in changes.most_common():
        was, now, rule = key
        print(f"  {n:6}  {was} -> {now}  by {rule}   e.g. {examples[key][:120]}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Load a policy and report whether it is valid."""
    policy = _load_policy(args.file)
    if policy is None:
        return 1
    print(
        f"{args.file}: valid (mode {policy.mode}, default {policy.default}, "
        f"on_unparsed {policy.on_unparsed}, {len(policy.rules)} rules: "
        + ", ".join(r.id for r in policy.rules)
        + ")"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    """Verify an audit file's hash chain, or show its records as a table."""
    from .audit import verify

    if args.audit_command == "verify":
        try:
            if args.file.startswith(("postgresql://", "postgres://")):
                from .audit import verify_postgres

                good, problem = verify_postgres(args.file, args.stream)
            else:
                good, problem = verify(args.file)
        except Exception as exc:  # a missing file, an unreachable database
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if problem is not None:
            print(
                f"{args.file}:{problem.line}: {problem.reason} ({good} records verified before it)"
            )
            return 1
        print(f"{args.file}: {good} records, chain intact")
        return 0
    rows = []
    for rec in _audit_records(args.file):
        ident = rec.get("identity") or {}
        decision = rec.get("decision") or {}
        if args.user and ident.get("user") != args.user:
            continue
        if args.agent and ident.get("agent") != args.agent:
            continue
        if args.action and decision.get("action") != args.action:
            continue
        rows.append(rec)
    for rec in rows:
        ident = rec.get("identity") or {}
        decision = rec.get("decision") or {}
        who = ident.get("user") or "-"
        if ident.get("agent"):
            who += f" via {ident['agent']}"
        what = str(decision.get("action") or rec.get("event") or "?")
        if decision.get("rule"):
            what += f" ({decision['rule']})"
        if rec.get("event") == "result":
            what = f"result rows={rec.get('rows')} masked={rec.get('masked_values')}"
            what += f" error={rec['error']}" if rec.get("error") else ""
        print(
            f"{rec.get('seq', '?'):>5}  {rec.get('ts', '')[:19]}  {who:40}  {what:40}  "
            f"{rec.get('statement') or ''}"
        )
    return 0


def _approvals(args: argparse.Namespace) -> int:
    """List, show, approve or deny held queries."""
    from .approvals import ApprovalStore, parse_ttl
    from .audit import AuditTrail, sink_for

    url, ttl = args.store, "1h"
    policy = None
    if args.policy:
        policy = _load_policy(args.policy)
        if policy is None:
            return 2
        if url is None:
            url, ttl = policy.approvals.get("store"), str(policy.approvals.get("ttl", "1h"))
    if not url:
        print("error: give --store URL or --policy FILE with approvals.store", file=sys.stderr)
        return 2
    store = ApprovalStore(str(url), parse_ttl(ttl))
    if args.approvals_command == "list":
        for req in store.list(args.status):
            print(f"{req.id}  {req.status:8}  {req.created[:19]}  rule={req.rule}  {req.statement}")
        return 0
    if args.approvals_command == "show":
        found = store.get(args.id)
        if found is None:
            print(f"error: no request {args.id}", file=sys.stderr)
            return 1
        print(json.dumps(found.__dict__, indent=2))
        return 0
    approve = args.approvals_command == "approve"
    if not store.decide(args.id, approve, args.by, args.note):
        print(f"error: request {args.id} is not pending (or has expired)", file=sys.stderr)
        return 1
    sink = sink_for(policy.audit) if policy is not None else None
    if sink is not None:
        # Who approved or denied what is part of the record of proof.
        event = "approval" if approve else "denial"
        trail = AuditTrail(sink, True)
        trail.approval(event, args.id, args.by, args.note)
        trail.close()
    print(
        f"{args.id} {'approved' if approve else 'denied'}" + (f" by {args.by}" if args.by else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardeddb`` console script."""
    parser = argparse.ArgumentParser(prog="guardeddb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an agent scenario on an embedded SQLite database")
    demo.add_argument("--database", default=":memory:", help="SQLite file (default: in memory)")
    demo.add_argument("--json", action="store_true", help="print the spans as JSON")
    demo.add_argument(
        "--otlp", action="store_true", help="also export spans over OTLP/HTTP (OTEL_* variables)"
    )
    check = sub.add_parser("check", help="judge one SQL statement under a policy (no database)")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--policy", help="policy YAML file (default: the agent-safe preset)")
    source.add_argument("--preset", choices=["agent-safe", "readonly"], help="a built-in policy")
    check.add_argument("--user")
    check.add_argument("--agent")
    check.add_argument("--role", action="append", default=[], help="repeat for several roles")
    check.add_argument(
        "--dialect", default="postgres", choices=["postgres", "mysql", "sqlite"], help="SQL dialect"
    )
    check.add_argument("--json", action="store_true", help="print the decision and facts as JSON")
    check.add_argument("sql")
    policy_cmd = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy_cmd.add_subparsers(dest="policy_command", required=True)
    validate = policy_sub.add_parser("validate", help="check a policy file and list its rules")
    validate.add_argument("file")
    replay = policy_sub.add_parser(
        "replay", help="re-judge an audit trail under a new policy and print what would change"
    )
    replay.add_argument("--policy", required=True, help="the new policy YAML")
    replay.add_argument("audit", help="an audit JSONL file")
    audit_cmd = sub.add_parser("audit", help="verify or show an audit trail")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True)
    verify_cmd = audit_sub.add_parser("verify", help="check the hash chain; exit 1 if broken")
    verify_cmd.add_argument("file", help="a JSONL file, or the postgresql:// URL of a shared trail")
    verify_cmd.add_argument("--stream", default="default", help="the stream, for postgresql://")
    show_cmd = audit_sub.add_parser("show", help="print the records as a table")
    show_cmd.add_argument("file")
    show_cmd.add_argument("--user")
    show_cmd.add_argument("--agent")
    show_cmd.add_argument("--action", choices=["allow", "warn", "review", "block"])
    appr = sub.add_parser("approvals", help="list, show, approve or deny held queries")
    where = appr.add_mutually_exclusive_group()
    where.add_argument("--store", help="sqlite:///approvals.db or postgresql://...")
    where.add_argument("--policy", help="a policy file whose approvals.store to use")
    appr_sub = appr.add_subparsers(dest="approvals_command", required=True)
    appr_list = appr_sub.add_parser("list")
    appr_list.add_argument("--status", choices=["pending", "approved", "denied", "used"])
    appr_sub.add_parser("show").add_argument("id")
    for verb in ("approve", "deny"):
        cmd = appr_sub.add_parser(verb)
        cmd.add_argument("id")
        cmd.add_argument("--by", default=os.environ.get("USER"), help="who decides (audited)")
        cmd.add_argument("--note")
    mcp_cmd = sub.add_parser("mcp", help="serve the database to an AI agent over MCP (stdio)")
    mcp_cmd.add_argument(
        "--dsn", required=True, help="sqlite:///FILE, postgresql://..., mysql://..."
    )
    mcp_cmd.add_argument("--policy", help="policy YAML file or preset (default: agent-safe)")
    mcp_cmd.add_argument("--user", help="the person the agent acts for")
    mcp_cmd.add_argument("--agent", help="agent name (default: the MCP client's clientInfo.name)")
    mcp_cmd.add_argument("--roles", help="comma-separated roles, e.g. support,analyst")
    mcp_cmd.add_argument("--max-rows", type=int, default=100, help="rows returned per query")
    mcp_cmd.add_argument(
        "--approvals-wait", type=float, default=30.0, help="wait_for_approval's default seconds"
    )
    # Verified identity (--token/--jwks/...): integrations.mcp.verified_identity is the hook.
    args = parser.parse_args(argv)
    if args.command == "mcp":
        from .integrations.mcp import run as run_mcp

        return run_mcp(args)
    if args.command == "approvals":
        return _approvals(args)
    if args.command == "audit":
        return _audit(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "check":
        return _check(args)
    if args.command == "policy":
        return _replay(args) if args.policy_command == "replay" else _validate(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
