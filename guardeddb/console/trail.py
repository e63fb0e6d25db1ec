"""The audit trail as the console reads it: records kept in memory (as the
lines they were read from, indexed for the filters), the hash
chain verified once and then only what was appended since.

A JSONL trail is read from the byte offset verified last; a PostgreSQL
stream from the last verified seq. The chain check is the one ``guardeddb
audit verify`` runs, fed record by record, so its verdict carries over from
one page load to the next; the head anchor is compared on every refresh
(records cut from the end). A file that shrank, or whose last verified line
changed, is re-verified from the start.
"""

from __future__ import annotations

import bisect
import datetime
import json
import os
import threading
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
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

    def equalities(self) -> list[tuple[str, str]]:
        """The equality filters given, as keys of ``TrailView``'s index."""
        return [
            (k, v) for k in ("user", "agent", "action", "rule", "table") if (v := getattr(self, k))
        ]

    def within(self, ts: str) -> bool:
        """Whether a record's timestamp is in the time window (``until``
        compared at its own precision: ``2026-01-31`` takes the whole day)."""
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
        # Each record as the line it was read from (parsed again only to be
        # shown: a parsed record costs several times its bytes).
        self._raw: list[bytes] = []
        self._report = Report()
        self._chain = _Chain(self._report, None)
        self._offset = 0  # JSONL: bytes verified; PostgreSQL: the last seq read
        self._line = 0
        self._last_line = b""
        self._head_problem: str | None = None
        # Built as records are read, so a page load never scans the trail:
        # (filter, value) -> record positions; each record's ts, time, keys.
        self._index: dict[tuple[str, str], array[int]] = defaultdict(lambda: array("q"))
        self._ts: list[str] = []
        self._sorted = True  # timestamps ascending: time filters bisect
        self._values: dict[str, set[str]] = defaultdict(set)
        self._activity: dict[str, tuple[int, Activity]] = {}
        # Activity counted as records arrive, per minute and per hour:
        # (by, unit seconds) -> (group, slot) -> one count per metric.
        self._agg: dict[tuple[str, int], dict[tuple[str, int], list[int]]] = defaultdict(dict)
        self._first: float | None = None
        self._last: float | None = None

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
        self._remember(record, raw if isinstance(raw, bytes) else raw.encode())

    def _remember(self, rec: dict[str, Any], raw: bytes) -> None:
        """Keep ``rec`` and index it for the filters and the activity page."""
        at = len(self._raw)
        self._raw.append(raw)
        ident = rec.get("identity")
        ident = ident if isinstance(ident, dict) else {}
        decision = rec.get("decision")
        decision = decision if isinstance(decision, dict) else {}
        keys = [
            ("user", ident.get("user")),
            ("user", rec.get("approver")),
            ("agent", ident.get("agent")),
            ("action", decision.get("action")),
            ("action", rec.get("event")),
            ("rule", decision.get("rule")),
        ]
        tables = rec.get("tables")
        if isinstance(tables, list):
            keys.extend(("table", t) for t in tables)
        seen = set()
        for key, value in keys:
            if isinstance(value, str) and value and (key, value) not in seen:
                seen.add((key, value))
                self._index[key, value].append(at)
                if key != "action" and len(self._values[key]) < 200:
                    self._values[key].add(value)
        ts = str(rec.get("ts", ""))
        if self._ts and ts < self._ts[-1]:
            self._sorted = False
        self._ts.append(ts)
        when = _time(rec)
        if when is None:
            return
        at_s = when.timestamp()
        self._first = at_s if self._first is None else min(self._first, at_s)
        self._last = at_s if self._last is None else max(self._last, at_s)
        counts = list(_counts(rec))
        if not counts:
            return
        units: tuple[int, ...] = _UNITS
        if self._last - self._first > _SECONDS_SPAN:
            units = _UNITS[1:]  # seconds only for a short trail: then they are few
            for by in ("agent", "user"):
                self._agg.pop((by, 1), None)
        for by in ("agent", "user"):
            group = str(ident.get(by) or "(none)")
            for unit in units:
                cell = self._agg[by, unit].setdefault((group, int(at_s // unit)), [0] * 4)
                for metric, n in counts:
                    cell[_METRIC_AT[metric]] += n

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

    @property
    def count(self) -> int:
        """Records read (those that are JSON objects)."""
        return len(self._raw)

    def query(self, filters: Filters, page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
        """One page of matching records, newest first, and how many match:
        from the indexes, parsing only the records shown."""
        lists = sorted((self._index.get(key, array("q")) for key in filters.equalities()), key=len)
        timed = bool(filters.since or filters.until)
        candidates: Sequence[int]
        if lists:
            candidates = lists[0]
            for other in lists[1:]:
                wanted = set(other)
                candidates = [i for i in candidates if i in wanted]
        else:
            lo, hi = 0, len(self._raw)
            if timed and self._sorted:  # a time window is a slice of the trail
                if filters.since:
                    lo = bisect.bisect_left(self._ts, filters.since)
                if filters.until:
                    hi = bisect.bisect_right(self._ts, filters.until + "\U0010ffff")
                timed = False
            candidates = range(lo, max(lo, hi))
        if timed:
            candidates = [i for i in candidates if filters.within(self._ts[i])]
        start = max(0, page - 1) * per_page
        shown = candidates[::-1][start : start + per_page]
        return [json.loads(self._raw[i]) for i in shown], len(candidates)

    def choices(self) -> dict[str, list[str]]:
        """Values the filters can take (users, agents, rules, tables) for the form."""
        return {k: sorted(v) for k, v in self._values.items()}

    def activity(self, by: str, buckets: int = 24) -> Activity:
        """Per ``by`` (``agent`` or ``user``) over time: queries (decisions),
        blocked, held and values masked in results, in ``buckets`` slices.
        Computed again only when records were appended."""
        cached = self._activity.get(by)
        if cached is not None and cached[0] == len(self._raw):
            return cached[1]
        found = self._count_activity(by, buckets)
        self._activity[by] = (len(self._raw), found)
        return found

    def _count_activity(self, by: str, buckets: int) -> Activity:
        if self._first is None or self._last is None:
            return Activity([], {}, {})
        first, last = self._first, self._last
        # Seconds for a trail of two hours or less, minutes for two days or
        # less, else hours: a bounded number of cells per group either way.
        span = last - first
        unit = 1 if span <= _SECONDS_SPAN else 60 if span <= 2 * 86400 else 3600
        first = first // unit * unit
        width = max((last - first) / buckets, 1.0 if unit > 1 else 0.001)
        labels = [
            datetime.datetime.fromtimestamp(first + width * i, datetime.UTC).strftime(
                "%H:%M:%S" if unit == 1 else "%m-%d %H:%M"
            )
            for i in range(buckets)
        ]
        groups: dict[str, dict[str, list[int]]] = {}
        totals: dict[str, Counter[str]] = defaultdict(Counter)
        for (group, slot), cell in self._agg[by, unit].items():
            at = min(max(int((slot * unit - first) / width), 0), buckets - 1)
            series = groups.get(group)
            if series is None:
                series = groups[group] = {m: [0] * buckets for m in METRICS}
            for i, metric in enumerate(METRICS):
                series[metric][at] += cell[i]
                totals[group][metric] += cell[i]
        return Activity(labels, groups, dict(totals))


_UNITS = (1, 60, 3600)
_SECONDS_SPAN = 2 * 3600
_METRIC_AT = {m: i for i, m in enumerate(METRICS)}


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
