"""Audit records and their hash chain: the record of proof, not sampled, not dropped.

Each record holds the SHA-256 of the previous one (``prev_hash``) and its own
(``hash``, over a canonical JSON encoding of every other field), so editing,
deleting or reordering any record, or tearing the last line, is detected by
``verify``. The chain is per file: many threads and processes append to one
file under an exclusive lock, each reading the last record before writing.

A chain alone cannot show that its *last* records were deleted: what is left
still verifies. So each append also overwrites a head anchor outside the
trail, the last record's seq and hash: ``FILE.head`` beside a JSONL trail,
a row per stream in ``guardeddb_audit_head`` for PostgreSQL. ``check``
reports a trail that ends before its anchor, and a writer that finds the
trail shorter than its anchor chains from the anchor, so the gap stays
visible. The anchor protects against cutting records from the end (or
truncating the file) by someone who does not also rewrite the anchor; it
does not protect against someone who can rewrite both (keep the anchor where
the trail's writers cannot: a PostgreSQL stream whose head table only a
definer function may update, or copy the head elsewhere). With ``fsync:
always`` the record is on disk before the anchor names it, so a crash can
leave the anchor behind the trail (the records after it unanchored), never
ahead; with ``fsync: never`` the OS may keep the anchor and lose the trail's
tail, which ``check`` then reports as records cut from the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..drivers import require, unguarded

__all__ = [
    "GENESIS",
    "JsonlSink",
    "PostgresSink",
    "Problem",
    "Report",
    "canonical",
    "check",
    "check_postgres",
    "head_path",
    "read_records",
    "verify",
    "verify_postgres",
]

_log = logging.getLogger("guardeddb")

GENESIS = "0" * 64
_TAIL = 1 << 22  # at most this many bytes are read back to find the last record


def _encode(text: str) -> bytes:
    """UTF-8, a lone surrogate (from a bad identity) written as its JSON escape
    (backslash u d8..df): it reads back as the same string, so the hash still verifies,
    and no record is refused or raises for it."""
    return text.encode("utf-8", "backslashreplace")


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted keys, no spaces, UTF-8."""
    return _encode(
        json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    )


def _digest(prev_hash: str, fields: Mapping[str, Any]) -> str:
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def _scan_tail(fd: int, size: int) -> tuple[dict[str, Any] | None, int]:
    """The last complete record of an open file, and where its complete lines end.

    Bytes after the last newline are a torn record (a write that failed or
    was killed): the caller truncates them. Reads back a few kilobytes, more
    only when a record is longer than that.
    """
    window, clean_end = 4096, -1
    while True:
        start = max(0, size - window)
        chunk = os.pread(fd, size - start, start)
        if clean_end < 0:
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                clean_end = start + nl + 1
            elif start == 0:
                clean_end = 0
        if clean_end >= 0:
            lines = chunk[: clean_end - start].split(b"\n")[:-1]
            if start > 0:
                lines = lines[1:]  # the first line may be cut by the window
            for line in reversed(lines):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn line: verify reports it; the chain goes on
                if isinstance(record, dict) and "hash" in record:
                    return record, clean_end
            if start == 0:
                return None, clean_end
        if window >= _TAIL:
            return None, size if clean_end < 0 else clean_end
        window *= 4


#: The head anchor's line: the last record's seq and hash, fixed width so
#: that each update overwrites it in place with one write.
_HEAD_LEN = 20 + 1 + 64 + 1


def head_path(path: str | os.PathLike[str]) -> str:
    """Where a JSONL trail's head anchor lives: ``FILE.head`` beside it."""
    return os.fspath(path) + ".head"


def _parse_head(data: bytes) -> tuple[int, str] | None:
    parts = data.split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 64:
        return None
    return int(parts[0]), parts[1].decode("ascii", "replace")


class JsonlSink:
    """Append-only, hash-chained JSON lines, safe for threads and processes.

    ``fsync``: "always" (every record reaches the disk before the query
    runs), or "never" (the OS flushes; faster, loses the tail on a crash).
    Writes go straight to the file descriptor (no buffer that a failed flush
    could leave half full). A failed write is undone under the lock (the file
    is truncated back), counted in ``failures``, and the file is reopened for
    the next record, so the sink works again as soon as the disk does; a torn
    tail left by a killed writer is truncated by the next one (``truncated``).
    After each record the head anchor ``FILE.head`` is overwritten with its
    seq and hash, so ``verify`` notices records deleted from the end.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: str = "always") -> None:
        if fsync not in ("always", "never"):
            raise ValueError("fsync must be 'always' or 'never'")
        self.path = os.fspath(path)
        self.fsync = fsync == "always"
        self.failures = 0  # records that could not be written
        self.truncated = 0  # torn tails removed
        self._fd: int | None = None
        self._head: int | None = None
        self._tail: tuple[int, int, str] | None = None  # (file size, seq, hash) after our write
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file (never raises: there is no buffer left to flush)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        for fd in (self._fd, self._head):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._head = None
        self._tail = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
            self._tail = None
        return self._fd

    def _locked(self) -> tuple[int, int]:
        """The trail's descriptor, locked, and its size; reopened first when
        the path now names another file (rotated, deleted, its directory
        replaced), so no record goes into a file nobody will read."""
        for _ in range(3):
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                same = os.path.samestat(os.stat(self.path), st)
            except OSError:
                same = False
            if same:
                return fd, st.st_size
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._drop()
        raise OSError(f"{self.path} keeps being replaced")

    def write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record, chained to the last one; returns it as written.

        Raises OSError when the record cannot be written (full disk,
        read-only file): the caller decides whether the query may run.
        """
        with self._lock:
            try:
                return self._write(fields)
            except OSError:
                self.failures += 1
                self._drop()  # start afresh next time
                raise

    def _read_head(self) -> tuple[int, str] | None:
        try:
            if self._head is None:
                self._head = os.open(head_path(self.path), os.O_RDWR | os.O_CREAT, 0o640)
            return _parse_head(os.pread(self._head, _HEAD_LEN, 0))
        except OSError:  # no anchor here (a read-only directory): the trail still works
            return None

    def _write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        fd, size = self._locked()
        try:
            tail = self._tail
            if tail is not None and tail[0] == size:
                seq, prev = tail[1], tail[2]  # nobody appended since our last record
            else:
                last, clean_end = _scan_tail(fd, size)
                if clean_end < size:
                    os.ftruncate(fd, clean_end)  # a torn record: never acknowledged
                    size = clean_end
                    self.truncated += 1
                seq, prev = (last["seq"], last["hash"]) if last else (0, GENESIS)
                head = self._read_head()
                if head is not None and head[0] > seq:
                    # Records were deleted from the end: chain from the anchor,
                    # so the gap stays visible to verify instead of being papered over.
                    seq, prev = head
            record = dict(fields)
            record["seq"] = seq + 1
            record["prev_hash"] = prev
            record["hash"] = _digest(prev, record)
            prefix = b""
            if size and (tail is None or tail[0] != size):  # ours ends with a newline
                prefix = b"" if os.pread(fd, 1, size - 1) == b"\n" else b"\n"
            data = prefix + _encode(json.dumps(record, ensure_ascii=False, default=str)) + b"\n"
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # undo the partial record, still locked
                    os.ftruncate(fd, size)
                raise
            self._tail = (size + len(data), record["seq"], record["hash"])
            self._anchor(record["seq"], record["hash"])
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        return record

    def _anchor(self, seq: int, digest: str) -> None:
        """Overwrite the head anchor; the record is written either way (a
        stale anchor only weakens the check of deletions at the end)."""
        try:
            if self._head is None:
                self._head = os.open(head_path(self.path), os.O_RDWR | os.O_CREAT, 0o640)
            os.pwrite(self._head, f"{seq:020d} {digest}\n".encode(), 0)
        except OSError as exc:
            self.failures += 1
            _log.error("guardeddb: audit head anchor %s not updated: %s", head_path(self.path), exc)


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of an audit file."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        yield from enumerate(f, 1)


@dataclass(frozen=True)
class Problem:
    """Something wrong with an audit trail, at a line (a seq for PostgreSQL)."""

    line: int
    reason: str


@dataclass
class Report:
    """What ``check`` found: records that verified and every problem."""

    records: int = 0
    verified: int = 0
    problems: list[Problem] = field(default_factory=list)


_MAX_LINE = 1 << 24  # a longer line is reported, and skipped without holding it


def _lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, complete) of a file, each line at most _MAX_LINE bytes held."""
    with open(path, "rb") as f:
        n = 0
        while True:
            line = f.readline(_MAX_LINE)
            if not line:
                return
            n += 1
            if len(line) == _MAX_LINE and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest of it
                    line = f.readline(_MAX_LINE)
                yield n, b"", False
                continue
            yield n, line, True


class _Chain:
    """The running check of one chain, fed record by record."""

    def __init__(self, report: Report, head: tuple[int, str] | None) -> None:
        self.report = report
        self.prev_hash, self.prev_seq = GENESIS, 0
        self.head = head
        self.head_seen = False

    def feed(self, where: int, record: dict[str, Any]) -> None:
        report = self.report
        report.records += 1
        seq, digest = record.get("seq"), record.get("hash")
        ok = True
        if digest != _digest(str(record.get("prev_hash")), record):
            report.problems.append(Problem(where, "edited: the record does not match its hash"))
            ok = False
        elif record.get("prev_hash") != self.prev_hash or seq != self.prev_seq + 1:
            report.problems.append(
                Problem(
                    where,
                    f"deleted or reordered: expected seq {self.prev_seq + 1} after hash "
                    f"{self.prev_hash[:12]}..., found seq {seq}",
                )
            )
            ok = False
        report.verified += ok
        if self.head is not None and seq == self.head[0]:
            self.head_seen = True
            if digest != self.head[1]:
                report.problems.append(
                    Problem(where, f"seq {seq} is not the record the head anchor holds")
                )
        # Go on from this record, so that every later problem is found too.
        self.prev_hash = str(digest)
        self.prev_seq = seq if isinstance(seq, int) else self.prev_seq + 1

    def finish(self, where: int, anchor: str) -> None:
        if self.head is not None and not self.head_seen:
            self.report.problems.append(
                Problem(
                    where,
                    f"records deleted from the end: {anchor} holds seq {self.head[0]}, "
                    f"the trail ends at seq {self.prev_seq}",
                )
            )


def check(path: str | os.PathLike[str]) -> Report:
    """Every problem of a JSONL trail, in one streaming pass (constant memory):
    torn lines, edits, deletions, reorders, and records cut from the end
    (against the head anchor ``FILE.head``)."""
    report = Report()
    try:
        with open(head_path(path), "rb") as f:
            head = _parse_head(f.read(_HEAD_LEN))
    except FileNotFoundError:
        head = None
    chain = _Chain(report, head)
    n = 0
    for n, line, complete in _lines(path):
        if not complete:
            report.problems.append(Problem(n, f"line longer than {_MAX_LINE} bytes"))
            continue
        if not line.endswith(b"\n"):
            report.problems.append(
                Problem(n, "torn last line (the record was not completely written)")
            )
            continue
        try:
            record = json.loads(line)
        except ValueError:
            report.problems.append(Problem(n, "torn line: not a complete JSON record"))
            continue
        if not isinstance(record, dict) or "hash" not in record:
            report.problems.append(Problem(n, "not an audit record"))
            continue
        chain.feed(n, record)
    if head is None and report.records:
        report.problems.append(
            Problem(n + 1, f"no head anchor {head_path(path)}: records cut from the end go unseen")
        )
    chain.finish(n + 1, head_path(path))
    return report


def verify(path: str | os.PathLike[str]) -> tuple[int, Problem | None]:
    """(records that verified before the first problem, the first problem or None).

    ``check`` lists every problem; this is its short answer.
    """
    report = check(path)
    if not report.problems:
        return report.verified, None
    first = min(report.problems, key=lambda p: p.line)
    good = 0
    # Records on lines before the first problem verified (each line holds one record).
    for n, _text in read_records(path):
        if n >= first.line:
            break
        good += 1
    return good, first


class PostgresSink:
    """Hash-chained records in a PostgreSQL table, shared by many processes
    on many machines: each stream is one chain, appended under a
    transaction-scoped advisory lock. The tables are created on first use.

    The head anchor is a row per stream in ``guardeddb_audit_head``, written
    in the same statement as each record: a DELETE of the last records of
    ``guardeddb_audit`` that does not also rewrite it is found by verify.
    A terminated backend costs the record being written (the caller is told)
    and the next write reconnects.
    """

    def __init__(self, url: str, stream: str = "default", fsync: str = "always") -> None:
        self.url = url
        self.stream = stream
        self.path = f"{url.split('@')[-1]} stream {stream}"  # for messages; no password
        self.failures = 0  # records that could not be written
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            psycopg = require("psycopg", "postgres", "a postgresql:// audit trail")

            with unguarded():  # the trail's own connection, never the caller's
                conn = psycopg.connect(self.url, connect_timeout=5)
            try:
                with conn.transaction():
                    # Many processes may start at once: one creates the tables.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('guardeddb_audit'))")
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS guardeddb_audit (stream TEXT NOT NULL, "
                        "seq BIGINT NOT NULL, hash CHAR(64) NOT NULL, "
                        "prev_hash CHAR(64) NOT NULL, record TEXT NOT NULL, "
                        "PRIMARY KEY (stream, seq))"
                    )
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS guardeddb_audit_head (stream TEXT PRIMARY KEY,"
                        " seq BIGINT NOT NULL, hash CHAR(64) NOT NULL)"
                    )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the sink's own database connection (never raises)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record to the stream's chain (raises OSError when it cannot)."""
        psycopg = require("psycopg", "postgres", "a postgresql:// audit trail")

        with self._lock:
            try:
                conn = self._connect()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.stream,))
                    last = conn.execute(
                        "SELECT seq, hash FROM guardeddb_audit WHERE stream = %s "
                        "ORDER BY seq DESC LIMIT 1",
                        (self.stream,),
                    ).fetchone()
                    head = conn.execute(
                        "SELECT seq, hash FROM guardeddb_audit_head WHERE stream = %s",
                        (self.stream,),
                    ).fetchone()
                    if head is not None and (last is None or head[0] > last[0]):
                        last = head  # rows deleted from the end: keep the gap visible
                    record = dict(fields)
                    record["seq"] = (last[0] + 1) if last else 1
                    record["prev_hash"] = last[1] if last else GENESIS
                    record["hash"] = _digest(record["prev_hash"], record)
                    conn.execute(
                        "WITH rec AS (INSERT INTO guardeddb_audit "
                        "(stream, seq, hash, prev_hash, record) VALUES (%s, %s, %s, %s, %s) "
                        "RETURNING stream, seq, hash) "
                        "INSERT INTO guardeddb_audit_head (stream, seq, hash) "
                        "SELECT stream, seq, hash FROM rec ON CONFLICT (stream) "
                        "DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
                        (
                            self.stream,
                            record["seq"],
                            record["hash"],
                            record["prev_hash"],
                            _encode(json.dumps(record, ensure_ascii=False, default=str)).decode(),
                        ),
                    )
            except (psycopg.Error, OSError) as exc:
                self.failures += 1
                if self._conn is not None and (self._conn.closed or self._conn.broken):
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None  # reconnect on the next record
                raise OSError(f"audit table not written: {type(exc).__name__}") from exc
        return record


def check_postgres(url: str, stream: str = "default") -> Report:
    """``check`` for a PostgreSQL stream, read with a server-side cursor
    (constant memory); ``line`` is the record's seq."""
    psycopg = require("psycopg", "postgres", "a postgresql:// audit trail")

    report = Report()
    with unguarded():
        conn = psycopg.connect(url)
    with conn:
        row = conn.execute("SELECT to_regclass('guardeddb_audit_head') IS NOT NULL").fetchone()
        head = None
        if row is not None and row[0]:
            found = conn.execute(
                "SELECT seq, hash FROM guardeddb_audit_head WHERE stream = %s", (stream,)
            ).fetchone()
            head = (int(found[0]), str(found[1])) if found else None
        chain = _Chain(report, head)
        last = 0
        with conn.cursor(name=f"guardeddb_verify_{os.getpid()}") as cur:
            cur.itersize = 1000
            cur.execute(
                "SELECT seq, record FROM guardeddb_audit WHERE stream = %s ORDER BY seq",
                (stream,),
            )
            for seq, text in cur:
                last = seq
                try:
                    record = json.loads(text)
                except ValueError:
                    report.problems.append(Problem(seq, "not a complete JSON record"))
                    continue
                if not isinstance(record, dict):
                    report.problems.append(Problem(seq, "not an audit record"))
                    continue
                if record.get("seq") != seq:
                    report.problems.append(
                        Problem(seq, f"row seq {seq} holds seq {record.get('seq')}")
                    )
                chain.feed(seq, record)
    if head is None and report.records:
        report.problems.append(
            Problem(last + 1, "no head anchor row: records cut from the end go unseen")
        )
    chain.finish(last + 1, "guardeddb_audit_head")
    return report


def verify_postgres(url: str, stream: str = "default") -> tuple[int, Problem | None]:
    """verify() for a PostgreSQL stream; ``line`` is the record's seq."""
    report = check_postgres(url, stream)
    if not report.problems:
        return report.verified, None
    first = min(report.problems, key=lambda p: p.line)
    return first.line - 1, first
