"""Audit records and their hash chain: the record of proof, not sampled, not dropped.

Each record holds the SHA-256 of the previous one (``prev_hash``) and its own
(``hash``, over a canonical JSON encoding of every other field), so editing,
deleting or reordering any record, or tearing the last line, is detected by
``verify``. The chain is per file: many threads and processes append to one
file under an exclusive lock, each reading the last record before writing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..drivers import unguarded
from ..sql.settings import AUDIT_TABLE as _TABLE

__all__ = [
    "GENESIS",
    "JsonlSink",
    "PostgresSink",
    "Problem",
    "canonical",
    "read_records",
    "verify",
    "verify_postgres",
]

GENESIS = "0" * 64
_TAIL = 1 << 22  # at most this many bytes are read back to find the last record


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8")


def _digest(prev_hash: str, fields: Mapping[str, Any]) -> str:
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def _last_record(f: Any) -> dict[str, Any] | None:
    """The last complete record of an open file (a torn last line is skipped).

    Reads back a few kilobytes, more only when a record is longer than that.
    """
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return None
    window = 4096
    while True:
        start = max(0, size - window)
        f.seek(start)
        lines = f.read().splitlines()
        if start > 0:
            lines = lines[1:]  # the first line may be cut by the window
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line: verify reports it; the chain goes on from the last good one
            if isinstance(record, dict) and "hash" in record:
                return record
        if start == 0 or window >= _TAIL:
            return None
        window *= 4


class JsonlSink:
    """Append-only, hash-chained JSON lines, safe for threads and processes.

    ``fsync``: "always" (every record reaches the disk before the query
    runs), or "never" (the OS flushes; faster, loses the tail on a crash).
    The file stays open; the last record is re-read only when another
    writer has appended since this one did.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: str = "always") -> None:
        if fsync not in ("always", "never"):
            raise ValueError("fsync must be 'always' or 'never'")
        self.path = os.fspath(path)
        self.fsync = fsync == "always"
        self._file: Any = None
        self._tail: tuple[int, int, str] | None = None  # (file size, seq, hash) after our write
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open(self) -> Any:
        if self._file is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
            self._file = os.fdopen(fd, "r+b")
            self._tail = None
        return self._file

    def write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record, chained to the last one; returns it as written.

        Raises OSError when the record cannot be written (full disk,
        read-only file): the caller decides whether the query may run.
        """
        with self._lock:
            try:
                return self._write(fields)
            except OSError:
                if self._file is not None:  # start afresh next time (a rotated file, ...)
                    self._file.close()
                    self._file = None
                raise

    def _write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        f = self._open()
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            tail = self._tail
            if tail is not None and tail[0] == size:
                seq, prev = tail[1], tail[2]  # nobody appended since our last record
            else:
                last = _last_record(f)
                seq, prev = (last["seq"], last["hash"]) if last else (0, GENESIS)
            record = dict(fields)
            record["seq"] = seq + 1
            record["prev_hash"] = prev
            record["hash"] = _digest(prev, record)
            ends_clean = True
            if size and (tail is None or tail[0] != size):
                f.seek(size - 1)
                ends_clean = f.read(1) == b"\n"
            line = json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")
            data = (b"" if ends_clean else b"\n") + line + b"\n"
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            self._tail = (size + len(data), record["seq"], record["hash"])
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
        return record


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of an audit file."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        yield from enumerate(f, 1)


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with an audit file."""

    line: int
    reason: str


def verify(path: str | os.PathLike[str]) -> tuple[int, Problem | None]:
    """Check the whole chain: (records that verified, the first problem or None)."""
    prev_hash, prev_seq, good = GENESIS, 0, 0
    lines = list(read_records(path))
    for n, text in lines:
        if not text.endswith("\n"):
            return good, Problem(n, "torn last line (the record was not completely written)")
        try:
            record = json.loads(text)
        except ValueError:
            reason = "torn line" if n < len(lines) else "torn last line"
            return good, Problem(n, f"{reason}: not a complete JSON record")
        if not isinstance(record, dict) or "hash" not in record:
            return good, Problem(n, "not an audit record")
        if record.get("hash") != _digest(str(record.get("prev_hash")), record):
            return good, Problem(n, "edited: the record does not match its hash")
        if record.get("prev_hash") != prev_hash or record.get("seq") != prev_seq + 1:
            return good, Problem(
                n,
                f"deleted or reordered: expected seq {prev_seq + 1} after hash "
                f"{prev_hash[:12]}..., found seq {record.get('seq')}",
            )
        prev_hash, prev_seq, good = record["hash"], record["seq"], good + 1
    return good, None


class PostgresSink:
    """Hash-chained records in a PostgreSQL table, shared by many processes
    on many machines: each stream is one chain, appended under a
    transaction-scoped advisory lock. The table is created on first use."""

    def __init__(self, url: str, stream: str = "default", fsync: str = "always") -> None:
        self.url = url
        self.stream = stream
        self.path = f"{url.split('@')[-1]} stream {stream}"  # for messages; no password
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg

            with unguarded():  # the trail's own connection, never the caller's
                conn = psycopg.connect(self.url, connect_timeout=5)
            with conn.transaction():
                # Many processes may start at once: one creates the table.
                conn.execute(f"SELECT pg_advisory_xact_lock(hashtext('{_TABLE}'))")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {_TABLE} (stream TEXT NOT NULL, "
                    "seq BIGINT NOT NULL, hash CHAR(64) NOT NULL, prev_hash CHAR(64) NOT NULL, "
                    "record TEXT NOT NULL, PRIMARY KEY (stream, seq))"
                )
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the sink's own database connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record to the stream's chain (raises OSError when it cannot)."""
        import psycopg

        with self._lock:
            try:
                conn = self._connect()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.stream,))
                    last = conn.execute(
                        f"SELECT seq, hash FROM {_TABLE} WHERE stream = %s "
                        "ORDER BY seq DESC LIMIT 1",
                        (self.stream,),
                    ).fetchone()
                    record = dict(fields)
                    record["seq"] = (last[0] + 1) if last else 1
                    record["prev_hash"] = last[1] if last else GENESIS
                    record["hash"] = _digest(record["prev_hash"], record)
                    conn.execute(
                        f"INSERT INTO {_TABLE} (stream, seq, hash, prev_hash, record) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (
                            self.stream,
                            record["seq"],
                            record["hash"],
                            record["prev_hash"],
                            json.dumps(record, ensure_ascii=False, default=str),
                        ),
                    )
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.closed or self._conn.broken):
                    self._conn = None
                raise OSError(f"audit table not written: {type(exc).__name__}") from exc
        return record


def verify_postgres(url: str, stream: str = "default") -> tuple[int, Problem | None]:
    """verify() for a PostgreSQL stream; ``line`` is the record's seq."""
    import psycopg

    prev_hash, prev_seq, good = GENESIS, 0, 0
    with unguarded():
        conn = psycopg.connect(url)
    with conn:
        rows = conn.execute(
            f"SELECT seq, record FROM {_TABLE} WHERE stream = %s ORDER BY seq", (stream,)
        ).fetchall()
    for seq, text in rows:
        record = json.loads(text)
        if record.get("hash") != _digest(str(record.get("prev_hash")), record):
            return good, Problem(seq, "edited: the record does not match its hash")
        if (
            record.get("prev_hash") != prev_hash
            or record.get("seq") != prev_seq + 1
            or seq != (prev_seq + 1)
        ):
            return good, Problem(seq, f"deleted or reordered: expected seq {prev_seq + 1}")
        prev_hash, prev_seq, good = record["hash"], record["seq"], good + 1
    return good, None
