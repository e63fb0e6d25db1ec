"""GuardedAsyncConnection and GuardedAsyncCursor: psycopg's asyncio API, guarded.

The same pipeline as the blocking proxies (``_pipeline.py``) decides,
masks, traces and audits; these proxies differ from those only in awaiting
the driver. What a decision needs from the database or from a person (a dry
run, the session switched to read-only, an approver's answer, the approval
store, the audit record) is the same list of steps (``_steps``), awaited
here, with blocking calls moved to a thread; result records are written
behind, in order, by the trail's own thread. Nothing blocks the event loop.

Tasks sharing one connection take turns from the session switch to the
driver's return (the guard's asyncio lock), as threads do on a blocking one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from . import _surface
from ._pipeline import Guard, failed
from ._steps import run_async
from .connection import (
    ConnectionBase,
    CursorBase,
    _Adapters,
    _compose,
    _ConnectionItself,
    _InfoView,
    _NextSet,
    _NoticeHandlers,
    _param_sets,
    _psycopg_client_cursor,
    _PsycopgClientParams,
    _ReadOnly,
    _RowFactory,
    batch_params,
    query_params,
    stream_ended,
    streamed_row,
)
from .identity import Identity
from .telemetry import batch_size

if TYPE_CHECKING:
    from .approvals import Approver
    from .drivers import ConnectionFacts, Driver
    from .policy.model import Policy
    from .telemetry import Telemetry

__all__ = ["GuardedAsyncConnection", "GuardedAsyncCursor", "guard_connection_async"]


class GuardedAsyncCursor(CursorBase):
    """A psycopg ``AsyncCursor`` (or ``AsyncServerCursor``) whose statements
    are guarded, traced and counted, and whose rows are masked."""

    @property
    def connection(self) -> GuardedAsyncConnection:
        """The guarded connection (never the raw one)."""
        conn: GuardedAsyncConnection = self._self_connection
        return conn

    async def _self_run(
        self,
        method: Any,
        query: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        params: Any,
        batch: int = 0,
    ) -> Any:
        """Guard ``query``, then await ``method(*args, **kwargs)``; the span
        stays open while the statement has rows left to fetch."""
        self._self_done()
        raw = self.__wrapped__
        guard = self._self_guard
        failure = None
        async with guard.alock:  # tasks sharing the connection: switch and statement together
            op, self._self_mask = await guard.begin_async(query, raw, batch, params)
            self._self_left = guard.max_rows
            try:
                result = await method(*args, **kwargs)
            except BaseException as exc:
                failure = failed(guard, op, exc, self._self_mask is not None)
        if failure is not None:
            raise failure from None  # outside the handler: no __context__ either
        if op is not None:
            self._self_track(op, raw)
        return self if result is raw else result

    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        """Guard, trace and run one statement; arguments reach the driver as given."""
        return await self._self_run(
            self.__wrapped__.execute, query, (query, *args), kwargs, query_params(args, kwargs)
        )

    async def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        """Guard and run a statement for each parameter set, as one BATCH span."""
        args, kwargs, params = batch_params(self, query, args, kwargs)
        return await self._self_run(
            self.__wrapped__.executemany,
            query,
            (query, *args),
            kwargs,
            params,
            batch_size(args, kwargs),
        )

    async def fetchone(self) -> Any:
        return self._self_fetchone(_fetched=await self.__wrapped__.fetchone())

    async def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        rows = await self.__wrapped__.fetchmany(*args, **kwargs)
        return self._self_fetchmany(*args, _fetched=rows, **kwargs)

    async def fetchall(self) -> Any:
        return self._self_fetchall(_fetched=await self.__wrapped__.fetchall())

    def __aiter__(self) -> GuardedAsyncCursor:
        return self

    async def __anext__(self) -> Any:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        self._self_done()
        await self.__wrapped__.close()

    async def __aenter__(self) -> GuardedAsyncCursor:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        self._self_done()
        return await self.__wrapped__.__aexit__(*exc_info)


class _Stream:
    async def stream(self: Any, query: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """psycopg's ``stream()``: guarded when iteration starts (as the driver
        runs nothing before), rows masked and counted as they flow."""
        self._self_done()
        raw = self.__wrapped__
        guard = self._self_guard
        async with guard.alock:
            op, self._self_mask = await guard.begin_async(query, raw, 0, query_params(args, kwargs))
        self._self_left = self._self_guard.max_rows
        # Closed here, not left to the garbage collector: it holds the connection's lock.
        async with contextlib.aclosing(raw.stream(query, *args, **kwargs)) as rows:
            if op is None and self._self_mask is None:
                async for row in rows:
                    yield row
                return
            failure = None
            try:
                async for row in rows:
                    yield streamed_row(self, op, row)
            except BaseException as exc:
                failure = stream_ended(self, op, exc)
                if failure is None:
                    raise
            if failure is not None:
                raise failure from None  # outside the handler: no __context__ either
            stream_ended(self, op, None)


class _Results:
    async def results(self: Any) -> AsyncIterator[Any]:
        """psycopg's ``results()``: each result set through this guarded cursor."""
        async for _ in self.__wrapped__.results():
            self._self_new_result()
            yield self


class _SetResult:
    async def set_result(self: Any, index: int) -> Any:
        """psycopg's ``set_result()``: returns this guarded cursor, not the driver's."""
        await self.__wrapped__.set_result(index)
        self._self_new_result()
        return self


class _Copy:
    @contextlib.asynccontextmanager
    async def copy(self: Any, statement: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """psycopg's ``copy()``: the COPY statement is guarded like any other
        when the block is entered; its span lasts as long as the block."""
        self._self_done()
        raw = self.__wrapped__
        guard: Guard = self._self_guard
        async with guard.alock:
            op, _ = await guard.begin_async(statement, raw, 0, query_params(args, kwargs))
        try:
            async with raw.copy(statement, *args, **kwargs) as copy:
                yield copy
        except BaseException as exc:
            if op is not None:
                guard.fail(op, exc)
            raise
        if op is not None:
            op.executed()
            op.end()


class _AsyncClientParams(_PsycopgClientParams):
    """psycopg's AsyncClientCursor: placement proven before anything is awaited."""

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        self._self_placed(query, {_surface.shape(query_params(args, kwargs))})
        return await GuardedAsyncCursor.execute(self, query, *args, **kwargs)

    async def executemany(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        args, kwargs, shapes = _param_sets(args, kwargs)
        if shapes:
            self._self_placed(query, shapes)
        return await GuardedAsyncCursor.executemany(self, query, *args, **kwargs)


_CURSOR_MIXINS = (
    (_psycopg_client_cursor, _AsyncClientParams),
    ("adapters", _Adapters),
    ("nextset", _NextSet),
    ("results", _Results),
    ("set_result", _SetResult),
    ("stream", _Stream),
    ("copy", _Copy),
    ("row_factory", _RowFactory),
)


_CONNECTION_MIXINS = (
    ("connection", _ConnectionItself),
    ("info", _InfoView),
    ("add_notice_handler", _NoticeHandlers),
    ("read_only", _ReadOnly),
    ("adapters", _Adapters),
)


class GuardedAsyncConnection(ConnectionBase):
    """A psycopg ``AsyncConnection`` whose cursors are all guarded."""

    def cursor(self, *args: Any, **kwargs: Any) -> GuardedAsyncCursor:
        """A guarded cursor (a server-side one with ``name=``); arguments go
        to the driver's ``cursor()``, which psycopg does not await either."""
        cur: GuardedAsyncCursor = self._self_guarded(
            self.__wrapped__.cursor(*args, **kwargs), GuardedAsyncCursor, _CURSOR_MIXINS
        )
        return cur

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        """``await conn.execute()`` goes through a guarded cursor."""
        return await self.cursor().execute(*args, **kwargs)

    async def __aenter__(self) -> GuardedAsyncConnection:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        self._self_guard.telemetry.end_all()
        raw = self.__wrapped__
        if not raw.closed:
            # psycopg commits (or rolls back) on exit: judged and recorded first.
            try:
                await (self.commit() if exc_info[0] is None else self.rollback())
            except BaseException as exc:
                await raw.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return await raw.__aexit__(*exc_info)

    async def commit(self) -> None:
        """Commit, judged like the SQL ``COMMIT`` for the identity current now
        and recorded before the driver commits (and its outcome after)."""
        guard = self._self_guard
        async with guard.alock:
            await run_async(self.__wrapped__, guard.commit_steps())

    async def rollback(self) -> None:
        """Roll back (never refused: it can only undo), and record it."""
        await self.__wrapped__.rollback()
        self._self_rolled_back()

    async def close(self) -> None:
        """Close the connection, ending the spans (and audit results) left open."""
        guard = self._self_guard
        guard.telemetry.end_all()
        await self.__wrapped__.close()
        if guard.audit is not None:
            await asyncio.to_thread(guard.audit.close)


def guard_connection_async(
    raw: Any,
    driver: Driver,
    facts: ConnectionFacts,
    telemetry: Telemetry,
    identity: Identity | None,
    policy: Policy,
    approver: Approver | None = None,
) -> GuardedAsyncConnection:
    """Wrap a raw ``AsyncConnection``; used by ``connect_async`` and ``wrap``."""
    cls = _compose(GuardedAsyncConnection, type(raw), _CONNECTION_MIXINS)
    guard = Guard(raw, driver, facts, telemetry, identity, policy, approver)
    if guard.audit is not None:
        guard.audit.write_behind()  # result records: off the event loop, in order
    conn: GuardedAsyncConnection = cls(raw, guard)
    return conn
