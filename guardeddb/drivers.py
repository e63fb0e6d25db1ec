"""Per-driver facts, in one place.

Everything guardeddb needs to know about sqlite3, psycopg 3 and PyMySQL (and
what it assumes of any other DB-API 2.0 driver): the ``db.system.name``, the
sqlglot dialect, where the server is, how to open a connection from a URL,
how to read a query's text and an error's status code.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ._steps import Sql, Steps

__all__ = [
    "ConnectionFacts",
    "Driver",
    "connect_url",
    "connect_url_async",
    "detect",
    "facts",
    "is_async",
    "unguarded",
]

# True while guardeddb opens a connection of its own: see unguarded().
_UNGUARDED: ContextVar[bool] = ContextVar("guardeddb_unguarded", default=False)


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """Connections opened inside come back raw even from a driver that
    ``guardeddb.instrument()`` patched: the one ``connect()`` is about to guard
    with its own options, approval stores and audit tables must not be
    guarded twice, nor judged as the caller's queries."""
    token = _UNGUARDED.set(True)
    try:
        yield
    finally:
        _UNGUARDED.reset(token)


def is_unguarded() -> bool:
    """Whether the current context is inside ``unguarded()``."""
    return _UNGUARDED.get()


@dataclass(frozen=True, slots=True)
class Driver:
    """What guardeddb knows about one DB-API driver module."""

    module: str  # top-level module name: sqlite3, psycopg, pymysql
    system: str  # db.system.name
    dialect: str  # sqlglot dialect
    default_port: int | None

    def programming_error(self) -> type[BaseException] | None:
        """The driver's ProgrammingError, which guardeddb's errors also become."""
        mod = importlib.import_module(self.module)
        err = getattr(mod, "ProgrammingError", None)
        return err if isinstance(err, type) and issubclass(err, BaseException) else None

    def dry_run(
        self, conn: Any, sql: str, params: Any, tables: Iterable[str] = ()
    ) -> Steps[int | None]:
        """How many rows ``sql`` would touch: run inside a SAVEPOINT, then
        rolled back. None when it cannot be measured safely (an unknown
        driver, a statement that fails, a count the driver does not give,
        MariaDB tables a rollback does not undo).

        Written as steps (see ``_steps``) so that a blocking and an asyncio
        connection run the same statements."""
        if self.module not in ("sqlite3", "psycopg", "pymysql"):
            return None
        if self.module == "pymysql":
            # MyISAM, Aria and MEMORY tables ignore ROLLBACK, and a trigger
            # may write to one: run nothing unless every table the statement
            # names is InnoDB without triggers (or it cannot be told).
            names = sorted(tables)
            if not names:
                return None
            check, args = _undoable_check(names)
            try:
                if (yield Sql(check, args)) != 0:
                    return None
            except Exception:
                return None
        opened = False
        try:
            if not self.in_transaction(conn) and self._autocommit(conn):
                yield Sql("BEGIN")  # a savepoint needs a transaction to live in
                opened = True
            yield Sql("SAVEPOINT guardeddb_dry_run")
            try:
                count = yield Sql(sql, params)
            except Exception:
                count = -1
            finally:
                yield Sql("ROLLBACK TO SAVEPOINT guardeddb_dry_run")
                yield Sql("RELEASE SAVEPOINT guardeddb_dry_run")
            return count if isinstance(count, int) and count >= 0 else None
        except Exception:
            return None
        finally:
            if opened:
                with contextlib.suppress(Exception):  # the rollback of nothing cannot matter
                    yield Sql("ROLLBACK")

    def _autocommit(self, conn: Any) -> bool:
        if self.module == "sqlite3":
            return conn.isolation_level is None
        if self.module == "pymysql":
            return bool(conn.get_autocommit())
        return bool(getattr(conn, "autocommit", False))

    def read_only_statements(self, read_only: bool) -> tuple[str, ...]:
        """What puts the session in (or out of) read-only mode on the server."""
        if self.module == "psycopg":
            mode = "READ ONLY" if read_only else "READ WRITE"
            return (f"SET SESSION CHARACTERISTICS AS TRANSACTION {mode}",)
        if self.module == "pymysql":
            return (f"SET SESSION TRANSACTION {'READ ONLY' if read_only else 'READ WRITE'}",)
        if self.module == "sqlite3":
            return (f"PRAGMA query_only = {1 if read_only else 0}",)
        return ()

    def in_transaction(self, conn: Any) -> bool:
        """Whether a transaction is open, in which the session mode cannot change.

        SQLite's query_only takes effect at once, so it never has to wait.
        Unknown drivers answer True: guardeddb will not switch their mode.
        """
        if self.module == "psycopg":
            from psycopg.pq import TransactionStatus

            return bool(conn.info.transaction_status != TransactionStatus.IDLE)
        if self.module == "pymysql":
            return bool(getattr(conn, "server_status", 1) & 1)  # SERVER_STATUS_IN_TRANS
        return self.module != "sqlite3"

    def failed_transaction(self, conn: Any) -> bool:
        """Whether the open transaction failed (PostgreSQL): it can only be
        rolled back, and a COMMIT of it rolls back."""
        if self.module == "psycopg":
            from psycopg.pq import TransactionStatus

            return bool(conn.info.transaction_status == TransactionStatus.INERROR)
        return False

    def status_code(self, exc: BaseException) -> str | None:
        """``db.response.status_code``: SQLSTATE, MySQL error number, sqlite error name."""
        if self.module == "psycopg":
            code = getattr(exc, "sqlstate", None)
        elif self.module == "pymysql":
            args = getattr(exc, "args", ())
            code = args[0] if args and isinstance(args[0], int) else None
        elif self.module == "sqlite3":
            code = getattr(exc, "sqlite_errorname", None)
        else:
            code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        return None if code is None else str(code)


_SQLITE = Driver("sqlite3", "sqlite", "sqlite", None)
_PSYCOPG = Driver("psycopg", "postgresql", "postgres", 5432)
_PYMYSQL = Driver("pymysql", "mysql", "mysql", 3306)
_MARIADB = Driver("pymysql", "mariadb", "mysql", 3306)
_KNOWN = {d.module: d for d in (_SQLITE, _PSYCOPG, _PYMYSQL)}
_PARAMSTYLE_DIALECT = {"qmark": "sqlite", "pyformat": "postgres", "format": "mysql"}


def detect(conn: Any) -> Driver:
    """The Driver of a raw DB-API connection, from the module that defined its type."""
    top = type(conn).__module__.split(".", 1)[0]
    if top == "_sqlite3":
        top = "sqlite3"
    driver = _KNOWN.get(top)
    if driver is _PYMYSQL and "mariadb" in str(getattr(conn, "server_version", "")).lower():
        return _MARIADB
    if driver is not None:
        return driver
    # Another DB-API driver: call it what its module is called, parse it as
    # the dialect its paramstyle suggests (generic SQL otherwise).
    try:
        module = importlib.import_module(top)
        paramstyle = getattr(module, "paramstyle", "")
    except ImportError:
        paramstyle = ""
    return Driver(top, top, _PARAMSTYLE_DIALECT.get(paramstyle, ""), None)


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """Where a connection points: db.namespace, server.address, server.port,
    and the schemas an unqualified table name may resolve to (None: unknown)."""

    namespace: str | None
    address: str | None
    port: int | None
    schemas: frozenset[str] | None = None


def facts(driver: Driver, conn: Any) -> ConnectionFacts:
    """Read the connection's database and server, without running a query
    except on sqlite3, whose file name only ``PRAGMA database_list`` tells."""
    try:
        if driver.module == "psycopg":
            info = conn.info
            host = info.host
            address = None if host.startswith("/") else host
            schemas = _pg_search_path(conn)
            return ConnectionFacts(info.dbname or None, address, int(info.port), schemas)
        if driver.module == "pymysql":
            db = conn.db.decode() if isinstance(conn.db, bytes) else conn.db
            host = conn.host if not getattr(conn, "unix_socket", None) else None
            # The current database; the guard tracks USE and select_db() from here.
            schemas = frozenset({db.lower()}) if db else None
            return ConnectionFacts(db or None, host, int(conn.port), schemas)
        if driver.module == "sqlite3":
            rows = conn.execute("PRAGMA database_list").fetchall()
            path = next((r[2] for r in rows if r[1] == "main"), "")
            return ConnectionFacts(path or ":memory:", None, None, frozenset({"main", "temp"}))
    except Exception:  # facts are for telemetry; never fail a connection over them
        pass
    return ConnectionFacts(None, None, None)


def _pg_search_path(conn: Any) -> frozenset[str] | None:
    """The schemas unqualified names resolve in, as the server says
    (``current_schemas``: the search_path that exists, pg_catalog and
    pg_temp included); None (any schema) when it cannot be read."""
    if is_async(conn):
        # No query from synchronous code; "$user", public and pg_catalog are
        # PostgreSQL's default search_path.
        return frozenset({"public", "pg_catalog", conn.info.user})
    from psycopg.pq import TransactionStatus

    idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_schemas(true)")
            row = cur.fetchone()
    except Exception:
        row = None
    if idle and conn.info.transaction_status != TransactionStatus.IDLE:
        conn.rollback()  # the transaction this query opened, and nothing else
    if not row or not row[0]:
        return None
    names = {str(s).lower() for s in row[0]}
    return frozenset(names | {"pg_catalog"})


def _sqlite_connect(url: str, kwargs: dict[str, Any]) -> Any:
    # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:, sqlite://
    rest = url.split("://", 1)[1]
    path = rest[1:] if rest.startswith("/") else rest
    path, _, query = path.partition("?")
    params = dict(parse_qsl(query))
    if params:
        # Query parameters ask for sqlite's URI mode (mode=ro, cache=shared).
        return sqlite3.connect(f"file:{path}?{query}", uri=True, **kwargs)
    return sqlite3.connect(unquote(path) or ":memory:", **kwargs)


def missing_extra(exc: ModuleNotFoundError, module: str, extra: str, what: str) -> BaseException:
    """The error to raise when importing ``module`` failed with ``exc``: one
    that names the extra installing it, or ``exc`` itself when what is
    missing is something else (a dependency of the module: its own error
    is clearer).

    A bare ``ModuleNotFoundError: psycopg`` tells a new user neither that
    the driver is optional nor how guardeddb names it.
    """
    if exc.name != module and not (exc.name or "").startswith(module + "."):
        return exc
    return ModuleNotFoundError(
        f"{what} needs {module}, which is not installed: pip install 'guardeddb[{extra}]'",
        name=module,
    )


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, module, extra, what) from exc


def _mysql_connect(url: str, kwargs: dict[str, Any]) -> Any:
    pymysql = require("pymysql", "mysql", "a mysql:// or mariadb:// URL")

    parts = urlsplit(url)
    options: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
    }
    database = parts.path.lstrip("/")
    if database:
        options["database"] = unquote(database)
    options.update(parse_qsl(parts.query))
    options.update(kwargs)
    return pymysql.connect(**options)


def _postgres_connect(url: str, kwargs: dict[str, Any]) -> Any:
    psycopg = require("psycopg", "postgres", "a postgresql:// URL")
    return psycopg.connect(url, **kwargs)


_URL_SCHEMES: dict[str, Callable[[str, dict[str, Any]], Any]] = {
    "sqlite": _sqlite_connect,
    "postgresql": _postgres_connect,
    "postgres": _postgres_connect,
    "mysql": _mysql_connect,
    "mariadb": _mysql_connect,
}


def connect_url(url: str, kwargs: dict[str, Any]) -> Any:
    """Open a raw connection for a ``scheme://`` URL."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    scheme = scheme.split("+", 1)[0]  # postgresql+psycopg://, as SQLAlchemy spells it
    opener = _URL_SCHEMES.get(scheme)
    if opener is None:
        known = ", ".join(f"{s}://" for s in _URL_SCHEMES)
        raise ValueError(f"unsupported database URL {scheme or url!r}: use one of {known}")
    with unguarded():
        return opener(url, kwargs)


async def connect_url_async(url: str, kwargs: dict[str, Any]) -> Any:
    """Open a raw asyncio connection for a ``postgresql://`` URL (psycopg's
    ``AsyncConnection``; the other drivers guardeddb knows have no asyncio API)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(
            f"unsupported database URL {scheme or url!r} for asyncio: use postgresql://"
        )
    psycopg = require("psycopg", "postgres", "a postgresql:// URL")
    return await psycopg.AsyncConnection.connect(url, **kwargs)


def is_async(conn: Any) -> bool:
    """Whether ``conn`` is an asyncio connection (psycopg's ``AsyncConnection``)."""
    psycopg = sys.modules.get("psycopg")  # a psycopg connection means psycopg is imported
    return psycopg is not None and isinstance(conn, psycopg.AsyncConnection)


def connect_callable(target: Any) -> Callable[..., Any]:
    """The connect function of a DB-API module, or ``target`` if it is callable."""
    if isinstance(target, ModuleType):
        fn = getattr(target, "connect", None)
        if not callable(fn):
            raise TypeError(f"module {target.__name__} has no connect() function")
        return fn  # type: ignore[no-any-return]
    if callable(target):
        return target  # type: ignore[no-any-return]
    raise TypeError(f"cannot connect to {target!r}: pass a URL, a connect callable or a module")


def _undoable_check(tables: list[str]) -> tuple[str, tuple[str, ...]]:
    """A query whose row count is the number of ``tables`` a dry run could not
    undo on MariaDB: not InnoDB (views too), with a trigger, or not found."""
    where: list[str] = []
    args: list[str] = []
    for name in tables:
        schema, _, table = name.rpartition(".")
        where.append("(%s, %s)" if schema else "(lower(DATABASE()), %s)")
        args.extend((schema, table) if schema else (table,))
    wanted = ", ".join(where)
    return (
        "SELECT 1 FROM (SELECT 1 AS x) AS one WHERE "
        f"(SELECT count(*) FROM information_schema.TABLES WHERE "
        f"(lower(TABLE_SCHEMA), lower(TABLE_NAME)) IN ({wanted}) AND ENGINE = 'InnoDB' "
        f"AND NOT EXISTS (SELECT 1 FROM information_schema.TRIGGERS tr "
        f"WHERE tr.EVENT_OBJECT_SCHEMA = TABLE_SCHEMA AND tr.EVENT_OBJECT_TABLE = TABLE_NAME)"
        f") <> {len(tables)}",
        (*args,),
    )
