"""The ``guardeddb`` command.

``guardeddb demo`` tells an AI agent's story on an embedded SQLite database: a
masked read, a blocked DROP and DELETE, a bulk change held for a person's
approval and run once, and the audit trail, verified. The other commands
judge SQL, validate and replay policies, verify audit trails and decide
held queries.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import guardeddb

__all__ = ["main"]

#: What ``guardeddb --help`` says first: plain words, not the module's reST.
DESCRIPTION = (
    "Guardrails, masking, tracing and audit for database connections: judge SQL "
    "under a policy, validate and replay policies, show and verify audit trails, "
    "decide held queries, serve a database to an AI agent over MCP, or run the demo."
)


def _span_rows(spans: Sequence[Any]) -> list[dict[str, Any]]:
    """What each span says, for the demo's JSON."""
    keys = {
        "user": "enduser.id",
        "agent": "gen_ai.agent.name",
        "db.query.text": "db.query.text",
        "rows": "db.response.returned_rows",
        "decision": "guardeddb.decision.action",
        "rule": "guardeddb.decision.rule",
        "masked": "guardeddb.masked.values",
        "error": "error.type",
    }
    rows = []
    for span in spans:
        attrs = dict(span.attributes or {})
        row: dict[str, Any] = {"span": span.name, "trace_id": f"{span.context.trace_id:032x}"}
        row.update({k: attrs.get(v) for k, v in keys.items()})
        rows.append(row)
    return rows


def _demo(args: argparse.Namespace) -> int:
    """Play the agent story of ``guardeddb._demo`` and show what guardeddb did."""
    try:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from rich.console import Console

        from .otlp import configure
    except ImportError as exc:
        print(f"error: the demo needs the cli extra ({exc}): pip install 'guardeddb[cli]'")
        return 2
    from . import _demo as story_mod

    exporter = InMemorySpanExporter()
    # Standard OTEL_* variables configure where (Jaeger: :4318) and the service name.
    exported = bool(args.otlp or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    provider = configure(
        default_service_name="guardeddb-demo", export=exported, metrics_export=False
    ).tracer_provider
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    directory = Path(args.dir) if args.dir else story_mod.default_directory()
    try:
        console = _DemoConsole(args) if args.console else None
    except ImportError as exc:
        print(f"error: --console needs the console extra ({exc}): pip install 'guardeddb[console]'")
        return 2
    story = story_mod.run(
        directory, console.decide if console else _approve_as_demo_human, provider
    )
    provider.shutdown()
    spans = _span_rows(exporter.get_finished_spans())
    if args.json:
        out = {
            "directory": str(story.directory),
            "policy": str(story.policy_path),
            "steps": [dataclasses.asdict(s) for s in story.steps],
            "audit": {
                "file": str(story.audit_path),
                "verified_records": story.audit_verified,
                "problem": story.audit_problem,
                "records": story.audit,
            },
            "spans": spans,
        }
        json.dump(out, sys.stdout, indent=2, default=str)
        print()
    else:
        screen = Console(width=None if sys.stdout.isatty() else 110, highlight=False)
        _print_story(screen, story, spans, exported)
    if console is not None:
        console.linger()
    return 0 if story.audit_problem is None else 1


class _DemoConsole:
    """``demo --console``: the person who approves the held bulk change is
    you, in the console, instead of a scripted call. The operator is the
    demo's approver (role dba); the token is $GUARDEDDB_CONSOLE_TOKEN, else
    a random one printed here."""

    def __init__(self, args: argparse.Namespace) -> None:
        import importlib

        for name in ("starlette", "jinja2", "uvicorn"):  # ImportError: the extra is missing
            importlib.import_module(name)
        self.args = args
        self.server: Any = None

    def decide(self, store: Any, policy: Any, request_id: str) -> None:
        import secrets
        import time

        from ._demo import APPROVER
        from .console import Server, create_app
        from .console.auth import Auth

        token = os.environ.get("GUARDEDDB_CONSOLE_TOKEN") or secrets.token_urlsafe(24)
        operator = guardeddb.Identity(user=APPROVER, roles=frozenset({"dba"}))
        self.server = Server(create_app(policy, Auth(token, operator)), "127.0.0.1", self.args.port)
        base = self.server.start()
        shown = (
            "from $GUARDEDDB_CONSOLE_TOKEN" if "GUARDEDDB_CONSOLE_TOKEN" in os.environ else token
        )
        print(
            f"The agent's bulk change is held (request {request_id}).\n"
            f"Approve or deny it in the console: {base}/approvals\n"
            f"Sign in as {APPROVER} with the token: {shown}\n"
            "Waiting for your decision ...",
            flush=True,
        )
        while True:
            found = store.get(request_id)
            if found is None or found.status != "pending":
                break
            time.sleep(0.2)
        print(f"Request {request_id}: {found.status if found else 'gone'}.\n", flush=True)

    def linger(self) -> None:
        """Keep the console up for a person at a terminal to read the audit page."""
        if self.server is None:
            return
        if sys.stdin.isatty():
            print("The console stays open (audit trail, activity); press Enter to stop it.")
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()
        self.server.stop()


def _approve_as_demo_human(store: Any, policy: Any, request_id: str) -> None:
    """What ``guardeddb approvals --policy FILE approve ID --by dba@...`` does."""
    from ._demo import APPROVER

    _decide(store, policy, request_id, True, APPROVER, "reviewed the demo's dry-run count")


def _print_story(console: Any, story: Any, spans: list[dict[str, Any]], exported: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ._demo import AGENT

    console.rule("[bold]guardeddb demo")
    console.print(
        f"An AI agent, [bold]{AGENT.agent}[/], acting for [bold]{AGENT.user}[/] "
        f"(role {', '.join(sorted(AGENT.roles))}), on a customer database "
        "(embedded SQLite).\n"
        f"Its policy: {escape(str(story.policy_path))} (agent-safe, masking, a review rule, "
        "an audit trail).\n"
    )
    n = 0
    for step in story.steps:
        if step.outcome == "approved":
            console.print(f"   [bold cyan]A person steps in:[/] {escape(step.says)}\n")
            continue
        n += 1
        console.print(f"[bold]{n}. The agent {escape(step.says)}[/]")
        console.print(f"   [dim]{escape(step.sql)}[/]")
        if step.outcome == "blocked":
            console.print(
                f"   [bold red]BLOCKED[/] by rule [bold]{step.rule}[/]: {escape(step.reason or '')}"
                "\n   (the database never saw it)\n"
            )
        elif step.outcome == "held":
            impact = (
                f"; a dry run says {step.impact} rows would change"
                if step.impact is not None
                else ""
            )
            console.print(
                f"   [bold yellow]HELD for approval[/] by rule [bold]{step.rule}[/]: "
                f"{escape(step.reason or '')}\n   request [bold]{step.request_id}[/]{impact}\n"
            )
        elif step.columns:
            table = Table(title="what the agent received (masked in-process)", title_justify="left")
            for col in step.columns:
                table.add_column(col)
            for row in step.rows:
                table.add_row(*(escape(str(v)) for v in row))
            console.print("   [bold green]allowed[/]", table, "")
        else:
            console.print(f"   [bold green]allowed[/]: {step.rowcount} rows changed\n")
    trail = Table(title=f"audit trail: {escape(str(story.audit_path))}", title_justify="left")
    for col in ("seq", "who", "event", "statement"):
        trail.add_column(col, overflow="fold")
    for rec in story.audit:
        ident = rec.get("identity") or {}
        who = (ident.get("user") or "-") + (f" via {ident['agent']}" if ident.get("agent") else "")
        decision = rec.get("decision") or {}
        if rec["event"] == "decision":
            event = str(decision.get("action"))
            if decision.get("rule"):
                event += f" ({decision['rule']})"
            if rec.get("impact_rows") is not None:
                event += f", impact {rec['impact_rows']} rows"
        elif rec["event"] == "result":
            event = f"result: {rec.get('rows')} rows returned"
            if rec.get("masked_values"):
                event += f", {rec['masked_values']} values masked"
            if rec.get("error"):
                event += f", error {rec['error']}"
        elif rec["event"] in ("approval", "denial"):
            event = f"{rec['event']} of request {rec.get('request_id')}"
            who = str(rec.get("approver"))
        else:  # commit, rollback
            event = str(rec["event"])
        trail.add_row(
            str(rec.get("seq")),
            escape(who),
            escape(event),
            escape(str(rec.get("statement") or "")),
        )
    console.print(trail)
    if story.audit_problem is None:
        console.print(
            f"[bold green]guardeddb audit verify[/]: {story.audit_verified} records, "
            "hash chain intact"
        )
    else:
        console.print(f"[bold red]audit chain broken[/] at {escape(story.audit_problem)}")
    traces = len({s["trace_id"] for s in spans})
    where = (
        "exported over OTLP (see them in Jaeger at http://localhost:16686)"
        if exported
        else "kept in memory (add --otlp to export them to Jaeger)"
    )
    console.print(
        f"{len(spans)} OpenTelemetry spans in {traces} traces, {where}.\n"
        f"Look around: ls {escape(str(story.directory))}; "
        f"guardeddb audit show {escape(str(story.audit_path))}"
    )


def _load_policy(source: str | None) -> Any:
    """The policy at ``source`` (agent-safe when None), or None after saying why not."""
    from .errors import PolicyError
    from .policy import load_policy

    try:
        return load_policy(source)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


#: Fields every audit record has (audit/chain.py writes them all).
_RECORD_FIELDS = {"ts": str, "event": str, "seq": int, "hash": str}


def _audit_problem(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """One line of a JSONL trail as a record, or why it is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, "not JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    absent = [k for k, t in _RECORD_FIELDS.items() if not isinstance(record.get(k), t)]
    if absent:
        return None, f"not an audit record (no {', '.join(absent)})"
    return record, None


def _audit_records(path: str, problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The records of a JSONL audit file. Lines that are not records are
    skipped, and said in ``problems`` (``FILE:LINE: why``) when given;
    ``audit verify`` says more about a broken chain."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record, why = _audit_problem(line)
            if record is not None:
                yield record
            elif problems is not None:
                problems.append(f"{_safe(path)}:{number}: {why}")


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
        print(
            f"  {n:6}  {_safe(was)} -> {now}  by {_safe(rule)}   e.g. {_safe(examples[key][:120])}"
        )
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Load a policy and report whether it is valid, and what in it looks like a mistake."""
    from .errors import PolicyError
    from .policy.loader import lint_policy

    try:
        policy, warnings = lint_policy(args.file)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: valid (mode {policy.mode}, default {policy.default}, "
        f"on_unparsed {policy.on_unparsed}, {len(policy.rules)} rules: "
        + ", ".join(r.id for r in policy.rules)
        + ")"
    )
    for line in _effective_masking(policy):
        print(line)
    for what, url in (
        ("approval store", policy.approvals.get("store")),
        ("audit sink", policy.audit.get("postgresql")),
    ):
        if isinstance(url, str) and not url.startswith("sqlite:"):
            print(
                f"note: the {what} is a database table: give it its own credentials (a role "
                "the application's DSN cannot use), or an agent's process could change it "
                "outside guardeddb"
            )
    hooks = policy.approvals.get("notify")
    if isinstance(hooks, tuple) and hooks:
        print(
            "new approval requests are sent to: "
            + ", ".join(f"{h.where} ({h.format})" for h in hooks)
        )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    """Print the effective policy: a preset or a file with its ``extends`` resolved."""
    from .policy.render import policy_yaml

    policy = _load_policy(args.source)
    if policy is None:
        return 1
    sys.stdout.write(policy_yaml(policy))
    return 0


def _effective_masking(policy: guardeddb.Policy) -> list[str]:
    """The masking a policy applies once its presets are merged: what a
    reviewer needs to see, since a policy's rules are added before the
    presets' and its detectors to theirs."""
    masker = policy.masker
    if masker is None or not masker.active:
        return ["masking: none (results are returned as the database sends them)"]
    raw = policy.masking.get("rules")
    params = raw if isinstance(raw, list) and len(raw) == len(masker.rules) else None
    lines = ["masking (effective, presets merged; the first rule naming a column wins):"]
    for i, rule in enumerate(masker.rules):
        extra = ""
        if params is not None and isinstance(params[i], dict):
            keys = ("keep_first", "keep_last", "fill", "value")
            given = [f"{k}={params[i][k]!r}" for k in keys if k in params[i]]
            extra = f" ({', '.join(given)})" if given else ""
        lines.append(
            f"  {_safe(', '.join(rule.patterns))}: operator {_safe(rule.name)}{_safe(extra)}, "
            f"filter {rule.filter}"
        )
    if not masker.rules:
        lines.append("  no column rules")
    scanner = masker.scanner
    names = ", ".join(scanner.names) if scanner is not None else "none"
    lines.append(f"  detectors: {_safe(names)}")
    roles = ", ".join(sorted(masker.unmask_roles)) or "none"
    users = ", ".join(sorted(masker.unmask_users)) or "none"
    lines.append(
        f"  may unmask (see raw values, audited): roles {_safe(roles)}; users {_safe(users)}"
    )
    return lines


_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _safe(value: Any) -> str:
    """``value`` as text a terminal prints as it is: control, format (bidi
    overrides, zero-width) and separator characters escaped, so a recorded
    name or statement cannot move the cursor or forge a line."""
    import unicodedata

    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in _UNSAFE:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _audit(args: argparse.Namespace) -> int:
    """Verify an audit trail's hash chain (reporting every problem), or show its records."""
    if args.audit_command == "verify":
        from .audit import check, check_postgres

        try:
            if args.file.startswith(("postgresql://", "postgres://")):
                report = check_postgres(args.file, args.stream)
            else:
                report = check(args.file)
        except Exception as exc:  # a missing file, an unreachable database
            print(f"error: {_safe(exc)}", file=sys.stderr)
            return 2
        name = _safe(args.file.split("@")[-1])
        for problem in report.problems:
            print(f"{name}:{problem.line}: {_safe(problem.reason)}")
        if report.problems:
            print(
                f"{name}: {len(report.problems)} problems; {report.verified} of "
                f"{report.records} records verified"
            )
            return 1
        print(f"{name}: {report.verified} records, chain intact")
        return 0
    rows = []
    problems: list[str] = []
    try:
        records = list(_audit_records(args.file, problems))
    except OSError as exc:  # a missing or unreadable file
        print(f"error: {_safe(exc)}", file=sys.stderr)
        return 2
    for rec in records:
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
            f"{_safe(rec.get('seq', '?')):>5}  {_safe(str(rec.get('ts', ''))[:19])}  "
            f"{_safe(who):40}  {_safe(what):40}  {_safe(rec.get('statement') or '')}"
        )
    if problems:
        for line in problems[: 20 if records else 1]:
            print(line, file=sys.stderr)
        what = "is not a guardeddb audit trail" if not records else "has lines that are not records"
        print(
            f"error: {_safe(args.file)} {what} ({len(problems)} lines); "
            "`guardeddb audit verify` checks a trail",
            file=sys.stderr,
        )
        return 1
    return 0


def _decide(
    store: Any, policy: Any, request_id: str, approve: bool, by: str | None, note: str | None
) -> bool:
    """Approve or deny a pending request through the path the console takes
    too (four eyes, the decision audited); False after saying why not."""
    from .approvals import DecisionRefused, decide

    try:
        decide(store, policy, request_id, approve, by, note)
    except DecisionRefused as exc:
        print(f"error: {_safe(exc)}", file=sys.stderr)
        return False
    return True


def _approvals(args: argparse.Namespace) -> int:
    """List, show, approve or deny held queries."""
    from .approvals import ApprovalStore, parse_ttl

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
            print(
                f"{_safe(req.id)}  {_safe(req.status):8}  {_safe(req.created[:19])}  "
                f"rule={_safe(req.rule)}  {_safe(req.statement)}"
                + (f"  params={_safe(req.params)}" if req.params is not None else "")
                + (f"  database={_safe(req.database)}" if req.database is not None else "")
            )
        return 0
    if args.approvals_command == "show":
        found = store.get(args.id)
        if found is None:
            print(f"error: no request {args.id}", file=sys.stderr)
            return 1
        print(json.dumps(found.__dict__, indent=2, default=str))  # JSON escapes control characters
        return 0
    approve = args.approvals_command == "approve"
    if not _decide(store, policy, args.id, approve, args.by, args.note):
        return 1
    print(
        f"{args.id} {'approved' if approve else 'denied'}" + (f" by {args.by}" if args.by else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardeddb`` console script.

    A reader that goes away (``guardeddb audit show FILE | head``) ends the
    command quietly, as it ends ``cat``: no traceback, and the exit status a
    shell gives a command that SIGPIPE ended.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        # Python would print an error while flushing stdout again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + 13  # SIGPIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="guardeddb", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an agent scenario on an embedded SQLite database")
    demo.add_argument(
        "--dir", help="where to put the database, policy and audit trail (default: a new temp dir)"
    )
    demo.add_argument("--json", action="store_true", help="print the story as JSON")
    demo.add_argument(
        "--otlp", action="store_true", help="also export spans over OTLP/HTTP (OTEL_* variables)"
    )
    demo.add_argument(
        "--console",
        action="store_true",
        help="decide the held bulk change yourself, in `guardeddb console` (needs its extra)",
    )
    demo.add_argument("--port", type=int, default=8700, help="the console's port (with --console)")
    check = sub.add_parser("check", help="judge one SQL statement under a policy (no database)")
    source = check.add_mutually_exclusive_group()
    source.add_argument(
        "--policy", help="policy YAML file or preset name (default: the agent-safe preset)"
    )
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
    validate.add_argument("file", help="a policy YAML file or a preset name")
    show = policy_sub.add_parser(
        "show", help="print the effective policy (presets it extends written out) as YAML"
    )
    show.add_argument("source", help="a preset name (agent-safe, readonly) or a policy YAML file")
    replay = policy_sub.add_parser(
        "replay", help="re-judge an audit trail under a new policy and print what would change"
    )
    replay.add_argument("--policy", required=True, help="the new policy YAML or preset name")
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
    appr_list.add_argument(
        "--status", choices=["pending", "approved", "denied", "used", "superseded"]
    )
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
    mcp_cmd.add_argument(
        "--statement-timeout",
        type=float,
        help="seconds a call may run (default: the policy's limits.statement_timeout, else 30; "
        "the policy's limit wins when it is shorter)",
    )
    mcp_cmd.add_argument(
        "--max-bytes", type=int, default=256 * 1024, help="bytes of rows (as JSON) per result"
    )
    mcp_cmd.add_argument(
        "--max-cell-bytes", type=int, default=8 * 1024, help="bytes per cell before it is cut"
    )
    token = mcp_cmd.add_argument_group(
        "verified identity", "a signed OIDC token instead of --user/--agent/--roles"
    )
    token.add_argument("--token-file", help="file holding the token (re-read on every call)")
    token.add_argument("--token-env", help="environment variable holding the token")
    token.add_argument("--jwks", help="JWKS URL or file that signs the token")
    token.add_argument("--issuer", help="expected iss")
    token.add_argument("--audience", help="expected aud (this server's id at the provider)")
    token.add_argument("--roles-claim", default="roles", help="claim with the roles")
    token.add_argument("--agent-claim", help="claim naming the agent (default: azp, client_id)")
    console_cmd = sub.add_parser(
        "console", help="pending approvals, the audit trail and activity in a browser"
    )
    from .console import add_arguments

    add_arguments(console_cmd)
    args = parser.parse_args(argv)
    if args.command == "console":
        from .console import run as run_console

        return run_console(args)
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
        return {"replay": _replay, "show": _show}.get(args.policy_command, _validate)(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
