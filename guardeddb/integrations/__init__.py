"""Integrations of guardeddb with frameworks that open DB-API connections themselves."""
