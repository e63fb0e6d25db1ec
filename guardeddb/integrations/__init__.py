"""Integrations: guardeddb behind other tools' front doors (an MCP server, ...).

Each module imports its third-party package lazily, so ``import guardeddb``
never needs them; install the matching extra (``guardeddb[mcp]``) to use one.
"""
