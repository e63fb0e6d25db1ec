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
_TAIL = 1 << 16  # bytes read back to find the last record


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8")


def _digest(prev_hash: str, fields: Mapping[str, Any]) -> str:
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def _last_record(f: Any) -> dict[str, Any] | None:
    """The last complete record of an open file (a torn last line is skipped)."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return None
    f.seek(max(0, size - _TAIL))
    lines = f.read().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line: verify reports it; the chain goes on from the last good one
        if isinstance(record, dict) and "hash" in record:
            return record
    return None


class JsonlSink:
    """Append-only, hash-chained JSON lines, safe for threads and processes.

    ``fsync``: "always" (every record reaches the disk before the query
    runs), or "never" (the OS flushes; faster, loses the tail on a crash).
    """

    def __init__(self, path: str | os.PathLike[str], fsync: str = "always") -> None:
        if fsync not in ("always", "never"):
            raise ValueError("fsync must be 'always' or 'never'")
        self.path = os.fspath(path)
        self.fsync = fsync == "always"

    def close(self) -> None:
        """Nothing to release: every write opens and closes the file."""

    def write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record, chained to the last one; returns it as written.

        Raises OSError when the record cannot be written (full disk,
        read-only file): the caller decides whether the query may run.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                last = _last_record(f)
                record = dict(fields)
                record["seq"] = (last["seq"] + 1) if last else 1
                record["prev_hash"] = last["hash"] if last else GENESIS
                record["hash"] = _digest(record["prev_hash"], record)
                size = f.seek(0, os.SEEK_END)
                if size:
                    f.seek(size - 1)
                    ends_clean = f.read(1) == b"\n"
                else:
                    ends_clean = True
                line = json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")
                f.write((b"" if ends_clean else b"\n") + line + b"\n")
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
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

            conn = psycopg.connect(self.url, connect_timeout=5)
            with conn.transaction():
                # Many processes may start at once: one creates the table.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('guardeddb_audit'))")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS guardeddb_audit (stream TEXT NOT NULL, "
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
                        "SELECT seq, hash FROM guardeddb_audit WHERE stream = %s "
                        "ORDER BY seq DESC LIMIT 1",
                        (self.stream,),
                    ).fetchone()
                    record = dict(fields)
                    record["seq"] = (last[0] + 1) if last else 1
                    record["prev_hash"] = last[1] if last else GENESIS
                    record["hash"] = _digest(record["prev_hash"], record)
                    conn.execute(
                        "INSERT INTO guardeddb_audit (stream, seq, hash, prev_hash, record) "
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
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT seq, record FROM guardeddb_audit WHERE stream = %s ORDER BY seq", (stream,)
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
