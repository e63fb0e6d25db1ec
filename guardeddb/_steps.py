"""Database work written once, done synchronously or awaited.

Some decisions need the database or a person before a query may run: a dry
run inside a SAVEPOINT, the session switched to read-only, an approver
asked. That logic is written once, as a generator that yields *steps* and
receives their results, the way psycopg writes its protocol in
``generators.py`` and waits for it in ``waiting.py``. Two small runners do
the steps: ``run`` calls the driver, ``run_async`` awaits it (and moves
blocking calls off the event loop). A step that raises, or is interrupted
(KeyboardInterrupt, a cancelled task), is thrown back into the generator at
its ``yield``, so ``try``/``except``/``finally`` read as they would in plain
code: a dry run interrupted mid-way still rolls back to its savepoint.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator
from typing import Any, NamedTuple, TypeVar

__all__ = ["Call", "Commit", "Sql", "Step", "Steps", "run", "run_async"]

T = TypeVar("T")


class Sql(NamedTuple):
    """Run one statement on the connection; the result is the cursor's rowcount."""

    text: str
    params: Any = None


class Commit(NamedTuple):
    """Commit the connection's transaction (the driver's own, not audited)."""


class Call(NamedTuple):
    """A blocking call (an approver, an approval store): the result is its return."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


Step = Sql | Commit | Call
Steps = Generator[Step, Any, T]


def run(conn: Any, steps: Steps[T]) -> T:
    """Do ``steps`` on a DB-API connection, blocking; returns what they return."""
    cur = None
    try:
        step = next(steps)
        while True:
            try:
                if type(step) is Sql:
                    if cur is None:
                        cur = conn.cursor()
                    if step.params is None:
                        cur.execute(step.text)
                    else:
                        cur.execute(step.text, step.params)
                    result = cur.rowcount
                elif type(step) is Call:
                    result = step.fn(*step.args)
                else:
                    result = conn.commit()
            except BaseException as exc:  # a cancellation too: the steps clean up
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value
    finally:
        if cur is not None:
            cur.close()


async def run_async(conn: Any, steps: Steps[T]) -> T:
    """Do ``steps`` on an asyncio connection (psycopg's ``AsyncConnection``):
    the same steps as ``run``, awaited; blocking calls run in a thread."""
    cur = None
    try:
        step = next(steps)
        while True:
            try:
                if type(step) is Sql:
                    if cur is None:
                        cur = conn.cursor()
                    if step.params is None:
                        await cur.execute(step.text)
                    else:
                        await cur.execute(step.text, step.params)
                    result = cur.rowcount
                elif type(step) is Call:
                    result = await asyncio.to_thread(step.fn, *step.args)
                    if inspect.isawaitable(result):  # work on the asyncio connection itself
                        result = await result
                else:
                    result = await conn.commit()
            except BaseException as exc:  # a cancellation too: the steps clean up
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value
    finally:
        if cur is not None:
            await cur.close()
