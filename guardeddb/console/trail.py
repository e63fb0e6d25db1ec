"""The audit trail as the console reads it: records kept in memory, the hash
chain verified once and then only what was appended since.

A JSONL trail is read from the byte offset verified last; a PostgreSQL
stream from the last verified seq. The chain check is the one ``guardeddb
audit verify`` runs, fed record by record, so its verdict carries over from
one page load to the next; the head anchor is compared on every refresh
(records cut from the end). A file that shrank, or whose last verified line
changed, is re-verified from the start.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..audit.chain import Problem, Report, _Chain, _parse_head, head_path
from ..drivers import require, unguarded

__all__ = ["Activity", "Filters", "Status", "TrailView"]


@dataclass(frozen=True)
class Filters:
    """What the audit page narrows the trail to (each empty means any)."""

    user: str = ""
    agent: str = ""
    action: str = ""
    rule: str = ""
    table: str = ""
    since: str = ""  # ISO timestamps, compared as text (records are UTC ISO)
    until: str = ""

    def match(self, rec: Mapping[str, Any]) -> bool:
        ident = rec.get("identity") or {}
        decision = rec.get("decision") or {}
        if self.user and self.user not in (ident.get("user"), rec.get("approver")):
            return False
        if self.agent and ident.get("agent") != self.agent:
            return False
        if self.action and self.action not in (decision.get("action"), rec.get("event")):
            return False
        if self.rule and decision.get("rule") != self.rule:
            return False
        if self.table and self.table not in (rec.get("tables") or ()):
            return False
        ts = str(rec.get("ts", ""))
        if self.since and ts < self.since:
            return False
        return not (self.until and ts[: len(self.until)] > self.until)


@dataclass
class Status:
    """The chain's verdict for the banner."""

    intact: bool
    records: int
    verified: int
    problems: list[str] = field(default_factory=list)


@dataclass
class Activity:
    """Counts per group (an agent or a user) per time bucket."""

    buckets: list[str]
    groups: dict[str, dict[str, list[int]]]  # group -> metric -> one count per bucket
    totals: dict[str, Counter[str]]


METRICS = ("queries", "blocked", "held", "masked")


class TrailView:
    """One audit trail (a policy's ``audit:`` section), read incrementally."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        target = cfg.get("postgresql") or cfg.get("jsonl")
        if not target:
            raise ValueError("the policy has no audit trail (audit.jsonl or audit.postgresql)")
        self.target = str(target)
        self.postgres = self.target.startswith(("postgresql://", "postgres://"))
        self.stream = str(cfg.get("stream", "default"))
        self.name = self.target.split("@")[-1]  # never a password
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._report = Report()
        self._chain = _Chain(self._report, None)
        self._offset = 0  # JSONL: bytes verified; PostgreSQL: the last seq read
        self._line = 0
        self._last_line = b""
        self._head_problem: str | None = None

    def refresh(self) -> None:
        """Read and verify what was appended since the last refresh."""
        with self._lock:
            if self.postgres:
                self._refresh_postgres()
            else:
                self._refresh_jsonl()

    def _feed(self, where: int, raw: bytes | str) -> None:
        try:
            record = json.loads(raw)
        except ValueError:
            self._report.records += 1
            self._report.problems.append(Problem(where, "not a complete JSON record"))
            return
        if not isinstance(record, dict):
            self._report.records += 1
            self._report.problems.append(Problem(where, "not an audit record"))
            return
        self._chain.feed(where, record)
        self.records.append(record)

    def _refresh_jsonl(self) -> None:
        try:
            fd = os.open(self.target, os.O_RDONLY)
        except FileNotFoundError:
            if self._offset:
                self._reset()
                self._report.problems.append(Problem(0, "the trail file is gone"))
            return
        try:
            size = os.fstat(fd).st_size
            last = self._last_line
            if size < self._offset or (
                last and os.pread(fd, len(last), self._offset - len(last)) != last
            ):
                # Cut or rewritten below what was verified: verify it all again.
                self._reset()
            data = os.pread(fd, size - self._offset, self._offset)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1  # a torn last line waits for its newline
        for line in data[:end].split(b"\n")[:-1]:
            self._line += 1
            if line.strip():
                self._feed(self._line, line)
                self._last_line = line + b"\n"
        self._offset += end
        try:
            with open(head_path(self.target), "rb") as f:
                head = _parse_head(f.read())
        except OSError:
            head = None
        self._check_head(head)

    def _refresh_postgres(self) -> None:
        psycopg = require("psycopg", "postgres", "a postgresql:// audit trail")
        with unguarded():
            conn = psycopg.connect(self.target, connect_timeout=5)
        with conn:
            exists = conn.execute("SELECT to_regclass('guardeddb_audit') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                return
            rows = conn.execute(
                "SELECT seq, record FROM guardeddb_audit WHERE stream = %s AND seq > %s "
                "ORDER BY seq",
                (self.stream, self._offset),
            ).fetchall()
            found = conn.execute(
                "SELECT seq, hash FROM guardeddb_audit_head WHERE stream = %s", (self.stream,)
            ).fetchone()
        for seq, text in rows:
            self._feed(int(seq), text)
            self._offset = int(seq)
        self._check_head((int(found[0]), str(found[1])) if found else None)

    def _check_head(self, head: tuple[int, str] | None) -> None:
        """Compare the head anchor with the last verified record (not cumulative)."""
        self._head_problem = None
        if head is None:
            return
        if head[0] > self._chain.prev_seq:
            self._head_problem = (
                f"records deleted from the end: the head anchor holds seq {head[0]}, "
                f"the trail ends at seq {self._chain.prev_seq}"
            )
        elif head[0] == self._chain.prev_seq and head[1] != self._chain.prev_hash:
            self._head_problem = f"seq {head[0]} is not the record the head anchor holds"

    def status(self) -> Status:
        report = self._report
        problems = [f"line {p.line}: {p.reason}" for p in report.problems[:5]]
        if self._head_problem:
            problems.append(self._head_problem)
        return Status(not problems, report.records, report.verified, problems)

    def query(self, filters: Filters, page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
        """One page of matching records, newest first, and how many match."""
        matching = [r for r in reversed(self.records) if filters.match(r)]
        start = max(0, page - 1) * per_page
        return matching[start : start + per_page], len(matching)

    def choices(self) -> dict[str, list[str]]:
        """Values the filters can take (users, agents, rules, tables) for the form."""
        out: dict[str, set[str]] = defaultdict(set)
        for rec in self.records[-20000:]:
            ident = rec.get("identity") or {}
            for key in ("user", "agent"):
                if ident.get(key):
                    out[key].add(str(ident[key]))
            rule = (rec.get("decision") or {}).get("rule")
            if rule:
                out["rule"].add(str(rule))
            out["table"].update(str(t) for t in rec.get("tables") or ())
        return {k: sorted(v)[:200] for k, v in out.items()}

    def activity(self, by: str, buckets: int = 24) -> Activity:
        """Per ``by`` (``agent`` or ``user``) over time: queries (decisions),
        blocked, held and values masked in results, in ``buckets`` slices."""
        stamps = [_time(r) for r in self.records]
        known = [t for t in stamps if t is not None]
        if not known:
            return Activity([], {}, {})
        first, last = min(known), max(known)
        width = max((last - first).total_seconds() / buckets, 1.0)
        labels = [
            (first + datetime.timedelta(seconds=width * i)).strftime("%m-%d %H:%M")
            for i in range(buckets)
        ]
        groups: dict[str, dict[str, list[int]]] = {}
        totals: dict[str, Counter[str]] = defaultdict(Counter)
        for rec, when in zip(self.records, stamps, strict=True):
            if when is None:
                continue
            ident = rec.get("identity") or {}
            key = str(ident.get(by) or "(none)")
            slot = min(int((when - first).total_seconds() / width), buckets - 1)
            series = groups.setdefault(key, {m: [0] * buckets for m in METRICS})
            for metric, n in _counts(rec):
                series[metric][slot] += n
                totals[key][metric] += n
        return Activity(labels, groups, dict(totals))


def _counts(rec: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    event = rec.get("event")
    if event == "decision":
        yield "queries", 1
        action = (rec.get("decision") or {}).get("action")
        if action == "block":
            yield "blocked", 1
        elif action == "review":
            yield "held", 1
    elif event == "result" and isinstance(rec.get("masked_values"), int):
        yield "masked", int(rec["masked_values"])


def _time(rec: Mapping[str, Any]) -> datetime.datetime | None:
    try:
        when = datetime.datetime.fromisoformat(str(rec.get("ts")))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
