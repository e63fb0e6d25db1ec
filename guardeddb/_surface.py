"""The public surface of the guarded proxies: an allowlist per driver class.

Trust boundary. guardeddb defends against what arrives as *data*: SQL text,
its parameters, the rows it returns, and calls to the public driver API made
on a guarded connection or cursor (an agent's tool may hand that object to
code it does not control). It does not defend against in-process Python code
that steps outside the public API: underscore attributes (``__wrapped__``,
``_self_*``, a driver's private fields) and monkeypatching are trusted, as is
anything done to the raw connection before it was wrapped.

Every public attribute of every proxied driver class is in one of these tables:

- ``forward``: harmless reads (``description``, ``rowcount``, ``closed``...);
  the value is the driver's own.
- ``settable``: forwarded, and may also be assigned (``autocommit``, ``arraysize``).
- ``guard``: runs SQL or reaches data; the proxy class implements it through
  the guard (``execute``, ``copy``, ``stream``, ``callproc``...). A ``guard``
  name the proxy has no method for is refused.
- ``refuse``: changes the session or returns raw results around the guard
  (psycopg ``pgconn``/``pgresult``, PyMySQL ``kill``/``show_warnings``...).

Assignments follow the same table: a ``settable`` name is assigned on the
driver object, a ``forward`` or ``refuse`` one is refused (the composed proxy
class carries a property per classified name, see ``descriptors``).

A public name in no table is refused too, with an error naming it: a driver
release that adds an attribute gets it reviewed before it is handed out
(``tests/test_surface.py`` fails on it). Refusals raise
``guardeddb.AttributeRefused``, a ``guardeddb.Error`` that is also an
``AttributeError``: ``hasattr`` answers False, so libraries that probe for a
feature take their fallback instead of crashing.

The second half of the module judges the statement the server receives when
a driver interpolates parameters client-side (PyMySQL, psycopg's
``ClientCursor``): see ``placement``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from .errors import AttributeRefused
from .identity import _current
from .policy.decision import Decision

if TYPE_CHECKING:
    from ._pipeline import Guard
    from .sql.analysis import Analysis

__all__ = [
    "FORWARD",
    "GUARD",
    "REFUSE",
    "SETTABLE",
    "AttributeRefused",
    "mixed_placement",
    "placement",
    "shape",
    "surface_for",
]

FORWARD = "forward"
SETTABLE = "settable"
GUARD = "guard"
REFUSE = "refuse"


def _names(kind: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


# PEP 249 names every driver shares.
_DBAPI_CONNECTION = {
    **_names(FORWARD, "close commit rollback"),
    **_names(GUARD, "cursor"),
    **_names(
        FORWARD,
        "Error Warning InterfaceError DatabaseError DataError OperationalError "
        "IntegrityError InternalError ProgrammingError NotSupportedError",
    ),
}
_DBAPI_CURSOR = {
    **_names(FORWARD, "description rowcount close setinputsizes setoutputsize rownumber"),
    **_names(SETTABLE, "arraysize"),
    **_names(GUARD, "execute executemany fetchone fetchmany fetchall nextset callproc connection"),
}

_SQLITE_CONNECTION = {
    **_DBAPI_CONNECTION,
    **_names(FORWARD, "in_transaction total_changes interrupt getlimit getconfig"),
    **_names(SETTABLE, "isolation_level row_factory autocommit"),
    **_names(
        GUARD,
        # judged as the statement they amount to (connection.py), or shimmed
        # so that a callback never sees a cell while masking applies
        "execute executemany executescript load_extension enable_load_extension blobopen "
        "iterdump backup serialize deserialize create_function create_aggregate "
        "create_window_function create_collation text_factory",
    ),
    # guardeddb's own authorizer and limits live there; a user's would replace them
    **_names(REFUSE, "set_authorizer set_progress_handler setlimit setconfig"),
    # refused while the connection masks (connection.py)
    **_names(GUARD, "set_trace_callback"),
}
_SQLITE_CURSOR = {
    **_DBAPI_CURSOR,
    **_names(FORWARD, "lastrowid"),
    **_names(GUARD, "executescript row_factory"),
}

_PSYCOPG_CONNECTION = {
    **_DBAPI_CONNECTION,
    **_names(
        FORWARD,
        "closed broken cancel cancel_safe fileno xid pipeline transaction deferrable "
        "read_only set_autocommit lock set_isolation_level set_deferrable",
    ),
    **_names(
        SETTABLE,
        "autocommit isolation_level prepare_threshold prepared_max row_factory "
        "cursor_factory server_cursor_factory",
    ),
    # info: a view without pgconn; connection: the guarded connection itself;
    # read_only/set_read_only: may only tighten (see _PsycopgReadOnly);
    # notice handlers: get no server text while masking applies (notice_handler)
    **_names(
        GUARD,
        "execute info connection set_read_only adapters add_notice_handler remove_notice_handler",
    ),
    **_names(
        REFUSE,
        "pgconn add_notify_handler remove_notify_handler notifies wait "
        "tpc_begin tpc_prepare tpc_commit tpc_rollback tpc_recover "
        # a class method that opens a new, unguarded connection
        "connect",
    ),
}
_PSYCOPG_CURSOR = {
    **_DBAPI_CURSOR,
    **_names(FORWARD, "closed statusmessage format scroll"),
    **_names(GUARD, "copy stream results set_result row_factory adapters"),
    **_names(REFUSE, "pgresult"),
}
_PSYCOPG_CLIENT_CURSOR = {**_PSYCOPG_CURSOR, **_names(FORWARD, "mogrify")}
_PSYCOPG_SERVER_CURSOR = {
    **_PSYCOPG_CURSOR,
    **_names(FORWARD, "name scrollable withhold"),
    **_names(SETTABLE, "itersize"),
}
_PSYCOPG_INFO = {
    **_names(
        FORWARD,
        "vendor host hostaddr port dbname user options get_parameters dsn status "
        "transaction_status pipeline_status parameter_status server_version "
        "full_protocol_version backend_pid timezone encoding",
    ),
    # the server's text of the last error: withheld while masking applies (_Info)
    **_names(GUARD, "error_message"),
    **_names(REFUSE, "pgconn password"),
}

_PYMYSQL_CONNECTION = {
    **_DBAPI_CONNECTION,
    **_names(
        FORWARD,
        "affected_rows autocommit autocommit_mode begin bind_address character_set_name "
        "charset client_flag collation connect_timeout ctx cursorclass db "
        "encoding escape escape_string get_autocommit get_host_info get_proto_info "
        "get_server_info host host_info init_command insert_id literal max_allowed_packet "
        "open ping port protocol_version server_capabilities server_charset "
        "server_language server_public_key server_status server_thread_id "
        "server_version sql_mode ssl thread_id unix_socket use_unicode user",
    ),
    # encoders/decoders: read-only views (an encoder returns SQL text, a
    # decoder sees raw cells: neither may be replaced through the proxy)
    **_names(GUARD, "query select_db set_character_set set_charset encoders decoders"),
    **_names(
        REFUSE,
        "kill show_warnings next_result write_packet connect password salt "
        "_execute_command _read_query_result",
    ),
}
_PYMYSQL_CURSOR = {
    **_DBAPI_CURSOR,
    **_names(
        FORWARD,
        "lastrowid warning_count max_stmt_length mogrify scroll setoutputsizes dict_type",
    ),
    # unbuffered reads of the current (guarded, masked) result
    **_names(GUARD, "fetchall_unbuffered read_next"),
    **_names(REFUSE, "_query"),
}

_TABLES: dict[str, dict[str, str]] = {
    "sqlite3.Connection": _SQLITE_CONNECTION,
    "sqlite3.Cursor": _SQLITE_CURSOR,
    "psycopg.Connection": _PSYCOPG_CONNECTION,
    "psycopg.AsyncConnection": _PSYCOPG_CONNECTION,
    "psycopg.Cursor": _PSYCOPG_CURSOR,
    "psycopg.AsyncCursor": _PSYCOPG_CURSOR,
    "psycopg.RawCursor": _PSYCOPG_CURSOR,
    "psycopg.AsyncRawCursor": _PSYCOPG_CURSOR,
    "psycopg.ClientCursor": _PSYCOPG_CLIENT_CURSOR,
    "psycopg.AsyncClientCursor": _PSYCOPG_CLIENT_CURSOR,
    "psycopg.ServerCursor": _PSYCOPG_SERVER_CURSOR,
    "psycopg.AsyncServerCursor": _PSYCOPG_SERVER_CURSOR,
    "psycopg.RawServerCursor": _PSYCOPG_SERVER_CURSOR,
    "psycopg.AsyncRawServerCursor": _PSYCOPG_SERVER_CURSOR,
    "psycopg.ConnectionInfo": _PSYCOPG_INFO,
    "pymysql.connections.Connection": _PYMYSQL_CONNECTION,
    "pymysql.cursors.Cursor": _PYMYSQL_CURSOR,
    "pymysql.cursors.DictCursor": _PYMYSQL_CURSOR,
    "pymysql.cursors.SSCursor": _PYMYSQL_CURSOR,
    "pymysql.cursors.SSDictCursor": _PYMYSQL_CURSOR,
}

#: Why each refused name is refused, for the error message.
_REASONS = {
    "pgconn": "it executes SQL around the guard (create cursors with conn.cursor())",
    "adapters": (
        "while masking applies a loader would see raw values (register adapters on the "
        "raw connection before wrapping it)"
    ),
    "pgresult": "it returns the raw result, before masking",
    "notifies": "it reads NOTIFY payloads of other sessions",
    "add_notify_handler": "it reads NOTIFY payloads of other sessions",
    "remove_notify_handler": "notify handlers are refused",
    "wait": "it drives the raw libpq connection",
    "kill": "it kills a server session",
    "show_warnings": "warnings carry values the guard has not masked",
    "next_result": "it reads the next result set around the guarded cursor (use cursor.nextset())",
    "write_packet": "it writes raw protocol packets",
    "_execute_command": "it sends commands around the guard",
    "_read_query_result": "it reads raw results around the guard",
    "_query": "it sends SQL around the guard",
    "connect": "reconnecting would drop the session guardeddb set up",
    "password": "it is a credential",
    "salt": "it is authentication material",
    "set_authorizer": "guardeddb installs its own authorizer, which this would replace",
    "set_progress_handler": "guardeddb's limits use the progress handler",
    "setlimit": "it changes the engine limits guardeddb relies on",
    "setconfig": "it can turn off SQLite's defensive settings (writable_schema...)",
    "tpc_begin": "two-phase commit changes the session around the guard",
    "tpc_prepare": "two-phase commit changes the session around the guard",
    "tpc_commit": "two-phase commit changes the session around the guard",
    "tpc_rollback": "two-phase commit changes the session around the guard",
    "tpc_recover": "two-phase commit changes the session around the guard",
}


def surface_for(raw_type: type) -> dict[str, str]:
    """The table of ``raw_type``: its known classes' tables merged along the
    MRO (a subclass's own new names stay unclassified, so refused); the
    PEP 249 names alone for a driver guardeddb has no table for."""
    merged: dict[str, str] = {}
    known = False
    for cls in reversed(raw_type.__mro__):
        table = _TABLES.get(f"{cls.__module__}.{cls.__qualname__}")
        if table is not None:
            merged.update(table)
            known = True
    if not known:
        merged.update(_DBAPI_CURSOR if hasattr(raw_type, "fetchone") else _DBAPI_CONNECTION)
    return merged


def refusal(proxy_type: type, raw_type: type, name: str, kind: str | None) -> AttributeRefused:
    """The error for a refused attribute; it names the attribute and says why."""
    where = f"{raw_type.__module__}.{raw_type.__qualname__}.{name}"
    if kind == REFUSE:
        why = _REASONS.get(name, "it changes the session or returns results around the guard")
        text = f"guardeddb refuses {where}: {why}"
    elif kind == GUARD:
        why = _REASONS.get(name, "it runs SQL and has no guarded version")
        text = f"guardeddb refuses {where}: {why}"
    elif kind in (FORWARD, SETTABLE) or (kind is None and name.startswith("_")):
        text = f"guardeddb refuses to assign {where}: it may only be read"
    else:
        text = (
            f"guardeddb refuses {where}: it is not in guardeddb's reviewed table of "
            f"{raw_type.__qualname__} attributes (an unreviewed attribute may run SQL or "
            "change the session); use the raw connection outside guardeddb if you need it"
        )
    return AttributeRefused(text, name=name)


def get(proxy: Any, name: str) -> Any:
    """``proxy.name`` for a name the proxy class does not define itself."""
    kind = type(proxy)._self_surface.get(name)
    if kind is FORWARD or kind is SETTABLE or (kind is None and name[:1] == "_"):
        return getattr(proxy.__wrapped__, name)
    if kind is not GUARD and _psycopg_type_lookup():
        return getattr(proxy.__wrapped__, name)
    raise refusal(type(proxy), type(proxy.__wrapped__), name, kind)


_TYPEINFO_FETCH = frozenset({"_fetch", "_fetch_async"})


def _psycopg_type_lookup() -> bool:
    """Whether ``pgconn`` is read for psycopg's own ``TypeInfo.fetch``, which
    SQLAlchemy calls at connect: it builds a cursor around the connection it
    is given to run one fixed catalog query (pg_type, the name a parameter).
    That one caller, found on the stack, is allowed; any other is refused."""
    frame = sys._getframe(2)
    for _ in range(24):
        if frame is None:
            return False
        code = frame.f_code
        if (
            code.co_name in _TYPEINFO_FETCH
            and frame.f_globals.get("__name__") == "psycopg._typeinfo"
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def descriptors(table: dict[str, str], bases: tuple[type, ...]) -> dict[str, property]:
    """Class attributes of a composed proxy for the names of ``table`` its
    bases do not define: a ``forward`` name is read from the driver (one C
    call, no ``__getattr__`` round) and cannot be assigned; a ``refuse`` name,
    or a ``guard`` name without a guarded method, is refused both ways.
    ``settable`` names get none: wrapt forwards their reads (through
    ``__getattr__``) and their assignments to the driver.

    Assigning a name in no table lands on the driver object as a new
    attribute: every attribute a driver reads is public in ``dir()`` of its
    objects and so classified (``tests/test_surface.py``), or private (trusted).
    """
    out: dict[str, property] = {}
    for name, kind in table.items():
        if kind is SETTABLE or any(name in vars(b) for c in bases for b in c.__mro__):
            continue
        if kind is FORWARD:
            out[name] = property(attrgetter(f"__wrapped__.{name}"), _read_only(name))
        else:
            out[name] = property(_refused(name, kind), _refused(name, kind))
    return out


def _read_only(name: str) -> Callable[[Any, Any], None]:
    def assign(proxy: Any, value: Any) -> None:
        raise refusal(type(proxy), type(proxy.__wrapped__), name, FORWARD)

    return assign


def _refused(name: str, kind: str) -> Callable[..., Any]:
    def refuse(proxy: Any, *value: Any) -> Any:
        if not value and kind is not GUARD and _psycopg_type_lookup():
            return getattr(proxy.__wrapped__, name)
        raise refusal(type(proxy), type(proxy.__wrapped__), name, kind)

    return refuse


def masking_now(guard: Guard) -> bool:
    """Whether the identity current now sees masked rows on this connection."""
    masking = guard.masking
    return masking is not None and masking.applies_to(_current.get() or guard.identity)


WITHHELD_TEXT = "the database's message was withheld because this identity's results are masked"


class _Info:
    """psycopg's ``conn.info`` without ``pgconn`` (nor the password), and
    without the last error's text while masking applies: libpq keeps a copy
    of the message the raised exception had withheld."""

    __slots__ = ("_guard", "_info")

    def __init__(self, info: Any, guard: Guard) -> None:
        self._info = info
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        kind = _PSYCOPG_INFO.get(name)
        if kind is FORWARD or (kind is None and name[:1] == "_"):
            return getattr(self._info, name)
        if name == "error_message":
            text = self._info.error_message
            return WITHHELD_TEXT if text and masking_now(self._guard) else text
        raise refusal(_Info, type(self._info), name, kind)

    def __repr__(self) -> str:
        return f"<guardeddb view of {self._info!r}>"


def info_view(info: Any, guard: Guard) -> Any:
    return _Info(info, guard)


class WithheldDiagnostic:
    """A notice's diagnostic without its texts: only severity and SQLSTATE.
    A notice is a server message like an error, and quotes values as errors
    do (``to_tsquery`` quotes its argument); every other field reads None."""

    __slots__ = ("severity", "severity_nonlocalized", "sqlstate")

    message_primary = WITHHELD_TEXT

    def __init__(self, diag: Any) -> None:
        self.severity = getattr(diag, "severity", None)
        self.severity_nonlocalized = getattr(diag, "severity_nonlocalized", None)
        self.sqlstate = getattr(diag, "sqlstate", None)

    def __getattr__(self, name: str) -> None:
        if name[:1] == "_":
            raise AttributeError(name)
        return None

    def __repr__(self) -> str:
        return f"<WithheldDiagnostic {self.severity} {self.sqlstate}>"


def notice_handler(guard: Guard, callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``callback`` for psycopg's ``add_notice_handler``: while masking
    applies to the identity current when the notice arrives, it receives a
    ``WithheldDiagnostic`` instead of the server's."""

    def handler(diag: Any) -> Any:
        return callback(WithheldDiagnostic(diag) if masking_now(guard) else diag)

    return handler


# --- the statement the server receives -------------------------------------

# The printf-style conversion Python's ``str % args`` performs (PyMySQL's
# mogrify): %[(key)][flags][width][.precision][length]type.
_FLAGS = "-+ #0"
# psycopg's own placeholder grammar (psycopg/_queries.py _re_placeholder), on text.
_PSYCOPG_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\).|.)", re.DOTALL)


def _python_specs(text: str) -> list[tuple[int, str]]:
    """Every conversion ``text % args`` performs: (offset, spec). ``%%`` is none."""
    out = []
    n = len(text)
    i = text.find("%")
    while i != -1:
        j = i + 1
        if j < n and text[j] == "%":
            i = text.find("%", j + 1)
            continue
        if j < n and text[j] == "(":
            depth, j = 1, j + 1
            while j < n and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
        while j < n and text[j] in _FLAGS:
            j += 1
        if j < n and text[j] == "*":
            j += 1
        while j < n and text[j].isdigit():
            j += 1
        if j < n and text[j] == ".":
            j += 1
            if j < n and text[j] == "*":
                j += 1
            while j < n and text[j].isdigit():
                j += 1
        while j < n and text[j] in "hlL":
            j += 1
        j = min(j + 1, n)  # the conversion character
        out.append((i, text[i:j]))
        i = text.find("%", j)
    return out


def _psycopg_specs(text: str) -> list[tuple[int, str]]:
    """Every placeholder psycopg's ClientCursor fills in: (offset, spec)."""
    return [
        (m.start(), m.group(0)) for m in _PSYCOPG_PLACEHOLDER.finditer(text) if m.group(0) != "%%"
    ]


def shape(params: Any) -> str:
    """How the driver binds ``params``: none, a mapping, a sequence or one value."""
    if params is None:
        return "none"
    if isinstance(params, Mapping):
        return "map"
    if isinstance(params, list | tuple):
        return "seq"
    return "one"


#: (analysis, driver style, params shape) -> None (placement proven) or why not.
_VERDICTS: dict[tuple[Analysis, str, str], str | None] = {}
_VERDICTS_SIZE = 8192


def _verdict(analysis: Analysis, style: str, shape: str) -> str | None:
    marks = list(analysis.placeholders)
    if shape == "none":
        # No parameters: the driver sends the text as it is, so a %s the
        # analysis read as a value reaches the server as SQL (an operator and a name).
        if marks:
            return (
                f"the statement has placeholders ({marks[0][1]}) but no parameters were "
                "given: the server would read them as SQL"
            )
        return None
    text = analysis.text
    specs = _python_specs(text) if style == "pymysql" else _psycopg_specs(text)
    if specs != marks:
        seen = {m[0] for m in marks}
        odd = next((s for s in specs if s not in marks), None)
        if odd is not None and odd[0] not in seen:
            where = (
                f"{odd[1]!r} at offset {odd[0]}, which the analysis read as comment, string or SQL"
            )
        else:
            where = "placeholders the driver would not fill in as written"
        return (
            f"the driver fills parameters in client-side and would substitute {where}; "
            "only placeholders where a value belongs are allowed"
        )
    named = [m[1].startswith("%(") for m in marks]
    if style == "pymysql":
        # a mapping fills only %(name)s (a bare %s would receive the whole dict);
        # a sequence or a single value fills only bare %s
        if shape == "map" and not all(named):
            return "a mapping of parameters with a positional %s placeholder"
        if shape != "map" and any(named):
            return "positional parameters with a %(name)s placeholder"
    return None


def placement(guard: Guard, analysis: Analysis, style: str, shapes: set[str]) -> Decision | None:
    """Whether every placeholder the driver substitutes client-side sits where
    the analysis saw a value; the refusal's decision if not. Cached per analysis."""
    for shape in shapes:
        key = (analysis, style, shape)
        try:
            why = _VERDICTS[key]
        except KeyError:
            why = _verdict(analysis, style, shape)
            if len(_VERDICTS) >= _VERDICTS_SIZE:
                _VERDICTS.clear()
            _VERDICTS[key] = why
        if why is not None:
            return Decision("block", "parameter-placement", why)
    return None


def mixed_placement() -> Decision:
    """Parameter sets with and without parameters for one text holding a
    ``%``: the driver sends it rewritten for some and as written for others,
    and one analysis cannot be both."""
    return Decision(
        "block",
        "parameter-placement",
        "some parameter sets are None and others are not, for a statement with '%': "
        "the driver would send it as written for some and with '%%' as '%' for others",
    )


def shim(guard: Guard, func: Callable[..., Any] | None, what: str) -> Any:
    """``func`` for a sqlite3 callback registration (create_function...): it
    refuses to run while the current identity's rows are masked, since it
    would see the raw cells its arguments are made of."""
    if func is None or guard.masking is None:
        return func

    def guarded(*args: Any) -> Any:
        if masking_now(guard):
            raise guard.blocked(
                Decision(
                    "block",
                    "masking-callback",
                    f"a Python {what} would see raw values while masking applies",
                )
            )
        return func(*args)

    return guarded
