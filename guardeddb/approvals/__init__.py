"""Approvals: queries held by ``review`` rules wait for a person's decision.

A held query raises ``ApprovalRequired`` with a request id. Once approved
(``guardeddb approvals approve ID``), the same identity running the same SQL
with the same parameters within the TTL runs exactly once: the approval is
consumed by one conditional UPDATE, so two processes cannot both use it.
Other SQL, other parameters or another identity are still held. A request
filed with a measured impact approves at most that many rows: a run that
would touch more supersedes it and is held again, showing the new count.

Stores are tables in a SQLite file (the embedded default) or PostgreSQL
(shared by every process), reached through the raw driver, never through a
guarded connection.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import hashlib
import json
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..drivers import require, unguarded
from ..identity import Identity
from ..masking.detectors import DETECTORS, Scanner
from ..sql.settings import APPROVALS_TABLE as _TABLE

if TYPE_CHECKING:  # the policy loader imports this module (for parse_ttl)
    from ..policy.decision import Decision
    from ..policy.model import Policy
    from ..sql.analysis import Analysis

__all__ = [
    "MAX_PENDING",
    "ApprovalRequest",
    "ApprovalStore",
    "Approver",
    "DecisionRefused",
    "Held",
    "UnboundParameters",
    "database_key",
    "decide",
    "may_decide",
    "parse_ttl",
    "render_params",
    "render_statement",
    "request_hash",
    "requester",
    "same_user",
]

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


#: Pending requests one identity may have at once: beyond it a held query is
#: blocked, so an agent looping over 200 statements cannot flood approvers.
MAX_PENDING = 20


class UnboundParameters(TypeError):
    """Parameters an approval cannot be bound to: they have no canonical encoding."""


def _canon(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-ready data that names its type, so two values that
    differ (a Json payload, a 100-row parameter list) never encode alike.

    Only data with an exact, stable encoding is accepted: an iterator or an
    arbitrary object would be hashed by address (or consumed), so it is refused.
    """
    if depth > 64:
        raise UnboundParameters("parameters nested more than 64 levels deep")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return ["int", str(value)]
    if isinstance(value, float):
        return ["float", repr(value)]  # repr round-trips a float exactly
    if isinstance(value, bytes | bytearray | memoryview):
        return ["bytes", bytes(value).hex()]
    if isinstance(value, decimal.Decimal):
        return ["decimal", str(value)]
    if isinstance(value, datetime.datetime):  # before date: a datetime is a date
        return ["datetime", value.isoformat()]
    if isinstance(value, datetime.date):
        return ["date", value.isoformat()]
    if isinstance(value, datetime.time):
        return ["time", value.isoformat()]
    if isinstance(value, datetime.timedelta):
        return ["timedelta", value.days, value.seconds, value.microseconds]
    if isinstance(value, uuid.UUID):
        return ["uuid", str(value)]
    if isinstance(value, list | tuple):
        return ["seq", [_canon(v, depth + 1) for v in value]]
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnboundParameters(f"a mapping key of type {type(key).__name__}")
            items.append([key, _canon(item, depth + 1)])
        return ["map", sorted(items, key=lambda kv: kv[0])]
    if type(value).__module__.startswith("psycopg") and type(value).__name__ in ("Json", "Jsonb"):
        return [type(value).__name__, _canon(value.obj, depth + 1)]
    raise UnboundParameters(
        f"a parameter of type {type(value).__module__}.{type(value).__qualname__} has no "
        "canonical encoding, so an approval cannot be bound to it (pass a list, tuple or "
        "dict of plain values; generators and iterators are refused, not consumed)"
    )


def _encode(value: Any) -> str:
    return json.dumps(_canon(value), separators=(",", ":"), ensure_ascii=False)


def _identity_key(ident: Identity | None) -> str:
    """The whole identity, attributes (a token's issuer) included."""
    if ident is None:
        return "{}"
    return json.dumps(
        {
            "user": ident.user,
            "agent": ident.agent,
            "roles": sorted(ident.roles),
            "session": ident.session,
            "verified": ident.verified,
            "attributes": _canon(dict(ident.attributes)),
        },
        sort_keys=True,
        ensure_ascii=False,
    )


def database_key(system: str | None, facts: Any) -> str:
    """The database a query runs on: system, namespace, server address and
    port, and where unqualified names resolve (MariaDB's ``USE``, PostgreSQL's
    search path), so an approval given in one database never runs in another."""
    schemas = getattr(facts, "schemas", None)
    return json.dumps(
        [
            system,
            getattr(facts, "namespace", None),
            getattr(facts, "address", None),
            getattr(facts, "port", None),
            sorted(schemas) if schemas is not None else None,
        ]
    )


def request_hash(ident: Identity | None, sql: str, params: Any, database: str = "null") -> str:
    """What an approval is for: this identity, this database, this exact SQL
    and these parameter values. Raises ``UnboundParameters`` for values with no
    canonical encoding (a generator, an arbitrary object)."""
    body = json.dumps([_identity_key(ident), database, sql, _encode(params)])
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


@functools.cache
def _default_scanner() -> Scanner:
    """Every detector, compiled once: for policies without a masking section."""
    return Scanner(DETECTORS)


def render_params(params: Any, scanner: Scanner | None = None, limit: int = 4000) -> str | None:
    """The parameters as the approver sees them: values masked by the
    detectors (the policy's, else the default set), cut at ``limit`` characters."""
    if params is None:
        return None
    if scanner is None:
        scanner = _default_scanner()
    text = json.dumps(_plain(params), ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return scanner.scan(text)[0]


def render_statement(text: str, scanner: Scanner | None = None, limit: int = 8000) -> str:
    """The statement as the approver sees it: its exact text, literals and
    comments included (``SET amount = 99999999`` is what is decided on),
    with what the detectors (every one, unless given) find masked, cut at
    ``limit`` characters. Escaping control characters is the display's job."""
    if scanner is None:
        scanner = _default_scanner()
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return scanner.scan(text)[0]


def _plain(value: Any) -> Any:
    """Canonically encodable parameters as readable JSON-ready data."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if type(value).__name__ in ("Json", "Jsonb") and hasattr(value, "obj"):
        return _plain(value.obj)
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class ApprovalRequest:
    """One held query and what became of it."""

    id: str
    status: str  # pending | approved | denied | used | superseded
    identity: str
    statement: str  # the exact text, as render_statement shows it
    rule: str | None
    reason: str | None
    created: str
    expires: str
    approver: str | None = None
    note: str | None = None
    impact: int | None = None  # rows a dry run measured, when it could
    params: str | None = None  # the parameter values, masked by the detectors
    database: str | None = None  # [system, namespace, address, port]


class Held(NamedTuple):
    """A held query's pending request, and whether this hold filed it."""

    id: str
    new: bool  # filed now; False when a pending request was found again
    created: str
    expires: str


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


_COLUMNS = (
    "id, status, identity, statement, rule, reason, created, expires, approver, note, "
    "impact, params, target"
)
#: Columns added after the first release: added in place to an older table.
_ADDED = (("params", "TEXT"), ("target", "TEXT"))


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
            psycopg = require("psycopg", "postgres", "a postgresql:// approval store")
            with unguarded():
                conn = psycopg.connect(self._path, autocommit=True)
        if not self._ready:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
                "id VARCHAR(32) PRIMARY KEY, request_hash VARCHAR(64) NOT NULL, "
                "status VARCHAR(16) NOT NULL, identity TEXT, statement TEXT, rule TEXT, "
                "reason TEXT, created VARCHAR(40), expires VARCHAR(40), approver TEXT, "
                "note TEXT, decided VARCHAR(40), used VARCHAR(40), impact INTEGER, "
                "params TEXT, target TEXT)"
            )
            self._upgrade(conn)
            self._ready = True
        return conn

    def _upgrade(self, conn: Any) -> None:
        """Add the columns a store made by an older release lacks."""
        for column, kind in _ADDED:
            if self._mark == "%s":
                conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN IF NOT EXISTS {column} {kind}")
                continue
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")}
            if column not in have:
                try:
                    conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    @contextlib.contextmanager
    def _exclusive(self, conn: Any, who: str) -> Iterator[None]:
        """One transaction that no other hold for identity ``who`` overlaps,
        so counting its pending requests and filing one is a single step:
        SQLite's write lock (``BEGIN IMMEDIATE``), on PostgreSQL an advisory
        transaction lock keyed by the identity."""
        if self._mark == "?":
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        key = int.from_bytes(
            hashlib.sha256(who.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True
        )
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            yield

    def hold(
        self,
        ident: Identity | None,
        digest: str,
        statement: str,
        rule: str | None,
        reason: str | None,
        impact: int | None = None,
        params: str | None = None,
        database: str | None = None,
        cap: int = MAX_PENDING,
    ) -> str | None:
        """The id of the pending request for this query, made if there is none;
        None when the identity already has ``cap`` other pending requests.
        ``statement`` is the exact text; it is stored as ``render_statement``
        shows it (values visible, what the detectors find masked)."""
        held = self.hold_request(
            ident, digest, statement, rule, reason, impact, params, database, cap
        )
        return held.id if held is not None else None

    def hold_request(
        self,
        ident: Identity | None,
        digest: str,
        statement: str,
        rule: str | None,
        reason: str | None,
        impact: int | None = None,
        params: str | None = None,
        database: str | None = None,
        cap: int = MAX_PENDING,
    ) -> Held | None:
        """``hold``, saying whether the request was filed by this call (so
        notifications go out once per request, not once per retry)."""
        statement = render_statement(statement)
        now = _now()
        who = _identity_key(ident)
        conn = self._connect()
        try:
            with self._exclusive(conn, who):
                row = conn.execute(
                    self._sql(
                        f"SELECT id, created, expires FROM {_TABLE} WHERE request_hash = ? "
                        "AND status = 'pending' AND expires > ?"
                    ),
                    (digest, now.isoformat()),
                ).fetchone()
                if row:
                    return Held(str(row[0]), False, str(row[1]), str(row[2]))
                pending = conn.execute(
                    self._sql(
                        f"SELECT count(*) FROM {_TABLE} WHERE identity = ? "
                        "AND status = 'pending' AND expires > ?"
                    ),
                    (who, now.isoformat()),
                ).fetchone()
                if int(pending[0]) >= cap:
                    return None
                rid = uuid.uuid4().hex[:12]
                created = now.isoformat()
                expires = (now + datetime.timedelta(seconds=self.ttl)).isoformat()
                conn.execute(
                    self._sql(
                        f"INSERT INTO {_TABLE} (id, request_hash, status, identity, "
                        "statement, rule, reason, created, expires, impact, params, target) "
                        "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (
                        rid,
                        digest,
                        who,
                        statement,
                        rule,
                        reason,
                        created,
                        expires,
                        impact,
                        params,
                        database,
                    ),
                )
        finally:
            conn.close()
        return Held(rid, True, created, expires)

    def find(self, digest: str) -> ApprovalRequest | None:
        """The unused, unexpired approval of this exact query, if any; not
        used yet: the guard writes the decision record that names it first."""
        conn = self._connect()
        try:
            row = conn.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM {_TABLE} WHERE request_hash = ? "
                    "AND status = 'approved' AND expires > ?"
                ),
                (digest, _now().isoformat()),
            ).fetchone()
            return ApprovalRequest(*row) if row else None
        finally:
            conn.close()

    def use(self, rid: str) -> bool:
        """Use approval ``rid``, once: False when another run used it first
        (or it expired in between)."""
        now = _now().isoformat()
        conn = self._connect()
        try:
            cur = conn.execute(
                self._sql(
                    f"UPDATE {_TABLE} SET status = 'used', used = ? "
                    "WHERE id = ? AND status = 'approved' AND expires > ?"
                ),
                (now, rid, now),
            )
            return bool(cur.rowcount == 1)
        finally:
            conn.close()

    def supersede(self, rid: str) -> bool:
        """Retire approval ``rid`` unused: the statement would now touch more
        rows than the person was shown. The same conditional UPDATE as
        ``use``, so an approval is used or superseded, once, never both, and
        the request filed in its place is the only live one for the query.
        False when another run used or retired it first."""
        conn = self._connect()
        try:
            cur = conn.execute(
                self._sql(
                    f"UPDATE {_TABLE} SET status = 'superseded' "
                    "WHERE id = ? AND status = 'approved'"
                ),
                (rid,),
            )
            return bool(cur.rowcount == 1)
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
        self,
        analysis: Analysis,
        ident: Identity | None,
        decision: Decision,
        params: str | None = None,
    ) -> tuple[bool, str]:
        """(approved, who answered) for one held query; ``params`` is its
        parameters as ``render_params`` shows them."""
        now = _now()
        request = ApprovalRequest(
            id="inline",
            status="pending",
            identity=_identity_key(ident),
            statement=render_statement(analysis.text),
            rule=decision.rule_id,
            reason=decision.message,
            created=now.isoformat(),
            expires=(now + datetime.timedelta(seconds=self.timeout)).isoformat(),
            params=params,
        )
        who = f"approver {self.name}"
        try:
            answer = _POOL.submit(self.decide, request).result(timeout=self.timeout)
        except FutureTimeout:
            return False, f"{who} (no answer within {self.timeout:g}s)"
        except Exception as exc:  # the approver's own failure is a no, never a yes
            return False, f"{who} (raised {type(exc).__name__})"
        return answer is True, who


class DecisionRefused(Exception):
    """A decision on a held query that is not recorded, and why (said to the
    person deciding): not pending, their own request, not an approver."""


def requester(request: ApprovalRequest) -> dict[str, Any]:
    """Who asked: the identity a request was filed for (user, agent, roles,
    session, verified), or an empty dict when it was filed without one."""
    try:
        found = json.loads(request.identity or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def same_user(a: object, b: object) -> bool:
    """Whether two user names are one person's, for four eyes: compared
    case-insensitively (``Alice@Example.com`` is alice@example.com), so a
    difference in case never lets a requester approve their own request."""
    return isinstance(a, str) and isinstance(b, str) and a.casefold() == b.casefold()


def may_decide(policy: Policy | None, ident: Identity | None) -> bool:
    """Whether ``ident`` is one of the approvers ``approvals.approvers``
    names (by user or by role). No such key, or no user: nobody (fails closed)."""
    if ident is None or not ident.user or policy is None:
        return False
    named = policy.approvals.get("approvers")
    if not isinstance(named, Mapping):
        return False
    users, roles = named.get("users") or (), named.get("roles") or ()
    return ident.user in users or bool(ident.roles & frozenset(roles))


def decide(
    store: ApprovalStore,
    policy: Policy | None,
    request_id: str,
    approve: bool,
    by: str | None,
    note: str | None,
    *,
    decider: Identity | None = None,
) -> ApprovalRequest:
    """Approve or deny a pending request and write who did to the policy's
    audit trail: the one path the CLI and the console both take.

    Four eyes: the requester's own user may withdraw (deny) a request, never
    approve it. With ``decider`` (a signed-in console identity) the decision
    is also refused unless the policy names them among ``approvals.approvers``,
    and ``by`` is their user. Raises ``DecisionRefused`` saying why; returns
    the request as it was before the decision.
    """
    if decider is not None:
        if not may_decide(policy, decider):
            raise DecisionRefused(
                f"{decider.user or 'this identity'} is not an approver: the policy's "
                "approvals.approvers names who may decide"
            )
        by = decider.user
    request = store.get(request_id)
    if request is None or request.status != "pending":
        raise DecisionRefused(f"request {request_id} is not pending")
    asked_by = requester(request).get("user")
    if approve and same_user(asked_by, by):
        raise DecisionRefused(
            f"{by} asked for request {request_id}: nobody approves their own request"
        )
    if not store.decide(request_id, approve, by, note):
        raise DecisionRefused(f"request {request_id} is not pending (or has expired)")
    from ..audit import AuditTrail, sink_for  # the audit package imports policy, which imports us

    sink = sink_for(policy.audit) if policy is not None else None
    if sink is not None:
        # Who approved or denied what is part of the record of proof.
        trail = AuditTrail(sink, True)
        trail.approval("approval" if approve else "denial", request_id, by, note)
        trail.close()
    return request
