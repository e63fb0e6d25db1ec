"""Approvals: queries held by ``review`` rules wait for a person's decision.

A held query raises ``ApprovalRequired`` with a request id. Once approved
(``guardeddb approvals approve ID``), the same identity running the same SQL
with the same parameters within the TTL runs exactly once: the approval is
consumed by one conditional UPDATE, so two processes cannot both use it.
Other SQL, other parameters or another identity are still held.

Stores are tables in a SQLite file (the embedded default) or PostgreSQL
(shared by every process), reached through the raw driver, never through a
guarded connection.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..drivers import unguarded
from ..identity import Identity
from ..sql.settings import APPROVALS_TABLE as _TABLE

if TYPE_CHECKING:  # the policy loader imports this module (for parse_ttl)
    from ..policy.decision import Decision
    from ..sql.analysis import Analysis

__all__ = ["ApprovalRequest", "ApprovalStore", "Approver", "parse_ttl", "request_hash"]

_TTL = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str | int) -> int:
    """Seconds in ``30m``, ``1h``, ``2d`` (or a number of seconds)."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    m = _TTL.match(str(text))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"a TTL is a positive number with s, m, h or d: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _identity_key(ident: Identity | None) -> str:
    if ident is None:
        return "{}"
    return json.dumps([ident.user, ident.agent, sorted(ident.roles), ident.session, ident.verified])


def request_hash(ident: Identity | None, sql: str, params: Any) -> str:
    """What an approval is for: this identity, this exact SQL, these parameters."""
    body = json.dumps([_identity_key(ident), sql, repr(params)])
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApprovalRequest:
    """One held query and what became of it."""

    id: str
    status: str  # pending | approved | denied | used
    identity: str
    statement: str
    rule: str | None
    reason: str | None
    created: str
    expires: str
    approver: str | None = None
    note: str | None = None
    impact: int | None = None  # rows a dry run measured, when it could


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


_COLUMNS = "id, status, identity, statement, rule, reason, created, expires, approver, note, impact"


class ApprovalStore:
    """Approval requests in a SQLite file or a PostgreSQL table."""

    def __init__(self, url: str, ttl: int = 3600) -> None:
        self.url = url
        self.ttl = ttl
        if url.startswith("sqlite://"):
            path = url.split("://", 1)[1]
            self._path = path[1:] if path.startswith("/") else path
            self._mark = "?"
        elif url.split("://", 1)[0] in ("postgresql", "postgres"):
            self._path = url
            self._mark = "%s"
        else:
            raise ValueError(
                f"an approval store is sqlite:///FILE or postgresql://..., not {url!r}"
            )
        self._ready = False

    def _connect(self) -> Any:
        if self._mark == "?":
            with unguarded():  # the store's own connection, never the caller's
                conn: Any = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        else:
            import psycopg

            with unguarded():
                conn = psycopg.connect(self._path, autocommit=True)
        if not self._ready:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
                "id VARCHAR(32) PRIMARY KEY, request_hash VARCHAR(64) NOT NULL, "
                "status VARCHAR(16) NOT NULL, identity TEXT, statement TEXT, rule TEXT, "
                "reason TEXT, created VARCHAR(40), expires VARCHAR(40), approver TEXT, "
                "note TEXT, decided VARCHAR(40), used VARCHAR(40), impact INTEGER)"
            )
            self._ready = True
        return conn

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    def hold(
        self,
        ident: Identity | None,
        digest: str,
        statement: str,
        rule: str | None,
        reason: str | None,
        impact: int | None = None,
    ) -> str:
        """The id of the pending request for this query, made if there is none."""
        now = _now()
        conn = self._connect()
        try:
            row = conn.execute(
                self._sql(
                    f"SELECT id FROM {_TABLE} WHERE request_hash = ? "
                    "AND status = 'pending' AND expires > ?"
                ),
                (digest, now.isoformat()),
            ).fetchone()
            if row:
                return str(row[0])
            rid = uuid.uuid4().hex[:12]
            conn.execute(
                self._sql(
                    f"INSERT INTO {_TABLE} (id, request_hash, status, identity, "
                    "statement, rule, reason, created, expires, impact) "
                    "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    rid,
                    digest,
                    _identity_key(ident),
                    statement,
                    rule,
                    reason,
                    now.isoformat(),
                    (now + datetime.timedelta(seconds=self.ttl)).isoformat(),
                    impact,
                ),
            )
            return rid
        finally:
            conn.close()

    def consume(self, digest: str) -> ApprovalRequest | None:
        """Use an approval for this exact query, once; None if there is none."""
        now = _now().isoformat()
        conn = self._connect()
        try:
            row = conn.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM {_TABLE} WHERE request_hash = ? "
                    "AND status = 'approved' AND expires > ?"
                ),
                (digest, now),
            ).fetchone()
            if row is None:
                return None
            cur = conn.execute(
                self._sql(
                    f"UPDATE {_TABLE} SET status = 'used', used = ? "
                    "WHERE id = ? AND status = 'approved'"
                ),
                (now, row[0]),
            )
            return ApprovalRequest(*row) if cur.rowcount == 1 else None
        finally:
            conn.close()

    def decide(self, rid: str, approve: bool, by: str | None, note: str | None) -> bool:
        """Approve or deny a pending request; False if it is not pending."""
        conn = self._connect()
        try:
            cur = conn.execute(
                self._sql(
                    f"UPDATE {_TABLE} SET status = ?, approver = ?, note = ?, "
                    "decided = ? WHERE id = ? AND status = 'pending' AND expires > ?"
                ),
                (
                    "approved" if approve else "denied",
                    by,
                    note,
                    _now().isoformat(),
                    rid,
                    _now().isoformat(),
                ),
            )
            return bool(cur.rowcount == 1)
        finally:
            conn.close()

    def get(self, rid: str) -> ApprovalRequest | None:
        conn = self._connect()
        try:
            row = conn.execute(
                self._sql(f"SELECT {_COLUMNS} FROM {_TABLE} WHERE id = ?"), (rid,)
            ).fetchone()
            return ApprovalRequest(*row) if row else None
        finally:
            conn.close()

    def list(self, status: str | None = None) -> list[ApprovalRequest]:
        conn = self._connect()
        try:
            if status:
                rows = conn.execute(
                    self._sql(f"SELECT {_COLUMNS} FROM {_TABLE} WHERE status = ? ORDER BY created"),
                    (status,),
                ).fetchall()
            else:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM {_TABLE} ORDER BY created").fetchall()
            return [ApprovalRequest(*r) for r in rows]
        finally:
            conn.close()


_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="guardeddb-approver")


class Approver:
    """An in-process approver: a callable asked synchronously, with a timeout.

    For chat-style agents where a person answers in the same process. The
    callable gets an ``ApprovalRequest`` and returns True to approve; a
    False, an exception or no answer within ``timeout`` seconds is a no.
    """

    def __init__(self, decide: Callable[[ApprovalRequest], bool], timeout: float = 30.0) -> None:
        self.decide = decide
        self.timeout = timeout
        self.name = getattr(decide, "__qualname__", None) or type(decide).__name__

    def ask(
        self, analysis: Analysis, ident: Identity | None, decision: Decision
    ) -> tuple[bool, str]:
        """(approved, who answered) for one held query."""
        now = _now()
        request = ApprovalRequest(
            id="inline",
            status="pending",
            identity=_identity_key(ident),
            statement=analysis.sanitized,
            rule=decision.rule_id,
            reason=decision.message,
            created=now.isoformat(),
            expires=(now + datetime.timedelta(seconds=self.timeout)).isoformat(),
        )
        who = f"approver {self.name}"
        try:
            answer = _POOL.submit(self.decide, request).result(timeout=self.timeout)
        except FutureTimeout:
            return False, f"{who} (no answer within {self.timeout:g}s)"
        except Exception as exc:  # the approver's own failure is a no, never a yes
            return False, f"{who} (raised {type(exc).__name__})"
        return answer is True, who
