"""The JSON-RPC edges of ``guardeddb mcp`` that the MCP SDK leaves open.

The SDK's stdio transport drops a line that is not JSON (no reply, where
JSON-RPC asks for -32700) and echoes a request id of any size. Here stdin is
read line by line in a daemon thread (so a signal can end the server while
the client keeps stdin open), and a line that is not a JSON-RPC message, or
whose id is longer than :data:`MAX_ID_CHARS`, is answered here with the
JSON-RPC error and never reaches the SDK.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

__all__ = ["MAX_ID_CHARS", "MAX_LINE_BYTES", "StdinLines", "error_for_line"]

#: A request id longer than this (as JSON) is refused, not echoed.
MAX_ID_CHARS = 128
#: A line longer than this is refused unread (a tool call's SQL fits easily).
MAX_LINE_BYTES = 4 * 1024 * 1024
PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def error_for_line(line: str) -> tuple[int, str, Any] | None:
    """``(code, message, id)`` of the JSON-RPC error a line gets instead of
    reaching the SDK, or None when it may pass."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return PARSE_ERROR, "Parse error: the line is not JSON", None
    if not isinstance(message, dict):
        return INVALID_REQUEST, "Invalid Request: one JSON-RPC object per line", None
    if "id" in message:
        rid = message["id"]
        if isinstance(rid, bool) or not isinstance(rid, str | int | None):
            return INVALID_REQUEST, "Invalid Request: id must be a string or an integer", None
        if len(json.dumps(rid)) > MAX_ID_CHARS:
            return (
                INVALID_REQUEST,
                f"Invalid Request: id longer than {MAX_ID_CHARS} characters",
                None,
            )
    from mcp.types import jsonrpc_message_adapter

    try:
        jsonrpc_message_adapter.validate_python(message, by_name=False)
    except ValueError:
        rid = message.get("id")
        return INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message", rid
    return None


def _lines(fd: int) -> Iterator[bytes | None]:
    """The lines of ``fd`` up to EOF; None for a line over MAX_LINE_BYTES
    (skipped, not kept)."""
    pending = b""
    skipping = False
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            while True:
                end = pending.find(b"\n")
                if end < 0:
                    break
                line, pending = pending[:end], pending[end + 1 :]
                if skipping:
                    skipping = False
                    continue
                yield line
            if len(pending) > MAX_LINE_BYTES:
                pending = b""
                if not skipping:
                    skipping = True
                    yield None
        if pending and not skipping:
            yield pending
    finally:
        os.close(fd)


class StdinLines:
    """stdin as the async line iterator ``stdio_server(stdin=...)`` reads;
    refused lines go to ``errors`` (code, message, id) to be answered."""

    def __init__(self) -> None:
        import anyio

        self._send, self._receive = anyio.create_memory_object_stream[str | None](16)
        self.errors_send, self.errors = anyio.create_memory_object_stream[tuple[int, str, Any]](64)
        self._token = anyio.lowlevel.current_token()
        threading.Thread(target=self._read, name="guardeddb-mcp-stdin", daemon=True).start()

    def _read(self) -> None:
        """The daemon thread: blocking reads of fd 0, handed to the event loop.

        Raw ``os.read`` on a duplicate of fd 0, not ``sys.stdin``: a daemon
        thread blocked inside a buffered reader's lock aborts the interpreter
        at exit."""
        import anyio.from_thread

        try:
            for raw in _lines(os.dup(0)):
                if raw is None:
                    self._refuse((INVALID_REQUEST, "Invalid Request: line too long", None))
                    continue
                line = raw.decode("utf-8", "replace")
                if not line.strip():
                    continue
                refused = error_for_line(line)
                if refused is not None:
                    self._refuse(refused)
                    continue
                anyio.from_thread.run(self._send.send, line, token=self._token)
            anyio.from_thread.run(self._send.send, None, token=self._token)  # EOF
        except Exception:  # the loop is gone (shutdown): nothing left to feed
            return

    def _refuse(self, error: tuple[int, str, Any]) -> None:
        import anyio.from_thread

        anyio.from_thread.run(self.errors_send.send, error, token=self._token)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for line in self._receive:
            if line is None:
                return
            yield line
