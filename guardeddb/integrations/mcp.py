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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import guardeddb

from .. import drivers
from ..approvals import ApprovalRequest, ApprovalStore, parse_ttl
from ..errors import ApprovalRequired, QueryBlocked
from ..identity import Identity
from ..masking import DETECTORS, MaskingError, Scanner
from ..policy import Policy, load_policy
from ..policy.loader import is_preset_name

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
_POLL_SECONDS = 0.25
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
        """What goes in the result's text content: the message, or the payload as JSON."""
        if self.error:
            return str(self.payload.get("message", "error"))
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


class GuardedTools:
    """The tools' work, synchronous and transport-free: one guarded
    connection, one call at a time, each call its own transaction."""

    def __init__(self, settings: McpSettings) -> None:
        self.settings = settings
        self.policy = _policy(settings.policy)
        self.conn = self._connect()
        self.driver = drivers.detect(self.conn.__wrapped__)
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
        """Close the connection (and with it the audit sink)."""
        with self._lock:
            self.conn.close()

    def identity_for(self, client_name: str | None) -> Identity:
        """Who runs this call: the verified identity, else the configured user
        and roles with ``--agent`` or the MCP client's own name."""
        s = self.settings
        if s.token_identity is not None:
            return s.token_identity()  # guardeddb.IdentityError when no longer valid
        return Identity(user=s.user, agent=s.agent or client_name or UNNAMED_AGENT, roles=s.roles)

    # -- the tools ---------------------------------------------------------

    def query(self, ident: Identity, sql: str, params: Sequence[Any] | None = None) -> ToolResult:
        """Run one statement; rows (masked) up to max-rows, or the rowcount."""
        bound = None if params is None else tuple(params)
        return self._guarded(ident, sql, bound, self._rows)

    def list_tables(self, ident: Identity) -> ToolResult:
        """The tables and views this identity's policy lets it list."""
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

        def shape(cur: Any) -> ToolResult:
            rows = cur.fetchmany(MAX_TABLES + 1)
            tables = [
                {
                    "schema": _jsonable(r[0]),
                    "name": _jsonable(r[1]),
                    "type": "view" if "view" in str(r[2]).lower() else "table",
                }
                for r in rows[:MAX_TABLES]
            ]
            return ToolResult({"tables": tables, "truncated": len(rows) > MAX_TABLES})

        return self._guarded(ident, sql, None, shape)

    def describe_table(self, ident: Identity, table: str) -> ToolResult:
        """A table's columns: name, type, nullable, default, primary key."""
        try:
            schema, name = table_name(table)
        except ValueError as exc:
            return ToolResult.failure("invalid_table_name", str(exc))
        params: tuple[Any, ...]
        if self.dialect == "sqlite":
            sql = (
                'SELECT name, type, "notnull" = 0, dflt_value, pk > 0 '
                "FROM pragma_table_info(?, ?) ORDER BY cid"
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

        def shape(cur: Any) -> ToolResult:
            columns = [
                {
                    "name": _jsonable(r[0]),
                    "type": _jsonable(r[1]),
                    "nullable": bool(r[2]),
                    "default": _jsonable(r[3]),
                    "primary_key": bool(r[4]),
                }
                for r in cur.fetchall()
            ]
            if not columns:
                return ToolResult.failure(
                    "no_such_table",
                    f"no table {table!r} (list_tables shows the tables there are)",
                )
            return ToolResult({"table": table, "columns": columns})

        return self._guarded(ident, sql, params, shape)

    def approval(self, request_id: str) -> ApprovalRequest | None:
        """The request as the approval store has it now."""
        return None if self.store is None else self.store.get(request_id)

    def run_approved(self, request_id: str, request: ApprovalRequest) -> ToolResult:
        """Re-issue a held statement exactly, under its identity: the guard
        redeems the approval (once) and runs it."""
        held = self.held.pop(request_id)
        result = self._guarded(held.identity, held.sql, held.params, self._rows)
        if not result.error and result.payload.get("status") == "ok":
            result.payload["approval"] = {"request_id": request_id, "by": request.approver}
        return result

    def approval_outcome(self, request_id: str) -> ToolResult | None:
        """What ``wait_for_approval`` answers now, or None to keep waiting.

        Under the lock, so two waits for one request cannot both run it (the
        store would refuse the second use anyway).
        """
        with self._lock:
            return self._decided(request_id)

    def _decided(self, request_id: str) -> ToolResult | None:
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
            return self.run_approved(request_id, request)
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
        if _expired(request):
            self.held.pop(request_id, None)
            return ToolResult.failure(
                "expired", f"request {request_id} expired before anyone approved it"
            )
        return None

    # -- plumbing ----------------------------------------------------------

    def _guarded(
        self,
        ident: Identity,
        sql: str,
        params: tuple[Any, ...] | None,
        shape: Callable[[Any], ToolResult],
    ) -> ToolResult:
        """Run ``sql`` as ``ident`` in a transaction of its own, and turn
        what happened (rows, a refusal, a hold, a driver error) into a result."""
        with self._lock, guardeddb.identity(ident):
            cur = None
            try:
                if self._lost():
                    # A fresh connection; the statement that met the lost one
                    # is never retried (it may have been half done).
                    self.conn.close()
                    self.conn = self._connect()
                cur = self.conn.cursor()
                if params is None:
                    cur.execute(sql)
                else:
                    cur.execute(sql, params)
                result = shape(cur)
                cur.close()
                self.conn.commit()
                return result
            except ApprovalRequired as exc:
                self._rollback()
                self.held[exc.request_id] = _Held(sql, params, ident)
                return self.pending(exc.request_id, exc.decision.rule_id, exc.decision.message)
            except QueryBlocked as exc:
                self._rollback()
                return _refusal(exc)
            except MaskingError as exc:
                self._rollback()
                return ToolResult.failure("masking_refused", f"result refused: {exc}")
            except Exception as exc:
                self._rollback()
                if isinstance(exc, self.driver_error):
                    return self._database_error(exc, ident)
                _log.exception("guardeddb mcp: unexpected error")
                return ToolResult.failure(
                    "internal_error",
                    f"internal error in the guardeddb MCP server ({type(exc).__name__}); "
                    "the server's log has the details",
                )
            finally:
                if cur is not None:
                    try:
                        cur.close()
                    except Exception:  # a cursor of a broken connection
                        _log.debug("guardeddb mcp: cursor close failed", exc_info=True)

    def _rows(self, cur: Any) -> ToolResult:
        desc = cur.description
        if not desc:
            count = cur.rowcount
            return ToolResult({"status": "ok", "rowcount": count if count >= 0 else None})
        limit = self.settings.max_rows
        rows = cur.fetchmany(limit + 1)
        return ToolResult(
            {
                "status": "ok",
                "columns": [str(d[0]) for d in desc],
                "rows": [[_jsonable(v) for v in row] for row in rows[:limit]],
                "row_count": min(len(rows), limit),
                "truncated": len(rows) > limit,
            }
        )

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:  # the connection itself is gone; the next call will say so
            _log.warning("guardeddb mcp: rollback failed", exc_info=True)

    def _database_error(self, exc: BaseException, ident: Identity) -> ToolResult:
        """The driver's own message, without a traceback, masked like rows would be."""
        diag = getattr(exc, "diag", None)  # psycopg: the primary message, not DETAIL/CONTEXT
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
        if diag is not None and getattr(diag, "message_primary", None):
            message = str(diag.message_primary)
        elif len(args) == 2 and isinstance(args[0], int):  # PyMySQL: (errno, message)
            message = str(args[1])
        else:
            message = str(exc)
        masking = self.policy.masker
        if masking is not None and masking.applies_to(ident):
            message = _ERROR_SCANNER.scan(message)[0]
        code = self.driver.status_code(exc)
        return ToolResult.failure(
            "database_error",
            f"database error{f' ({code})' if code else ''}: {message} "
            "(the transaction was rolled back)",
            code=code,
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


def _refusal(exc: QueryBlocked) -> ToolResult:
    """A refused query as the sentence a model can act on: which rule, and why."""
    decision = exc.decision
    rule = decision.rule_id
    why = decision.message or str(exc)
    if decision.action == "review":
        return ToolResult.failure(
            "blocked",
            f"held for review by rule {rule!r}: {why} (this server has no approval store, "
            "so a held statement cannot run)",
            rule=rule,
        )
    who = f"rule {rule!r}" if rule else "the policy's default action"
    return ToolResult.failure("blocked", f"blocked by {who}: {why}", rule=rule, reason=why)


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
        approvals_wait=args.approvals_wait,
        token_identity=token_identity(args),
    )


def run(args: argparse.Namespace) -> int:
    """``guardeddb mcp``: serve the tools over stdio until the client leaves."""
    if args.max_rows < 1 or args.approvals_wait < 0:
        print("error: --max-rows must be at least 1, --approvals-wait at least 0", file=sys.stderr)
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
    """Serve ``tools`` over this process's stdin and stdout."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = build_server(tools)

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

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


def _params(args: Mapping[str, Any]) -> list[Any] | None:
    value = args.get("params")
    if value is not None and not isinstance(value, list):
        raise _BadArguments("params must be an array of values (or null)")
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
                f"and rows (at most {tools.settings.max_rows}; `truncated` says when there were "
                "more; sensitive values come back masked) or the rowcount of a write. A refused "
                "statement is an error naming the policy rule and why; a statement held for "
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
            description="List the tables and views of the database.",
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

    async def wait(request_id: str, timeout: float) -> ToolResult:
        deadline = time.monotonic() + timeout
        while True:
            outcome = await anyio.to_thread.run_sync(tools.approval_outcome, request_id)
            if outcome is not None:
                return outcome
            left = deadline - time.monotonic()
            if left <= 0:
                result = await anyio.to_thread.run_sync(tools.pending, request_id)
                result.payload["waited_seconds"] = timeout
                return result
            await anyio.sleep(min(_POLL_SECONDS, left))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        args = params.arguments or {}
        try:
            ident = tools.identity_for(_client_name(ctx))
            if params.name == "query":
                result = await anyio.to_thread.run_sync(
                    tools.query, ident, _string(args, "sql"), _params(args)
                )
            elif params.name == "list_tables":
                result = await anyio.to_thread.run_sync(tools.list_tables, ident)
            elif params.name == "describe_table":
                result = await anyio.to_thread.run_sync(
                    tools.describe_table, ident, _string(args, "table")
                )
            elif params.name == "wait_for_approval":
                timeout = _timeout(args, tools.settings.approvals_wait)
                result = await wait(_string(args, "request_id"), timeout)
            else:
                raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        except _BadArguments as exc:
            result = ToolResult.failure("invalid_arguments", f"{params.name}: {exc}")
        except guardeddb.IdentityError as exc:  # the server's token expired or was replaced
            result = ToolResult.failure("identity_refused", f"identity token refused: {exc}")
        except MCPError:
            raise
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
