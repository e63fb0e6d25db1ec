"""``guardeddb mcp``: a Model Context Protocol server whose only way to the
database is a guarded connection.

An AI agent (Claude Desktop, an IDE, any MCP client) gets four tools:
``query``, ``list_tables``, ``describe_table`` and ``wait_for_approval``.
Every statement, the catalog queries included, runs through one
``GuardedConnection`` under the identity this server was configured with,
so the policy decides, masking applies and the audit trail records it as
for any other caller. Refusals come back as tool errors that name the rule,
so a model can correct itself; held queries come back as a pending approval
that a person decides with ``guardeddb approvals approve ID``.

Each tool call is its own transaction: committed when it succeeds, rolled
back when it fails, so an agent never leaves a transaction (and its locks)
open between calls, and the database session can switch to read-only for a
read-only identity between calls.

The ``mcp`` SDK (the ``mcp`` extra) is imported only when the server is
built; :class:`GuardedTools`, the synchronous core, needs only guardeddb.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import decimal
import importlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import guardeddb

from .. import drivers
from ..approvals import ApprovalRequest, ApprovalStore, parse_ttl
from ..errors import ApprovalRequired, QueryBlocked
from ..identity import Identity
from ..masking import DETECTORS, MaskingError, Scanner
from ..masking.channels import withheld
from ..policy import Policy, load_policy
from ..policy.decision import Decision
from ..policy.loader import is_preset_name
from ..sql.analysis import analyze
from . import _mcp_advice
from ._mcp_bounds import (
    BATCH_ROWS,
    Budget,
    Canceller,
    batches,
    collect,
    release_session_state,
    timeout_error,
)

if TYPE_CHECKING:
    from mcp.server import Server

__all__ = [
    "GuardedTools",
    "McpSettings",
    "ToolResult",
    "build_server",
    "run",
    "serve",
    "settings_from_args",
    "table_name",
    "token_identity",
]

_log = logging.getLogger("guardeddb.mcp")

#: The agent name when neither ``--agent`` nor the client's ``clientInfo`` gives one:
#: whoever speaks MCP to this server is an agent, so agent rules must apply.
UNNAMED_AGENT = "mcp-client"
#: At most this many tables come back from ``list_tables``.
MAX_TABLES = 1000
#: ``wait_for_approval`` waits at most this long per call, whatever it is asked.
MAX_WAIT_SECONDS = 3600.0
#: wait_for_approval polls the store this often at first, backing off to _POLL_MAX.
_POLL_SECONDS = 0.25
_POLL_MAX = 5.0
#: At most this many wait_for_approval calls wait at once per identity.
MAX_WAITERS = 4
#: A call's statement timeout when neither the policy nor --statement-timeout sets one.
DEFAULT_TIMEOUT = 30.0
#: The watchdog cancels a call this long after its statement timeout (the
#: engine's own timeout fires first; the watchdog covers fetching and masking).
_GRACE_SECONDS = 1.0
#: A statement still running after a cancel is cancelled again this often, this many times.
_CANCEL_EVERY = 0.25
_CANCEL_RETRIES = 40
# One identifier part: what every dialect accepts unquoted. Anything else is
# refused before it reaches a catalog query (where it is bound, never spliced).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,127}")
# Error text is scanned with every detector: a driver's message can quote a
# value the rows would have masked (``invalid input syntax ...: "ada@..."``).
# For identities whose results are masked the guarded cursor has already
# withheld the text (masking/channels.py); the scan is a second line.
_ERROR_SCANNER = Scanner(tuple(DETECTORS))


@dataclass(frozen=True)
class McpSettings:
    """What ``guardeddb mcp`` was started with."""

    dsn: str
    policy: str | None = None  # a YAML file, a preset name, or None for agent-safe
    user: str | None = None
    agent: str | None = None  # None: the MCP client's clientInfo.name
    roles: frozenset[str] = frozenset()
    max_rows: int = 100
    approvals_wait: float = 30.0  # wait_for_approval's default timeout, seconds
    statement_timeout: float | None = None  # None: the policy's limit, else DEFAULT_TIMEOUT
    max_bytes: int = 256 * 1024  # rows as JSON per result
    max_cell_bytes: int = 8 * 1024  # one cell before it is cut
    # A verified identity (``Identity.from_jwt``), checked again on every call
    # so an expired or replaced token stops working; it replaces user, agent,
    # roles and the client's name: nothing asserted overrides what a token proves.
    token_identity: Callable[[], Identity] | None = None


@dataclass(frozen=True)
class ToolResult:
    """One tool call's outcome: a JSON payload, and whether it is a tool error.

    Errors carry ``message``, the sentence the model reads (no traceback).
    """

    payload: dict[str, Any]
    error: bool = False

    @property
    def text(self) -> str:
        """What goes in the result's text content: the message (and the
        suggestion), or the payload as JSON."""
        if self.error:
            message = str(self.payload.get("message", "error"))
            suggestion = self.payload.get("suggestion")
            # Many models read only the text: what would be allowed goes there too.
            return f"{message}. Instead: {suggestion}" if suggestion else message
        return json.dumps(self.payload, ensure_ascii=False)

    @classmethod
    def failure(cls, status: str, message: str, **extra: Any) -> ToolResult:
        return cls({"status": status, "message": message, **extra}, error=True)


@dataclass(frozen=True)
class _Held:
    """A statement held for approval, kept so it can be re-issued exactly:
    the approval is for this identity, this SQL text and these parameters."""

    sql: str
    params: tuple[Any, ...] | None
    identity: Identity


def table_name(name: str) -> tuple[str | None, str]:
    """``(schema, table)`` from ``table`` or ``schema.table``; ValueError otherwise.

    Only plain identifiers pass. The catalog queries bind the name as a
    parameter anyway; refusing anything else first means no quoting rule of
    any dialect is ever relied on.
    """
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise ValueError(
            f"not a table name: {name!r} (use table or schema.table, letters, digits, _ and $)"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _jsonable(value: Any) -> Any:
    """A cell as a JSON value: exact numbers as text, times in ISO 8601, bytes in base64."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _policy(source: str | None) -> Policy:
    """A preset by name, or a policy file (``load_policy`` decides which)."""
    return load_policy(source)


def _timed(policy: Policy, wanted: float | None) -> tuple[Policy, float]:
    """The policy with the call timeout in its limits (so the engine enforces
    it: statement_timeout, max_statement_time, a progress handler), and that
    timeout: the shorter of the policy's and ``wanted``, else DEFAULT_TIMEOUT."""
    given = [t for t in (policy.limits.get("statement_timeout"), wanted) if t]
    timeout = float(min(given)) if given else DEFAULT_TIMEOUT
    if policy.limits.get("statement_timeout") != timeout:
        policy = dataclasses.replace(policy, limits={**policy.limits, "statement_timeout": timeout})
    return policy, timeout


class GuardedTools:
    """The tools' work, synchronous and transport-free: one guarded
    connection, one call at a time, each call its own transaction."""

    def __init__(self, settings: McpSettings) -> None:
        self.settings = settings
        self.policy, self.timeout = _timed(_policy(settings.policy), settings.statement_timeout)
        self.budget = Budget(settings.max_rows, settings.max_bytes, settings.max_cell_bytes)
        self.conn = self._connect()
        self.driver = drivers.detect(self.conn.__wrapped__)
        self.canceller = Canceller(self.driver, settings.dsn)
        self.canceller.attach(self.conn.__wrapped__)
        self.dialect = self.driver.dialect
        self.placeholder = "?" if self.dialect == "sqlite" else "%s"
        self.driver_error: type[BaseException] = importlib.import_module(self.driver.module).Error
        cfg = self.policy.approvals
        self.store = (
            ApprovalStore(str(cfg["store"]), parse_ttl(cfg.get("ttl", "1h")))  # type: ignore[arg-type]
            if cfg.get("store")
            else None
        )
        self.held: dict[str, _Held] = {}
        # One call at a time on the connection; re-entrant because a decided
        # approval is looked up and its statement run under the same hold.
        self._lock = threading.RLock()
        # Which call runs now, which were cancelled before they ran, and why
        # the running one is being stopped ("timeout", "cancelled").
        self._state = threading.Lock()
        self._running: object | None = None
        self._cancelled: set[object] = set()
        self._why: str | None = None
        self._closing = False
        self.waiters: dict[tuple[Any, ...], int] = {}

    def _connect(self) -> guardeddb.GuardedConnection:
        scheme = self.settings.dsn.split("://", 1)[0].lower()
        # Calls run in worker threads, one at a time (see _lock).
        kwargs: dict[str, Any] = {"check_same_thread": False} if scheme == "sqlite" else {}
        return guardeddb.connect(self.settings.dsn, policy=self.policy, **kwargs)

    def _lost(self) -> bool:
        """Whether the driver has given the connection up (a server restart,
        an idle timeout): the server lives as long as the agent's session."""
        raw = self.conn.__wrapped__
        if self.driver.module == "pymysql":
            return not raw.open
        return bool(getattr(raw, "closed", False))  # psycopg; sqlite3 has no such state

    def close(self) -> None:
        """Stop the running statement, then close the connection (and the audit sink)."""
        self.cancel_all()
        with self._lock:
            self.conn.close()

    # -- cancellation --------------------------------------------------------

    def cancel(self, call: object, why: str = "cancelled") -> None:
        """Stop ``call``: on the server if it is running, before it starts otherwise."""
        with self._state:
            if self._running is not call:
                self._cancelled.add(call)
                return
            self._why = why
        self._keep_cancelling(call)

    def cancel_all(self) -> None:
        """The server is going away: stop what runs, start nothing more."""
        with self._state:
            self._closing = True
            call = self._running
            if call is not None:
                self._why = "cancelled"
        if call is not None:
            self._keep_cancelling(call)

    def _keep_cancelling(self, call: object) -> None:
        """Cancel now, then again while ``call`` still runs: PostgreSQL drops a
        cancel that arrives while it is still preparing the statement (JIT
        compiling it), and a KILL QUERY can arrive between two statements."""
        self.canceller.cancel()

        def again() -> None:
            for _ in range(_CANCEL_RETRIES):
                time.sleep(_CANCEL_EVERY)
                with self._state:
                    if self._running is not call:
                        return
                self.canceller.cancel()

        threading.Thread(target=again, name="guardeddb-mcp-cancel", daemon=True).start()

    def _start(self, call: object) -> bool:
        with self._state:
            if self._closing or call in self._cancelled:
                self._cancelled.discard(call)
                return False
            self._running, self._why = call, None
            return True

    def _stop(self) -> str | None:
        with self._state:
            self._running = None
            why, self._why = self._why, None
            return why

    def identity_for(self, client_name: str | None) -> Identity:
        """Who runs this call: the verified identity, else the configured user
        and roles with ``--agent`` or the MCP client's own name."""
        s = self.settings
        if s.token_identity is not None:
            return s.token_identity()  # guardeddb.IdentityError when no longer valid
        return Identity(user=s.user, agent=s.agent or client_name or UNNAMED_AGENT, roles=s.roles)

    # -- the tools ---------------------------------------------------------

    def query(
        self,
        ident: Identity,
        sql: str,
        params: Sequence[Any] | None = None,
        call: object | None = None,
    ) -> ToolResult:
        """Run one statement; rows (masked) within the budget, or the rowcount."""
        bound = None if params is None else tuple(params)
        return self._guarded(ident, sql, bound, self._rows, call)

    def list_tables(self, ident: Identity, call: object | None = None) -> ToolResult:
        """The tables and views this identity's policy lets it read."""
        if self.dialect == "sqlite":
            sql = (
                "SELECT 'main', name, type FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        elif self.dialect == "postgres":
            sql = (
                "SELECT table_schema, table_name, table_type FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                "ORDER BY table_schema, table_name"
            )
        elif self.dialect == "mysql":
            sql = (
                "SELECT table_schema, table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = DATABASE() ORDER BY table_name"
            )
        else:
            return ToolResult.failure("unsupported", f"list_tables does not know {self.dialect!r}")

        def shape(cur: Any, rows: Iterator[Any]) -> ToolResult:
            tables: list[dict[str, str]] = []
            hidden, more = 0, False
            for r in rows:
                if len(tables) >= MAX_TABLES:
                    more = True
                    break
                schema, name = str(r[0]), str(r[1])
                if not self.readable(ident, schema, name):
                    hidden += 1
                    continue
                kind = "view" if "view" in str(r[2]).lower() else "table"
                tables.append({"schema": schema, "name": name, "type": kind})
            payload: dict[str, Any] = {"tables": tables, "truncated": more}
            if hidden:
                payload["note"] = "tables this identity may not read are not listed"
            return ToolResult(payload)

        return self._guarded(ident, sql, None, shape, call)

    def readable(self, ident: Identity, schema: str | None, name: str, column: str = "1") -> bool:
        """Whether the policy lets ``ident`` read ``column`` of ``schema.name``
        (``1``: the table at all), judged as the SELECT the agent would send,
        qualified and unqualified: the stricter wins."""
        table = _quoted(name, self.dialect)
        texts = [f"SELECT {column} FROM {table}"]
        if schema:
            texts.append(f"SELECT {column} FROM {_quoted(schema, self.dialect)}.{table}")
        return all(self.policy.check(t, ident, self.dialect).action != "block" for t in texts)

    def _masked_column(self, ident: Identity, schema: str | None, name: str, column: str) -> bool:
        """Whether the policy's column rules mask ``column`` for ``ident``."""
        masker = self.policy.masker
        if masker is None or not masker.applies_to(ident):
            return False
        table = _quoted(name, self.dialect)
        if schema:
            table = f"{_quoted(schema, self.dialect)}.{table}"
        text = f"SELECT {_quoted(column, self.dialect)} FROM {table}"
        plan = masker.plan(analyze(text, self.dialect), (column,))
        return plan is not None and plan.masked_columns > 0

    def describe_table(self, ident: Identity, table: str, call: object | None = None) -> ToolResult:
        """A table's columns the identity may read: name, type, nullable,
        default (withheld for masked columns, scanned otherwise), primary key."""
        try:
            schema, name = table_name(table)
        except ValueError as exc:
            return ToolResult.failure("invalid_table_name", str(exc))
        if not self.readable(ident, schema, name):
            return ToolResult.failure(
                "no_such_table",
                f"no table {table!r} this identity may read (list_tables shows the tables "
                "you may query)",
                suggestion="list_tables shows the tables you may query",
            )
        params: tuple[Any, ...]
        if self.dialect == "sqlite":
            sql = (
                'SELECT info.name, info.type, info."notnull" = 0, info.dflt_value, info.pk > 0 '
                "FROM pragma_table_info(?, ?) AS info ORDER BY info.cid"
            )
            params = (name, schema or "main")
        elif self.dialect == "postgres":
            where_schema = "c.table_schema = %s" if schema else "c.table_schema = current_schema()"
            sql = (
                "SELECT c.column_name, c.data_type, c.is_nullable = 'YES', c.column_default, "
                "EXISTS (SELECT 1 FROM information_schema.table_constraints tc "
                "JOIN information_schema.key_column_usage k "
                "ON k.constraint_schema = tc.constraint_schema "
                "AND k.constraint_name = tc.constraint_name "
                "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = c.table_schema "
                "AND tc.table_name = c.table_name AND k.column_name = c.column_name) "
                f"FROM information_schema.columns c WHERE {where_schema} "
                "AND c.table_name = %s ORDER BY c.ordinal_position"
            )
            params = (schema, name) if schema else (name,)
        elif self.dialect == "mysql":
            where_schema = "table_schema = %s" if schema else "table_schema = DATABASE()"
            sql = (
                "SELECT column_name, column_type, is_nullable = 'YES', column_default, "
                f"column_key = 'PRI' FROM information_schema.columns WHERE {where_schema} "
                "AND table_name = %s ORDER BY ordinal_position"
            )
            params = (schema, name) if schema else (name,)
        else:
            return ToolResult.failure(
                "unsupported", f"describe_table does not know {self.dialect!r}"
            )
        masker = self.policy.masker
        scan = masker is not None and masker.applies_to(ident)

        def shape(cur: Any, rows: Iterator[Any]) -> ToolResult:
            columns: list[dict[str, Any]] = []
            hidden = 0
            for r in rows:
                column = str(r[0])
                if not self.readable(ident, schema, name, _quoted(column, self.dialect)):
                    hidden += 1
                    continue
                default = _jsonable(r[3])
                if default is not None and self._masked_column(ident, schema, name, column):
                    default = "(withheld: the column is masked)"
                elif scan and isinstance(default, str):
                    default = _ERROR_SCANNER.scan(default)[0]
                columns.append(
                    {
                        "name": column,
                        "type": _jsonable(r[1]),
                        "nullable": bool(r[2]),
                        "default": default,
                        "primary_key": bool(r[4]),
                    }
                )
            if not columns:
                return ToolResult.failure(
                    "no_such_table",
                    f"no table {table!r} (list_tables shows the tables there are)",
                )
            payload: dict[str, Any] = {"table": table, "columns": columns}
            if hidden:
                payload["note"] = "columns this identity may not read are not listed"
            return ToolResult(payload)

        return self._guarded(ident, sql, params, shape, call)

    def approval(self, request_id: str) -> ApprovalRequest | None:
        """The request as the approval store has it now."""
        return None if self.store is None else self.store.get(request_id)

    def run_approved(
        self,
        request_id: str,
        request: ApprovalRequest,
        current: Identity | None = None,
        call: object | None = None,
    ) -> ToolResult:
        """Re-issue a held statement exactly, under its identity: the guard
        redeems the approval (once) and runs it. ``current`` is who calls
        now (the token read again): a statement held for someone else never
        runs under the old identity."""
        held = self.held[request_id]
        if current is not None and _principal(current) != _principal(held.identity):
            return ToolResult.failure(
                "identity_changed",
                f"request {request_id} was held for another identity than the one this server "
                "now runs as (its token was replaced): the approved statement was not run",
                suggestion="send the statement again to ask for approval as the current identity",
            )
        self.held.pop(request_id)
        result = self._guarded(held.identity, held.sql, held.params, self._rows, call)
        if not result.error and result.payload.get("status") == "ok":
            result.payload["approval"] = {"request_id": request_id, "by": request.approver}
        return result

    def approval_outcome(
        self, request_id: str, current: Identity | None = None, call: object | None = None
    ) -> ToolResult | None:
        """What ``wait_for_approval`` answers now, or None to keep waiting.

        Under the lock, so two waits for one request cannot both run it (the
        store would refuse the second use anyway).
        """
        with self._lock:
            return self._decided(request_id, current, call)

    def _decided(
        self, request_id: str, current: Identity | None, call: object | None
    ) -> ToolResult | None:
        if request_id not in self.held:
            return ToolResult.failure(
                "unknown_request",
                f"unknown request {request_id!r}: wait_for_approval only runs statements this "
                "server held (send the query to get a request id)",
            )
        request = self.approval(request_id)
        if request is None:
            self.held.pop(request_id, None)
            return ToolResult.failure(
                "unknown_request", f"request {request_id!r} is not in the approval store"
            )
        if request.status == "approved":
            return self.run_approved(request_id, request, current, call)
        if request.status == "denied":
            self.held.pop(request_id, None)
            by = request.approver or "an approver"
            note = f": {request.note}" if request.note else ""
            return ToolResult.failure(
                "denied",
                f"request {request_id} was denied by {by}{note}",
                approver=request.approver,
            )
        if request.status == "used":
            self.held.pop(request_id, None)
            return ToolResult.failure(
                "used",
                f"request {request_id} was already used: its statement ran once; "
                "send it again to ask for a new approval",
            )
        if request.status == "superseded":
            self.held.pop(request_id, None)
            return ToolResult.failure(
                "superseded",
                f"request {request_id} was not used: its statement would now touch more rows "
                "than the approver was shown; send it again to ask for a new approval",
            )
        if _expired(request):
            self.held.pop(request_id, None)
            return ToolResult.failure(
                "expired", f"request {request_id} expired before anyone approved it"
            )
        return None

    # -- plumbing ----------------------------------------------------------

    def _streams(self, sql: str, converted: bool) -> bool:
        """Whether the statement is a plain read whose rows can be streamed
        (psycopg ``stream()``, PyMySQL's unbuffered cursor) and stopped early;
        ``converted``: it runs with parameters (``sql/pyformat.py``)."""
        analysis = analyze(sql, self.dialect, converted)
        return (
            len(analysis.statements) == 1
            and analysis.kinds == frozenset({"select"})
            and analysis.classes == frozenset({"read"})
            and not analysis.unparsed
        )

    def _execute(self, sql: str, params: tuple[Any, ...] | None) -> tuple[Any, Iterator[Any]]:
        """Run the statement: the guarded cursor and its rows, read lazily in batches."""
        stream = self._streams(sql, params is not None)
        if stream and self.driver.module == "pymysql":
            import pymysql.cursors

            cur = self.conn.cursor(pymysql.cursors.SSCursor)
        else:
            cur = self.conn.cursor()
        if stream and self.driver.module == "psycopg":
            args: tuple[Any, ...] = () if params is None else (params,)
            rows = cur.stream(sql, *args, size=BATCH_ROWS)
            first = next(rows, _END)  # runs the statement: refusals and errors come here
            return cur, _chained(first, rows)
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        return cur, (batches(cur) if cur.description else iter(()))

    def _guarded(
        self,
        ident: Identity,
        sql: str,
        params: tuple[Any, ...] | None,
        shape: Callable[[Any, Iterator[Any]], ToolResult],
        call: object | None = None,
    ) -> ToolResult:
        """Run ``sql`` as ``ident`` in a transaction of its own, within the
        call's deadline, and turn what happened (rows, a refusal, a hold, a
        driver error, a timeout) into a result. Nothing the statement holds
        (a transaction, a lock) outlives the call."""
        call = object() if call is None else call
        with self._lock, guardeddb.identity(ident):
            if not self._start(call):
                return ToolResult.failure("cancelled", "the call was cancelled before it ran")
            deadline = self.timeout + _GRACE_SECONDS
            watchdog = threading.Timer(deadline, self.cancel, (call, "timeout"))
            watchdog.daemon = True
            watchdog.start()
            cur = None
            rows: Iterator[Any] = iter(())
            try:
                if self._lost():
                    # A fresh connection; the statement that met the lost one
                    # is never retried (it may have been half done).
                    self.conn.close()
                    self.conn = self._connect()
                    self.canceller.attach(self.conn.__wrapped__)
                cur, rows = self._execute(sql, params)
                result = shape(cur, rows)
                truncated = result.payload.get("truncated")
                early = isinstance(truncated, dict) and (truncated["rows"] or truncated["bytes"])
                if early and self.driver.module == "pymysql":
                    self.canceller.cancel()  # else closing the cursor reads every row left
                _close(rows, cur)
                cur = None
                if early:
                    self._rollback()  # a read stopped on the server: nothing to keep
                else:
                    self.conn.commit()
                return result
            except ApprovalRequired as exc:
                self._rollback()
                self.held[exc.request_id] = _Held(sql, params, ident)
                return self.pending(exc.request_id, exc.decision.rule_id, exc.decision.message)
            except QueryBlocked as exc:
                self._rollback()
                if exc.decision.rule_id == "limits":  # SQLite's progress handler
                    return self._stopped("timeout")
                return self._refusal(exc.decision)
            except MaskingError as exc:
                self._rollback()
                return ToolResult.failure("masking_refused", f"result refused: {exc}")
            except Exception as exc:
                self._rollback()
                if isinstance(exc, self.driver_error):
                    why = self._stop()
                    if why is not None or timeout_error(self.driver, exc):
                        return self._stopped(why or "timeout")
                    return self._database_error(exc, ident)
                _log.exception("guardeddb mcp: unexpected error")
                return ToolResult.failure(
                    "internal_error",
                    f"internal error in the guardeddb MCP server ({type(exc).__name__}); "
                    "the server's log has the details",
                )
            finally:
                watchdog.cancel()
                if cur is not None:
                    _close(rows, cur)
                self._stop()
                self._release()

    def _stopped(self, why: str) -> ToolResult:
        """A statement stopped on the server: by its deadline, or a cancel."""
        if why == "timeout":
            return ToolResult.failure(
                "timeout",
                f"the statement ran longer than {self.timeout:g}s and was stopped on the server "
                "(its transaction was rolled back)",
                suggestion=(
                    "narrow the query: a WHERE on an indexed column, fewer joined rows, a LIMIT, "
                    "or an aggregate instead of every row"
                ),
            )
        return ToolResult.failure(
            "cancelled", "the statement was cancelled on the server and rolled back"
        )

    def _release(self) -> None:
        """Session-level locks never outlive a call (advisory and named locks)."""
        if self._lost():
            return
        try:
            release_session_state(self.driver, self.conn.__wrapped__, self.conn._self_guard)
        except Exception:  # the connection is gone; the next call reconnects
            _log.warning("guardeddb mcp: could not release session locks", exc_info=True)

    def _rows(self, cur: Any, rows: Iterator[Any]) -> ToolResult:
        desc = cur.description
        if not desc:
            count = cur.rowcount
            return ToolResult({"status": "ok", "rowcount": count if count >= 0 else None})
        got = collect(rows, self.budget, _jsonable)
        return ToolResult(
            {
                "status": "ok",
                "columns": [str(d[0]) for d in desc],
                "rows": got.rows,
                "row_count": len(got.rows),
                "truncated": got.truncation(self.budget),
            }
        )

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:  # the connection itself is gone; the next call will say so
            _log.warning("guardeddb mcp: rollback failed", exc_info=True)

    def _database_error(self, exc: BaseException, ident: Identity) -> ToolResult:
        """The driver's own message, without a traceback, masked like rows
        would be: withheld for an identity whose results are masked (a
        streamed result's errors reach here as the driver raised them)."""
        masking = self.policy.masker
        masked = masking is not None and masking.applies_to(ident)
        if masked:  # idempotent on an error the guard already withheld
            exc = withheld(exc, self.driver.status_code(exc)) or exc
        diag = getattr(exc, "diag", None)  # psycopg: the primary message, not DETAIL/CONTEXT
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
        if diag is not None and getattr(diag, "message_primary", None):
            message = str(diag.message_primary)
        elif len(args) == 2 and isinstance(args[0], int):  # PyMySQL: (errno, message)
            message = str(args[1])
        else:
            message = str(exc)
        if masked:
            message = _ERROR_SCANNER.scan(message)[0]
        code = self.driver.status_code(exc)
        return ToolResult.failure(
            "database_error",
            f"database error{f' ({code})' if code else ''}: {message} "
            "(the transaction was rolled back)",
            code=code,
        )

    def _refusal(self, decision: Decision) -> ToolResult:
        """A refused query as what a model can act on: the rule, why, and
        what would be allowed instead."""
        rule = decision.rule_id
        why = _mcp_advice.reason(decision)
        if decision.action == "review":
            return ToolResult.failure(
                "blocked",
                f"held for review by rule {rule!r}: {why} (this server has no approval store, "
                "so a held statement cannot run)",
                rule=rule,
                reason=why,
                suggestion=(
                    "ask a person to run it, or to configure approvals.store so that held "
                    "statements can be approved"
                ),
            )
        who = f"rule {rule!r}" if rule else "the policy's default action"
        return ToolResult.failure(
            "blocked",
            f"blocked by {who}: {why}",
            rule=rule,
            reason=why,
            suggestion=_mcp_advice.suggestion(decision, self.policy),
        )

    def pending(
        self, request_id: str, rule: str | None = None, reason: str | None = None
    ) -> ToolResult:
        """A held statement's result: its request, its measured impact, what to do."""
        request = self.approval(request_id)
        if request is not None:
            rule, reason = rule or request.rule, reason or request.reason
        policy = self.settings.policy
        where = (
            f"--policy {os.path.abspath(policy)} "
            if policy and not is_preset_name(policy) and os.path.exists(policy)
            else "--policy POLICY.yaml "
        )
        return ToolResult(
            {
                "status": "pending_approval",
                "request_id": request_id,
                "rule": rule,
                "reason": reason,
                "impact_rows": request.impact if request is not None else None,
                "expires": request.expires if request is not None else None,
                "instructions": (
                    f"This statement is held until a person approves it. Ask them to run "
                    f"`guardeddb approvals {where}approve {request_id}` (or `deny`), then call "
                    f"wait_for_approval with request_id {request_id!r}: it runs the approved "
                    "statement once and returns its result. Do not send the statement again."
                ),
            }
        )


_END = object()


def _chained(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """``first`` then ``rest``; closing it closes ``rest`` (psycopg then
    cancels the rest of a stream on the server)."""
    if first is _END:
        return
    yield first
    yield from rest


def _close(rows: Iterator[Any], cur: Any) -> None:
    """Close a result's row iterator and its cursor; a broken connection's
    errors are the next call's to report."""
    for step in (getattr(rows, "close", None), cur.close):
        if step is None:
            continue
        try:
            step()
        except Exception:
            _log.debug("guardeddb mcp: closing a result failed", exc_info=True)


def _quoted(name: str, dialect: str) -> str:
    """An identifier as the dialect quotes it (for the policy's judgment of a
    catalog name, never for a statement sent to the database)."""
    if _IDENTIFIER.fullmatch(name):
        return name
    if dialect == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _principal(ident: Identity) -> tuple[Any, ...]:
    """Who an identity is, whatever token carried it (a refreshed token of
    the same subject is the same principal; another subject is not)."""
    return (ident.user, ident.agent, ident.roles, getattr(ident, "verified", False))


def _expired(request: ApprovalRequest) -> bool:
    try:
        expires = datetime.datetime.fromisoformat(request.expires)
    except (TypeError, ValueError):
        return True  # an expiry that cannot be read is no promise of time left
    return expires <= datetime.datetime.now(datetime.UTC)


def token_identity(args: argparse.Namespace) -> Callable[[], Identity] | None:
    """A verified identity from ``--token-file``/``--token-env`` and ``--jwks``.

    The token is read and verified on every call, so a token file a sidecar
    refreshes is picked up and an expired token is refused; the first check
    happens at start, so a wrong setup fails before the agent connects.
    """
    if not (args.token_file or args.token_env):
        if args.jwks:
            raise ValueError("--jwks needs --token-file or --token-env")
        return None
    if not args.jwks:
        raise ValueError("--token-file/--token-env need --jwks (and --issuer, --audience)")

    def read() -> str:
        if args.token_file:
            with open(args.token_file, encoding="utf-8") as f:
                return f.read().strip()
        return os.environ.get(args.token_env, "").strip()

    def verify() -> Identity:
        return Identity.from_jwt(
            read(),
            jwks=args.jwks,
            issuer=args.issuer,
            audience=args.audience,
            roles_claim=args.roles_claim,
            agent_claim=args.agent_claim,
        )

    verify()
    return verify


def settings_from_args(args: argparse.Namespace) -> McpSettings:
    """The CLI's options as settings."""
    roles = frozenset(r.strip() for r in (args.roles or "").split(",") if r.strip())
    return McpSettings(
        dsn=args.dsn,
        policy=args.policy,
        user=args.user,
        agent=args.agent,
        roles=roles,
        max_rows=args.max_rows,
        statement_timeout=args.statement_timeout,
        max_bytes=args.max_bytes,
        max_cell_bytes=args.max_cell_bytes,
        approvals_wait=args.approvals_wait,
        token_identity=token_identity(args),
    )


def run(args: argparse.Namespace) -> int:
    """``guardeddb mcp``: serve the tools over stdio until the client leaves."""
    if (
        args.max_rows < 1
        or args.approvals_wait < 0
        or args.max_bytes < 1024
        or args.max_cell_bytes < 64
        or (args.statement_timeout is not None and not 0 < args.statement_timeout < 86400)
    ):
        print(
            "error: --max-rows must be at least 1, --approvals-wait at least 0, --max-bytes at "
            "least 1024, --max-cell-bytes at least 64, --statement-timeout between 0 and 86400",
            file=sys.stderr,
        )
        return 2
    try:
        import mcp  # noqa: F401
    except ImportError:
        print(
            "error: guardeddb mcp needs the MCP SDK: pip install 'guardeddb[mcp]'", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    shutdown = _export_traces()
    try:
        try:
            tools = GuardedTools(settings_from_args(args))
        except Exception as exc:  # a bad policy, an unreachable database: say which, briefly
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            serve(tools)
        finally:
            tools.close()
    finally:
        shutdown()
    return 0


def _export_traces() -> Callable[[], None]:
    """Export spans over OTLP when the standard ``OTEL_EXPORTER_OTLP_*``
    variables ask for it; returns what flushes them at exit.

    The SDK's ``tools/call`` span (continuing the client's trace when its
    request carries one) is then the parent of guardeddb's query spans: one
    trace per tool call.
    """
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return lambda: None
    try:
        from ..otlp import configure
    except ImportError:
        print(
            "warning: OTEL_EXPORTER_OTLP_* is set but the OpenTelemetry SDK is not installed "
            "(pip install 'guardeddb[otlp]'); no spans are exported",
            file=sys.stderr,
        )
        return lambda: None
    providers = configure(
        default_service_name="guardeddb-mcp", metrics_export=False, set_global=True
    )
    return providers.shutdown


def serve(tools: GuardedTools) -> None:
    """Serve ``tools`` over this process's stdin and stdout until stdin ends
    or a SIGTERM/SIGINT: either way the running statement is cancelled on
    the server before the process exits."""
    import signal

    import anyio
    import mcp.types as types
    from mcp.server.stdio import stdio_server
    from mcp.shared.message import SessionMessage

    from ._mcp_wire import StdinLines

    server = build_server(tools)

    async def main() -> None:
        lines = StdinLines()
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tools.cancel_all()
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(on_signal)
            async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]

                async def refuse() -> None:
                    async for code, message, rid in lines.errors:
                        error = types.JSONRPCError(
                            jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message)
                        )
                        try:
                            await write_stream.send(SessionMessage(error))
                        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                            return

                tg.start_soon(refuse)
                await server.run(read_stream, write_stream, server.create_initialization_options())
            tools.cancel_all()  # stdin ended: stop what still runs
            tg.cancel_scope.cancel()

    anyio.run(main)


def _client_name(ctx: Any) -> str | None:
    """``clientInfo.name`` from the initialize request (or the request envelope)."""
    params = getattr(getattr(ctx, "session", None), "client_params", None)
    info = getattr(params, "client_info", None)
    name = getattr(info, "name", None)
    return name if isinstance(name, str) and name else None


class _BadArguments(ValueError):
    """Arguments that do not fit a tool's input schema."""


def _string(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _BadArguments(f"{key} must be a non-empty string")
    return value


_SCALARS = (str, int, float, bool, type(None))


def _params(args: Mapping[str, Any], dialect: str) -> list[Any] | None:
    """The statement's values: scalars (arrays of scalars on PostgreSQL).
    An object is refused here, with what to send instead, rather than
    reaching a driver that would fail on it."""
    value = args.get("params")
    if value is None:
        return None
    if not isinstance(value, list):
        raise _BadArguments("params must be an array of values (or null)")
    for i, item in enumerate(value):
        if isinstance(item, _SCALARS):
            continue
        if (
            dialect == "postgres"
            and isinstance(item, list)
            and all(isinstance(v, _SCALARS) for v in item)
        ):
            continue
        kind = "an object" if isinstance(item, dict) else "an array"
        raise _BadArguments(
            f"params[{i}] is {kind}: each value must be a string, number, boolean or null "
            "(pass JSON as a string, e.g. json.dumps of it)"
        )
    return value


def _timeout(args: Mapping[str, Any], default: float) -> float:
    value = args.get("timeout_seconds", default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _BadArguments("timeout_seconds must be a number of seconds")
    return min(max(float(value), 0.0), MAX_WAIT_SECONDS)


def build_server(tools: GuardedTools) -> Server[Any]:
    """The MCP server (the SDK's low-level ``Server``) for ``tools``."""
    import anyio
    import anyio.to_thread
    import mcp.types as types
    from mcp.server import Server, ServerRequestContext
    from mcp.shared.exceptions import MCPError

    mark = tools.placeholder
    b = tools.budget
    ident_text = (
        "a verified identity"
        if tools.settings.token_identity is not None
        else f"user {tools.settings.user or '(none)'}"
    )
    read_only = types.ToolAnnotations(read_only_hint=True, destructive_hint=False)
    tool_list = [
        types.Tool(
            name="query",
            description=(
                f"Run one SQL statement ({tools.driver.system}) through guardeddb. Pass values "
                f"as params with {mark} placeholders, never inside the SQL text. Returns columns "
                f"and rows (at most {b.rows} rows and {b.result_bytes} bytes, cells cut at "
                f"{b.cell_bytes} bytes; `truncated` says what was cut; sensitive values come back "
                f"masked) or the rowcount of a write. Each call may run {tools.timeout:g}s at "
                "most (status timeout). A refused statement is an error naming the policy rule, "
                "why, and a suggestion of what would be allowed; a statement held for "
                "human approval returns status pending_approval and a request_id to pass to "
                "wait_for_approval."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "sql": {"type": "string", "description": "one SQL statement"},
                    "params": {
                        "type": ["array", "null"],
                        "description": f"values for the {mark} placeholders, in order",
                    },
                },
                "required": ["sql"],
                "additionalProperties": False,
            },
            annotations=types.ToolAnnotations(destructive_hint=True, open_world_hint=False),
        ),
        types.Tool(
            name="list_tables",
            description="List the tables and views of the database this identity may read.",
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            annotations=read_only,
        ),
        types.Tool(
            name="describe_table",
            description=(
                "Describe one table's columns: name, type, nullable, default, primary key."
            ),
            input_schema={
                "type": "object",
                "properties": {"table": {"type": "string", "description": "table or schema.table"}},
                "required": ["table"],
                "additionalProperties": False,
            },
            annotations=read_only,
        ),
        types.Tool(
            name="wait_for_approval",
            description=(
                "Wait until a person approves or denies a held statement (request_id from "
                "query). When approved, the statement runs exactly once and its result comes "
                "back; when denied, an error says by whom. Still pending at the timeout: call "
                "again."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "request_id": {"type": "string"},
                    "timeout_seconds": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_WAIT_SECONDS,
                        "description": f"default {tools.settings.approvals_wait:g}",
                    },
                },
                "required": ["request_id"],
                "additionalProperties": False,
            },
        ),
    ]

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tool_list)

    schemas = {t.name: t.input_schema for t in tool_list}

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        """Run one database call in a worker thread; when the MCP call is
        cancelled (notifications/cancelled, stdin closed, a signal), its
        statement is cancelled on the server and the thread left to roll back."""
        call = object()
        done = threading.Event()

        def work() -> Any:
            try:
                return fn(*args, call=call)
            finally:
                done.set()

        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            if not done.is_set():  # else nothing is left to stop (and nothing to remember)
                tools.cancel(call)
            raise

    async def wait(ident: Identity, request_id: str, timeout: float) -> ToolResult:
        """Poll the approval store, backing off from _POLL_SECONDS to _POLL_MAX;
        at most MAX_WAITERS waits per identity at once."""
        who = _principal(ident)
        if tools.waiters.get(who, 0) >= MAX_WAITERS:
            return ToolResult.failure(
                "too_many_waiters",
                f"at most {MAX_WAITERS} wait_for_approval calls may wait at once",
                suggestion="wait for one of the pending waits to return, then call again",
            )
        tools.waiters[who] = tools.waiters.get(who, 0) + 1
        try:
            deadline = time.monotonic() + timeout
            pause = _POLL_SECONDS
            while True:
                outcome: ToolResult | None = await in_thread(
                    tools.approval_outcome, request_id, ident
                )
                if outcome is not None:
                    return outcome
                left = deadline - time.monotonic()
                if left <= 0:
                    result = await anyio.to_thread.run_sync(tools.pending, request_id)
                    result.payload["waited_seconds"] = timeout
                    return result
                await anyio.sleep(min(pause, left))
                pause = min(pause * 2, _POLL_MAX)
        finally:
            tools.waiters[who] -= 1
            if not tools.waiters[who]:
                del tools.waiters[who]

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        args = params.arguments or {}
        schema = schemas.get(params.name)
        if schema is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        unknown = sorted(set(args) - set(schema["properties"]))
        if unknown:
            allowed = ", ".join(schema["properties"]) or "none"
            raise MCPError(
                types.INVALID_PARAMS,
                f"{params.name}: unknown argument(s) {', '.join(map(repr, unknown))[:200]} "
                f"(arguments: {allowed})",
            )
        try:
            ident = tools.identity_for(_client_name(ctx))
            if params.name == "query":
                sql, values = _string(args, "sql"), _params(args, tools.dialect)
                result = await in_thread(tools.query, ident, sql, values)
            elif params.name == "list_tables":
                result = await in_thread(tools.list_tables, ident)
            elif params.name == "describe_table":
                result = await in_thread(tools.describe_table, ident, _string(args, "table"))
            else:
                timeout = _timeout(args, tools.settings.approvals_wait)
                result = await wait(ident, _string(args, "request_id"), timeout)
        except _BadArguments as exc:
            result = ToolResult.failure("invalid_arguments", f"{params.name}: {exc}")
        except guardeddb.IdentityError as exc:  # the server's token expired or was replaced
            result = ToolResult.failure("identity_refused", f"identity token refused: {exc}")
        except Exception:  # a bug here must not hand the model a traceback
            _log.exception("guardeddb mcp: tool %s failed", params.name)
            result = ToolResult.failure(
                "internal_error", f"internal error in the guardeddb MCP server ({params.name})"
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=result.text)],
            structured_content=result.payload,
            is_error=result.error,
        )

    return Server(
        "guardeddb",
        version=guardeddb.__version__,
        instructions=(
            f"Every statement runs through guardeddb as {ident_text}: a policy may refuse it "
            "(the error names the rule: change the statement, do not retry it as is), hold it "
            "for a person's approval (status pending_approval: call wait_for_approval), and "
            "sensitive values come back masked. Each tool call is its own transaction."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
