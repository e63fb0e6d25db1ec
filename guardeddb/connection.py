"""GuardedConnection and GuardedCursor: transparent wrapt proxies.

Every attribute of the driver's connection and cursor still works and
``isinstance`` still holds; what runs SQL or returns rows is intercepted so
that no path hands back an unguarded cursor: ``conn.cursor()``,
``conn.execute()`` (sqlite3, psycopg), ``executescript`` (sqlite3),
``conn.query()`` (PyMySQL), ``with conn.cursor() as cur``, ``cursor.connection``.

Each driver type gets its own proxy class, composed once from the methods
that type really has, so ``hasattr`` answers as it does on the raw object.
Only the public attributes ``_surface.py`` classifies are handed out or
assigned; the rest are refused (``guardeddb.AttributeRefused``), and that
module states the trust boundary.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import sys
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import wrapt

from . import _surface
from ._pipeline import Guard, failed
from ._steps import run as run_steps
from .approvals import Approver
from .drivers import ConnectionFacts, Driver
from .errors import Error as GuardedError
from .errors import QueryBlocked
from .identity import Identity, _current
from .masking.channels import withheld
from .masking.plan import MaskRun
from .policy.decision import Decision
from .policy.model import Policy
from .sql.analysis import Analysis
from .telemetry import Operation, Telemetry, batch_size

_log = logging.getLogger("guardeddb")

__all__ = [
    "ConnectionBase",
    "CursorBase",
    "GuardedConnection",
    "GuardedCursor",
    "guard_connection",
]

_NO_PARAMS: Any = object()  # "the caller passed no parameters", distinct from None
_FETCH: Any = object()  # "fetch from the driver": no rows were passed in


def _surface_get(self: Any, name: str) -> Any:
    """A driver attribute the proxy class does not define: forwarded only if
    the surface table allows it (called by wrapt after the class lookup)."""
    return _surface.get(self, name)


class CursorBase(wrapt.BaseObjectProxy[Any]):
    """What every guarded cursor does around the driver's calls, whether it
    calls them (``GuardedCursor``) or awaits them (``GuardedAsyncCursor``):
    the span of the current result, its masking, the rows it counts."""

    def __init__(self, wrapped: Any, connection: Any) -> None:
        super().__init__(wrapped)
        self._self_connection = connection
        self._self_guard: Guard = connection._self_guard
        # Rows the current result may still return under limits.max_rows
        # (None: no cap; -1: the cap cut this result, and that was said).
        self._self_left: int | None = None
        self._self_op: Operation | None = None
        # None: rows pass as they are; an Analysis: rows must be masked, plan
        # not made yet; a MaskRun: the plan of the current result, applying.
        self._self_mask: Analysis | MaskRun | None = None
        # True when a custom row factory masks values before building rows.
        self._self_factory_masks = False
        # (operation, description) as read when the statement ran, so the
        # mask plan does not read it again (psycopg builds it anew each read).
        self._self_desc: tuple[Operation, Any] | None = None

    # The driver's own attributes: only those the surface table allows.
    _self_surface: dict[str, str] = {}  # noqa: RUF012 (each composed class has its own)
    if TYPE_CHECKING:
        # The driver's own attributes, as far as a type checker can know them.
        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...
    else:
        __getattr__ = _surface_get

    def _self_track(self, op: Operation, raw: Any) -> None:
        """The statement ran: its span stays open while rows are left to fetch."""
        op.executed()
        desc = raw.description
        if desc is None:
            op.end()
        else:
            self._self_op = op
            self._self_desc = (op, desc)

    def _self_finish(self, op: Operation) -> None:
        """End the span of the current result, with what masking did to it."""
        self._self_op = None
        mask = self._self_mask
        if type(mask) is MaskRun:
            op.masked(mask.plan.masked_columns, mask.count)
        op.end()

    def _self_done(self) -> None:
        op = self._self_op
        if op is not None:
            self._self_finish(op)

    def _self_new_result(self) -> None:
        """The cursor moved to another result set: a new description, plan again."""
        mask = self._self_mask
        if type(mask) is MaskRun:
            self._self_mask = mask.analysis
        self._self_desc = None
        if self._self_left is not None:
            self._self_left = self._self_guard.max_rows

    def _self_mask_run(self) -> MaskRun | None:
        """The masking of the current result, planned from its description once."""
        mask = self._self_mask
        if mask is None or isinstance(mask, MaskRun):
            return mask
        raw = self.__wrapped__
        held = self._self_desc
        # The description read when this result's statement ran, else read now.
        desc = held[1] if held is not None and held[0] is self._self_op else raw.description
        names = tuple([d[0] for d in desc]) if desc else ()
        try:
            "".join(names)  # every name is text (all drivers give str): a cheap check
        except TypeError:
            names = tuple(map(str, names))
        guard = self._self_guard
        masking = guard.masking
        plan = masking.plan(mask, names, guard.engine.columns) if masking is not None else None
        run = MaskRun(plan, raw, mask) if plan is not None else None
        self._self_mask = run
        return run

    # The fetch methods, written once: the blocking cursor uses them as its
    # own fetchone/fetchmany/fetchall (they call the driver, so each fetch
    # makes no extra call); the asyncio cursor awaits the driver and passes
    # what it returned as ``_fetched`` (positional where it can be: a
    # keyword-only default costs fetchone ~25 ns on CPython 3.11).

    def _self_cut(self, what: Any) -> Any:
        """The result reached the policy's ``limits.max_rows``: say so (log,
        span) once, and hand back ``what`` (no more rows)."""
        if self._self_left != -1:
            self._self_left = -1  # said once per result
            guard = self._self_guard
            _log.warning("guardeddb: result truncated at limits.max_rows = %d", guard.max_rows or 0)
            op = self._self_op
            if op is not None:
                op.annotate("guardeddb.truncated", True)
        return what

    def _self_capped(self, left: int, fetched: Any, size: int | None) -> Any:
        """At most ``left`` more rows (``size`` of them for a fetchmany, all
        for a fetchall): fetched from the driver no further than the cap, or
        cut from what the asyncio cursor already fetched."""
        cap = max(left, 0)
        want = cap if size is None else min(size, cap)
        if fetched is _FETCH:
            raw = self.__wrapped__
            fetched = raw.fetchmany(want) if want else []
            # One more row after a full cap means the cap cut the result.
            if len(fetched) == cap and (size is None or size > cap) and raw.fetchone() is not None:
                self._self_cut(None)
        elif len(fetched) > want:
            fetched = self._self_cut(fetched[:want])
        if self._self_left != -1:
            self._self_left = cap - len(fetched)
        return fetched

    def _self_fetch_failed(self, exc: Exception) -> BaseException:
        """A fetch raised (sqlite3 steps the statement as rows are fetched):
        for an identity whose rows are masked, the error with its text
        withheld; anything else is re-raised as it is."""
        if self._self_mask is None or isinstance(exc, GuardedError):
            raise  # called from the except block: exc itself, traceback intact
        failure = withheld(exc, self._self_guard.driver.status_code(exc))
        if failure is None:
            raise
        return failure

    def _self_fetchone(self, _fetched: Any = _FETCH) -> Any:
        """The next row, masked; the span ends when the result runs out."""
        try:
            left = self._self_left
            if left is None:
                row = self.__wrapped__.fetchone() if _fetched is _FETCH else _fetched
            elif left > 0:
                row = self.__wrapped__.fetchone() if _fetched is _FETCH else _fetched
                if row is not None:
                    self._self_left = left - 1
            else:
                # Past the row cap the result ends here; one more row tells
                # whether anything was cut.
                if (self.__wrapped__.fetchone() if _fetched is _FETCH else _fetched) is not None:
                    self._self_cut(None)
                row = None
            if row is not None and self._self_mask is not None and not self._self_factory_masks:
                run = self._self_mask_run()
                if run is not None:
                    row = run.row(row)
            op = self._self_op
            if op is not None:
                if row is None:
                    self._self_finish(op)
                else:
                    op.rows += 1
            return row
        except Exception as exc:
            failure = self._self_fetch_failed(exc)
        raise failure from None  # outside the handler: no __context__ either

    def _self_fetchmany(self, *args: Any, _fetched: Any = _FETCH, **kwargs: Any) -> Any:
        """The next rows, masked; fewer than asked for ends the span."""
        try:
            raw = self.__wrapped__
            left = self._self_left
            if left is not None:
                size = (args[0] if args else kwargs.get("size")) or raw.arraysize
                _fetched = self._self_capped(left, _fetched, size)
            rows = raw.fetchmany(*args, **kwargs) if _fetched is _FETCH else _fetched
            if rows and self._self_mask is not None and not self._self_factory_masks:
                run = self._self_mask_run()
                if run is not None:
                    rows = run.rows(rows)
            op = self._self_op
            if op is not None:
                op.rows += len(rows)
                size = args[0] if args else kwargs.get("size")
                if not rows or len(rows) < (size or raw.arraysize):
                    self._self_finish(op)
            return rows
        except Exception as exc:
            failure = self._self_fetch_failed(exc)
        raise failure from None  # outside the handler: no __context__ either

    def _self_fetchall(self, _fetched: Any = _FETCH) -> Any:
        """The remaining rows, masked; the span ends."""
        try:
            left = self._self_left
            if left is not None:
                _fetched = self._self_capped(left, _fetched, None)
            rows = self.__wrapped__.fetchall() if _fetched is _FETCH else _fetched
            if rows and self._self_mask is not None and not self._self_factory_masks:
                run = self._self_mask_run()
                if run is not None:
                    rows = run.rows(rows)
            op = self._self_op
            if op is not None:
                op.rows += len(rows)
                self._self_finish(op)
            return rows
        except Exception as exc:
            failure = self._self_fetch_failed(exc)
        raise failure from None  # outside the handler: no __context__ either

    def __del__(self) -> None:
        # The finalizer that ends a span whose result was never consumed.
        if getattr(self, "_self_op", None) is not None:
            self._self_done()

    def __repr__(self) -> str:
        return f"<guardeddb.{type(self).__name__} of {self.__wrapped__!r}>"


class GuardedCursor(CursorBase):
    """A driver cursor whose statements are guarded, traced and counted."""

    @property
    def connection(self) -> GuardedConnection:
        """The guarded connection (never the raw one)."""
        conn: GuardedConnection = self._self_connection
        return conn

    def _self_run(
        self,
        method: Callable[..., Any],
        query: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        batch: int = 0,
        params: Any = _NO_PARAMS,
    ) -> Any:
        """Guard ``query``, then ``method(*args, **kwargs)``; the span stays
        open while the statement has rows left to fetch. ``params``: what
        the guard is told of the parameters, when not ``args[1:]``."""
        self._self_done()
        raw = self.__wrapped__
        guard = self._self_guard
        failure = None
        if params is _NO_PARAMS:
            params = args[1:] or _keyword_params(kwargs)
        with guard.lock:  # the session switch and the statement, together
            op, self._self_mask = guard.begin(query, raw, batch, params)
            self._self_left = guard.max_rows
            try:
                result = method(*args, **kwargs)
            except BaseException as exc:
                failure = failed(guard, op, exc, self._self_mask is not None)
        if failure is not None:
            raise failure from None  # outside the handler: no __context__ either
        if op is not None:
            self._self_track(op, raw)
        return self if result is raw else result

    def execute(self, query: Any, params: Any = _NO_PARAMS, *args: Any, **kwargs: Any) -> Any:
        """Guard, trace and run one statement.

        Arguments reach the driver exactly as given; the common
        ``execute(sql, params)`` call takes a path without ``*args`` packing,
        because this is the call every query makes.
        """
        if self._self_op is not None:
            self._self_done()
        raw = self.__wrapped__
        guard = self._self_guard  # read once: a proxy attribute costs ~90 ns
        failure = None
        # Threads sharing the connection: the session switch (in begin) and
        # the statement that needs it run together.
        with guard.lock:
            op, self._self_mask = guard.begin(
                query,
                raw,
                0,
                params if params is not _NO_PARAMS else _keyword_params(kwargs) if kwargs else None,
            )
            self._self_left = guard.max_rows
            try:
                if args or kwargs:
                    if params is _NO_PARAMS:
                        result = raw.execute(query, *args, **kwargs)
                    else:
                        result = raw.execute(query, params, *args, **kwargs)
                elif params is _NO_PARAMS:
                    result = raw.execute(query)
                else:
                    result = raw.execute(query, params)
            except BaseException as exc:
                failure = failed(guard, op, exc, self._self_mask is not None)
        if failure is not None:
            raise failure from None  # outside the handler: no __context__ either
        if op is not None:
            self._self_track(op, raw)
        return self if result is raw else result

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        """Guard and run a statement for each parameter set, as one BATCH span.

        Arguments pass through untouched (PyMySQL calls the sequence ``args``,
        psycopg ``params_seq``, sqlite3 ``parameters``).
        """
        args, kwargs, params = batch_params(self, query, args, kwargs)
        return self._self_run(
            self.__wrapped__.executemany,
            query,
            (query, *args),
            kwargs,
            batch_size(args, kwargs),
            params,
        )

    fetchone = CursorBase._self_fetchone
    fetchmany = CursorBase._self_fetchmany
    fetchall = CursorBase._self_fetchall

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        self._self_done()
        self.__wrapped__.close()

    def __enter__(self) -> GuardedCursor:
        enter = getattr(self.__wrapped__, "__enter__", None)
        if enter is None:
            raise TypeError(
                f"{type(self.__wrapped__).__name__!r} object does not support the "
                "context manager protocol"
            )
        enter()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        self._self_done()
        return self.__wrapped__.__exit__(*exc_info)


def _keyword_params(kwargs: dict[str, Any]) -> Any:
    """Parameters given by keyword (PyMySQL's ``args``, psycopg's ``params``
    and ``params_seq``, sqlite3's ``parameters``), or None: the driver
    rewrites a text given parameters however they are passed."""
    for key in ("args", "params", "params_seq", "parameters"):
        if kwargs.get(key) is not None:
            return kwargs[key]
    return None


def query_params(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The parameters of a driver call ``(query, *args, **kwargs)``, for
    approvals and dry runs: psycopg names them ``params``."""
    return args[0] if args else kwargs.get("params")


class _ExecuteScript:
    """sqlite3's ``executescript``: several statements, guarded as one text."""

    def executescript(self: Any, sql_script: str) -> Any:
        return self._self_run(self.__wrapped__.executescript, sql_script, (sql_script,), {})


class _NextSet:
    def nextset(self: Any) -> Any:
        """Move to the next result set; its rows are counted (and masked) too."""
        self._self_new_result()
        return self.__wrapped__.nextset()


class _Results:
    def results(self: Any) -> Iterator[Any]:
        """psycopg's ``results()``: each result set through this guarded cursor
        (the driver's yields itself, whose rows would not be masked)."""
        for _ in self.__wrapped__.results():
            self._self_new_result()
            yield self


class _SetResult:
    def set_result(self: Any, index: int) -> Any:
        """psycopg's ``set_result()``: returns this guarded cursor, not the driver's."""
        self.__wrapped__.set_result(index)
        self._self_new_result()
        return self


class _CallProc:
    def callproc(self: Any, procname: str, args: Any = ()) -> Any:
        """Guard a stored procedure call as the statement ``CALL procname``."""
        return self._self_run(self.__wrapped__.callproc, f"CALL {procname}", (procname, args), {})


class _Stream:
    def stream(self: Any, query: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """psycopg's ``stream()``: guarded, traced, rows counted as they flow."""
        self._self_done()
        raw = self.__wrapped__
        guard = self._self_guard
        with guard.lock:
            op, self._self_mask = guard.begin(query, raw, 0, query_params(args, kwargs))
        self._self_left = guard.max_rows
        return _streamed(self, op, raw.stream(query, *args, **kwargs))


def _streamed(cursor: Any, op: Operation | None, rows: Iterator[Any]) -> Iterator[Any]:
    if op is None and cursor._self_mask is None:
        yield from rows
        return
    failure = None
    try:
        for row in rows:
            yield streamed_row(cursor, op, row)
    except BaseException as exc:
        failure = stream_ended(cursor, op, exc)
        if failure is None:
            raise
    if failure is not None:
        raise failure from None  # outside the handler: no __context__ either
    stream_ended(cursor, op, None)


def streamed_row(cursor: Any, op: Operation | None, row: Any) -> Any:
    """One row of a ``stream()``: masked and counted as it flows."""
    run = None if cursor._self_factory_masks else cursor._self_mask_run()
    if op is not None:
        op.rows += 1
    return row if run is None else run.row(row)


def stream_ended(
    cursor: Any, op: Operation | None, exc: BaseException | None
) -> BaseException | None:
    """A ``stream()`` ran out, was closed early (GeneratorExit) or failed;
    returns what to raise instead of a failure (its text withheld for an
    identity whose rows are masked), None to raise it as it is."""
    if exc is None or isinstance(exc, GeneratorExit):
        if op is not None:
            op.executed()
            op.end()
        return None
    failure = None
    if (
        cursor._self_mask is not None
        and isinstance(exc, Exception)
        and not isinstance(exc, GuardedError)
    ):
        failure = cursor._self_guard.replacement(exc, True)
    if op is not None:
        cursor._self_guard.fail(op, exc if failure is None else failure)
    return failure


def _rebuilt(factory: Any) -> bool:
    """Whether guardeddb rebuilds this factory's rows itself: sqlite3's
    defaults and psycopg's tuple, dict and namedtuple rows (by identity: a
    factory object need not be hashable or comparable). psycopg.rows is only
    looked up, never imported: a psycopg factory means it is loaded, and
    importing it would cost every sqlite-only user ~0.1 s at import."""
    if factory is None or factory is sqlite3.Row:
        return True
    rows = sys.modules.get("psycopg.rows")
    return rows is not None and any(
        factory is known for known in (rows.tuple_row, rows.dict_row, rows.namedtuple_row)
    )


class _RowFactory:
    """sqlite3 and psycopg row factories: a custom one gets values already masked.

    Tuples, dicts, namedtuples and sqlite3.Row are masked after fetching; any
    other factory (psycopg's class_row, a sqlite3 dict factory) is wrapped so
    that it receives masked values and builds its rows from those.
    """

    @property
    def row_factory(self: Any) -> Any:
        if self._self_factory_masks:
            return self._self_user_factory
        return self.__wrapped__.row_factory

    @row_factory.setter
    def row_factory(self: Any, factory: Any) -> None:
        self._self_adopt_factory(factory)

    def _self_adopt_factory(self: Any, factory: Any) -> None:
        raw = self.__wrapped__
        if _rebuilt(factory):
            self._self_factory_masks = False
            raw.row_factory = factory
            return
        self._self_user_factory = factory
        self._self_factory_masks = True

        def masked(values: Any) -> Any:
            run = self._self_mask_run() if self._self_mask is not None else None
            return values if run is None else run.values(values)

        if self._self_guard.driver.module == "sqlite3":
            raw.row_factory = lambda cur, row: factory(cur, masked(row))
        else:

            def psycopg_factory(cur: Any) -> Any:
                maker = factory(cur)
                return lambda values: maker(masked(values))

            raw.row_factory = psycopg_factory


class _Copy:
    def copy(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg's ``copy()``: the COPY statement is guarded like any other."""
        self._self_done()
        raw = self.__wrapped__
        return self._self_guard.run(
            raw, raw.copy, statement, (statement, *args), kwargs, query_params(args, kwargs)
        )


class ConnectionBase(wrapt.BaseObjectProxy[Any]):
    """What every guarded connection shares, blocking (``GuardedConnection``)
    or asyncio (``GuardedAsyncConnection``): its guard and guarded cursors."""

    def __init__(self, wrapped: Any, guard: Guard) -> None:
        super().__init__(wrapped)
        self._self_guard = guard

    _self_surface: dict[str, str] = {}  # noqa: RUF012 (each composed class has its own)
    if TYPE_CHECKING:
        # The driver's own attributes, as far as a type checker can know them.
        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...
    else:
        __getattr__ = _surface_get

    def _self_guarded(self, raw: Any, base: type[CursorBase], mixins: Any) -> Any:
        """The driver's cursor ``raw`` wrapped in ``base`` and the mixins its type needs."""
        cur = _compose(base, type(raw), mixins)(raw, self)
        factory = getattr(raw, "row_factory", None)
        if not _rebuilt(factory) and hasattr(cur, "_self_adopt_factory"):
            cur._self_adopt_factory(factory)
        return cur

    def _self_rolled_back(self) -> None:
        """A rollback went through the connection: audit it."""
        guard = self._self_guard
        if guard.audit is not None:
            guard.audit.ended_transaction("rollback", _current.get() or guard.identity)

    def _self_commit_open(self) -> None:
        """Commit through the guard if a transaction is open (so the driver's
        own implicit commit finds nothing left to commit)."""
        raw = self.__wrapped__
        driver = self._self_guard.driver
        if raw.in_transaction if driver.module == "sqlite3" else driver.in_transaction(raw):
            self.commit()

    def _self_commits_on_exit(self) -> bool:
        """Whether the driver's ``with conn:`` commits (sqlite3, psycopg) rather
        than only closing (PyMySQL): then guardeddb judges that commit itself."""
        return self._self_guard.driver.module in ("sqlite3", "psycopg")

    @property
    def guardeddb_identity(self) -> Identity | None:
        """This connection's default identity (a context identity wins)."""
        return self._self_guard.identity

    def __repr__(self) -> str:
        return f"<guardeddb.{type(self).__name__} of {self.__wrapped__!r}>"


class GuardedConnection(ConnectionBase):
    """A driver connection whose cursors are all guarded."""

    def cursor(self, *args: Any, **kwargs: Any) -> GuardedCursor:
        """A guarded cursor; arguments go to the driver's ``cursor()``."""
        cur: GuardedCursor = self._self_guarded(
            self.__wrapped__.cursor(*args, **kwargs), GuardedCursor, _CURSOR_MIXINS
        )
        return cur

    def __enter__(self) -> GuardedConnection:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        self._self_guard.telemetry.end_all()
        raw = self.__wrapped__
        if self._self_commits_on_exit() and not getattr(raw, "closed", False):
            # The commit (or rollback) the driver would make, judged and
            # recorded first; refused, the driver rolls back instead.
            try:
                self.commit() if exc_info[0] is None else self.rollback()
            except BaseException as exc:
                raw.__exit__(type(exc), exc, exc.__traceback__)
                raise
        return raw.__exit__(*exc_info)

    def commit(self) -> None:
        """Commit, judged like the SQL ``COMMIT`` for the identity current now
        and recorded before the driver commits (and its outcome after)."""
        guard = self._self_guard
        with guard.lock:
            run_steps(self.__wrapped__, guard.commit_steps())

    def rollback(self) -> None:
        """Roll back (never refused: it can only undo), and record it."""
        self.__wrapped__.rollback()
        self._self_rolled_back()

    def close(self) -> None:
        """Close the connection, ending the spans (and audit results) left open."""
        guard = self._self_guard
        guard.telemetry.end_all()
        self.__wrapped__.close()
        if guard.audit is not None:
            guard.audit.close()


class _ConnExecute:
    """``conn.execute()`` shortcuts (sqlite3, psycopg) go through a guarded cursor."""

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().execute(*args, **kwargs)


class _ConnExecuteMany:
    def executemany(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executemany(*args, **kwargs)


class _ConnExecuteScript:
    def executescript(self: Any, sql_script: str) -> Any:
        return self.cursor().executescript(sql_script)


class _ConnQuery:
    """PyMySQL's low-level ``conn.query()`` is guarded like a cursor execute."""

    def query(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
        raw = self.__wrapped__
        guard: Guard = self._self_guard
        analysis = guard.analyze(sql, raw)
        decision = _surface.placement(guard, analysis, "pymysql", {"none"})
        if decision is not None:
            raise _refused_placement(guard, analysis, decision)
        return guard.run(raw, raw.query, sql, (sql, *args), kwargs)


class _SelectDb:
    """PyMySQL's ``select_db()`` is judged as ``USE db``; the guard then
    resolves unqualified table names in the new database."""

    def select_db(self: Any, db: str) -> Any:
        raw = self.__wrapped__
        name = "`" + str(db).replace("`", "``") + "`"
        return self._self_guard.run(raw, raw.select_db, f"USE {name}", (db,), {})


def _quoted(name: Any) -> str:
    return '"' + str(name).replace('"', '""') + '"'


# sqlite3 methods that reach data or the server without SQL are judged as the
# statement they amount to, so a policy that forbids the statement forbids the
# shortcut: an extension load, a blob write, a dump, backup or replacement.
_LOAD_EXT = "SELECT load_extension(?)"
_COPY_DB = "VACUUM INTO ?"


def _judged_as(name: str, sql: str) -> type:
    """A mixin whose ``name`` method runs only if ``sql`` would be allowed."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raw = self.__wrapped__
        return self._self_guard.run(raw, getattr(raw, name), sql, args, kwargs)

    method.__name__ = name
    method.__doc__ = f"The driver's {name}(), allowed only where ``{sql}`` would be."
    return type(f"_Judged_{name}", (), {name: method})


class _EnableLoadExtension:
    def enable_load_extension(self: Any, enabled: bool) -> Any:
        """Turning extension loading on is judged as loading one."""
        raw = self.__wrapped__
        if not enabled:
            return raw.enable_load_extension(False)
        return self._self_guard.run(raw, raw.enable_load_extension, _LOAD_EXT, (True,), {})


class _BlobOpen:
    def blobopen(self: Any, table: str, column: str, row: int, /, **kwargs: Any) -> Any:
        """A blob handle is judged as the read or write of that cell, and is
        refused while masking applies: its bytes never pass through masking."""
        raw = self.__wrapped__
        guard: Guard = self._self_guard
        masking = guard.masking
        if masking is not None and masking.applies_to(_current.get() or guard.identity):
            raise guard.blocked(
                Decision(
                    "block",
                    "masking-raw-api",
                    "blobopen() returns cells without masking; it is refused for "
                    "identities whose results are masked",
                )
            )
        col, tab = _quoted(column), _quoted(table)
        schema = kwargs.get("name")
        if schema is not None:
            tab = f"{_quoted(schema)}.{tab}"
        sql = (
            f"SELECT {col} FROM {tab} WHERE rowid = ?"
            if kwargs.get("readonly")
            else f"UPDATE {tab} SET {col} = ? WHERE rowid = ?"
        )
        return self._self_guard.run(raw, raw.blobopen, sql, (table, column, row), kwargs)


class _ConnectionItself:
    """psycopg's ``conn.connection`` (its AdaptContext protocol): the guarded one."""

    @property
    def connection(self: Any) -> Any:
        return self


class _InfoView:
    @property
    def info(self: Any) -> Any:
        """psycopg's ``conn.info``, without the raw ``pgconn`` it carries."""
        return _surface.info_view(self.__wrapped__.info, self._self_guard)


class _NoticeHandlers:
    """psycopg's notice handlers, given no server text while masking applies
    (``_surface.notice_handler``); each registered callback keeps its wrapper
    so that ``remove_notice_handler`` takes the one psycopg holds."""

    def add_notice_handler(self: Any, callback: Any) -> None:
        wrapper = _surface.notice_handler(self._self_guard, callback)
        pairs: list[tuple[Any, Any]]
        try:
            pairs = self._self_notice_handlers
        except AttributeError:
            pairs = []
            self._self_notice_handlers = pairs
        pairs.append((callback, wrapper))
        self.__wrapped__.add_notice_handler(wrapper)

    def remove_notice_handler(self: Any, callback: Any) -> None:
        pairs = getattr(self, "_self_notice_handlers", [])
        for i, (registered, wrapper) in enumerate(pairs):
            if registered == callback:
                del pairs[i]
                self.__wrapped__.remove_notice_handler(wrapper)
                return
        self.__wrapped__.remove_notice_handler(callback)  # psycopg's ValueError


class _ReadOnly:
    """psycopg's ``read_only`` may only tighten: ``False`` would make psycopg
    open every transaction READ WRITE, over the read-only session guardeddb set."""

    @property
    def read_only(self: Any) -> Any:
        return self.__wrapped__.read_only

    @read_only.setter
    def read_only(self: Any, value: Any) -> None:
        self.__wrapped__.read_only = _read_only_value(self, value)

    def set_read_only(self: Any, value: Any) -> Any:
        return self.__wrapped__.set_read_only(_read_only_value(self, value))


# Driver APIs that commit the open transaction as a side effect (sqlite3's
# ``isolation_level = None`` and ``autocommit = True``, PyMySQL's
# ``autocommit(True)`` and ``begin()``, psycopg's ``transaction()``): the
# commit goes through ``commit()`` first, judged and recorded, and the
# driver's own then finds nothing left to commit.


def _commits_when_set(name: str, commits: Callable[[Any], bool]) -> type:
    """A mixin for the sqlite3 setting ``name``, whose assignment commits the
    open transaction when ``commits(value)``."""

    def get(self: Any) -> Any:
        return getattr(self.__wrapped__, name)

    def assign(self: Any, value: Any) -> None:
        if commits(value):
            self._self_commit_open()
        setattr(self.__wrapped__, name, value)

    return type(f"_Commits_{name}", (), {name: property(get, assign)})


class _PyMySQLTransactions:
    def autocommit(self: Any, value: Any) -> Any:
        """PyMySQL's ``autocommit(True)`` commits the open transaction."""
        if value:
            self._self_commit_open()
        return self.__wrapped__.autocommit(value)

    def begin(self: Any) -> Any:
        """PyMySQL's ``begin()``: MySQL commits the open transaction first."""
        self._self_commit_open()
        return self.__wrapped__.begin()


class _Transaction:
    @contextlib.contextmanager
    def transaction(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """psycopg's ``transaction()``: the outermost block's commit goes
        through ``commit()`` (judged, recorded) before psycopg's own, which
        then has nothing left to commit."""
        raw = self.__wrapped__
        guard = self._self_guard
        outermost = not guard.driver.in_transaction(raw)
        op = None
        with raw.transaction(*args, **kwargs) as tx:
            yield tx
            if outermost and not kwargs.get("force_rollback"):
                op = run_steps(raw, guard.committing())  # refused: psycopg rolls back
        if op is not None:
            op.executed()
            op.end()


def _sqlite_connection(raw_type: type) -> bool:
    return issubclass(raw_type, sqlite3.Connection)


def _sqlite_autocommit(raw_type: type) -> bool:
    return _sqlite_connection(raw_type) and hasattr(raw_type, "autocommit")  # 3.12+


def _pymysql_connection(raw_type: type) -> bool:
    return raw_type.__module__.startswith("pymysql") and hasattr(raw_type, "autocommit")


def _psycopg_connection(raw_type: type) -> bool:
    return raw_type.__module__.startswith("psycopg") and hasattr(raw_type, "transaction")


def _read_only_value(conn: Any, value: Any) -> Any:
    if value is True or value is None:
        return value
    raise _surface.refusal(type(conn), type(conn.__wrapped__), "read_only", _surface.REFUSE)


class _Adapters:
    @property
    def adapters(self: Any) -> Any:
        """psycopg's adapters: its loaders see raw cells, so not while masking applies."""
        if _surface.masking_now(self._self_guard) and not _surface._psycopg_type_lookup():
            # an AttributeError: wrapt then asks __getattr__, which says why
            raise AttributeError("adapters")
        return self.__wrapped__.adapters


class _Codecs:
    """PyMySQL's ``encoders`` and ``decoders``, read-only: an encoder's return
    value is spliced into the SQL text after the analysis (a parameter made
    into a subquery), and a decoder sees every cell before masking."""

    @property
    def encoders(self: Any) -> Any:
        return types.MappingProxyType(self.__wrapped__.encoders)

    @encoders.setter
    def encoders(self: Any, value: Any) -> None:
        raise _surface.refusal(type(self), type(self.__wrapped__), "encoders", _surface.REFUSE)

    @property
    def decoders(self: Any) -> Any:
        return types.MappingProxyType(self.__wrapped__.decoders)

    @decoders.setter
    def decoders(self: Any, value: Any) -> None:
        raise _surface.refusal(type(self), type(self.__wrapped__), "decoders", _surface.REFUSE)


def _callback_mixin(name: str, what: str) -> type:
    """A sqlite3 ``create_*`` method whose callable refuses to run while masking applies."""

    def method(self: Any, cb_name: str, narg_or_cb: Any, *rest: Any, **kwargs: Any) -> Any:
        shim = _surface.shim
        guard = self._self_guard
        if name == "create_collation":
            args: tuple[Any, ...] = (cb_name, shim(guard, narg_or_cb, what))
        else:
            args = (cb_name, narg_or_cb, shim(guard, rest[0], what), *rest[1:])
        return getattr(self.__wrapped__, name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"The driver's {name}(); the {what} refuses to run while masking applies."
    return type(f"_Callback_{name}", (), {name: method})


class _TextFactory:
    @property
    def text_factory(self: Any) -> Any:
        return self.__wrapped__.text_factory

    @text_factory.setter
    def text_factory(self: Any, factory: Any) -> None:
        """sqlite3's ``text_factory`` sees every raw text cell: only ``str``
        while the connection masks."""
        if factory is not str and self._self_guard.masking is not None:
            raise _surface.refusal(
                type(self), type(self.__wrapped__), "text_factory", _surface.REFUSE
            )
        self.__wrapped__.text_factory = factory


class _TraceCallback:
    def set_trace_callback(self: Any, callback: Any) -> Any:
        """sqlite3's trace callback sees every statement: not while the connection masks."""
        if callback is not None and self._self_guard.masking is not None:
            raise _surface.AttributeRefused(
                "guardeddb refuses sqlite3 set_trace_callback while the connection masks: "
                "the callback would see statements around masking",
                name="set_trace_callback",
            )
        return self.__wrapped__.set_trace_callback(callback)


_SAFE_CHARSETS = frozenset({"utf8", "utf8mb3", "utf8mb4"})


class _Charset:
    """PyMySQL's ``set_character_set``/``set_charset``: a charset changes how
    the server tokenizes (and how values are escaped): only UTF-8 ones."""

    def set_character_set(self: Any, charset: str, collation: str | None = None) -> Any:
        _check_charset(self, charset)
        return self.__wrapped__.set_character_set(charset, collation)

    def set_charset(self: Any, charset: str) -> Any:
        _check_charset(self, charset)
        return self.__wrapped__.set_charset(charset)


def _check_charset(conn: Any, charset: str) -> None:
    if str(charset).lower() not in _SAFE_CHARSETS:
        raise conn._self_guard.blocked(
            Decision(
                "block",
                "session-charset",
                f"character set {charset!r} changes how the server reads SQL; "
                "only utf8 and utf8mb4 are allowed",
            )
        )


class _Unbuffered:
    """PyMySQL's unbuffered reads, masked and counted like ``fetchone``."""

    def read_next(self: Any) -> Any:
        return self.fetchone()

    def fetchall_unbuffered(self: Any) -> Iterator[Any]:
        return iter(self.fetchone, None)


_NO_ARGS: Any = ()


class _ClientParams:
    """Drivers that fill parameters in client-side (PyMySQL, psycopg's
    ClientCursor): refused unless every placeholder they substitute sits
    where the analysis saw a value (``_surface.placement``)."""

    _self_style = "pymysql"

    def execute(self: Any, query: Any, params: Any = _NO_PARAMS, *args: Any, **kwargs: Any) -> Any:
        p = kwargs.get("args", kwargs.get("params")) if params is _NO_PARAMS else params
        self._self_placed(query, {_surface.shape(p)})
        return super().execute(query, params, *args, **kwargs)  # type: ignore[misc]

    def executemany(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        args, kwargs, shapes = _param_sets(args, kwargs)
        if shapes:
            self._self_placed(query, shapes)
        return super().executemany(query, *args, **kwargs)  # type: ignore[misc]

    def _self_placed(self: Any, query: Any, shapes: set[str]) -> None:
        guard: Guard = self._self_guard
        raw = self.__wrapped__
        for converted in (False, True):
            # given parameters the driver rewrites the text (%% as %): the
            # placeholders are judged on the analysis of what it sends
            judged = {s for s in shapes if (s != "none") == converted}
            if not judged:
                continue
            cache = guard.converted if converted else guard.cache
            analysis = cache.get(query) if type(query) is str else None
            if analysis is None:
                analysis = guard.analyze(query, raw, converted)
            decision = _surface.placement(guard, analysis, self._self_style, judged)
            if decision is None and converted and "none" in shapes and "%" in analysis.text:
                decision = _surface.mixed_placement()
            if decision is not None:
                raise _refused_placement(guard, analysis, decision)


def _batch_seq(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, Any]:
    """executemany's sequence of parameter sets, and its keyword if given by
    one (PyMySQL ``args``, psycopg ``params_seq``, sqlite3 ``parameters``)."""
    key = next((k for k in ("args", "params_seq", "parameters") if k in kwargs), None)
    return key, args[0] if args else kwargs.get(key) if key else None


def _param_sets(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], set[str]]:
    """executemany's parameter sets, listed once (a generator is read here
    and handed on as a list), with the shapes the driver will bind."""
    key, seq = _batch_seq(args, kwargs)
    if seq is None:
        return args, kwargs, set()
    if not isinstance(seq, list | tuple):
        seq = list(seq)
        if args:
            args = (seq, *args[1:])
        else:
            kwargs = {**kwargs, key: seq}  # type: ignore[dict-item]
    return args, kwargs, {_surface.shape(p) for p in seq}


def batch_params(
    cursor: Any, query: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """executemany's arguments (a generator listed once) and what the guard
    is told of its parameters: None when every set is None, since a pyformat
    driver then sends the text as written each time (``%%`` stays ``%%``);
    a text holding a ``%`` with some sets None and others not is refused,
    as one analysis cannot be both texts."""
    key, seq = _batch_seq(args, kwargs)
    if seq is not None and not isinstance(seq, list | tuple):
        # A generator is never read ahead (approvals refuse it, spans call
        # its size unknown): a None set in it is refused as it comes, before
        # the driver sends it as written while the analysis read it rewritten.
        if not isinstance(query, str | bytes) or "%" in query:
            seq = _no_none_sets(cursor, query, seq)
            if args:
                args = (seq, *args[1:])
            else:
                kwargs = {**kwargs, key: seq}  # type: ignore[dict-item]
        return args, kwargs, args or _keyword_params(kwargs)
    args, kwargs, shapes = _param_sets(args, kwargs)
    if "none" not in shapes:
        return args, kwargs, args or _keyword_params(kwargs)
    if shapes == {"none"}:
        return args, kwargs, None
    guard: Guard = cursor._self_guard
    if not isinstance(query, str | bytes) or "%" in query:
        analysis = guard.analyze(query, cursor.__wrapped__)
        raise _refused_placement(guard, analysis, _surface.mixed_placement())
    return args, kwargs, args or _keyword_params(kwargs)


def _no_none_sets(cursor: Any, query: Any, seq: Any) -> Iterator[Any]:
    for params in seq:
        if params is None:
            guard: Guard = cursor._self_guard
            analysis = guard.analyze(query, cursor.__wrapped__)
            raise _refused_placement(guard, analysis, _surface.mixed_placement())
        yield params


def _refused_placement(guard: Guard, analysis: Analysis, decision: Decision) -> QueryBlocked:
    """The refusal of a misplaced placeholder: recorded like any blocked query."""
    ident = _current.get() or guard.identity
    exc = guard.blocked(decision)
    op = guard.telemetry.start(analysis, ident, decision)
    audit = guard.audit
    if audit is not None:
        audit.decision(
            analysis, ident, decision, False, op.trace_ids() if op is not None else None, None
        )
    if op is not None:
        op.failed(exc)
    return exc


def _pymysql_cursor(raw_type: type) -> bool:
    return raw_type.__module__.startswith("pymysql")


def _psycopg_client_cursor(raw_type: type) -> bool:
    mod = sys.modules.get("psycopg.client_cursor")
    return mod is not None and issubclass(raw_type, mod.ClientCursorMixin)


class _PsycopgClientParams(_ClientParams):
    _self_style = "psycopg"


_CURSOR_MIXINS = (
    (_pymysql_cursor, _ClientParams),
    (_psycopg_client_cursor, _PsycopgClientParams),
    ("read_next", _Unbuffered),
    ("adapters", _Adapters),
    ("executescript", _ExecuteScript),
    ("nextset", _NextSet),
    ("results", _Results),
    ("set_result", _SetResult),
    ("callproc", _CallProc),
    ("stream", _Stream),
    ("copy", _Copy),
    ("row_factory", _RowFactory),
)
_CONNECTION_MIXINS = (
    ("execute", _ConnExecute),
    ("executemany", _ConnExecuteMany),
    ("executescript", _ConnExecuteScript),
    ("query", _ConnQuery),
    ("select_db", _SelectDb),
    ("load_extension", _judged_as("load_extension", _LOAD_EXT)),
    ("enable_load_extension", _EnableLoadExtension),
    ("blobopen", _BlobOpen),
    ("iterdump", _judged_as("iterdump", _COPY_DB)),
    ("backup", _judged_as("backup", _COPY_DB)),
    ("serialize", _judged_as("serialize", _COPY_DB)),
    ("deserialize", _judged_as("deserialize", _COPY_DB)),
    ("create_function", _callback_mixin("create_function", "function")),
    ("create_aggregate", _callback_mixin("create_aggregate", "aggregate")),
    ("create_window_function", _callback_mixin("create_window_function", "window function")),
    ("create_collation", _callback_mixin("create_collation", "collation")),
    ("text_factory", _TextFactory),
    ("set_trace_callback", _TraceCallback),
    ("set_character_set", _Charset),
    ("connection", _ConnectionItself),
    ("info", _InfoView),
    ("add_notice_handler", _NoticeHandlers),
    ("read_only", _ReadOnly),
    ("adapters", _Adapters),
    (_sqlite_connection, _commits_when_set("isolation_level", lambda value: value is None)),
    (_sqlite_autocommit, _commits_when_set("autocommit", lambda value: value is True)),
    (_pymysql_connection, _PyMySQLTransactions),
    (_pymysql_connection, _Codecs),
    (_psycopg_connection, _Transaction),
)
_CLASSES: dict[tuple[type[Any], type[Any]], type[Any]] = {}


def _compose(base: type[Any], raw_type: type[Any], mixins: Any) -> type[Any]:
    """The proxy class for ``raw_type``: ``base`` plus the mixins it has methods
    for (a mixin keyed by a predicate instead of a name: those it accepts),
    with the table of the driver attributes it may hand out (``_surface``)."""
    key = (base, raw_type)
    cls = _CLASSES.get(key)
    if cls is None:
        bases = tuple(
            m
            for name, m in mixins
            if (hasattr(raw_type, name) if isinstance(name, str) else name(raw_type))
        )
        table = _surface.surface_for(raw_type)
        namespace = {
            "__module__": "guardeddb",
            "_self_surface": table,
            **_surface.descriptors(table, (*bases, base)),
        }
        cls = type(base.__name__, (*bases, base), namespace)
        _CLASSES[key] = cls
    return cls


def guard_connection(
    raw: Any,
    driver: Driver,
    facts: ConnectionFacts,
    telemetry: Telemetry,
    identity: Identity | None,
    policy: Policy,
    approver: Approver | None = None,
) -> GuardedConnection:
    """Wrap a raw connection; used by ``connect`` and ``wrap``."""
    cls = _compose(GuardedConnection, type(raw), _CONNECTION_MIXINS)
    guard = Guard(raw, driver, facts, telemetry, identity, policy, approver)
    conn: GuardedConnection = cls(raw, guard)
    return conn
