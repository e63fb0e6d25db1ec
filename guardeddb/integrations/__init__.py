"""Integrations: guardeddb where its users already are (SQLAlchemy engines,
process-wide instrumentation of driver modules, an MCP server for agents).

Each module imports its third-party package lazily, so ``import guardeddb``
never needs them; install the matching extra (``guardeddb[sqlalchemy]``,
``guardeddb[instrument]``, ``guardeddb[mcp]``) to use one.
"""
